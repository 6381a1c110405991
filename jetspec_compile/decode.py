"""The one decode loop. Every backend (eager, AOTInductor, ONNX Runtime, TensorRT) supplies the same
graphs as callables; this module owns the caches, the round loop, stopping and statistics.

Per round: draft(anchor) -> tree; verify(tree) -> committed tokens, accepted length a and the accepted
rows; commit = one slice copy of a+1 rows into each cache. The only host synchronisation per round is
reading the a+1 committed tokens (needed to emit them and to stop on EOS).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from .errors import JetSpecError


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


class _Lookup:
    """The host side of the prompt-lookup branch: an n-gram index over prompt + committed tokens, proposing
    each round the L tokens that followed the latest earlier occurrence of the sequence's suffix."""

    def __init__(self, prompt: Sequence[int], length: int, device: torch.device):
        from .lookup import NgramIndex

        self.index = NgramIndex()
        self.index.extend([int(t) for t in prompt])
        self.length = length
        self.chain = torch.zeros(length, dtype=torch.int64, device=device)
        self.chain_len = torch.zeros(1, dtype=torch.int64, device=device)
        self.last: list[int] = []

    def propose(self) -> tuple[Tensor, Tensor]:
        self.last = self.index.propose(self.length)
        n = len(self.last)
        self.chain.zero_()
        if n:
            self.chain[:n] = torch.tensor(self.last, dtype=torch.int64)
        self.chain_len.fill_(n)
        return self.chain, self.chain_len

    def covered(self, committed: list[int]) -> int:
        """1 when the round accepted at least one drafted token and the lookup chain proposed them all."""
        a = len(committed) - 1
        return int(a > 0 and self.last[:a] == committed[:a])

    def extend(self, committed: list[int]) -> None:
        self.index.extend(committed)


def _pause_gc() -> bool:
    """No garbage-collector passes inside the decode loop (a round allocates only short-lived tensors, freed
    by reference counting); returns whether collection was on, to re-enable it when the loop ends."""
    on = gc.isenabled()
    gc.disable()
    return on


