"""Speculation trees as fixed-shape tensors, built inside the draft graph.

A tree of budget B is five tensors (node 0 is the root, nodes are numbered parent-before-child):
  tokens  int64 [B]    parents int64 [B] (root -1)    depth int64 [B] (root 0; position = L + depth)
  score   float [B]    cumulative draft log-prob along the root path (root 0)
  mask    bool  [B, B] ancestor-or-self; padding nodes have an all-False row and column
The tree's topology may change every round; its shapes never do, so one engine serves every round.
``valid`` (= the mask's diagonal) tells real nodes from padding.

Two policies share that contract:
  * dynamic — :func:`build_tree`: best-first expansion on cumulative log-prob, written as a fixed
    number of steps (no host sync, no data-dependent Python control flow: torch.export captures it);
  * static  — :class:`StaticTree`: a topology of (depth, rank) paths frozen at export time (e.g. from
    :func:`calibrate_static_tree`); drafting is then a gather of the per-depth top-K.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .errors import JetSpecError


@dataclass
class Tree:
    tokens: Tensor
    parents: Tensor
    depth: Tensor
    score: Tensor
    mask: Tensor

    @property
    def valid(self) -> Tensor:
        return self.mask.diagonal()

    @property
    def budget(self) -> int:
        return int(self.tokens.shape[0])


def build_tree(root_token: Tensor, topk_tokens: Tensor, topk_logprobs: Tensor, budget: int) -> Tree:
    """Best-first tree of exactly ``budget`` nodes from per-depth top-K candidates, as fixed-shape tensors.

    root_token: int64 [1] (or scalar); topk_tokens: int64 [D, K]; topk_logprobs: float [D, K].
    Node-for-node identical to the heap algorithm: repeatedly expand the not-yet-expanded node of
    depth < D with the highest score (ties: lowest index), appending its K children in rank order
    (score = parent score + logprob[d, j]), until B nodes exist. Expansion e fills the static slots
    1 + e*K ... so ceil((B-1)/K) argmax steps suffice. Slots left when the whole depth-D, width-K tree
    is smaller than B are padding (all-False mask row/column, never accepted).
    """
    D, K = topk_tokens.shape
    B = int(budget)
    if B < 1:
        raise JetSpecError(f"budget must be >= 1, got {B}")
    dev = topk_tokens.device
    steps = math.ceil((B - 1) / K) if B > 1 else 0
    root = root_token.reshape(1).to(torch.int64)
    lp = topk_logprobs.float()
    tokens = [root]
    parents = [torch.full((1,), -1, dtype=torch.int64, device=dev)]
    depth = [torch.zeros(1, dtype=torch.int64, device=dev)]
    score = [torch.zeros(1, dtype=torch.float32, device=dev)]
    valid = [torch.ones(1, dtype=torch.bool, device=dev)]
    anc = [torch.nn.functional.one_hot(torch.zeros(1, dtype=torch.int64, device=dev), B).bool()]  # rows [n, B]
    expanded = torch.zeros(B, dtype=torch.bool, device=dev)
    ranks = torch.arange(K, device=dev)
    slots = torch.arange(B, device=dev)
    neg = torch.tensor(float("-inf"), device=dev)
    for e in range(steps):
        n = 1 + e * K  # nodes so far
        take = min(K, B - n)
        cur_score = torch.cat(score)
        cur_depth = torch.cat(depth)
        cur_valid = torch.cat(valid)
        cand = cur_valid & (cur_depth < D) & ~expanded[:n]
        masked = torch.where(cand, cur_score.clamp(min=-1e30), neg)  # a -inf candidate still beats a non-candidate
        best = torch.argmax(masked.unsqueeze(0), dim=1)  # first index of the max: ties -> lowest index
        ok = cand.any().reshape(1)
        expanded = expanded | ((slots == best) & ok)
        d = cur_depth.index_select(0, best)  # [1]
        drow = d.clamp(max=D - 1)
        child_tok = topk_tokens.index_select(0, drow)[0, :take]
        child_lp = lp.index_select(0, drow)[0, :take]
        tokens.append(torch.where(ok, child_tok, torch.zeros_like(child_tok)))
        parents.append(torch.where(ok, best.expand(take), torch.full_like(child_tok, -1)))
        depth.append(torch.where(ok, (d + 1).expand(take), torch.zeros_like(child_tok)))
        score.append(torch.where(ok, cur_score.index_select(0, best) + child_lp, torch.full_like(child_lp, neg)))
        valid.append(ok.expand(take))
        parent_row = torch.cat(anc).index_select(0, best)  # [1, B]
        self_rows = torch.nn.functional.one_hot(n + ranks[:take], B).bool()
        anc.append((parent_row | self_rows) & ok.reshape(1, 1))
    tok, par, dep, sc, val = (torch.cat(x) for x in (tokens, parents, depth, score, valid))
    rows = torch.cat(anc)
    mask = rows & val.unsqueeze(0)  # padding columns are never visible either
    return Tree(tok, par, dep, sc, mask)


# ---- static trees ---------------------------------------------------------------------------------------

@dataclass
class StaticTree:
    """A frozen topology: node i is the rank ``rank[i]`` candidate at depth ``depth[i]`` under ``parents[i]``."""

    parents: list[int]
    depth: list[int]
    rank: list[int]
    budget: int

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depth)

    def paths(self) -> list[tuple[int, ...]]:
        """The rank path of every non-root node (Medusa/EAGLE-style "choices")."""
        out: list[tuple[int, ...]] = [()]
        for i in range(1, self.num_nodes):
            out.append(out[self.parents[i]] + (self.rank[i],))
        return out[1:]

    def tensors(self, device=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """parents, depth, rank (int64 [B], padding: parent -1, depth 0, rank 0) and mask [B, B]."""
        B = self.budget
        n = self.num_nodes
        par = torch.full((B,), -1, dtype=torch.int64)
        dep = torch.zeros(B, dtype=torch.int64)
        rk = torch.zeros(B, dtype=torch.int64)
        par[:n] = torch.tensor(self.parents)
        dep[:n] = torch.tensor(self.depth)
        rk[:n] = torch.tensor(self.rank)
        mask = torch.zeros(B, B, dtype=torch.bool)
        for i in range(n):
            mask[i, i] = True
            if self.parents[i] >= 0:
                mask[i] |= mask[self.parents[i]]
        return par.to(device), dep.to(device), rk.to(device), mask.to(device)

    def materialize(self, root_token: Tensor, topk_tokens: Tensor, topk_logprobs: Tensor,
                    topology: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> Tree:
        """Gather this round's tokens by (depth, rank): a Tree with the frozen topology."""
        par, dep, rk, mask = topology if topology is not None else self.tensors(topk_tokens.device)
        D = topk_tokens.shape[0]
        if self.max_depth > D:
            raise JetSpecError(f"static tree has depth {self.max_depth}; the head drafts only {D} depths")
        valid = mask.diagonal()
        row = (dep - 1).clamp(min=0)
        tok = topk_tokens[row, rk]
        lp = topk_logprobs.float()[row, rk]
        tokens = torch.where(dep > 0, tok, root_token.reshape(1).to(torch.int64).expand_as(tok))
        tokens = torch.where(valid, tokens, torch.zeros_like(tokens))
        node_lp = torch.where((dep > 0) & valid, lp, torch.zeros_like(lp))
        score = (mask.float() * node_lp.unsqueeze(0)).sum(-1)  # sum over ancestors-or-self
        return Tree(tokens, par, dep, score, mask)

    def to_json(self) -> dict:
        return {"budget": self.budget, "paths": [list(p) for p in self.paths()]}

    @staticmethod
    def from_json(obj: dict) -> "StaticTree":
        return static_tree_from_paths(obj["paths"], obj["budget"])


