"""The one decode loop. Every backend (eager, AOTInductor, ONNX Runtime, TensorRT) supplies the same
graphs as callables; this module owns the caches, the round loop, stopping and statistics.

Per round: draft(anchor) -> tree; verify(tree) -> committed tokens, accepted length a and the accepted
rows; commit = one slice copy of a+1 rows into each cache. The only host synchronisation per round is
reading the a+1 committed tokens (needed to emit them and to stop on EOS).
"""

from __future__ import annotations

import gc
import math
import mmap
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from .adaptive import CHAIN, PLAIN, Arm, BudgetPolicy, lookup_context
from .errors import JetSpecError
from .graphs import budget_graph_name
from .tree import build_tree


@dataclass
class CacheDims:
    target_layers: int
    target_kv_heads: int
    target_head_dim: int
    head_layers: int
    head_kv_heads: int
    head_head_dim: int
    depth: int
    dtype: torch.dtype

    @classmethod
    def from_models(cls, target, head, depth: int) -> "CacheDims":
        """The cache shapes of a Target and DraftHead (``depth``: drafted depths of the model's budget)."""
        return cls(target_layers=target.num_layers, target_kv_heads=target.num_kv_heads,
                   target_head_dim=target.head_dim, head_layers=len(head.layers),
                   head_kv_heads=head.num_kv_heads, head_head_dim=head.head_dim, depth=depth, dtype=target.dtype)

    @classmethod
    def from_configs(cls, target: Mapping, head: Mapping, depth: int, dtype: torch.dtype) -> "CacheDims":
        """The cache shapes from the target's and the head's config dicts (as an artifact records them)."""
        def head_dim(c: Mapping) -> int:
            return int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])

        return cls(target_layers=int(target["num_hidden_layers"]), target_kv_heads=int(target["num_key_value_heads"]),
                   target_head_dim=head_dim(target), head_layers=int(head["num_hidden_layers"]),
                   head_kv_heads=int(head["num_key_value_heads"]), head_head_dim=head_dim(head), depth=depth,
                   dtype=dtype)


def zero_cache(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero-filled cache. On the CPU it lies over an anonymous private mapping, whose pages the kernel maps
    on first touch: the rows a generation never reaches (most of an S = 2048 cache) cost no memory, and
    rows above the cache length, which no graph reads, are never touched."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if n == 0:
        return torch.zeros(shape, dtype=dtype)
    return torch.frombuffer(mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), dtype=dtype).view(shape)


class _IntBuf:
    """A small int64 tensor the host rewrites every round (cache length, anchor, lookup chain). On the CPU it is
    written through a numpy view of the same memory: no torch dispatch on the hot path."""

    def __init__(self, n: int, device: torch.device):
        self.t = torch.zeros(n, dtype=torch.int64, device=device)
        self.np = self.t.numpy() if self.t.device.type == "cpu" else None

    def set(self, values: int | Sequence[int]) -> Tensor:
        if self.np is not None:
            self.np[:] = values
        else:
            self.t.copy_(torch.as_tensor(values, dtype=torch.int64).reshape(self.t.shape))
        return self.t

    def cat(self, head: Tensor, tail: Tensor) -> Tensor:
        """head ++ tail written into this buffer (their lengths add up to its length)."""
        if self.np is not None:
            n = head.shape[0]
            self.np[:n] = head.numpy()
            self.np[n:] = tail.numpy()
        else:
            torch.cat([head, tail], out=self.t)
        return self.t


