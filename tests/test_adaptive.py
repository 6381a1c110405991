"""Speed 4: adaptive budgets. The policy only chooses which exact graphs run, so greedy output stays
token-identical to plain decoding and seeded sampling stays reproducible; it follows measured costs and live
acceptance (plain steps when speculation cannot pay, speculation when it does)."""

from __future__ import annotations

import pytest
import torch

from jetspec_compile import autoregressive_generate, speculative_generate
from jetspec_compile.adaptive import CHAIN, PLAIN, Arm, BudgetPolicy, _tree_paths, lookup_context, smooth_costs
from jetspec_compile.tree import build_tree

from test_lookup_decode import _memoryless

CHEAP_SPEC = {0: 0.95, 1: 1.0, 4: 1.05, 8: 1.1, 16: 1.2}  # speculation costs about a plain step (0: the chain alone)
DEAR_SPEC = {1: 1.0, 4: 50.0, 8: 60.0, 16: 70.0}  # it never pays


@pytest.mark.parametrize("costs", [CHEAP_SPEC, DEAR_SPEC, None])
@pytest.mark.parametrize("lookup", [0, 4])
def test_adaptive_greedy_is_lossless(tiny_models, costs, lookup):
    target, head, _ = tiny_models
    g = torch.Generator().manual_seed(lookup)
    for _ in range(2):
        ids = torch.randint(3, 30, (6,), generator=g).tolist() * 2
        ref = autoregressive_generate(target, head, ids, 40, eos_token_id=126)[0]
        out, st = speculative_generate(target, head, ids, 40, budget=16, topk=3, budgets=[4, 8], costs=costs,
                                       lookup=lookup, eos_token_id=126)
        assert out == ref
        assert st.mode == "adaptive" and sum(st.budget_rounds.values()) == st.rounds


def test_adaptive_static_tree_is_lossless(tiny_models):
    target, head, _ = tiny_models
    ids = [5, 9, 13, 5, 9, 13, 7]
    ref = autoregressive_generate(target, head, ids, 30)[0]
    out, _ = speculative_generate(target, head, ids, 30, budget=8, topk=3, tree="static", budgets=[4, 16],
                                  costs={1: 1.0, 4: 1.0, 16: 1.0})
    assert out == ref


def test_plain_steps_when_speculation_cannot_pay(tiny_models):
    target, head, _ = tiny_models
    ids = list(range(3, 20))
    out, st = speculative_generate(target, head, ids, 100, budget=16, topk=3, budgets=[4, 8], costs=DEAR_SPEC)
    assert out == autoregressive_generate(target, head, ids, 100)[0]
    assert st.budget_rounds.get("plain", 0) >= 0.7 * st.rounds, st.budget_rounds  # only sparse probes speculate


def test_speculates_on_repeating_text(tiny_models):
    target, head, _ = tiny_models
    ids = list(range(3, 13)) * 2
    with _memoryless(target):
        ref = autoregressive_generate(target, head, ids, 120)[0]
        out, st = speculative_generate(target, head, ids, 120, budget=16, topk=3, budgets=[4, 8], lookup=8,
                                       costs={1: 1.0, 4: 1.5, 8: 1.6, 16: 2.0})
    assert out == ref
    assert st.budget_rounds.get("plain", 0) <= 0.5 * st.rounds, st.budget_rounds  # plain only before the cycle
    assert min(st.accepted[-8:]) > 1 and st.tau > 2.0


def test_the_chain_alone_is_lossless(tiny_models):
    """The chain arm (the lookup chain alone, no draft) as a fixed arm and inside adaptive decoding: greedy
    output equals plain decoding; on repeating text the adaptive policy runs it, because it is cheapest."""
    from jetspec_compile.decode import Stats
    from jetspec_compile.eager_oracle import eager_decoder
    from jetspec_compile.graphs import SpecConfig

    target, head, _ = tiny_models
    ids = list(range(3, 13)) * 2
    spec = SpecConfig(budget=8, topk=3, max_seq_len=160, prefill_chunk=16, lookup=4)
    with _memoryless(target):
        ref = autoregressive_generate(target, head, ids, 80)[0]
        dec = eager_decoder(target, head, spec, budgets=[4], costs={CHAIN: 1.2, 1: 1.0, 4: 1.5, 8: 1.6})
        assert dec.fixed_arms == [CHAIN, 1, 4, 8]
        for budget in (CHAIN, None):
            st = Stats()
            assert [t for c in dec.speculative(ids, 80, budget=budget, stats=st) for t in c] == ref
        chain = st.budget_rounds.get("chain", 0)  # (the first rounds walk into the cycle: plain steps pay)
        assert chain >= 10 and chain == max(st.budget_rounds.values()), st.budget_rounds
        samples = [[t for c in dec.speculative(ids, 40, budget=CHAIN, temperature=0.7, seed=5) for t in c]
                   for _ in range(2)]
    assert samples[0] == samples[1] and len(samples[0]) == 40


