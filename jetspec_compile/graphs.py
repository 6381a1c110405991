"""The static-shape graphs of JetSpec decoding, as nn.Modules over explicit, functional caches.

These modules are what `torch.export` captures (jetspec_compile.export) and what the eager oracle
runs (jetspec_compile.eager_oracle). Every graph of one model holds the same `target` and `head`
submodules, so parameter names agree across graphs.

  prefill      (tokens[P], cache_len[1], k_cache, v_cache)
               -> new target K/V rows [Lt,Hkv,P,hd] x2, new draft-context K/V rows [Ld,Hkv,P,hd] x2
  draft        (anchor[1], cache_len[1], ctx_k, ctx_v)
               -> tree: tokens[B], parents[B], depth[B], mask[B,B], score[B]; the head's candidates[D,K]
  verify       (tokens[B], parents[B], depth[B], mask[B,B], cache_len[1], k_cache, v_cache)
               -> out_tokens[D+1], accepted length[1], accepted rows: target K/V [Lt,Hkv,D+1,hd] x2,
                  draft-context K/V [Ld,Hkv,D+1,hd] x2
  verify_sample  verify + (temperature[1], top_k[1], top_p[1], uniform[B]): target tokens are samples
  ar_step      (token[1], cache_len[1], k_cache, v_cache) -> next token[1], logits[V], K/V rows [Lt,Hkv,1,hd] x2

The taps of the committed rows are projected into draft-context K/V inside prefill and verify, so the
runtime commits both caches with the same copy and the draft graph needs only the anchor.
Invariant: both caches hold committed_length - 1 rows (every committed token but the anchor).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch
from torch import Tensor, nn

from .accept import accept, greedy_tokens, sample_tokens
from .adaptive import CHAIN as CHAIN_BUDGET, PLAIN as PLAIN_BUDGET  # noqa: F401  (the two non-tree arms)
from .attention import CacheAttention, causal_mask
from .errors import JetSpecError
from .head import DraftHead
from .lookup import attach_chain
from .target import Target
from .tree import StaticTree, Tree, build_tree, default_static_tree

GRAPH_NAMES = ("prefill", "draft", "verify", "verify_sample", "ar_step")
BUDGET_GRAPHS = ("draft", "verify", "verify_sample")  # the graphs whose shapes depend on the budget
# PLAIN_BUDGET (1): a "budget" of the root alone, a plain step that also writes the draft context;
# CHAIN_BUDGET (0): the lookup chain alone under the root (1 + L nodes, no draft), graphs named ``verify.chain``


def budget_graph_name(base: str, budget: int) -> str:
    """The name of graph ``base`` compiled for another budget, e.g. ``verify.b16`` (``verify.chain``: the
    chain alone)."""
    return f"{base}.chain" if budget == CHAIN_BUDGET else f"{base}.b{budget}"


def split_graph_name(name: str) -> tuple[str, int | None]:
    """``verify.b16`` -> ("verify", 16); ``verify.chain`` -> ("verify", 0); ``verify`` -> ("verify", None)."""
    base, dot, suffix = name.rpartition(".")
    if dot and suffix == "chain":
        return base, CHAIN_BUDGET
    if dot and suffix[:1] == "b" and suffix[1:].isdigit():
        return base, int(suffix[1:])
    return name, None


def budget_spec(spec: "SpecConfig", budget: int, static_tree: dict | None = None) -> "SpecConfig":
    """``spec`` at another budget. The plain step (budget 1) verifies the root alone: no lookup chain; the
    chain arm (budget 0) the root and the lookup chain (1 + L nodes)."""
    if budget in (PLAIN_BUDGET, CHAIN_BUDGET):
        return replace(spec, budget=1, lookup=spec.lookup if budget == CHAIN_BUDGET else 0, tree="dynamic",
                       static_tree=None)
    return replace(spec, budget=budget, static_tree=static_tree)


def extra_budgets(main: int, budgets: Sequence[int], lookup: int) -> list[int]:
    """The budgets compiled beside the model's own ``main``: ``budgets``, and with any of them the plain step
    and, with a lookup chain, the chain alone."""
    extra = sorted({int(b) for b in budgets} - {main})
    if extra and extra[0] < 1:
        raise JetSpecError(f"budgets {list(budgets)}: expected integers >= 1")
    if not extra:
        return []
    return extra + ([PLAIN_BUDGET] if PLAIN_BUDGET not in extra else []) + ([CHAIN_BUDGET] if lookup else [])


def budget_graph_names(budget: int, sampling: bool) -> tuple[str, ...]:
    """The budget-dependent graphs compiled for ``budget`` (a plain step and the chain alone need no draft)."""
    names = BUDGET_GRAPHS if budget not in (PLAIN_BUDGET, CHAIN_BUDGET) else BUDGET_GRAPHS[1:]
    return tuple(n for n in names if sampling or n != "verify_sample")


@dataclass
class SpecConfig:
    """Static shapes of one compiled model: every graph is captured and compiled for these sizes."""

    budget: int = 64  # B: nodes verified per round, root included
    topk: int = 7  # K: candidates per depth
    max_seq_len: int = 2048  # S: KV cache rows
    prefill_chunk: int = 128  # P
    tree: str = "dynamic"  # "dynamic" | "static"
    static_tree: dict | None = field(default=None)  # StaticTree.to_json() when tree == "static"
    lookup: int = 0  # L: prompt-lookup chain nodes verified with the tree (B + L nodes per round; 0 = off)

    def validate(self, head: DraftHead) -> None:
        if self.tree not in ("dynamic", "static"):
            raise JetSpecError(f"tree policy is {self.tree!r}; expected 'dynamic' or 'static'")
        for name in ("budget", "topk", "max_seq_len", "prefill_chunk"):
            if int(getattr(self, name)) < 1:
                raise JetSpecError(f"{name} is {getattr(self, name)}; expected >= 1")
        if not 0 <= int(self.lookup) <= 64:
            raise JetSpecError(f"lookup is {self.lookup}; expected 0 (off) to 64 chain tokens")
        need = self.budget + self.lookup + max(head.depth, self.lookup) + 2
        if self.max_seq_len < need:
            raise JetSpecError(f"max_seq_len {self.max_seq_len} is too small for budget {self.budget}, lookup "
                               f"{self.lookup} and depth {head.depth} (expected >= {need})")

    def to_dict(self) -> dict:
        return asdict(self)

    def reachable_depth(self, head: DraftHead) -> int:
        """The deepest depth a tree of this config can reach: drafting more depths is wasted work.

        Dynamic: a chain of B-1 nodes under the root is B-1 deep. Static: the topology's deepest node. A
        bidirectional (DFlash) head always drafts its whole block."""
        if not head.causal:
            return head.depth
        if self.tree == "static":
            return min(head.depth, _static_tree(self, head).max_depth)
        return max(1, min(head.depth, self.budget - 1))


def _static_tree(spec: SpecConfig, head: DraftHead) -> StaticTree:
    if spec.static_tree is not None:
        tree = StaticTree.from_json(spec.static_tree)
        if tree.budget != spec.budget:
            raise JetSpecError(f"static tree budget {tree.budget} differs from budget {spec.budget}")
        return tree
    return default_static_tree(head.depth, spec.topk, spec.budget)


class _Graph(nn.Module):
    def __init__(self, target: Target, head: DraftHead, spec: SpecConfig):
        super().__init__()
        self.target = target
        self.head = head
        self.spec = spec
        self.taps = list(head.target_layer_ids)

    @property
    def depth(self) -> int:
        """Accepted tokens per round at most: the head's drafted depths, or the lookup chain's length."""
        return max(self.head.depth, self.spec.lookup)


class Prefill(_Graph):
    def forward(self, tokens: Tensor, cache_len: Tensor, k_cache: Tensor, v_cache: Tensor):
        P = tokens.shape[0]
        positions = cache_len + torch.arange(P, device=tokens.device)
        st = CacheAttention(k_cache, v_cache, cache_len, causal_mask(P, tokens.device))
        _, taps = self.target.step(tokens, positions, st, tap_layers=self.taps)
        ck, cv = self.head.project_context(taps.to(self.head.dtype), positions)
        return st.new_k(), st.new_v(), ck, cv


class Draft(_Graph):
    def __init__(self, target: Target, head: DraftHead, spec: SpecConfig):
        super().__init__(target, head, spec)
        self.static = _static_tree(spec, head) if spec.tree == "static" else None
        self._topo: tuple[str, ...] = ()
        if self.static is not None:  # named per budget: graphs of several budgets share one weights file
            for part, t in zip(("parents", "depth", "rank", "mask"), self.static.tensors()):
                self.register_buffer(f"tree{spec.budget}_{part}", t, persistent=False)
                self._topo += (f"tree{spec.budget}_{part}",)

    def forward(self, anchor: Tensor, cache_len: Tensor, ctx_k: Tensor, ctx_v: Tensor):
        tree, cand = self.head_tree(anchor, cache_len, ctx_k, ctx_v)
        return tree.tokens, tree.parents, tree.depth, tree.mask, tree.score, cand

    def head_tree(self, anchor: Tensor, cache_len: Tensor, ctx_k: Tensor, ctx_v: Tensor) -> tuple[Tree, Tensor]:
        """The head's tree and its candidates [D, K] (rank order), which adaptive budgets learn from."""
        logits = self.head.block_logits(self.target, anchor, ctx_k, ctx_v, cache_len)  # [D, V]
        logp = torch.log_softmax(logits.float(), dim=-1)
        top = torch.topk(logp, self.spec.topk, dim=-1)
        return self.make_tree(anchor, top.indices, top.values), top.indices

    def make_tree(self, anchor: Tensor, topk_tokens: Tensor, topk_logprobs: Tensor) -> Tree:
        if self.static is None:
            return build_tree(anchor, topk_tokens, topk_logprobs, self.spec.budget)
        topo = tuple(getattr(self, name) for name in self._topo)
        return self.static.materialize(anchor, topk_tokens, topk_logprobs, topo)