def _raw(t: Tensor):
    """A numpy view of a CPU tensor's memory (bf16, which numpy lacks, as its raw 16-bit words)."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


@dataclass
class Stats:
    """Statistics of one generate call. Times are seconds (host wall clock)."""

    mode: str = "speculative"
    rounds: int = 0
    accepted: list[int] = field(default_factory=list)  # tokens committed per round (accepted + bonus)
    new_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str = ""
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    commit_s: float = 0.0
    host_s: float = 0.0
    total_s: float = 0.0
    lookup_rounds: int = 0  # rounds whose accepted drafted tokens were all proposed by the lookup chain
    budget_rounds: dict[str, int] = field(default_factory=dict)  # rounds per budget ("plain": plain steps)
    round_s: list[float] = field(default_factory=list)
    # per-round seconds of each stage (same order as round_s): keys draft, verify, host, commit
    stage_s: dict[str, list[float]] = field(default_factory=lambda: {"draft": [], "verify": [], "host": [],
                                                                     "commit": []})

    @property
    def tau(self) -> float:
        """Mean tokens committed per round (accepted + bonus)."""
        return sum(self.accepted) / len(self.accepted) if self.accepted else 0.0

    def accept_histogram(self) -> dict[int, int]:
        """Rounds per number of tokens committed (accepted drafted tokens + the bonus token)."""
        h: dict[int, int] = {}
        for n in self.accepted:
            h[n] = h.get(n, 0) + 1
        return dict(sorted(h.items()))

    def depth_acceptance(self) -> list[float]:
        """Per depth d = 1, 2, ...: P(the round accepted a drafted token at depth d | it reached depth d - 1)."""
        out, reached = [], len(self.accepted)
        for d in range(1, max(self.accepted, default=1)):
            hit = sum(1 for n in self.accepted if n - 1 >= d)
            if reached == 0:
                break
            out.append(hit / reached)
            reached = hit
        return out

    @property
    def decode_s(self) -> float:
        return self.total_s - self.prefill_s

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def add_round(self, draft: float, verify: float, host: float, commit: float) -> None:
        for k, v in (("draft", draft), ("verify", verify), ("host", host), ("commit", commit)):
            self.stage_s[k].append(v)
            setattr(self, f"{k}_s", getattr(self, f"{k}_s") + v)
        self.round_s.append(draft + verify + host + commit)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("round_s", "stage_s")}
        d.update(tau=self.tau, tokens_per_s=self.tokens_per_s, decode_s=self.decode_s,
                 accept_histogram=self.accept_histogram(), depth_acceptance=self.depth_acceptance())
        return d


def arm_key(budget: int) -> str:
    """An arm's key in calibrated costs: the budget as a string, or "chain" for the chain alone."""
    return "chain" if budget == CHAIN else str(budget)


def arm_label(budget: int) -> str:
    """An arm's name in statistics: "plain" for plain steps, else its cost key."""
    return "plain" if budget == PLAIN else arm_key(budget)


@dataclass(frozen=True)
class _ArmGraphs:
    """The graphs one arm runs: draft (None for a plain step and the chain alone), verify, verify_sample."""

    budget: int  # nodes of the head's tree (CHAIN: the chain alone, PLAIN: the root alone)
    depth: int  # tokens a round can accept
    draft: Callable | None
    verify: Callable | None
    verify_sample: Callable | None
    lookup: int  # lookup chain nodes verified with the tree
    nodes: int  # nodes the verify graph takes


class _ChainTrees:
    """Trees of the lookup chain alone under the root (1 + L nodes, the layout ``attach_chain`` gives a
    root-only tree; the unused chain nodes are padding, never accepted). Parents, depth and mask are built
    once per chain length; a round adds the tokens."""

    def __init__(self, length: int, device: torch.device):
        N = 1 + length
        self.tokens = _IntBuf(N, device)
        self.shapes = []
        for n in range(length + 1):
            parents = torch.full((N,), -1, dtype=torch.int64)
            depth = torch.zeros(N, dtype=torch.int64)
            mask = torch.zeros(N, N, dtype=torch.bool)
            mask[0, 0] = True
            for i in range(1, n + 1):
                parents[i], depth[i] = i - 1, i
                mask[i, : i + 1] = True
            self.shapes.append(tuple(t.to(device) for t in (parents, depth, mask)))

    def __call__(self, anchor: Tensor, chain: Tensor, n: int) -> tuple[Tensor, ...]:
        """(tokens, parents, depth, mask) of the chain's first ``n`` tokens (the rest of ``chain`` is zero)."""
        return (self.tokens.cat(anchor, chain), *self.shapes[n])


