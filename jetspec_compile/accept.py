"""Acceptance of a verified tree, fixed-shape and exportable, and the target's per-node token choice.

Every node i of the tree gets a *target token* t[i]: the target's argmax at i (greedy) or an exact
sample of the target's distribution at i (temperature > 0). Node i matches when its token equals
t[parent(i)]; the accepted node is the deepest node whose whole root path matches (ties: lowest
index); the bonus token is t[accepted]. Siblings carry distinct tokens, so with samples this is the
walk "follow the child whose token equals the sample": every committed token is an exact target
sample and the output distribution is the target's (lossless).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Acceptance:
    path: Tensor  # int64 [D+1]: node indices root..accepted, padded with 0 (the root)
    length: Tensor  # int64 [1]: a = number of accepted non-root nodes (0..D)
    bonus: Tensor  # int64 [1]: target token at the accepted node
    out_tokens: Tensor  # int64 [D+1]: the a+1 tokens committed this round (accepted path + bonus), padded with bonus


def accept(tokens: Tensor, parents: Tensor, depth: Tensor, mask: Tensor, target_tokens: Tensor, max_depth: int) -> Acceptance:
    """Fixed-shape acceptance. tokens/parents/depth/target_tokens: [B]; mask: [B, B] ancestor-or-self."""
    B = tokens.shape[0]
    D = int(max_depth)
    valid = mask.diagonal()
    parent_tok = target_tokens.index_select(0, parents.clamp(min=0))
    match = valid & ((tokens == parent_tok) | (parents < 0))
    # a node's path matches when no ancestor-or-self fails to match
    path_ok = valid & ~(mask & ~match.unsqueeze(0)).any(dim=-1)
    idx = torch.arange(B, device=tokens.device)
    key = torch.where(path_ok, depth * B + (B - 1 - idx), torch.full_like(depth, -1))  # deepest, then lowest index
    best = torch.argmax(key).reshape(1)
    length = depth.index_select(0, best)
    anc = mask.index_select(0, best)[0]  # [B] ancestors-or-self of the accepted node
    levels = torch.arange(D + 1, device=tokens.device)
    onehot = anc.unsqueeze(0) & (depth.unsqueeze(0) == levels.unsqueeze(1))  # [D+1, B]
    path = torch.argmax(onehot.to(torch.int32), dim=1)  # node at each level; 0 (root) past the end
    bonus = target_tokens.index_select(0, best)
    path_tokens = torch.cat([tokens.index_select(0, path[1:]), bonus])
    out_tokens = torch.where(levels < length, path_tokens, bonus.expand(D + 1))
    return Acceptance(path, length, bonus, out_tokens)


def greedy_tokens(logits: Tensor) -> Tensor:
    return torch.argmax(logits, dim=-1)


def filter_logits(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted, temperature-scaled, top-k/top-p filtered probabilities: (probs [N, V] descending, order [N, V]).

    top_k <= 0 or >= V disables top-k; top_p >= 1 disables top-p. top-p keeps the smallest prefix of the
    sorted distribution whose mass reaches top_p (always at least one token), applied after top-k.
    """
    V = logits.shape[-1]
    scaled = logits.float() / temperature.float().clamp(min=1e-6)
    sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
    ranks = torch.arange(V, device=logits.device)
    k = torch.where((top_k > 0) & (top_k < V), top_k, torch.full_like(top_k, V))
    keep = ranks.unsqueeze(0) < k.reshape(-1, 1)
    sorted_logits = sorted_logits.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass strictly before each rank
    keep = keep & ((before < top_p.float().reshape(-1, 1)) | (ranks.unsqueeze(0) == 0))
    probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs / probs.sum(dim=-1, keepdim=True), order


def sample_tokens(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, uniform: Tensor) -> Tensor:
    """Exact samples [N] from the filtered distributions of logits [N, V], by inverse CDF on uniform [N] in [0, 1)."""
    probs, order = filter_logits(logits, temperature, top_k, top_p)
    cdf = torch.cumsum(probs, dim=-1)
    u = uniform.float().reshape(-1, 1) * cdf[:, -1:]
    pick = (cdf <= u).sum(dim=-1).clamp(max=logits.shape[-1] - 1)
    # never land on a zero-probability rank (rounding at the top of the cdf)
    last_kept = (probs > 0).sum(dim=-1) - 1
    pick = torch.minimum(pick, last_kept)
    return order.gather(1, pick.unsqueeze(1)).squeeze(1)
