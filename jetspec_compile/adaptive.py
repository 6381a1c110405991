"""Adaptive speculation: each round, pick the compiled tree budget that promises the most tokens per second,
or plain steps while speculation does not pay.

The model. After every speculative round the committed tokens are the target's own tokens at depths
1..a+1, so the rank of each among the head's candidates at that depth is known (K when absent). Decayed
counts of these ranks give p(d, r), the chance that the target's token at depth d is the head's rank-r
candidate. For every compiled budget the policy keeps the shape its trees take under that model (best-first
expansions of K children, as the dynamic tree builder makes them) and scores each round counterfactually:
how many tokens that tree (or the prompt-lookup chain, whichever matched longer) would have committed.
Where the executed round was too shallow to show how far a deeper tree would have gone (every known rank on
that tree's path), the model adds that node's expected further depth, so small budgets do not look better
than they are merely because they were the ones run. A running mean of these per budget, divided by the
budget's measured round cost, is compared with one plain step per plain-step cost. The means are also kept
per lookup context (no n-gram match, a 1-2 token match, a longer one; known before the round is chosen), so
a round whose lookup chain will likely carry it runs a small tree, and one without a match a larger tree. The choice depends only on tokens and the calibrated costs, so it is
deterministic; it only chooses which exact graphs run, so decoding stays lossless.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Sequence

PLAIN = 1  # the plain arm: a root-only "tree" verified alone
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
    """Per-round choice among ``arms`` (speculative budgets) and plain steps costing ``plain_cost_s``."""

    def __init__(self, arms: Sequence[Arm], plain_cost_s: float, topk: int, *, alpha: float = 0.125,
                 decay: float = 0.97, refresh: int = 8, first_plain: int = 4, max_plain: int = 64,
                 evidence: int = 8, probe: int = 4, margin: float = 0.1, min_context: int = 4,
                 plain_alpha: float = 1 / 32):
        if not arms:
            raise ValueError("BudgetPolicy needs at least one speculative budget")
        self.arms = smooth_costs(arms)
        self.cost = {a.budget: a.cost_s for a in self.arms}
        self.plain_cost = plain_cost_s
        self.K = topk
        self.D = max(a.depth for a in self.arms)
        self.alpha, self.decay, self.refresh = alpha, decay, refresh
        self.first_plain, self.max_plain = first_plain, max_plain
        self.probe_rounds, self.margin = probe, margin
        # decayed rank counts with a weak prior: rank 0 hits 40 %, the others 5 % each
        self.seen = [4.0] * self.D
        self.hits = [[1.6] + [0.2] * (topk - 1) for _ in range(self.D)]
        self.paths: dict[int, set[tuple[int, ...]]] = {}
        self.ext: dict[int, dict[tuple[int, ...], float]] = {}  # per budget: expected depth beyond each node
        self.expect = {a.budget: 1.0 for a in self.arms}  # running mean of counterfactual tokens per round
        self.expect_ctx = [dict(self.expect) for _ in range(CONTEXTS)]  # the same, per lookup context
        self.expect_slow = dict(self.expect)  # the same over a longer horizon: what plain steps are judged by
        self.plain_alpha = plain_alpha
        self.observed = 0
        self.observed_ctx = [0] * CONTEXTS
        self.min_context = min_context  # rounds seen in a context before its own means are used
        self.actual = self.modelled = 1.0  # running means of committed vs modelled tokens of the executed arm
        self.plain_left = 0
        self.backoff = first_plain
        self.probe_left = evidence  # speculative rounds before judging: the first ones, then after each plain run
        self._reshape()

    # ---- choosing -------------------------------------------------------------------------------------
    def rate(self, budget: int, context: int | None = None, slow: bool = False) -> float:
        """Predicted tokens per second of ``budget`` (PLAIN: one token per plain step), in a lookup
        ``context`` once it has been seen often enough (None: over all rounds; ``slow``: over the longer
        horizon)."""
        if budget == PLAIN:
            return 1.0 / self.plain_cost
        return self._rates(self._expect(context, slow))[budget]

    def best_budget(self, context: int | None = None, slow: bool = False) -> int:
        rates = self._rates(self._expect(context, slow))
        return max(rates, key=rates.__getitem__)

    def _expect(self, context: int | None, slow: bool) -> dict[int, float]:
        if slow:
            return self.expect_slow
        use_ctx = context is not None and self.observed_ctx[context] >= self.min_context
        return self.expect_ctx[context] if use_ctx else self.expect

    def _rates(self, expect: dict[int, float]) -> dict[int, float]:
        scale = self.actual / self.modelled if self.modelled > 0 else 1.0
        return {b: max(1.0, e * scale) / self.cost[b] for b, e in expect.items()}

    def choose(self, context: int = 0) -> int:
        """The budget of the next round in lookup ``context``, or PLAIN.

        Plain steps are judged over all rounds and a longer horizon (about 32 rounds, not 8: a few hard
        rounds inside predictable text must not stop speculation), and need a clear margin: 10 % plus
        1/sqrt(rounds observed), since costs are noisy and a plain run sees no acceptance at all. Plain
        runs last 4, 8, ... 64 rounds, each followed by a probe of a few speculative rounds; a long lookup
        match (the text repeats) ends a plain run at once."""
        if self.plain_left > 0 and context == CONTEXTS - 1:  # a long n-gram match: the text repeats
            self.plain_left = 0
            self.probe_left = self.probe_rounds
        if self.plain_left > 0:
            self.plain_left -= 1
            if self.plain_left == 0:
                self.probe_left = self.probe_rounds
            return PLAIN
        best = self.best_budget(context)
        if self.probe_left > 0:
            self.probe_left -= 1
            return best
        margin = self.margin + 1.0 / math.sqrt(max(self.observed, 1))  # less evidence, more margin
        if 1.0 / self.plain_cost <= max(self._rates(self.expect_slow).values()) * (1.0 + margin):
            self.backoff = self.first_plain
            return best
        self.plain_left = self.backoff - 1
        self.backoff = min(2 * self.backoff, self.max_plain)
        if self.plain_left == 0:
            self.probe_left = self.probe_rounds
        return PLAIN

    # ---- learning -------------------------------------------------------------------------------------
    def observe(self, budget: int, committed: Sequence[int], cand: Sequence[Sequence[int]],
                chain: Sequence[int] = (), context: int = 0) -> None:
        """A speculative round of ``budget`` committed ``committed``; ``cand`` is the head's [D, K]
        candidates of that round, ``chain`` the prompt-lookup proposal, ``context`` its lookup context."""
        ranks = []
        for d, tok in enumerate(committed[: len(cand)]):
            row = cand[d]
            r = row.index(tok) if tok in row else self.K
            ranks.append(r)
            if d < self.D:
                self.seen[d] += 1.0
                if r < self.K:
                    self.hits[d][r] += 1.0
        m = _match(chain, committed)
        w = max(self.alpha, 1.0 / (self.observed + 1))  # a plain mean until 1/alpha rounds, then decayed
        wc = max(self.alpha, 1.0 / (self.observed_ctx[context] + 1))
        ws = max(self.plain_alpha, 1.0 / (self.observed + 1))
        ctx = self.expect_ctx[context]
        for arm in self.arms:
            b = arm.budget
            d = _walk(ranks, self.paths[b])
            depth = d + (self.ext[b].get(tuple(ranks[:d]), 0.0) if d == len(ranks) else 0.0)
            cf = 1 + max(depth, m)
            self.expect[b] += w * (cf - self.expect[b])
            ctx[b] += wc * (cf - ctx[b])
            self.expect_slow[b] += ws * (cf - self.expect_slow[b])
            if b == budget:
                self.modelled += w * (cf - self.modelled)
        self.actual += w * (len(committed) - self.actual)
        self.observed += 1
        self.observed_ctx[context] += 1
        if self.observed % self.refresh == 0:
            self._reshape()

    def _reshape(self) -> None:
        """Decay the counts and recompute every budget's tree shape under the current p(d, r)."""
        f = self.decay ** self.refresh
        self.seen = [s * f for s in self.seen]
        self.hits = [[h * f for h in row] for row in self.hits]
        p = [[h / s for h in row] for row, s in zip(self.hits, self.seen)]
        for arm in self.arms:
            self.paths[arm.budget] = _tree_paths(p, arm.budget, arm.depth, self.K)
            self.ext[arm.budget] = _extensions(self.paths[arm.budget], p, self.K)

    def expected_tokens(self) -> dict[int, float]:
        """The model's expected tokens per round of each budget (the tree's path probabilities, plus one)."""
        p = [[h / s for h in row] for row, s in zip(self.hits, self.seen)]
        return {b: 1.0 + sum(math.prod(p[d][r] for d, r in enumerate(path)) for path in paths)
                for b, paths in self.paths.items()}


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
    """Rank paths of a ``budget``-node tree grown like the dynamic builder: expand the most probable node
    ceil((B-1)/K) times, adding its K children in rank order, to at most ``depth`` depths."""
    paths: set[tuple[int, ...]] = set()
    heap: list[tuple[float, tuple[int, ...]]] = [(-1.0, ())]
    nodes = 1
    while heap and nodes < budget:
        neg, path = heapq.heappop(heap)
        d = len(path)
        if d >= depth:
            continue
        for r in range(topk):
            if nodes >= budget:
                break
            child = path + (r,)
            paths.add(child)
            nodes += 1
            heapq.heappush(heap, (neg * p[d][r], child))
    return paths