def test_adaptive_sampling_matches_the_fixed_budget_it_picks(tiny_models):
    """With one budget that always pays, adaptive decoding runs exactly the fixed-budget rounds: same
    seeded samples (the policy changes which graphs run, never how a round samples)."""
    target, head, _ = tiny_models
    ids = list(range(3, 9)) * 3
    kw = dict(budget=16, topk=3, temperature=0.8, seed=3, lookup=4)
    fixed = speculative_generate(target, head, ids, 30, **kw)[0]
    adaptive, st = speculative_generate(target, head, ids, 30, budgets=[1], costs={1: 1e6}, **kw)
    assert st.budget_rounds == {"16": st.rounds} and adaptive == fixed
    again = speculative_generate(target, head, ids, 30, budgets=[4, 8], costs=CHEAP_SPEC, **kw)
    assert again[0] == speculative_generate(target, head, ids, 30, budgets=[4, 8], costs=CHEAP_SPEC, **kw)[0]
    assert len(again[0]) == 30 and all(0 <= t < target.vocab_size for t in again[0])


def test_tree_paths_follow_the_dynamic_builder():
    """The policy's model of a budget's tree is the builder's tree: the B-1 most probable nodes."""
    p = [[0.61, 0.23, 0.09], [0.52, 0.27, 0.11], [0.43, 0.19, 0.07]]  # no two paths tie
    for B in (2, 4, 7, 10, 16, 40):
        paths = _tree_paths(p, B, 3, 3)
        logp = torch.log(torch.tensor(p))
        tree = build_tree(torch.tensor([0]), torch.arange(9).reshape(3, 3) + 1, logp, B)
        # node tokens encode (depth, rank): token = 3 * depth + rank + 1; a node's path is its parents' ranks
        ranks = [int(t) - 1 - 3 * (int(d) - 1) for t, d in zip(tree.tokens, tree.depth)]
        got = set()
        for i in range(1, int(tree.valid.sum())):
            path, j = (), i
            while j > 0:
                path, j = (ranks[j],) + path, int(tree.parents[j])
            got.add(path)
        assert got == paths and len(paths) == min(B - 1, 3 + 9 + 27)


def test_policy_runs_plain_steps_and_explores():
    """The first round runs the head's tree; then, while nothing is accepted, plain steps run, and a tree runs
    again (explores) after ``explore`` rounds only where it could pay: never where a round of the tree costs 5
    plain steps; after 16 plain steps where it costs 1.2 (while the model still says it could pay).
    The picks are deterministic."""
    def picks_of(cost: float) -> list[int]:
        pol = BudgetPolicy([Arm(4, 1, cost), Arm(8, 2, cost * 1.2)], 0.002, 3, explore=16)
        picks = []
        for _ in range(60):
            b = pol.choose()
            picks.append(b)
            if b != PLAIN:
                pol.observe(b, [7], [[1, 2, 3], [4, 5, 6]][: 1 if b == 4 else 2])  # nothing ever accepted
        return picks

    dear = picks_of(0.01)
    assert [i for i, b in enumerate(dear) if b != PLAIN] == [0] and dear == picks_of(0.01)
    cheap = [i for i, b in enumerate(picks_of(0.0024)) if b != PLAIN]
    assert cheap[:4] == [0, 1, 2, 3] and len(cheap) > 4  # the model's prior pays at first; then explorations
    assert all(b - a == 17 for a, b in zip(cheap[3:], cheap[4:]))  # ... each after 16 plain steps


def test_policy_needs_a_clear_margin_for_plain_steps():
    """Within 10 % of plain decoding's rate the policy keeps speculating (noisy costs must not flip it)."""
    pol = BudgetPolicy([Arm(4, 1, 0.0021)], 0.001, 3)  # 2 tokens per round: rate 952/s vs plain 1000/s
    for _ in range(8):  # what the first rounds show
        pol.observe(4, [1, 7], [[1, 2, 3]])
    picks = []
    for _ in range(40):
        b = pol.choose()
        picks.append(b)
        if b != PLAIN:
            pol.observe(b, [1, 7], [[1, 2, 3]])
    assert PLAIN not in picks