class DraftLookup(Draft):
    """The draft with a prompt-lookup chain (tokens[L], its length[1], found by the runtime's n-gram index)
    attached under the root: a tree of B + L nodes, merged where the chain repeats a path of the head's tree."""

    def forward(self, anchor: Tensor, cache_len: Tensor, ctx_k: Tensor, ctx_v: Tensor, chain: Tensor,
                chain_len: Tensor):
        tree, cand = self.head_tree(anchor, cache_len, ctx_k, ctx_v)
        tree = attach_chain(tree, chain, chain_len)
        return tree.tokens, tree.parents, tree.depth, tree.mask, tree.score, cand


class Verify(_Graph):
    def _forward_tree(self, tokens, depth, mask, cache_len, k_cache, v_cache):
        positions = cache_len + depth
        st = CacheAttention(k_cache, v_cache, cache_len, mask)
        hidden, taps = self.target.step(tokens, positions, st, tap_layers=self.taps)
        return self.target.lm_head(hidden), taps, st

    def _finish(self, tokens, parents, depth, mask, cache_len, target_tokens, taps, st):
        acc = accept(tokens, parents, depth, mask, target_tokens, self.depth)
        path = acc.path
        k_rows = st.new_k().index_select(2, path)
        v_rows = st.new_v().index_select(2, path)
        positions = cache_len + torch.arange(self.depth + 1, device=tokens.device)
        ck, cv = self.head.project_context(taps.index_select(0, path).to(self.head.dtype), positions)
        return acc.out_tokens, acc.length, k_rows, v_rows, ck, cv

    def forward(self, tokens, parents, depth, mask, cache_len, k_cache, v_cache):
        logits, taps, st = self._forward_tree(tokens, depth, mask, cache_len, k_cache, v_cache)
        return self._finish(tokens, parents, depth, mask, cache_len, greedy_tokens(logits), taps, st)