class _Lookup:
    """The host side of the prompt-lookup branch: an n-gram index over prompt + committed tokens, proposing
    each round the L tokens that followed the latest earlier occurrence of the sequence's suffix."""

    def __init__(self, prompt: Sequence[int], length: int, device: torch.device):
        from .lookup import NgramIndex

        self.index = NgramIndex()
        self.index.extend([int(t) for t in prompt])
        self.length = length
        self._chain, self._chain_len = _IntBuf(length, device), _IntBuf(1, device)
        self.chain, self.chain_len = self._chain.t, self._chain_len.t
        self.last: list[int] = []
        self.context = 0  # the adaptive policy's lookup context of this round's proposal

    def propose(self) -> tuple[Tensor, Tensor]:
        matched, self.last = self.index.continuation(self.length)
        self.context = lookup_context(matched)
        n = len(self.last)
        self._chain.set(self.last + [0] * (self.length - n))
        self._chain_len.set(n)
        return self.chain, self.chain_len

    def covered(self, committed: list[int]) -> int:
        """1 when the round accepted at least one drafted token and the lookup chain proposed them all."""
        a = len(committed) - 1
        return int(a > 0 and self.last[:a] == committed[:a])

    def extend(self, committed: list[int]) -> None:
        self.index.extend(committed)


def _median_s(fn: Callable[[], None], reps: int, sync: Callable[[], None], warmup: int = 2) -> float:
    times = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