def test_fixed_budget_must_be_compiled(aoti_artifact):
    from jetspec_compile.errors import JetSpecError
    from jetspec_compile.runtime import load

    engine = load(aoti_artifact)
    with pytest.raises(JetSpecError, match="budget 5 is not compiled"):
        engine.generate([5, 6, 7], 4, budget=5)


def test_aoti_artifact_with_budgets(tiny_models, tmp_path, inductor_cache, capsys):
    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.runtime import load

    target, head, folder = tiny_models
    out = tmp_path / "budgets"
    m = export_model(target, head, SpecConfig(budget=8, topk=3, max_seq_len=128, prefill_chunk=16, lookup=4), out,
                     backend="aoti", sampling=False, tokenizer_dir=folder, budgets=[4], log=lambda s: None)
    assert m["budgets"]["compiled"] == [1, 4, 8] and set(m["budgets"]["cost_ms"]) == {"1", "4", "8", "chain", "ar_step"}
    assert {"draft.b4", "verify.b4", "verify.b1", "verify.chain"} <= set(m["graphs"])
    assert "draft.b1" not in m["graphs"] and "draft.chain" not in m["graphs"]
    engine = load(out)
    assert engine.budgets == [1, 4, 8]
    for ids in (list(range(3, 13)) * 3, [5, 9, 5, 9, 5, 9, 7]):
        ref = engine.generate(ids, 50, speculative=False).tokens
        assert engine.generate(ids, 50).tokens == ref
        assert engine.last_stats.mode == "adaptive"
        for b in (CHAIN, 1, 4, 8):  # CHAIN: the lookup chain alone (verify.chain)
            assert engine.generate(ids, 50, budget=b).tokens == ref
    eager = load(out, mode="eager")
    assert eager.generate(ids, 30).tokens == ref[:30]
    from jetspec_compile.cli import main

    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0  # every arm's calibrated cost, the chain alone's too
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("budgets"))
    assert "plain" in line and "B=4" in line and "chain alone" in line and "ar_step" in line
    assert main(["generate", str(out), "hello", "--max-new-tokens", "12", "--compare"]) == 0
    err = capsys.readouterr().err  # every fixed arm's rate beside the adaptive one
    assert [x.split(":")[1].split()[-1] for x in err.splitlines() if x.startswith("compare: fixed budget")] \
        == ["chain", "plain", "4", "8"]


def test_policy_credits_deeper_trees_beyond_a_shallow_round():
    """A round of a shallow budget cannot show how far a deeper tree would have gone; where every known
    rank lies on the deeper tree's path, the model's expected further depth is added (else running the
    small budget would make it look as good as the large one)."""
    pol = BudgetPolicy([Arm(4, 1, 0.01), Arm(16, 4, 0.012)], 1.0, 3)
    for _ in range(20):
        pol.observe(4, [10, 10], [[10, 11, 12]])  # depth 1 accepted its top token (one drafted depth known)
    assert pol.expect_ctx[0][4] == pytest.approx(2.0)
    assert pol.expect_ctx[0][16] > 2.5  # without the credit both would be 1 + 1 known depth


def test_policy_picks_the_budget_per_lookup_context():
    """When the lookup chain carries the round (a long n-gram match), every budget commits the same and the
    cheap one wins; without a match the deeper tree wins. The policy learns both, per context."""
    pol = BudgetPolicy([Arm(4, 1, 0.010), Arm(16, 4, 0.015)], 1.0, 3)
    cand = [[10, 11, 12]] * 4
    chain = list(range(20, 28))
    for _ in range(12):
        pol.observe(16, [10] * 5, cand, (), context=0)  # the tree is accepted 4 deep
        pol.observe(16, chain + [30], cand, chain, context=2)  # the chain is accepted whole
    assert pol.choose(2) == 4 and pol.choose(0) == 16
    assert lookup_context(0) == 0 and lookup_context(2) == 1 and lookup_context(4) == 2


