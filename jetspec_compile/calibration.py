"""Per-(depth, rank) acceptance statistics of a head on a target, for static-tree calibration.

Greedy speculative decoding is run (dynamic tree) and every round's per-depth top-K is kept. Once the
target's greedy output is known, each round is scored against it independently of the tree that ran:
walking depths d = 1, 2, ... from the round's anchor, we record which rank of depth d's top-K holds the
target's token there (or "none"), and stop after the first "none" (a tree holding every top-K candidate
would have lost the path there) or at the end of the output. Hence ``accept_rate[d][r]`` = P(the
target's token at depth d+1 is the rank-r candidate | the target's tokens at depths 1..d were all in
their top-K), measured at every depth, also at depths the budget's dynamic tree never reaches.
:func:`jetspec_compile.tree.calibrate_static_tree` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .decode import Stats
from .graphs import SpecConfig
from .head import DraftHead
from .eager_oracle import eager_decoder
from .target import Target


def collect_accept_stats(target: Target, head: DraftHead, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                         *, budget: int = 64, topk: int = 7, eos_token_ids: Sequence[int] = ()) -> dict:
    D, K = head.depth, topk
    reached = [0] * D
    hits = [[0] * (K + 1) for _ in range(D)]  # last column: not in the top-K
    taus = []
    for ids in prompts:
        spec = SpecConfig(budget=budget, topk=topk, max_seq_len=len(ids) + max_new_tokens + budget + D + 2,
                          prefill_chunk=64)
        dec = eager_decoder(target, head, spec, ("prefill", "draft", "verify"))
        module = dec.graphs["draft"].module
        seen: list[torch.Tensor] = []
        orig = module.make_tree

        def make_tree(anchor, topk_tokens, topk_logprobs, _orig=orig):
            seen.append(topk_tokens.detach().cpu())
            return _orig(anchor, topk_tokens, topk_logprobs)

        module.make_tree = make_tree
        st = Stats()
        out: list[int] = []
        starts: list[int] = []  # per round: offset in ``out`` of the first token it drafted
        try:
            for committed in dec.speculative(list(ids), max_new_tokens, eos_token_ids=eos_token_ids, stats=st):
                starts.append(len(out))
                out.extend(committed)
        finally:
            module.make_tree = orig
        for top, o in zip(seen, starts):
            for d in range(min(D, len(out) - o)):
                reached[d] += 1
                row = top[d].tolist()
                r = row.index(out[o + d]) if out[o + d] in row else K
                hits[d][r] += 1
                if r == K:
                    break
        taus.append(st.tau)
    rate = [[hits[d][r] / reached[d] if reached[d] else 0.0 for r in range(K)] for d in range(D)]
    return {
        "depth": D, "topk": K, "budget": budget, "prompts": len(prompts), "max_new_tokens": max_new_tokens,
        "reached": reached, "hits": hits, "accept_rate": rate,
        "depth_accept_rate": [sum(hits[d][:K]) / reached[d] if reached[d] else 0.0 for d in range(D)],
        "tau_mean": sum(taus) / len(taus) if taus else 0.0,
    }


def save_accept_stats(stats: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(stats, indent=1) + "\n")
    return path