def static_tree_from_paths(paths: Sequence[Sequence[int]], budget: int | None = None,
                           topk: int | None = None) -> StaticTree:
    """A static tree from rank paths, e.g. ``[(0,), (1,), (0, 0), (0, 1), (0, 0, 0)]`` (root implicit).

    Every path's prefix must also be present. Nodes are ordered by depth, then lexicographically, so
    parents come before children. With ``budget`` larger than len(paths)+1 the rest is padding.
    """
    uniq = sorted({tuple(int(r) for r in p) for p in paths}, key=lambda p: (len(p), p))
    if any(len(p) == 0 for p in uniq):
        raise JetSpecError("static tree paths: the root is implicit; an empty path is not allowed")
    index = {(): 0}
    parents, depth, rank = [-1], [0], [0]
    for p in uniq:
        if p[:-1] not in index:
            raise JetSpecError(f"static tree paths: {list(p)} has no parent path {list(p[:-1])}")
        if p[-1] < 0 or (topk is not None and p[-1] >= topk):
            raise JetSpecError(f"static tree paths: rank {p[-1]} in {list(p)} is outside 0..{(topk or 1) - 1}")
        index[p] = len(parents)
        parents.append(index[p[:-1]])
        depth.append(len(p))
        rank.append(p[-1])
    B = budget if budget is not None else len(parents)
    if B < len(parents):
        raise JetSpecError(f"static tree has {len(parents)} nodes; budget {B} is smaller")
    return StaticTree(parents, depth, rank, B)