class VerifySample(Verify):
    def forward(self, tokens, parents, depth, mask, cache_len, k_cache, v_cache, temperature, top_k, top_p, uniform):
        logits, taps, st = self._forward_tree(tokens, depth, mask, cache_len, k_cache, v_cache)
        target_tokens = sample_tokens(logits, temperature, top_k, top_p, uniform)
        return self._finish(tokens, parents, depth, mask, cache_len, target_tokens, taps, st)


class ArStep(_Graph):
    def forward(self, token: Tensor, cache_len: Tensor, k_cache: Tensor, v_cache: Tensor):
        st = CacheAttention(k_cache, v_cache, cache_len, causal_mask(1, token.device))
        hidden, _ = self.target.step(token, cache_len, st, tap_layers=self.taps)
        logits = self.target.lm_head(hidden)[0].float()
        return greedy_tokens(logits).reshape(1), logits, st.new_k(), st.new_v()


GRAPH_CLASSES = {"prefill": Prefill, "draft": Draft, "verify": Verify, "verify_sample": VerifySample,
                 "ar_step": ArStep}


def graph_class(name: str, lookup: bool = False) -> type[_Graph]:
    """The module class of graph ``name`` (a base name: ``draft``, not ``draft.b4``); with a lookup chain the
    draft takes the chain's tokens and length too."""
    return DraftLookup if lookup and name == "draft" else GRAPH_CLASSES[name]