def test_policy_runs_the_chain_alone_where_it_carries_the_round():
    """With a chain arm: where a long n-gram match carries the round, the chain alone (no draft, cheaper than
    any tree) wins; without a match the head's tree pays where it is accepted deep, and plain steps where
    nothing is accepted. Each context is judged on its own rounds."""
    pol = BudgetPolicy([Arm(4, 1, 0.010), Arm(16, 4, 0.015)], 0.006, 3, chain_cost_s=0.009)
    cand = [[10, 11, 12]] * 4
    chain = list(range(20, 28))
    for _ in range(12):
        pol.observe(16, [10] * 5, cand, (), context=0)  # the tree is accepted 4 deep
        pol.observe(16, chain + [30], cand, chain, context=2)  # the chain is accepted whole
        pol.observe(4, [7], cand[:1], [9], context=1)  # nothing accepted
    assert pol.choose(2) == CHAIN and pol.choose(0) == 16 and pol.choose(1) == PLAIN
    for _ in range(24):  # a chain round shows the chain's length only; the trees' means are not changed
        pol.observe(CHAIN, chain[:2] + [30], None, chain, context=2)
    assert pol.expect_ctx[2][CHAIN] < 4 < pol.expect_ctx[2][16]
    assert pol.choose(2) == 4  # the chain now falls short early: a tree (with the chain) is worth its draft


def test_chain_trees_are_attach_chain_on_a_root_only_tree():
    """The chain arm's host-built trees equal the traced attach_chain of a root-only tree, for every chain
    length (so verify.chain sees the layout it was exported for)."""
    from jetspec_compile.decode import _ChainTrees
    from jetspec_compile.lookup import attach_chain
    from jetspec_compile.tree import Tree

    L = 5
    trees = _ChainTrees(L, torch.device("cpu"))
    anchor = torch.tensor([42])
    root = Tree(anchor, torch.tensor([-1]), torch.tensor([0]), torch.tensor([0.0]), torch.ones(1, 1, dtype=torch.bool))
    for n in range(L + 1):
        chain = torch.tensor([5, 6, 7, 8, 9][:n] + [0] * (L - n))
        want = attach_chain(root, chain, torch.tensor([n]))
        got = trees(anchor, chain, n)
        for g, w in zip(got, (want.tokens, want.parents, want.depth, want.mask)):
            assert torch.equal(g, w), n


def test_costs_are_smoothed_over_the_budget():
    """Calibrated costs carry noise (B=8 measured below B=4 here once); the policy fits a line over the
    budgets, which keeps a linear table as it is and never lets a larger budget look cheaper."""
    noisy = smooth_costs([Arm(16, 4, 7.69), Arm(4, 1, 7.02), Arm(8, 2, 6.50)])
    assert [a.budget for a in noisy] == [4, 8, 16]
    assert noisy[0].cost_s < noisy[1].cost_s < noisy[2].cost_s
    assert sum(a.cost_s for a in noisy) == pytest.approx(7.02 + 6.50 + 7.69)
    linear = smooth_costs([Arm(4, 1, 6.0), Arm(8, 2, 6.5), Arm(16, 4, 7.5)])
    assert [a.cost_s for a in linear] == pytest.approx([6.0, 6.5, 7.5])
    assert [a.cost_s for a in smooth_costs([Arm(4, 1, 7.0), Arm(8, 2, 6.0)])] == pytest.approx([6.5, 6.5])


def test_chain_starts_optimistic_so_an_expensive_chain_is_still_tried():
    """With fast GEMMs a chain round costs several plain steps (2-2.7x on the demo). Where a longer n-gram
    matched, the chain starts as if it had committed all L nodes once, so it is run and judged on its own
    rounds: kept where it commits enough, given up where it does not. After a 1-2 token match it starts
    neutral (2 tokens, seen twice) and runs only once rounds that carry it show it commits enough."""
    pol = BudgetPolicy([Arm(4, 1, 0.0035)], 0.001, 3, chain_cost_s=0.0027, chain_len=8)
    chain = list(range(20, 28))
    assert pol.choose(2) == 4  # the first round runs the head's tree
    assert pol.choose(2) == CHAIN and pol.choose(1) == PLAIN
    for _ in range(12):
        pol.observe(CHAIN, chain[:5] + [30], None, chain, context=2)  # a long match: 6 tokens a round
    assert pol.choose(2) == CHAIN
    for _ in range(12):
        pol.observe(CHAIN, [7], None, chain, context=2)  # the long matches stop paying: nothing accepted
    assert pol.choose(2) == PLAIN
    for _ in range(8):
        pol.observe(4, chain[:6] + [30], [[0, 1, 2]], chain, context=1)  # a tree carried a short match's chain
    assert pol.choose(1) == CHAIN  # 7 tokens a round: the chain alone now pays after a short match too
    legacy = BudgetPolicy([Arm(4, 1, 0.0035)], 0.001, 3, chain_cost_s=0.0027)  # no L given: the old start
    legacy.choose(2)
    assert legacy.choose(2) == PLAIN  # 2 tokens / 2.7 ms never beats a plain step: the chain was never tried
