"""Adaptive speculation: each round, pick what promises the most tokens per second: a compiled tree budget,
the prompt-lookup chain alone (no draft), or a plain step.

The model. After every speculative round the committed tokens are the target's own tokens at depths
1..a+1, so the rank of each among the head's candidates at that depth is known (K when absent). Decayed
counts of these ranks give p(d, r), the chance that the target's token at depth d is the head's rank-r
candidate. For every compiled budget the policy keeps the shape its trees take under that model (the most
probable nodes, as the dynamic tree builder picks them) and scores each round counterfactually:
how many tokens that tree (or the prompt-lookup chain, whichever matched longer) would have committed.
Where the executed round was too shallow to show how far a deeper tree would have gone (every known rank on
that tree's path), the model adds that node's expected further depth, so small budgets do not look better
than they are merely because they were the ones run. The chain arm (the lookup chain verified alone, no
draft) scores 1 + the chain's matched length, known in every round that verified the chain.

Running means of these, per lookup context (no n-gram match, a 1-2 token match, a longer one; known before
the round is chosen), divided by each arm's measured round cost, are compared with one plain step per
plain-step cost, in the round's context: text the lookup chain carries runs the chain alone, new text the
head cannot predict runs plain steps. An arm not run in a context for a while is run once (explore), so its
means stay current. The choice depends only on tokens and the calibrated costs, so it is deterministic; it
only chooses which exact graphs run, so decoding stays lossless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .tree import most_probable_paths

PLAIN = 1  # the plain arm: a root-only "tree" verified alone
CHAIN = 0  # the chain arm: the prompt-lookup chain alone under the root, verified without drafting
CONTEXTS = 3  # lookup contexts: 0 no n-gram match (or no lookup), 1 a 1-2 token match, 2 a longer one


def lookup_context(n: int) -> int:
    """The policy's context of a round whose lookup matched an ``n``-token suffix (0: no match)."""
    return 0 if n <= 0 else 1 if n <= 2 else 2


@dataclass(frozen=True)
class Arm:
    """One compiled budget: nodes per round (root included), drafted depths, seconds per round."""

    budget: int
    depth: int
    cost_s: float