def calibrate_static_tree(stats: "Tensor | Sequence[Sequence[float]] | str | Path", budget: int,
                          depth: int | None = None, topk: int | None = None) -> StaticTree:
    """Best static tree of ``budget`` nodes from per-(depth, rank) acceptance rates.

    ``stats``: rates [D, K] (rate[d][r] = probability that the rank-r candidate at depth d+1 is
    accepted given its parent was), or a JSON file written by the acceptance statistics tools
    (key ``"accept_rate"``). Greedily adds the frontier node with the highest product of rates along
    its path; since rates are <= 1 a parent is always added before its children.
    """
    if isinstance(stats, (str, Path)):
        path = Path(stats)
        try:
            obj = json.loads(path.read_text())
            rates = torch.tensor(obj["accept_rate"], dtype=torch.float64)
        except FileNotFoundError:
            raise JetSpecError(f"{path}: acceptance statistics file not found") from None
        except (KeyError, json.JSONDecodeError, TypeError, ValueError) as e:
            raise JetSpecError(f"{path}: expected JSON with field 'accept_rate' = [[rate per rank] per depth] ({e})") from None
    else:
        rates = torch.as_tensor(stats, dtype=torch.float64)
    if rates.dim() != 2:
        raise JetSpecError(f"acceptance rates must be [depth, rank], got shape {tuple(rates.shape)}")
    if depth is not None:
        rates = rates[:depth]
    if topk is not None:
        rates = rates[:, :topk]
    rates = rates.clamp(0.0, 1.0)
    D, K = rates.shape
    paths: list[tuple[int, ...]] = []
    heap: list[tuple[float, tuple[int, ...]]] = [(-float(rates[0, r]), (r,)) for r in range(K)]
    heapq.heapify(heap)
    while heap and len(paths) + 1 < budget:
        negv, p = heapq.heappop(heap)
        paths.append(p)
        if len(p) < D:
            for r in range(K):
                heapq.heappush(heap, (negv * float(rates[len(p), r]), p + (r,)))
    return static_tree_from_paths(paths, budget)


def default_static_tree(depth: int, topk: int, budget: int) -> StaticTree:
    """An uncalibrated static tree: rank r accepted with probability 0.8 * 0.4**r at every depth."""
    rates = [[0.8 * 0.4 ** r for r in range(topk)] for _ in range(depth)]
    return calibrate_static_tree(rates, budget)
