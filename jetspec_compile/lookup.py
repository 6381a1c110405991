"""Prompt-lookup (n-gram) drafting: a host-side n-gram index and a lookup chain inside the draft tree.

Two independent building blocks (issue 13):

**NgramIndex** (host, pure Python ints, batch 1). The committed token list s[0:T] (prompt + output)
grows by ``extend``. ``propose(L)`` finds the *most recent earlier* occurrence of the last n tokens,
n = n_max down to n_min (longest match first), and returns up to L tokens that followed it. An
occurrence is "earlier" when it ends before the last position, i.e. it is s[e-n:e] with e <= T-1
(the suffix s[T-n:T] itself never matches itself); the proposal is s[e:e+L], cut at T.

Design: one dict maps every n-gram tuple (all n in n_min..n_max; tuples of different lengths are
distinct keys) to the exclusive end e of its most recent occurrence. The dict always holds exactly
the n-grams ending at e <= T-1: ``extend`` inserts the n-grams ending at the old T .. new T-1, so
the suffix's own n-gram (ending at T) is inserted only when the next token arrives. A lookup is then
one dict probe per n. Cost: O(n_max) dict writes per appended token (each builds an n-tuple, n <= 4
in practice), O(n_max + L) per propose; measured 4.2 us median, 5.5 us p90 per decode round
(extend 1-4 tokens + propose(10), n = 4..1, 2,000 tokens of Python source; scripts/bench_lookup.py).

**attach_chain** (device, traceable). Appends a lookup chain of static length L to a draft tree of
B nodes, giving a tree of B + L nodes under the :class:`jetspec_compile.tree.Tree` contract, with
fixed shapes, no host synchronisation and no data-dependent Python control flow (masks and
``torch.where`` only: export cannot capture a Python branch on a tensor value), so it can live inside an
exported ``draft`` or ``verify`` graph.

  * Chain node i (node B+i) is real when it is used: i < chain_len (and, when merging, i >= d, see
    below). It carries token chain[i], depth i+1, parent the root (i == 0) or node B+i-1, and its
    mask row is its parent's row plus itself.
  * Unused chain nodes are padding exactly as :func:`jetspec_compile.tree.build_tree` writes it:
    token 0, parent -1, depth 0, score -inf, all-False mask row AND column. ``Tree.valid`` (the mask
    diagonal) is False for them and :func:`jetspec_compile.accept.accept` never accepts them.
  * Scores: a lookup token has no draft log-prob; it is scored as a certain continuation (log-prob
    0), so a chain node's score is the score of the node it hangs from (0 under the root). Nothing
    in acceptance reads scores.
  * Merge (``merge=True``, the default): let m be the deepest real tree node whose root path spells
    chain[0:d] (d = depth(m) <= chain_len; m = root, d = 0 when chain[0] is not a child of the
    root). Chain nodes 0..d-1 duplicate that path and become padding; chain node d hangs from m, and
    chain nodes d+1.. follow it. Depths are unchanged (chain node i still has depth i+1). Nothing is
    verified twice, and since m is the deepest match, chain node d's token differs from every child
    of m: **siblings keep distinct tokens**, which sample-and-match acceptance needs to stay an exact
    sample of the target (accept.py). With ``merge=False`` a chain that starts with a token of a
    root child duplicates it as a sibling: harmless for greedy decoding (ties go to the lowest index,
    the head's tree), but it biases sampling at T > 0 (two independent samples would race for the
    deepest path). Use merge=False only for greedy graphs or for measurements.
  * Acceptance of the combined tree: call ``accept(..., max_depth=max(D, L))`` (D: the head's tree
    depth), because a chain can be deeper than the head's tree; ``accept`` returns D+1 path slots.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .tree import Tree

__all__ = ["NgramIndex", "attach_chain", "chain_tensors"]


class NgramIndex:
    """Incremental n-gram index over the committed tokens of one sequence (batch 1, host ints).

    >>> idx = NgramIndex(n_max=2)
    >>> idx.extend([5, 6, 7, 8, 5, 6])
    >>> idx.propose(3)     # last 2-gram (5, 6) occurred ending at 2 -> tokens 2..4
    [7, 8, 5]
    """

    __slots__ = ("n_max", "n_min", "_tokens", "_last")

    def __init__(self, n_max: int = 4, n_min: int = 1) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"NgramIndex needs 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        self.n_max = int(n_max)
        self.n_min = int(n_min)
        self._tokens: list[int] = []
        self._last: dict[tuple[int, ...], int] = {}  # n-gram -> exclusive end e <= T-1 of its latest occurrence

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        """The committed tokens so far (do not modify)."""
        return self._tokens

    def extend(self, tokens: Sequence[int]) -> None:
        """Append committed tokens (the prompt once, then each round's 1..D+1 committed tokens)."""
        if not tokens:
            return
        s = self._tokens
        old = len(s)
        s.extend(int(t) for t in tokens)
        last = self._last
        lo, hi = self.n_min, self.n_max
        # index the n-grams ending at e = old .. new_T - 1 (the one ending at new_T is the suffix)
        for e in range(max(old, lo), len(s)):
            for n in range(lo, min(hi, e) + 1):
                last[tuple(s[e - n:e])] = e

    def match(self) -> tuple[int, int]:
        """(n, e): the longest n in n_max..n_min whose suffix has an earlier occurrence ending at e
        (e is exclusive, e <= T-1), the most recent one; (0, -1) when nothing matches."""
        s = self._tokens
        T = len(s)
        get = self._last.get
        for n in range(min(self.n_max, T - 1), self.n_min - 1, -1):
            e = get(tuple(s[T - n:]))
            if e is not None:
                return n, e
        return 0, -1

    def propose(self, length: int, *, periodic: bool = False) -> list[int]:
        """Up to ``length`` tokens that followed the most recent earlier occurrence of the longest
        matching suffix (n = n_max..n_min); [] when nothing matches or length <= 0.

        The continuation s[e:e+length] is cut at the end of the sequence (it may run into the suffix
        itself). With ``periodic=True`` it is instead continued as an overlapping copy (LZ77-style:
        token k is s[e+k] for e+k < T, else proposal[k-(T-e)]), i.e. the repeating pattern of period
        T-e is extrapolated, so a run like "....." proposes ``length`` tokens rather than one.
        """
        return self.continuation(length, periodic=periodic)[1]

    def continuation(self, length: int, *, periodic: bool = False) -> tuple[int, list[int]]:
        """(n, proposal): `propose`'s tokens with the length n of the suffix that matched (0: none)."""
        if length <= 0:
            return 0, []
        n, e = self.match()
        if e < 0:
            return 0, []
        s = self._tokens
        out = s[e:e + length]
        if periodic and len(out) < length:
            period = len(s) - e
            for k in range(len(out), length):
                out.append(out[k - period])
        return n, out


# ---- the lookup chain in the draft tree (traceable) -------------------------------------------------------


def chain_tensors(chain: Sequence[int], length: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Host helper: a proposal (at most ``length`` tokens) as the graph inputs (chain int64 [length]
    zero-padded, chain_len int64 [1])."""
    n = min(len(chain), length)
    buf = list(chain[:n]) + [0] * (length - n)
    return (torch.tensor(buf, dtype=torch.int64, device=device),
            torch.tensor([n], dtype=torch.int64, device=device))


def _attach_point(tree: Tree, chain: Tensor, chain_len: Tensor) -> tuple[Tensor, Tensor]:
    """(m [1], d [1]): the deepest real tree node whose root path spells chain[0:d], d <= chain_len."""
    L = chain.shape[0]
    depth = tree.depth
    valid = tree.valid
    chain_at = chain.index_select(0, (depth - 1).clamp(0, L - 1))  # the chain token at each node's depth
    node_ok = (depth == 0) | ((depth <= chain_len) & (tree.tokens == chain_at))
    path_ok = valid & ~(tree.mask & ~node_ok.unsqueeze(0)).any(dim=-1)
    key = torch.where(path_ok, depth, torch.full_like(depth, -1))
    m = torch.argmax(key).reshape(1)  # deepest; ties (only with duplicate siblings) -> lowest index
    return m, depth.index_select(0, m)


def attach_chain(tree: Tree, chain: Tensor, chain_len: Tensor, *, merge: bool = True) -> Tree:
    """Append a lookup chain to ``tree`` (B nodes): a Tree of B + L nodes, fixed shapes, traceable.

    chain: int64 [L] (entries at i >= chain_len are ignored); chain_len: int64 [1] (clamped to 0..L).
    The first B nodes are ``tree`` unchanged. Chain node i is node B+i: token chain[i], depth i+1,
    parent the root (i == 0) or B+i-1, mask row = root..itself along the chain; unused chain nodes
    (i >= chain_len, and with ``merge`` the d nodes already present in the tree) are padding (token 0,
    parent -1, depth 0, score -inf, all-False mask row and column). With ``merge`` chain node d hangs
    from the tree node m that already spells chain[0:d] (see the module docstring). Accept the result
    with ``max_depth=max(D, L)`` (the chain can reach deeper than the head's tree).
    """
    L = int(chain.shape[0])
    if L == 0:
        return tree
    B = tree.tokens.shape[0]
    dev = tree.tokens.device
    chain = chain.to(torch.int64)
    n = chain_len.reshape(1).to(torch.int64).clamp(0, L)
    if merge:
        m, d = _attach_point(tree, chain, n)
    else:
        m = torch.zeros(1, dtype=torch.int64, device=dev)
        d = torch.zeros(1, dtype=torch.int64, device=dev)
    i = torch.arange(L, device=dev)
    real = (i >= d) & (i < n)  # [L]
    tokens = torch.where(real, chain, torch.zeros_like(chain))
    parents = torch.where(real, torch.where(i == d, m.expand(L), B + i - 1), torch.full_like(i, -1))
    depth = torch.where(real, i + 1, torch.zeros_like(i))
    base = tree.score.index_select(0, m)  # lookup tokens add log-prob 0
    score = torch.where(real, base.expand(L), torch.full((L,), float("-inf"), dtype=tree.score.dtype, device=dev))
    top = torch.cat([tree.mask, torch.zeros(B, L, dtype=torch.bool, device=dev)], dim=1)  # [B, B+L]
    attach_rows = tree.mask.index_select(0, m).expand(L, B) & real.unsqueeze(1)  # [L, B]
    j = i.unsqueeze(0)
    chain_block = (j <= i.unsqueeze(1)) & (j >= d) & real.unsqueeze(1)  # [L, L]: columns d..i of row i
    mask = torch.cat([top, torch.cat([attach_rows, chain_block], dim=1)], dim=0)
    return Tree(torch.cat([tree.tokens, tokens]), torch.cat([tree.parents, parents]),
                torch.cat([tree.depth, depth]), torch.cat([tree.score, score]), mask)