class BudgetPolicy:
    """Per-round choice among ``arms`` (speculative budgets), the chain alone (``chain_cost_s``; None: no chain
    arm) and plain steps costing ``plain_cost_s``. ``chain_len``: the lookup chain's nodes (L), which set the
    chain's optimistic start where an n-gram matched."""

    def __init__(self, arms: Sequence[Arm], plain_cost_s: float, topk: int, *, chain_cost_s: float | None = None,
                 alpha: float = 0.125, decay: float = 0.97, refresh: int = 8, explore: int = 16,
                 margin: float = 0.1, min_context: int = 4, chain_len: int = 0):
        if not arms:
            raise ValueError("BudgetPolicy needs at least one speculative budget")
        self.arms = smooth_costs(arms)
        self.cost = {a.budget: a.cost_s for a in self.arms}
        if chain_cost_s is not None:
            self.cost[CHAIN] = chain_cost_s
        self.plain_cost = plain_cost_s
        self.K = topk
        self.D = max(a.depth for a in self.arms)
        self.alpha, self.decay, self.refresh = alpha, decay, refresh
        self.explore, self.margin, self.min_context = explore, margin, min_context
        # decayed rank counts with a weak prior: rank 0 hits 40 %, the others 5 % each
        self.seen = [4.0] * self.D
        self.hits = [[1.6] + [0.2] * (topk - 1) for _ in range(self.D)]
        self.paths: dict[int, set[tuple[int, ...]]] = {}
        self.ext: dict[int, dict[tuple[int, ...], float]] = {}  # per budget: expected depth beyond each node
        # running means of counterfactual tokens per round, per lookup context and arm (CHAIN: the chain alone,
        # kept even where it is no arm, since every tree carries the chain), with the rounds each was observed in
        self.expect_ctx = [{b: 1.0 for b in [*self.cost, CHAIN]} for _ in range(CONTEXTS)]
        self.n_ctx = [dict.fromkeys(self.expect_ctx[0], 0) for _ in range(CONTEXTS)]
        # Where an n-gram matched, the chain starts neutral: as if seen twice committing 2. After a longer match
        # (the last context) and with L given, it starts optimistic instead: as if seen once committing all L
        # nodes + 1, so it runs there until its own rounds show what it commits (a start below a plain step's
        # rate would never be tested: a chain round costs 2-2.7 plain steps on the demo). A 1-2 token match is
        # weak evidence: there the chain runs once the tree rounds, which carry it, show it pays.
        for c in range(1, CONTEXTS):
            self.expect_ctx[c][CHAIN], self.n_ctx[c][CHAIN] = 2.0, 2
        if chain_len:
            self.expect_ctx[-1][CHAIN], self.n_ctx[-1][CHAIN] = 1.0 + chain_len, 1
        self.observed = 0  # speculative (head) rounds observed
        self.actual = self.modelled = 1.0  # running means of committed vs modelled tokens of the executed arm
        self.since_head = explore  # rounds since one ran the head's tree (the first round runs it)
        self.model: dict[int, float] = {}  # per budget: the tree model's expected tokens of the head's tree alone
        self._stale = 0  # head rounds since the tree shapes were computed
        self._reshape()

    # ---- choosing -------------------------------------------------------------------------------------
    def _rates(self, context: int) -> dict[int, float]:
        """Predicted tokens per second of every arm in lookup ``context``. A tree's estimate is its own mean
        once it has run there ``min_context`` times, else the tree model's (the head's tree alone, or the
        chain's mean there if higher: the tree carries the chain too). The chain's mean is known from every
        round that verified it. Without an n-gram match (context 0) the chain alone proposes nothing: it is
        no choice."""
        scale = self.actual / self.modelled if self.modelled > 0 else 1.0
        ctx, n = self.expect_ctx[context], self.n_ctx[context]
        chain = self._chain_mean(context)
        out = {}
        for b, cost in self.cost.items():
            if b == CHAIN:
                if context > 0:
                    out[b] = max(1.0, chain) / cost
                continue
            e = ctx[b] if n[b] >= self.min_context else max(self.model[b], chain)
            out[b] = max(1.0, e * scale) / cost
        return out

    def _chain_mean(self, context: int) -> float:
        """Tokens the chain alone commits per round in ``context`` (known from every round that verified the
        chain; 1 without an n-gram match, where it proposes nothing)."""
        return self.expect_ctx[context][CHAIN] if context > 0 else 1.0

    def choose(self, context: int = 0) -> int:
        """The arm of the next round in lookup ``context``: a budget, CHAIN or PLAIN.

        The fastest arm by predicted rate, where a plain step needs a clear margin (10 %: calibrated costs are
        noisy). The head's best tree runs in the first round, and again (explores) once ``explore`` rounds
        have run without it, if it could pay here: if the chain's mean plus the tree's own expected drafted
        tokens (a bound on what the two commit together), at the tree's cost, beats the chosen arm."""
        rates = self._rates(context)
        best = max(rates, key=rates.__getitem__)
        if 1.0 / self.plain_cost > rates[best] * (1.0 + self.margin):
            best = PLAIN
        if self.since_head >= self.explore and best in (PLAIN, CHAIN):
            b = max((x for x in rates if x != CHAIN), key=rates.__getitem__)  # the best tree
            rate = 1.0 / self.plain_cost if best == PLAIN else rates[best]
            if self.observed == 0 or (self._chain_mean(context) + self.model[b] - 1.0) / self.cost[b] > rate:
                best = b
        self.since_head = 0 if best not in (PLAIN, CHAIN) else self.since_head + 1
        return best

    # ---- learning -------------------------------------------------------------------------------------
    def observe(self, budget: int, committed: Sequence[int], cand: Sequence[Sequence[int]] | None,
                chain: Sequence[int] = (), context: int = 0) -> None:
        """A round of ``budget`` (CHAIN: the chain alone, ``cand`` None) committed ``committed``; ``cand`` is
        the head's [D, K] candidates of that round, ``chain`` the prompt-lookup proposal, ``context`` its
        lookup context."""
        m = _match(chain, committed)
        self._update(CHAIN, context, 1 + m)
        if budget == CHAIN:
            return
        self.since_head = 0
        ranks = self._ranks(committed, cand)
        w = max(self.alpha, 1.0 / (self.observed + 1))  # a plain mean until 1/alpha rounds, then decayed
        for arm in self.arms:
            b = arm.budget
            d = _walk(ranks, self.paths[b])
            depth = d + (self.ext[b].get(tuple(ranks[:d]), 0.0) if d == len(ranks) else 0.0)
            cf = 1 + max(depth, m)
            self._update(b, context, cf)
            if b == budget:
                self.modelled += w * (cf - self.modelled)
        self.actual += w * (len(committed) - self.actual)
        self.observed += 1
        self._stale += 1
        if self.observed <= self.refresh or self._stale >= self.refresh:  # (off the prior quickly at first)
            self._reshape()

    def _update(self, b: int, context: int, cf: float) -> None:
        """Fold one counterfactual round of arm ``b`` into its means (a plain mean until 1/alpha rounds)."""
        ctx, n_ctx = self.expect_ctx[context], self.n_ctx[context]
        ctx[b] += max(self.alpha, 1.0 / (n_ctx[b] + 1)) * (cf - ctx[b])
        n_ctx[b] += 1

    def _ranks(self, committed: Sequence[int], cand: Sequence[Sequence[int]]) -> list[int]:
        """The rank of each committed token among the head's candidates at its depth (K: absent), counted."""
        ranks = []
        for d, tok in enumerate(committed[: len(cand)]):
            row = cand[d]
            r = row.index(tok) if tok in row else self.K
            ranks.append(r)
            if d < self.D:
                self.seen[d] += 1.0
                if r < self.K:
                    self.hits[d][r] += 1.0
        return ranks

    def _reshape(self) -> None:
        """Decay the counts and recompute every budget's tree shape under the current p(d, r)."""
        f = self.decay ** self._stale
        self._stale = 0
        self.seen = [s * f for s in self.seen]
        self.hits = [[h * f for h in row] for row in self.hits]
        p = [[h / s for h in row] for row, s in zip(self.hits, self.seen)]
        for arm in self.arms:
            self.paths[arm.budget] = _tree_paths(p, arm.budget, arm.depth, self.K)
            self.ext[arm.budget] = _extensions(self.paths[arm.budget], p, self.K)
            self.model[arm.budget] = 1.0 + self.ext[arm.budget][()]