class Decoder:
    """Caches (allocated once for S rows) plus the speculative and autoregressive loops over ``graphs``."""

    def __init__(self, graphs: Mapping[str, Callable], *, budget: int, topk: int, max_seq_len: int,
                 prefill_chunk: int, dims: CacheDims, device: torch.device | str = "cpu",
                 sync: Callable[[], None] | None = None, lookup: int = 0, arms: Sequence[Arm] = ()):
        self.graphs = graphs
        self.B, self.K, self.S, self.P = budget, topk, max_seq_len, prefill_chunk
        self.L = int(lookup)  # prompt-lookup chain nodes per round (0: off); verify sees B + L nodes
        self.D = max(dims.depth, self.L)  # tokens a round of the model's own budget can accept
        self.arms = {a.budget: a for a in arms}  # every compiled budget with its round cost (1: the plain step)
        self.D_max = max([self.D] + [max(a.depth, self.L) for a in self.arms.values()])
        self.dims = dims
        self.device = torch.device(device)
        self.sync = sync or (torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None))
        d = dims
        target_rows = (d.target_layers, d.target_kv_heads, self.S, d.target_head_dim)
        head_rows = (d.head_layers, d.head_kv_heads, self.S, d.head_head_dim)
        self.use_caches(*(zero_cache(target_rows, d.dtype, self.device) for _ in range(2)),
                        *(zero_cache(head_rows, d.dtype, self.device) for _ in range(2)))
        self._len, self._anchor = _IntBuf(1, self.device), _IntBuf(1, self.device)
        root = build_tree(torch.zeros(1, dtype=torch.int64), torch.zeros(1, 1, dtype=torch.int64),
                          torch.zeros(1, 1), 1)
        self._root = (root.parents.to(self.device), root.depth.to(self.device), root.mask.to(self.device))
        self._chain_trees: _ChainTrees | None = None  # built on the chain arm's first round

    def use_caches(self, k_cache: Tensor, v_cache: Tensor, ctx_k: Tensor, ctx_v: Tensor) -> None:
        """Decode into these caches (the target's K/V, the head's context K/V): decoders that never run at the
        same time can share one set."""
        self.k_cache, self.v_cache, self.ctx_k, self.ctx_v = k_cache, v_cache, ctx_k, ctx_v
        self._caches = (k_cache, v_cache, ctx_k, ctx_v)
        self._cache_views = tuple(_raw(c) for c in self._caches) if self.device.type == "cpu" else None

    # ---- pieces --------------------------------------------------------------------------------------
    def _cache_len(self, n: int) -> Tensor:
        return self._len.set(n)

    def _write(self, at: int, n: int, k: Tensor, v: Tensor, ck: Tensor | None = None, cv: Tensor | None = None):
        """Rows [0, n) of k, v (and the head's context rows ck, cv) into cache rows [at, at + n). On the CPU
        through numpy views: one slice assignment per cache, no torch dispatch."""
        n = min(n, self.S - at)
        for i, rows in enumerate((k, v, ck, cv)):
            if rows is None:
                continue
            if self._cache_views is not None:
                self._cache_views[i][:, :, at:at + n] = _raw(rows)[:, :, :n]
            else:
                self._caches[i].narrow(2, at, n).copy_(rows.narrow(2, 0, n))

    def check_prompt(self, prompt: Sequence[int]) -> None:
        if len(prompt) < 1:
            raise JetSpecError("prompt is empty (expected at least one token)")
        nodes = max(self.budgets) + self.L
        limit = self.S - nodes
        if len(prompt) > limit:
            raise JetSpecError(f"prompt has {len(prompt)} tokens; this model's max_seq_len {self.S} minus budget "
                               f"{nodes} allows at most {limit}")

    def prefill(self, prompt: Sequence[int], with_context: bool = True) -> int:
        """Cache every prompt token but the last (the first anchor). Returns the cache length."""
        ids = torch.as_tensor(list(prompt[:-1]), dtype=torch.int64)
        L = 0
        pad = torch.zeros(self.P, dtype=torch.int64)
        for start in range(0, ids.numel(), self.P):
            chunk = ids[start:start + self.P]
            m = chunk.numel()
            tokens = torch.cat([chunk, pad[: self.P - m]]).to(self.device)
            k, v, ck, cv = self.graphs["prefill"](tokens, self._cache_len(L), self.k_cache, self.v_cache)
            self._write(L, m, k, v, ck if with_context else None, cv if with_context else None)
            L += m
        return L

    # ---- budgets -------------------------------------------------------------------------------------
    def _arm_graphs(self, b: int) -> _ArmGraphs:
        """The graphs of arm ``b``: the artifact's own budget (b = B), one compiled for another budget, the
        plain step (b = 1: the root alone, no draft, no lookup chain), or the chain alone (b = CHAIN: the root
        and the lookup chain, no draft)."""
        def graph(base: str, budget: int) -> Callable | None:
            return self.graphs.get(base if budget == self.B else budget_graph_name(base, budget))

        if b == CHAIN:
            if not self.has_chain_arm:
                raise JetSpecError("the chain arm needs verify.chain, which an export with --lookup and --budgets "
                                   "compiles")
            return _ArmGraphs(CHAIN, self.L, None, graph("verify", b), graph("verify_sample", b), self.L, 1 + self.L)
        if b != self.B and b not in self.arms:
            raise JetSpecError(f"budget {b} is not compiled in this model; expected one of {self.budgets}")
        if b == PLAIN:  # (depth 1: root + bonus rows)
            return _ArmGraphs(b, 1, None, graph("verify", b), graph("verify_sample", b), 0, 1)
        depth = self.D if b == self.B else max(self.arms[b].depth, self.L)
        return _ArmGraphs(b, depth, graph("draft", b), graph("verify", b), graph("verify_sample", b), self.L,
                          b + self.L)

    @property
    def budgets(self) -> list[int]:
        """Every budget this decoder can run (1 = plain steps; not the chain arm)."""
        return sorted({self.B, *self.arms} - {CHAIN})

    @property
    def fixed_arms(self) -> list[int]:
        """What a fixed-budget run can run: every budget, and CHAIN (0) where the chain alone can run."""
        return ([CHAIN] if self.has_chain_arm else []) + self.budgets

    @property
    def has_chain_arm(self) -> bool:
        """Whether the chain alone can run: a lookup chain and its verify graphs (``verify.chain``)."""
        return bool(self.L) and any(budget_graph_name(n, CHAIN) in self.graphs for n in ("verify", "verify_sample"))

    def policy(self, budget: int | None) -> BudgetPolicy | None:
        """The adaptive policy (``budget=None`` with several compiled budgets), else None (fixed budget)."""
        spec = [a for b, a in self.arms.items() if b not in (PLAIN, CHAIN)]
        if budget is not None or PLAIN not in self.arms or not spec:
            return None
        chain = self.arms.get(CHAIN)
        return BudgetPolicy(spec, self.arms[PLAIN].cost_s, self.K, chain_len=self.L,
                            chain_cost_s=chain.cost_s if chain and self.has_chain_arm else None)

    def _plain_tree(self, anchor: Tensor) -> tuple[Tensor, ...]:
        return anchor, self._root[0], self._root[1], self._root[2]

    def _draft(self, g: _ArmGraphs, anchor: Tensor, cl: Tensor, lookup: "_Lookup | None"):
        """The round's tree (the root alone for a plain step, the lookup chain alone for the chain arm) and
        the head's [D, K] candidates (None without a draft). ``lookup`` has proposed this round's chain."""
        if g.draft is None:
            if g.budget != CHAIN:
                return self._plain_tree(anchor), None
            if self._chain_trees is None:
                self._chain_trees = _ChainTrees(self.L, self.device)
            return self._chain_trees(anchor, lookup.chain, len(lookup.last)), None
        chain = (lookup.chain, lookup.chain_len) if g.lookup else ()
        tree = g.draft(anchor, cl, self.ctx_k, self.ctx_v, *chain)
        return tree[:4], (tree[5] if len(tree) > 5 else None)

    def recalibrate(self, reps: int = 10) -> dict[str, float]:
        """`calibrate`, then run adaptive decoding on the measured costs: every budget's, and the chain
        alone's wherever it can run. Returns the costs (seconds)."""
        costs = self.calibrate(reps)
        arms = dict(self.arms)
        if self.has_chain_arm:
            arms[CHAIN] = Arm(CHAIN, self.L, 0.0)
        self.arms = {b: replace(a, cost_s=costs[arm_key(b)]) for b, a in arms.items()}
        return costs

    def calibrate(self, reps: int = 10, cache_len: int | None = None) -> dict[str, float]:
        """Median seconds of one round (draft + verify + the host sync) at every budget ("1": a plain step,
        "chain": the lookup chain alone) and of one ar_step, over a cache of ``cache_len`` rows (default min(256, S/2)); ``reps`` interleaved
        repetitions, at most 5 when a call takes 50 ms or more. Caches are not changed: verify returns rows,
        it does not write them."""
        cl = self._cache_len(cache_len if cache_len is not None else min(256, self.S // 2))
        anchor = self._anchor.set(0)
        lookup = _Lookup([0], self.L, self.device) if self.L else None

        samp = (torch.ones(1, device=self.device), torch.zeros(1, dtype=torch.int64, device=self.device),
                torch.ones(1, device=self.device))

        def one_round(g: _ArmGraphs) -> None:
            if lookup:
                lookup.propose()
            (tokens, parents, depth, mask), _ = self._draft(g, anchor, cl, lookup)
            args = (tokens, parents, depth, mask, cl, self.k_cache, self.v_cache)
            if g.verify is not None:
                out = g.verify(*args)
            else:  # a sampling-only model
                out = g.verify_sample(*args, *samp, torch.rand(tokens.shape[0], device=self.device))
            int(out[1].reshape(-1)[0])

        runs = {str(b): (lambda g=self._arm_graphs(b): one_round(g)) for b in self.budgets}
        if self.has_chain_arm:
            runs[arm_key(CHAIN)] = lambda g=self._arm_graphs(CHAIN): one_round(g)
        if "ar_step" in self.graphs:
            ar = self.graphs["ar_step"]
            runs["ar_step"] = lambda: int(ar(anchor, cl, self.k_cache, self.v_cache)[0].reshape(-1)[0])
        slowest = 0.0
        for _ in range(3):  # warm every graph first: first calls pay one-off costs that skew the early ones
            for run in runs.values():
                slowest = max(slowest, _median_s(run, 1, self.sync, warmup=0))
        # interleaved blocks, so that drift and noise hit every budget alike: per repetition each budget runs
        # a few rounds in a row, as decoding does, and the last ones are timed (the first call after another
        # budget's graphs pays for refilling the caches, which consecutive rounds of one budget do not; at
        # 50 ms a call and more, that refill is negligible and one call per repetition is timed)
        timed, warm = (1, 0) if slowest >= 0.05 else (3, 2)
        reps = min(reps, 5) if slowest >= 0.05 else reps  # real shapes: a round costs 0.2-1.3 s
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(reps):
            for k, run in runs.items():
                times[k].append(_median_s(run, timed, self.sync, warmup=warm))
        costs = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        return costs

    # ---- loops ---------------------------------------------------------------------------------------
    def speculative(self, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                    eos_token_ids: Sequence[int] = (), stats: Stats | None = None,
                    budget: int | None = None) -> Iterator[list[int]]:
        """Yield the tokens committed each round (stopping at EOS / max_new_tokens / a full cache).

        ``budget``: a fixed compiled budget; None runs the adaptive policy when the model has several
        budgets and a plain step, else the model's own budget."""
        if temperature > 0 and "verify_sample" not in self.graphs:
            raise JetSpecError("temperature > 0 needs the verify_sample graph, which this model was built without")
        policy = self.policy(budget)
        run = _Run.start(self, "adaptive" if policy else "speculative", prompt, max_new_tokens, eos_token_ids, stats)
        clock = _Clock(run.st)
        chosen = (self.budgets + ([CHAIN] if CHAIN in policy.cost else [])) if policy else \
            [budget if budget is not None else self.B]
        arms = {b: clock.timed_arm(self._arm_graphs(b)) for b in chosen}
        fixed = next(iter(arms.values()))
        verify = _Verifier(self, temperature, top_k, top_p, seed)
        L = run.prefill(self, prompt, with_context=True)
        anchor = self._anchor.set(int(prompt[-1]))
        lookup = _Lookup(prompt, self.L, self.device) if self.L else None
        with run:
            while not run.stopped(L + self.D_max + 1, self.S):
                clock.start()
                if lookup:
                    lookup.propose()  # the n-gram match, before the round is chosen
                g = arms[policy.choose(lookup.context if lookup else 0)] if policy else fixed
                cl = self._cache_len(L)
                tree, cand = self._draft(g, anchor, cl, lookup)
                out_tokens, length, k_rows, v_rows, ck, cv = verify(g, tree, cl)
                a = int(length.item())  # the host sync of the round
                committed = out_tokens.tolist()[: a + 1]
                if policy and g.budget != PLAIN:
                    policy.observe(g.budget, committed, cand.tolist() if cand is not None else None,
                                   *((lookup.last, lookup.context) if lookup else ()))
                clock.commit(self._write, L, a + 1, k_rows, v_rows, ck, cv)
                L += a + 1
                anchor = self._anchor.set(committed[a])  # the bonus token
                run.record_round(g, committed, lookup)
                clock.stop()
                yield run.emit(committed)

    def autoregressive(self, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
                       top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                       eos_token_ids: Sequence[int] = (), stats: Stats | None = None) -> Iterator[list[int]]:
        """Plain decoding with the ar_step graph (the baseline), same caches and stopping rules."""
        from .accept import sample_tokens

        run = _Run.start(self, "autoregressive", prompt, max_new_tokens, eos_token_ids, stats)
        clock = _Clock(run.st)
        step = clock.timed("verify", self.graphs["ar_step"])  # the step's graph time counts as "verify"
        gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % (2**63))
        samp = _sampling_args(temperature, top_k, top_p, torch.device("cpu"))
        L = run.prefill(self, prompt, with_context=False)
        token = self._anchor.set(int(prompt[-1]))
        with run:
            while not run.stopped(L + 1, self.S):
                clock.start()
                nxt, logits, k, v = step(token, self._cache_len(L), self.k_cache, self.v_cache)
                if temperature > 0:
                    nxt = sample_tokens(logits.reshape(1, -1).cpu(), *samp, torch.rand(1, generator=gen))
                t = int(nxt.reshape(-1)[0])
                clock.commit(self._write, L, 1, k, v)
                L += 1
                token = self._anchor.set(t)
                run.record_round(None, [t], None)
                clock.stop()
                yield run.emit([t])


def _sampling_args(temperature: float, top_k: int | None, top_p: float | None, device) -> tuple[Tensor, ...]:
    return (torch.tensor([float(temperature)], device=device), torch.tensor([int(top_k or 0)], device=device),
            torch.tensor([float(top_p if top_p is not None else 1.0)], device=device))


class _Verifier:
    """verify (greedy) or verify_sample (T > 0, with this call's seeded uniforms) of a round's tree."""

    def __init__(self, dec: Decoder, temperature: float, top_k: int | None, top_p: float | None, seed: int | None):
        self.dec = dec
        self.sampling = temperature > 0
        if self.sampling:
            self.gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % (2**63))
            self.samp = _sampling_args(temperature, top_k, top_p, dec.device)

    def __call__(self, g: _ArmGraphs, tree: tuple[Tensor, ...], cl: Tensor):
        d = self.dec
        if not self.sampling:
            return g.verify(*tree, cl, d.k_cache, d.v_cache)
        u = torch.rand(g.nodes, generator=self.gen).to(d.device)
        return g.verify_sample(*tree, cl, d.k_cache, d.v_cache, *self.samp, u)