class Decoder:
    """Caches (allocated once for S rows) plus the speculative and autoregressive loops over ``graphs``."""

    def __init__(self, graphs: Mapping[str, Callable], *, budget: int, topk: int, max_seq_len: int,
                 prefill_chunk: int, dims: CacheDims, device: torch.device | str = "cpu",
                 sync: Callable[[], None] | None = None, lookup: int = 0):
        self.graphs = graphs
        self.B, self.K, self.S, self.P = budget, topk, max_seq_len, prefill_chunk
        self.L = int(lookup)  # prompt-lookup chain nodes per round (0: off); verify sees B + L nodes
        self.D = max(dims.depth, self.L)  # tokens a round can accept
        self.dims = dims
        self.device = torch.device(device)
        self.sync = sync or (torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None))
        d = dims
        kw = dict(dtype=d.dtype, device=self.device)
        self.k_cache = torch.zeros(d.target_layers, d.target_kv_heads, self.S, d.target_head_dim, **kw)
        self.v_cache = torch.zeros_like(self.k_cache)
        self.ctx_k = torch.zeros(d.head_layers, d.head_kv_heads, self.S, d.head_head_dim, **kw)
        self.ctx_v = torch.zeros_like(self.ctx_k)
        self._len = torch.zeros(1, dtype=torch.int64, device=self.device)

    # ---- pieces --------------------------------------------------------------------------------------
    def _cache_len(self, n: int) -> Tensor:
        self._len.fill_(n)
        return self._len

    def _write(self, at: int, n: int, k: Tensor, v: Tensor, ck: Tensor | None = None, cv: Tensor | None = None):
        n = min(n, self.S - at)
        self.k_cache[:, :, at:at + n].copy_(k[:, :, :n])
        self.v_cache[:, :, at:at + n].copy_(v[:, :, :n])
        if ck is not None:
            self.ctx_k[:, :, at:at + n].copy_(ck[:, :, :n])
            self.ctx_v[:, :, at:at + n].copy_(cv[:, :, :n])

    def check_prompt(self, prompt: Sequence[int]) -> None:
        if len(prompt) < 1:
            raise JetSpecError("prompt is empty (expected at least one token)")
        limit = self.S - self.B - self.L
        if len(prompt) > limit:
            raise JetSpecError(f"prompt has {len(prompt)} tokens; this model's max_seq_len {self.S} minus budget "
                               f"{self.B + self.L} allows at most {limit}")

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

    # ---- loops ---------------------------------------------------------------------------------------
    def speculative(self, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                    eos_token_ids: Sequence[int] = (), stats: Stats | None = None) -> Iterator[list[int]]:
        """Yield the tokens committed each round (stopping at EOS / max_new_tokens / a full cache)."""
        st = stats if stats is not None else Stats()
        st.mode, st.prompt_tokens = "speculative", len(prompt)
        self.check_prompt(prompt)
        sampling = temperature > 0
        if sampling and "verify_sample" not in self.graphs:
            raise JetSpecError("temperature > 0 needs the verify_sample graph, which this model was built without")
        t0 = time.perf_counter()
        L = self.prefill(prompt)
        self.sync()
        st.prefill_s = time.perf_counter() - t0
        anchor = torch.tensor([int(prompt[-1])], dtype=torch.int64, device=self.device)
        eos = set(int(e) for e in eos_token_ids)
        if sampling:
            gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % (2**63))
            samp = (torch.tensor([float(temperature)], device=self.device),
                    torch.tensor([int(top_k or 0)], device=self.device),
                    torch.tensor([float(top_p if top_p is not None else 1.0)], device=self.device))
        emitted = 0
        lookup = _Lookup(prompt, self.L, self.device) if self.L else None
        gc_on = _pause_gc()
        try:
            while True:
                if emitted >= max_new_tokens:
                    st.finish_reason = "length"
                    return
                if L + self.D + 1 > self.S:
                    st.finish_reason = "cache_full"
                    return
                r0 = time.perf_counter()
                cl = self._cache_len(L)
                chain = lookup.propose() if lookup else ()
                tree = self.graphs["draft"](anchor, cl, self.ctx_k, self.ctx_v, *chain)
                tokens, parents, depth, mask = tree[:4]
                r1 = time.perf_counter()
                if sampling:
                    u = torch.rand(self.B + self.L, generator=gen).to(self.device)
                    out = self.graphs["verify_sample"](tokens, parents, depth, mask, cl, self.k_cache, self.v_cache,
                                                       *samp, u)
                else:
                    out = self.graphs["verify"](tokens, parents, depth, mask, cl, self.k_cache, self.v_cache)
                out_tokens, length, k_rows, v_rows, ck, cv = out
                r2 = time.perf_counter()
                a = int(length.reshape(-1)[0])  # the host sync of the round
                committed = out_tokens[: a + 1].tolist()
                r3 = time.perf_counter()
                self._write(L, a + 1, k_rows, v_rows, ck, cv)
                L += a + 1
                anchor = out_tokens[a: a + 1].clone()
                r4 = time.perf_counter()
                st.rounds += 1
                st.accepted.append(a + 1)
                if lookup:
                    st.lookup_rounds += lookup.covered(committed)
                    lookup.extend(committed)
                keep = committed[: max_new_tokens - emitted]
                hit = next((i for i, t in enumerate(keep) if t in eos), None)
                if hit is not None:
                    keep = keep[: hit + 1]
                emitted += len(keep)
                st.new_tokens = emitted
                st.add_round(r1 - r0, r2 - r1, r3 - r2, r4 - r3)
                yield keep
                if hit is not None:
                    st.finish_reason = "eos"
                    return
        finally:
            st.total_s = time.perf_counter() - t0
            if gc_on:
                gc.enable()

    def autoregressive(self, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
                       top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                       eos_token_ids: Sequence[int] = (), stats: Stats | None = None) -> Iterator[list[int]]:
        """Plain decoding with the ar_step graph (the baseline), same caches and stopping rules."""
        from .accept import sample_tokens

        st = stats if stats is not None else Stats()
        st.mode, st.prompt_tokens = "autoregressive", len(prompt)
        self.check_prompt(prompt)
        t0 = time.perf_counter()
        L = self.prefill(prompt, with_context=False)
        self.sync()
        st.prefill_s = time.perf_counter() - t0
        token = torch.tensor([int(prompt[-1])], dtype=torch.int64, device=self.device)
        eos = set(int(e) for e in eos_token_ids)
        gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % (2**63))
        emitted = 0
        gc_on = _pause_gc()
        try:
            while True:
                if emitted >= max_new_tokens:
                    st.finish_reason = "length"
                    return
                if L + 1 > self.S:
                    st.finish_reason = "cache_full"
                    return
                r0 = time.perf_counter()
                nxt, logits, k, v = self.graphs["ar_step"](token, self._cache_len(L), self.k_cache, self.v_cache)
                r1 = time.perf_counter()
                if temperature > 0:
                    u = torch.rand(1, generator=gen)
                    nxt = sample_tokens(logits.reshape(1, -1).cpu(), torch.tensor([float(temperature)]),
                                        torch.tensor([int(top_k or 0)]),
                                        torch.tensor([float(top_p if top_p is not None else 1.0)]), u)
                t = int(nxt.reshape(-1)[0])
                r2 = time.perf_counter()
                self._write(L, 1, k, v)
                L += 1
                token = torch.tensor([t], dtype=torch.int64, device=self.device)
                r3 = time.perf_counter()
                st.rounds += 1
                st.accepted.append(1)
                emitted += 1
                st.new_tokens = emitted
                st.add_round(0.0, r1 - r0, r2 - r1, r3 - r2)
                yield [t]
                if t in eos:
                    st.finish_reason = "eos"
                    return
        finally:
            st.total_s = time.perf_counter() - t0
            if gc_on:
                gc.enable()
