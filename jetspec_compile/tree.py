"""Speculation trees as fixed-shape tensors, built inside the draft graph.

A tree of budget B is five tensors (node 0 is the root, nodes are numbered parent-before-child):
  tokens  int64 [B]    parents int64 [B] (root -1)    depth int64 [B] (root 0; position = L + depth)
  score   float [B]    cumulative draft log-prob along the root path (root 0)
  mask    bool  [B, B] ancestor-or-self; padding nodes have an all-False row and column
The tree's topology may change every round; its shapes never do, so one engine serves every round.
``valid`` (= the mask's diagonal) tells real nodes from padding.

Two policies share that contract:
  * dynamic — :func:`build_tree`: the B most probable nodes by cumulative draft log-prob, found level by
    level with picks of fixed size (no host sync, no data-dependent Python control flow: torch.export
    captures it);
  * static  — :class:`StaticTree`: a topology of (depth, rank) paths frozen at export time (e.g. from
    :func:`calibrate_static_tree`); drafting is then a gather of the per-depth top-K.
"""

from __future__ import annotations

import heapq
import json
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
    """The ``budget`` most probable nodes of the draft's candidate tree, as fixed-shape tensors.

    root_token: int64 [1] (or scalar); topk_tokens: int64 [D, K]; topk_logprobs: float [D, K], each row in
    rank order. The candidate tree hangs the K candidates of depth d+1 under every node of depth d; a node's
    score is its path's cumulative draft log-prob. Every node scores at most its parent, so the B best
    nodes form a tree, and it is the tree of B nodes with the most expected accepted tokens under the
    draft's own probabilities (one node at a time, EAGLE-2 / Sequoia style, rather than K children at a
    time). Order: score descending, ties to the shallower node, then to the earlier one in its level.

    Level by level: the B best nodes of depth d are among the children of the B best of depth d-1, so each
    level picks from at most B*K candidates, and one more pick over the levels finds the B best overall
    (``topk`` values for the threshold, a running count for ties: no sort, exact, every exporter captures it).
    Nodes come out depth by depth (parents before children); a tree with fewer than B nodes in all is
    padded (token 0, parent -1, depth 0, score -inf, all-False mask row and column).
    """
    D, K = topk_tokens.shape
    B = int(budget)
    if B < 1:
        raise JetSpecError(f"budget must be >= 1, got {B}")
    dev = topk_tokens.device
    lp = topk_logprobs.float().clamp(min=-1e30)  # a -inf log-prob still ranks a real node above padding
    score = torch.zeros(1, device=dev)  # the current level's nodes, best first (level 0: the root)
    scores, toks, parents, depths = [score], [root_token.reshape(1).to(torch.int64)], [
        torch.full((1,), -1, dtype=torch.int64, device=dev)], [torch.zeros(1, dtype=torch.int64, device=dev)]
    first = 0  # candidate index of the current level's first node
    for d in range(min(D, B - 1)):
        cand = (score.unsqueeze(1) + lp[d].unsqueeze(0)).reshape(-1)  # child r of node j at j*K + r
        keep = _best_first(cand, min(B - 1 - d, cand.shape[0]))  # <= B-1-d nodes of depth d+1 fit in B
        scores.append(score := cand.index_select(0, keep))
        toks.append(topk_tokens[d].index_select(0, keep % K))
        parents.append(first + keep // K)
        depths.append(torch.full_like(keep, d + 1))
        first += scores[-2].shape[0]
    return _best(torch.cat(scores), torch.cat(toks), torch.cat(parents), torch.cat(depths), B, len(scores) - 1)


_PAIRWISE_MAX = 160  # up to this many candidates, ranking every pair is cheaper than topk + compaction


def _rank(key: Tensor) -> Tensor:
    """Each element's place in ``key`` [N] sorted descending, ties to the lower index (a permutation)."""
    i = torch.arange(key.shape[0], device=key.device)
    return ((key.unsqueeze(0) > key.unsqueeze(1))
            | ((key.unsqueeze(0) == key.unsqueeze(1)) & (i.unsqueeze(0) < i.unsqueeze(1)))).sum(1)


def _top(key: Tensor, m: int) -> Tensor:
    """Mask of the ``m`` (<= N) largest of ``key`` [N], ties to the lower index: a threshold from ``topk``'s
    values (which any tie order gives alike) and a running count of the ties at it, so the choice is exact."""
    if key.shape[0] <= _PAIRWISE_MAX:
        return _rank(key) < m
    t = torch.topk(key, m).values[m - 1]
    above, tie = key > t, key == t
    return above | (tie & (torch.cumsum(tie.to(torch.int64), 0) <= m - above.sum()))


def _compact(mask: Tensor, m: int) -> Tensor:
    """Indices of the ``m`` True entries of ``mask`` [N], in order (a one-hot sum: no data-dependent shape)."""
    slot = torch.cumsum(mask.to(torch.int64), 0) - 1
    hit = mask & (slot.unsqueeze(0) == torch.arange(m, device=mask.device).unsqueeze(1))  # [m, N]
    return (hit * torch.arange(mask.shape[0], device=mask.device)).sum(1)


def _best_first(key: Tensor, m: int) -> Tensor:
    """Indices of the ``m`` (<= N) largest of ``key`` [N], largest first, ties to the lower index."""
    N = key.shape[0]
    pick = torch.arange(N, device=key.device) if N <= _PAIRWISE_MAX else _compact(_top(key, m), m)  # index order
    place = _rank(key.index_select(0, pick))  # each pick's place, largest first
    return ((place.unsqueeze(0) == torch.arange(m, device=key.device).unsqueeze(1)) * pick).sum(1)


def _best(score: Tensor, tok: Tensor, parent: Tensor, depth: Tensor, B: int, levels: int) -> Tree:
    """The B best of N level-ordered candidates (ties: the earlier one), kept in candidate order, as a Tree
    padded to B nodes."""
    dev = score.device
    N = score.shape[0]
    n = min(B, N)
    chosen = _top(score, n)
    slot = torch.cumsum(chosen.to(torch.int64), 0) - 1  # each chosen candidate's node index
    src = _compact(chosen, B)  # node -> candidate (0 for padding)
    valid = torch.arange(B, device=dev) < n
    up = parent.index_select(0, src)  # each node's parent, as a candidate index
    parents = torch.where(valid & (up >= 0), slot.index_select(0, up.clamp(min=0)), -1)
    anc = torch.eye(B, dtype=torch.bool, device=dev)
    up = parents
    for _ in range(levels):  # add each node's ancestors, one level up per step
        anc = anc | (torch.nn.functional.one_hot(up.clamp(min=0), B).bool() & (up >= 0).unsqueeze(1))
        up = torch.where(up >= 0, parents.index_select(0, up.clamp(min=0)), -1)
    return Tree(torch.where(valid, tok.index_select(0, src), 0), parents,
                torch.where(valid, depth.index_select(0, src), 0),
                torch.where(valid, score.index_select(0, src), float("-inf")),
                anc & valid.unsqueeze(0) & valid.unsqueeze(1))


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
    return static_tree_from_paths(most_probable_paths(rates.clamp(0.0, 1.0).tolist(), budget), budget)


def most_probable_paths(rates: Sequence[Sequence[float]], budget: int) -> list[tuple[int, ...]]:
    """Rank paths of the ``budget - 1`` most probable non-root nodes, most probable first, where a node's
    probability is the product of ``rates[d][r]`` (each in [0, 1]) along its path: since no child beats
    its parent, greedy growth from the root picks them, parents first."""
    paths: list[tuple[int, ...]] = []
    heap: list[tuple[float, tuple[int, ...]]] = [(-rates[0][r], (r,)) for r in range(len(rates[0]))] if rates else []
    heapq.heapify(heap)
    while heap and len(paths) + 1 < budget:
        negv, p = heapq.heappop(heap)
        paths.append(p)
        if len(p) < len(rates):
            for r, rate in enumerate(rates[len(p)]):
                heapq.heappush(heap, (negv * rate, p + (r,)))
    return paths


def default_static_tree(depth: int, topk: int, budget: int) -> StaticTree:
    """An uncalibrated static tree: rank r accepted with probability 0.8 * 0.4**r at every depth."""
    rates = [[0.8 * 0.4 ** r for r in range(topk)] for _ in range(depth)]
    return calibrate_static_tree(rates, budget)
