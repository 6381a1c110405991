"""Eager speculative decoding: the graphs of jetspec_compile.graphs run uncompiled through the decode
loop of jetspec_compile.decode. This is the oracle every compiled backend is tested against."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .adaptive import CHAIN, Arm
from .decode import CacheDims, Decoder, Stats
from .errors import JetSpecError
from .graphs import SpecConfig, budget_graph_name, budget_graph_names, budget_spec, build_graphs, extra_budgets
from .head import DraftHead
from .target import Target
from .tree import StaticTree


def cache_dims(target: Target, head: DraftHead) -> CacheDims:
    return CacheDims.from_models(target, head, head.depth)


class EagerGraphs(dict):
    """name -> callable running the uncompiled graph module under inference mode."""

    def __init__(self, modules: dict):
        super().__init__({n: _inference(m) for n, m in modules.items()})


def _inference(module):
    def call(*args):
        with torch.inference_mode():
            return module(*args)

    call.module = module  # the eager graph module behind the callable
    return call


def _ids(input_ids: Tensor | Sequence[int]) -> list[int]:
    if isinstance(input_ids, Tensor):
        if input_ids.dim() > 2 or (input_ids.dim() == 2 and input_ids.shape[0] != 1):
            raise JetSpecError(f"input_ids must be 1-D (or [1, n]), got shape {tuple(input_ids.shape)}")
        return [int(x) for x in input_ids.reshape(-1).tolist()]
    return [int(x) for x in input_ids]


def eager_decoder(target: Target, head: DraftHead, spec: SpecConfig, names=None, budgets: Sequence[int] = (),
                  costs: dict[int, float] | None = None) -> Decoder:
    """The eager graphs in a Decoder. ``budgets``: more budgets (with a plain step) for adaptive decoding,
    with ``costs`` in seconds per round, keyed by budget (CHAIN: the chain arm; default: measured here)."""
    graphs = build_graphs(target, head, spec, names) if names else build_graphs(target, head, spec)
    sampling = names is None or "verify_sample" in names
    arms = []
    specs = {b: budget_spec(spec, b) for b in extra_budgets(spec.budget, budgets, spec.lookup)}
    for b, bspec in specs.items():
        built = build_graphs(target, head, bspec, budget_graph_names(b, sampling))
        graphs.update({budget_graph_name(n, b): g for n, g in built.items()})
    if specs:  # the model's own budget is one of the adaptive policy's choices too
        arms = [Arm(b, s.reachable_depth(head), (costs or {}).get(b, 1.0))
                for b, s in {**specs, spec.budget: spec}.items() if b != CHAIN]
        if costs is not None and CHAIN in specs and CHAIN in costs:  # the chain alone (CHAIN: 0)
            arms.append(Arm(CHAIN, spec.lookup, costs[CHAIN]))
    dec = Decoder(EagerGraphs(graphs), budget=spec.budget, topk=spec.topk, max_seq_len=spec.max_seq_len,
                  prefill_chunk=spec.prefill_chunk, dims=cache_dims(target, head), device=target.device,
                  lookup=spec.lookup, arms=arms)
    if arms and costs is None:
        dec.recalibrate(reps=3)
    return dec


def _spec(head: DraftHead, n_prompt: int, max_new_tokens: int, budget: int, topk: int, tree, max_seq_len,
          prefill_chunk: int, lookup: int = 0) -> SpecConfig:
    static = None
    if isinstance(tree, StaticTree):
        static, tree = tree.to_json(), "static"
        budget = int(static["budget"])
    S = max_seq_len or (n_prompt + max_new_tokens + max(head.depth, lookup) + budget + lookup + 2)
    return SpecConfig(budget=budget, topk=topk, max_seq_len=S, prefill_chunk=prefill_chunk, tree=tree,
                      static_tree=static, lookup=lookup)


def speculative_generate(
    target: Target,
    head: DraftHead,
    input_ids: Tensor | Sequence[int],
    max_new_tokens: int,
    *,
    budget: int = 64,
    topk: int = 7,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    tree: str | StaticTree = "dynamic",
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    max_seq_len: int | None = None,
    prefill_chunk: int = 64,
    lookup: int = 0,
    budgets: Sequence[int] = (),
    costs: dict[int, float] | None = None,
) -> tuple[list[int], Stats]:
    """Generate up to ``max_new_tokens`` after ``input_ids`` with JetSpec speculative decoding (eager).

    Greedy (temperature 0) output equals the target's greedy decoding token for token; with
    temperature > 0 every token is an exact sample of the (top-k / top-p filtered) target distribution.
    ``tree`` is "dynamic", "static" (default uncalibrated topology) or a StaticTree; ``lookup`` > 0 adds a
    prompt-lookup chain of that many tokens to every round's tree. ``budgets``: more tree budgets, picked
    each round by the adaptive policy (with plain steps) from ``costs`` (seconds per round of each budget,
    1 = a plain step; default: measured). Returns the new tokens and Stats (rounds, tokens committed per
    round, tau, per-stage seconds, rounds per budget, finish_reason).
    """
    ids = _ids(input_ids)
    spec = _spec(head, len(ids), max_new_tokens, budget, topk, tree, max_seq_len, prefill_chunk, lookup)
    names = ("prefill", "draft", "verify_sample" if temperature > 0 else "verify")
    dec = eager_decoder(target, head, spec, names, budgets, costs)
    stats = Stats()
    eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    out: list[int] = []
    for chunk in dec.speculative(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 seed=seed, eos_token_ids=eos, stats=stats):
        out.extend(chunk)
    return out, stats


def autoregressive_generate(
    target: Target,
    head: DraftHead,
    input_ids: Tensor | Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    max_seq_len: int | None = None,
    prefill_chunk: int = 64,
) -> tuple[list[int], Stats]:
    """Plain decoding through the same cache machinery (prefill + ar_step graphs): the baseline."""
    ids = _ids(input_ids)
    spec = _spec(head, len(ids), max_new_tokens, 1, 1, "dynamic", max_seq_len, prefill_chunk)
    dec = eager_decoder(target, head, spec, ("prefill", "ar_step"))
    stats = Stats()
    eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    out: list[int] = []
    for chunk in dec.autoregressive(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                    seed=seed, eos_token_ids=eos, stats=stats):
        out.extend(chunk)
    return out, stats