def build_graphs(target: Target, head: DraftHead, spec: SpecConfig, names=GRAPH_NAMES) -> dict[str, _Graph]:
    head.check_compatible(target)
    spec.validate(head)
    return {n: graph_class(n, bool(spec.lookup))(target, head, spec).eval() for n in names}


def example_inputs(name: str, target: Target, head: DraftHead, spec: SpecConfig, device=None) -> tuple:
    """Inputs of the right static shapes and dtypes for graph ``name`` (values are placeholders)."""
    dev = torch.device(device) if device is not None else target.device
    S, B, P, D = spec.max_seq_len, spec.budget, spec.prefill_chunk, head.depth
    i64 = dict(dtype=torch.int64, device=dev)
    kc = torch.zeros(target.num_layers, target.num_kv_heads, S, target.head_dim, dtype=target.dtype, device=dev)
    cc = torch.zeros(len(head.layers), head.num_kv_heads, S, head.head_dim, dtype=head.dtype, device=dev)
    L = torch.tensor([5], **i64)
    if name == "prefill":
        return (torch.zeros(P, **i64), L, kc, kc.clone())
    if name == "draft":
        chain = (torch.zeros(spec.lookup, **i64), torch.tensor([1], **i64)) if spec.lookup else ()
        return (torch.zeros(1, **i64), L, cc, cc.clone()) + chain
    tree = build_tree(torch.zeros(1, **i64), torch.zeros(D, spec.topk, **i64),
                      torch.zeros(D, spec.topk, device=dev), B)
    if spec.lookup:
        tree = attach_chain(tree, torch.zeros(spec.lookup, **i64), torch.tensor([0], **i64))
        B = B + spec.lookup
    base = (tree.tokens, tree.parents, tree.depth, tree.mask, L, kc, kc.clone())
    if name == "verify":
        return base
    if name == "verify_sample":
        f = dict(dtype=torch.float32, device=dev)
        return base + (torch.ones(1, **f), torch.zeros(1, **i64), torch.ones(1, **f), torch.rand(B, **f))
    if name == "ar_step":
        return (torch.zeros(1, **i64), L, kc, kc.clone())
    raise JetSpecError(f"unknown graph {name!r}; expected one of {GRAPH_NAMES}")