def smooth_costs(arms: Sequence[Arm]) -> list[Arm]:
    """The arms by budget, their costs replaced by a least-squares line over the budget (a round's cost grows
    with its verify rows and drafted depths; calibration noise of +-10 % must not make a larger budget look
    cheaper than a smaller one). A line that would fall is flat, at the mean."""
    arms = sorted(arms, key=lambda a: a.budget)
    if len(arms) < 2:
        return arms
    xs, ys = [a.budget for a in arms], [a.cost_s for a in arms]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs))
    return [Arm(a.budget, a.depth, my + slope * (a.budget - mx)) for a in arms]


def _match(chain: Sequence[int], committed: Sequence[int]) -> int:
    n = 0
    for a, b in zip(chain, committed):
        if a != b:
            break
        n += 1
    return n


def _walk(ranks: Sequence[int], paths: set[tuple[int, ...]]) -> int:
    """Accepted depth of a tree (a set of rank paths) given the target's ranks at each depth."""
    d = 0
    while d < len(ranks) and tuple(ranks[: d + 1]) in paths:
        d += 1
    return d


def _extensions(paths: set[tuple[int, ...]], p: list[list[float]], topk: int) -> dict[tuple[int, ...], float]:
    """Per node of a tree (a set of rank paths, root ``()``): the expected number of further depths
    accepted below it under p(d, r), given that the node was reached."""
    ext: dict[tuple[int, ...], float] = {}
    for path in sorted(paths | {()}, key=len, reverse=True):
        d = len(path)
        ext[path] = sum(p[d][r] * (1.0 + ext[path + (r,)]) for r in range(topk) if path + (r,) in paths)
    return ext


def _tree_paths(p: list[list[float]], budget: int, depth: int, topk: int) -> set[tuple[int, ...]]:
    """Rank paths of a ``budget``-node tree grown like the dynamic builder (the most probable nodes), to at
    most ``depth`` depths."""
    return set(most_probable_paths([row[:topk] for row in p[:depth]], budget))