class _Clock:
    """Stage timing as wrappers: the graph callables and the commit add their wall time to a stage; the
    rest of a round (policy, lookup, the host sync, bookkeeping) is host time."""

    def __init__(self, st: Stats):
        self.st = st
        self.acc = {"draft": 0.0, "verify": 0.0, "commit": 0.0}
        self.t0 = 0.0

    def timed(self, stage: str, fn: Callable | None) -> Callable | None:
        if fn is None:
            return None
        acc = self.acc

        def run(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            acc[stage] += time.perf_counter() - t0
            return out
        return run

    def timed_arm(self, g: _ArmGraphs) -> _ArmGraphs:
        return replace(g, draft=self.timed("draft", g.draft), verify=self.timed("verify", g.verify),
                       verify_sample=self.timed("verify", g.verify_sample))

    def commit(self, write: Callable, *args) -> None:
        self.timed("commit", write)(*args)

    def start(self) -> None:
        for k in self.acc:
            self.acc[k] = 0.0
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        total = time.perf_counter() - self.t0
        a = self.acc
        self.st.add_round(a["draft"], a["verify"], total - a["draft"] - a["verify"] - a["commit"], a["commit"])


class _Run:
    """What both loops share: the prompt check and the timed prefill, the stopping rules, emitting up to
    max_new_tokens and EOS, the statistics, and no garbage-collector passes while decoding."""

    def __init__(self, st: Stats, max_new_tokens: int, eos_token_ids: Sequence[int]):
        self.st, self.max_new = st, max_new_tokens
        self.eos = set(int(e) for e in eos_token_ids)
        self.emitted = 0
        self.done = False
        self.t0 = time.perf_counter()
        self.gc_on = False

    @classmethod
    def start(cls, dec: Decoder, mode: str, prompt: Sequence[int], max_new_tokens: int,
              eos_token_ids: Sequence[int], stats: Stats | None) -> "_Run":
        st = stats if stats is not None else Stats()
        st.mode, st.prompt_tokens = mode, len(prompt)
        dec.check_prompt(prompt)
        return cls(st, max_new_tokens, eos_token_ids)

    def prefill(self, dec: Decoder, prompt: Sequence[int], with_context: bool) -> int:
        self.t0 = time.perf_counter()
        L = dec.prefill(prompt, with_context=with_context)
        dec.sync()
        self.st.prefill_s = time.perf_counter() - self.t0
        return L

    def __enter__(self) -> "_Run":
        self.gc_on = gc.isenabled()
        gc.disable()  # a round allocates only short-lived tensors, freed by reference counting
        return self

    def __exit__(self, *exc) -> None:
        self.st.total_s = time.perf_counter() - self.t0
        if self.gc_on:
            gc.enable()

    def stopped(self, rows_needed: int, max_rows: int) -> bool:
        """Whether to stop before the next round: EOS was emitted, max_new_tokens reached, or the next round
        could need more cache rows than there are (``rows_needed`` > ``max_rows``)."""
        if self.done:
            return True
        reason = "length" if self.emitted >= self.max_new else "cache_full" if rows_needed > max_rows else ""
        self.st.finish_reason = reason or self.st.finish_reason
        return bool(reason)

    def record_round(self, g: _ArmGraphs | None, committed: list[int], lookup: "_Lookup | None") -> None:
        st = self.st
        st.rounds += 1
        st.accepted.append(len(committed))
        if g is not None:
            key = arm_label(g.budget)
            st.budget_rounds[key] = st.budget_rounds.get(key, 0) + 1
        if lookup:
            if g is not None and g.lookup:
                st.lookup_rounds += lookup.covered(committed)
            lookup.extend(committed)

    def emit(self, committed: list[int]) -> list[int]:
        """The committed tokens to yield: cut at max_new_tokens and after the first EOS (which ends the run)."""
        keep = committed[: self.max_new - self.emitted]
        hit = next((i for i, t in enumerate(keep) if t in self.eos), None)
        if hit is not None:
            keep = keep[: hit + 1]
            self.done = True
            self.st.finish_reason = "eos"
        self.emitted += len(keep)
        self.st.new_tokens = self.emitted
        return keep
