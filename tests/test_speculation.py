"""Stage 2: tree building, acceptance, verification with functional caches, eager speculative decoding."""

import math

import pytest
import torch

from helpers import OracleDraft, empty_cache, reference_tree, walk_accept
from jetspec_compile.accept import accept, filter_logits, sample_tokens
from jetspec_compile.attention import CacheAttention, causal_mask
from jetspec_compile.graphs import SpecConfig, build_graphs
from jetspec_compile.eager_oracle import (autoregressive_generate, eager_decoder,
                                         speculative_generate)
from jetspec_compile.tiny import tiny_head, tiny_target
from jetspec_compile.tree import (build_tree, calibrate_static_tree, default_static_tree,
                                  static_tree_from_paths)


# ---- build_tree ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(60))
def test_build_tree_matches_reference(case):
    g = torch.Generator().manual_seed(case)
    D = int(torch.randint(1, 6, (1,), generator=g))
    K = int(torch.randint(1, 5, (1,), generator=g))
    B = int(torch.randint(1, 40, (1,), generator=g))
    toks = torch.randint(0, 50, (D, K), generator=g)
    if case % 3 == 0:  # ties: few distinct log-probs
        lps = -torch.randint(0, 3, (D, K), generator=g).float().sort(dim=-1).values.flip(-1) * 0.5
    else:
        lps = -torch.rand(D, K, generator=g).sort(dim=-1).values * 4
    tree = build_tree(torch.tensor([7]), toks, lps, B)
    rt, rp, rd, rs = reference_tree(7, toks, lps, B)
    n = len(rt)
    assert tree.tokens.shape == (B,) and tree.mask.shape == (B, B)
    assert tree.tokens[:n].tolist() == rt
    assert tree.parents[:n].tolist() == rp
    assert tree.depth[:n].tolist() == rd
    torch.testing.assert_close(tree.score[:n], torch.tensor(rs), rtol=0, atol=1e-5)
    valid = tree.valid
    assert valid[:n].all() and not valid[n:].any()  # the rest is padding
    assert not tree.mask[:, n:].any() and not tree.mask[n:].any()
    for i in range(n):  # ancestor-or-self
        anc, j = {i}, rp[i]
        while j >= 0:
            anc.add(j)
            j = rp[j]
        assert set(torch.nonzero(tree.mask[i]).flatten().tolist()) == anc


def test_static_tree_from_paths_and_calibration():
    t = static_tree_from_paths([(0,), (1,), (0, 0), (0, 1), (0, 0, 0)], budget=8)
    assert t.parents == [-1, 0, 0, 1, 1, 3] and t.depth == [0, 1, 1, 2, 2, 3] and t.rank == [0, 0, 1, 0, 1, 0]
    toks = torch.tensor([[10, 11], [20, 21], [30, 31]])
    lps = torch.tensor([[-0.1, -1.0], [-0.2, -2.0], [-0.3, -3.0]])
    tree = t.materialize(torch.tensor([5]), toks, lps)
    assert tree.tokens.tolist() == [5, 10, 11, 20, 21, 30, 0, 0]
    torch.testing.assert_close(tree.score[:6], torch.tensor([0, -0.1, -1.0, -0.3, -2.1, -0.6]))
    assert tree.valid.tolist() == [True] * 6 + [False] * 2
    with pytest.raises(Exception, match="no parent path"):
        static_tree_from_paths([(0, 0)])
    rates = [[0.9, 0.5, 0.1], [0.8, 0.3, 0.05], [0.7, 0.2, 0.0]]
    cal = calibrate_static_tree(rates, budget=6)
    # best products: (0)=.9 (0,0)=.72 (0,0,0)=.504 (1)=.5 (1,0)=.4, then (0,1)=.27 ...
    assert sorted(cal.paths()) == sorted([(0,), (0, 0), (0, 0, 0), (1,), (1, 0)])
    assert cal.num_nodes == 6
    d = default_static_tree(depth=4, topk=3, budget=16)
    assert d.num_nodes == 16 and max(d.depth) <= 4


def test_calibrate_static_tree_reads_json(tmp_path):
    import json

    p = tmp_path / "stats.json"
    p.write_text(json.dumps({"accept_rate": [[0.9, 0.1], [0.5, 0.1]]}))
    assert calibrate_static_tree(p, budget=3).paths() == [(0,), (0, 0)]
    p.write_text("{}")
    with pytest.raises(Exception, match="accept_rate"):
        calibrate_static_tree(p, budget=3)


# ---- acceptance -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(60))
def test_accept_matches_walk(case):
    g = torch.Generator().manual_seed(100 + case)
    D, K, B = 4, 3, int(torch.randint(1, 30, (1,), generator=g))
    V = 4  # small vocabulary: many matches
    toks = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(D)])
    lps = -torch.rand(D, K, generator=g).sort(dim=-1).values
    tree = build_tree(torch.tensor([1]), toks, lps, B)
    target_tokens = torch.randint(0, V, (B,), generator=g)
    acc = accept(tree.tokens, tree.parents, tree.depth, tree.mask, target_tokens, D)
    path, bonus = walk_accept(tree.tokens.tolist(), tree.parents.tolist(), tree.valid.tolist(), target_tokens.tolist())
    a = len(path) - 1
    assert int(acc.length) == a
    assert acc.path[: a + 1].tolist() == path and (acc.path[a + 1:] == 0).all()
    assert int(acc.bonus) == bonus
    committed = [int(tree.tokens[i]) for i in path[1:]] + [bonus]
    assert acc.out_tokens[: a + 1].tolist() == committed


def test_sample_tokens_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    probs, order = filter_logits(logits, torch.tensor([1.0]), torch.tensor([3]), torch.tensor([1.0]))
    p = torch.softmax(logits[0, :3], 0)
    torch.testing.assert_close(probs[0, :3], p)
    assert probs[0, 3:].sum() == 0 and order[0, :3].tolist() == [0, 1, 2]
    probs, _ = filter_logits(logits, torch.tensor([1.0]), torch.tensor([0]), torch.tensor([0.5]))
    assert (probs[0] > 0).sum() == 1  # the top token alone has > 50 % of the mass
    u = torch.linspace(0, 0.999, 1000)
    s = sample_tokens(logits.expand(1000, 5), torch.tensor([1.0]), torch.tensor([0]), torch.tensor([1.0]), u)
    freq = torch.bincount(s, minlength=5).float() / 1000
    torch.testing.assert_close(freq, torch.softmax(logits[0], 0), rtol=0, atol=2e-3)


# ---- verification --------------------------------------------------------------------------------------

def test_tree_path_logits_equal_sequential():
    target = tiny_target(num_layers=4)
    head = tiny_head(target, block_size=6)
    spec = SpecConfig(budget=24, topk=3, max_seq_len=64)
    verify = build_graphs(target, head, spec, ("verify",))["verify"]
    prefix = torch.randint(0, 127, (9,))
    L = 8  # cache holds prefix[:-1]; prefix[-1] is the root
    kc, vc = empty_cache(target, 64)
    with torch.no_grad():
        st = CacheAttention(kc, vc, torch.tensor([0]), causal_mask(L))
        target.step(prefix[:L], torch.arange(L), st)
        kc[:, :, :L], vc[:, :, :L] = st.new_k(), st.new_v()
        toks = torch.randint(0, 127, (head.depth, 3))
        tree = build_tree(prefix[-1:], toks, -torch.rand(head.depth, 3).sort(-1).values, 24)
        logits, _, _ = verify._forward_tree(tree.tokens, tree.depth, tree.mask, torch.tensor([L]), kc, vc)
        leaves = [i for i in range(24) if not (tree.parents == i).any()]
        for leaf in leaves:
            path, j = [], leaf
            while j >= 0:
                path.append(j)
                j = int(tree.parents[j])
            path = path[::-1]
            seq = torch.cat([prefix[:L], tree.tokens[path]])
            ref = target(seq).logits[L:]
            assert (logits[path] - ref).abs().max().item() <= 1e-4


# ---- end-to-end greedy equality --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    target = tiny_target(num_layers=4, eos_token_id=None)
    head = tiny_head(target, block_size=6, num_layers=1)
    return target, head


def hf_greedy(target, ids, n, eos=None):
    with torch.no_grad():
        out = target.model.generate(ids[None], attention_mask=torch.ones_like(ids[None]), max_new_tokens=n,
                                    do_sample=False, eos_token_id=eos, pad_token_id=0)
    return out[0, ids.numel():].tolist()


@pytest.mark.parametrize("tree", ["dynamic", "static"])
def test_greedy_equals_hf_generate(models, tree):
    target, head = models
    g = torch.Generator().manual_seed(1)
    for i in range(20):
        ids = torch.randint(0, 127, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g)
        ref = hf_greedy(target, ids, 12)
        for budget in (1, 2, 16, 64):
            out, stats = speculative_generate(target, head, ids, 12, budget=budget, tree=tree)
            assert out == ref, (i, budget)
            assert stats.new_tokens == 12 and stats.finish_reason == "length"


@pytest.mark.parametrize("tree", ["dynamic", "static"])
@pytest.mark.parametrize("budget", [2, 16, 64])
def test_greedy_with_oracle_draft_commits_many_rows(models, tree, budget):
    """A draft that often contains the target's continuation: long accepted paths, multi-row commits."""
    target, head = models
    g = torch.Generator().manual_seed(2)
    for i in range(6):
        ids = torch.randint(0, 127, (int(torch.randint(2, 30, (1,), generator=g)),), generator=g)
        ref = hf_greedy(target, ids, 40 + head.depth + 1)
        spec = SpecConfig(budget=budget, topk=4, max_seq_len=ids.numel() + 60 + budget, prefill_chunk=8, tree=tree)
        dec = eager_decoder(target, head, spec, ("prefill", "draft", "verify"))
        dec.graphs["draft"] = OracleDraft(build_graphs(target, head, spec, ("draft",))["draft"],
                                          ids.tolist() + ref, target.vocab_size, spec.topk, seed=i)
        from jetspec_compile.decode import Stats

        st = Stats()
        out = [t for c in dec.speculative(ids.tolist(), 40, stats=st) for t in c]
        assert out == ref[:40]
        if budget >= 16:
            assert st.tau > 2.0, st.tau  # deep paths were really accepted and committed


def test_eos_stop(models):
    target, head = models
    ids = torch.randint(0, 127, (7,))
    ref = hf_greedy(target, ids, 20)
    eos = ref[5]
    first = ref.index(eos)
    out, stats = speculative_generate(target, head, ids, 20, budget=16, eos_token_id=eos)
    assert out == ref[: first + 1] and stats.finish_reason == "eos"
    assert out == hf_greedy(target, ids, 20, eos=eos)
    ar, st2 = autoregressive_generate(target, head, ids, 20, eos_token_id=eos)
    assert ar == out and st2.finish_reason == "eos"


def test_cache_limit_stops_cleanly(models):
    target, head = models
    ids = torch.randint(0, 127, (10,))
    ref = hf_greedy(target, ids, 40)
    out, stats = speculative_generate(target, head, ids, 40, budget=8, max_seq_len=30)
    assert stats.finish_reason == "cache_full"
    assert 0 < len(out) < 40 and out == ref[: len(out)]  # never a wrong token
    with pytest.raises(Exception, match="prompt has 25 tokens"):
        speculative_generate(target, head, torch.randint(0, 127, (25,)), 5, budget=8, max_seq_len=30)


def test_autoregressive_equals_hf(models):
    target, head = models
    ids = torch.randint(0, 127, (11,))
    out, stats = autoregressive_generate(target, head, ids, 15)
    assert out == hf_greedy(target, ids, 15) and stats.rounds == 15


# ---- sampling --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, budget, lookup", [([3, 1, 4], 16, 0), ([3, 1, 4, 2, 3, 1], 4, 3)],
                         ids=["tree", "tree+lookup"])
def test_sampling_is_lossless(prompt, budget, lookup):
    """Empirical distribution of the first two tokens == the target's (chi-square, fixed seed), with the
    head's tree alone and with a prompt-lookup chain verified beside a small tree (the prompt repeats
    "3, 1", so the chain proposes "4, 2, 3" after it)."""
    V = 8
    target = tiny_target(vocab_size=V, num_layers=2, num_taps=1, hidden_size=32, num_heads=2, num_kv_heads=1, std=0.5)
    head = tiny_head(target, block_size=4, mask_token_id=V - 1)
    T, top_p = 0.9, 0.95
    with torch.no_grad():  # exact joint distribution of (t1, t2) under the filtered target
        p1, o1 = filter_logits(target(torch.tensor(prompt)).logits[-1:], torch.tensor([T]), torch.tensor([0]),
                               torch.tensor([top_p]))
        dist1 = torch.zeros(V).scatter(0, o1[0], p1[0])
        joint = torch.zeros(V, V)
        for a in range(V):
            pa, oa = filter_logits(target(torch.tensor(prompt + [a])).logits[-1:], torch.tensor([T]),
                                   torch.tensor([0]), torch.tensor([top_p]))
            joint[a] = dist1[a] * torch.zeros(V).scatter(0, oa[0], pa[0])
    spec = SpecConfig(budget=budget, topk=3, max_seq_len=40, prefill_chunk=4, lookup=lookup)
    dec = eager_decoder(target, head, spec, ("prefill", "draft", "verify_sample"))
    N = 1500
    counts = torch.zeros(V, V)
    deep = chained = 0
    for s in range(N):
        from jetspec_compile.decode import Stats

        st = Stats()
        out = [t for c in dec.speculative(prompt, 2, temperature=T, top_p=top_p, seed=s, stats=st) for t in c]
        counts[out[0], out[1]] += 1
        deep += st.accepted[0] >= 2
        chained += st.lookup_rounds
    assert deep > N * 0.2  # the second token often came from the tree, not only as a bonus
    assert chained > N * 0.05 if lookup else chained == 0  # rounds whose accepted tokens the chain proposed
    exp = joint.flatten() * N
    obs = counts.flatten()
    keep = exp > 5
    chi2 = (((obs[keep] - exp[keep]) ** 2) / exp[keep]).sum().item()
    dof = int(keep.sum()) - 1
    assert obs[~keep].sum() <= max(10, exp[~keep].sum() * 3)
    # 99.9 % quantile of chi-square(dof) by the Wilson-Hilferty approximation
    z = 3.09
    q = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < q, (chi2, q, dof)


# ---- export ----------------------------------------------------------------------------------------------

def test_tree_and_accept_export():
    class M(torch.nn.Module):
        def forward(self, root, toks, lps, target_tokens):
            t = build_tree(root, toks, lps, 20)
            a = accept(t.tokens, t.parents, t.depth, t.mask, target_tokens, 4)
            return t.tokens, t.parents, t.mask, a.path, a.length, a.out_tokens

    args = (torch.tensor([1]), torch.randint(0, 9, (4, 3)), -torch.rand(4, 3).sort(-1).values,
            torch.randint(0, 9, (20,)))
    ep = torch.export.export(M(), args, strict=False)
    other = (torch.tensor([2]), torch.randint(0, 9, (4, 3)), -torch.rand(4, 3).sort(-1).values,
             torch.randint(0, 9, (20,)))
    for a, b in zip(ep.module()(*other), M()(*other)):
        assert torch.equal(a, b)


def test_verify_step_exports(models):
    from jetspec_compile.graphs import example_inputs

    target, head = models
    spec = SpecConfig(budget=16, topk=3, max_seq_len=48)
    g = build_graphs(target, head, spec, ("verify",))["verify"]
    args = example_inputs("verify", target, head, spec)
    with torch.no_grad():
        ep = torch.export.export(g, args, strict=False)
        ops = [n.target for n in ep.graph.nodes if n.op == "call_function"]
        assert sum(o == torch.ops.jetspec.tree_attention.default for o in ops) == target.num_layers
        for a, b in zip(ep.module()(*args), g(*args)):
            torch.testing.assert_close(a, b)


def test_accept_stats_feed_static_calibration(tmp_path):
    from jetspec_compile.calibration import collect_accept_stats, save_accept_stats

    V = 8
    target = tiny_target(vocab_size=V, num_layers=2, num_taps=1, std=0.5)
    head = tiny_head(target, block_size=5, mask_token_id=V - 1)
    stats = collect_accept_stats(target, head, [[1, 2, 3], [4, 5], [6]], 16, budget=16, topk=3)
    D, K = head.depth, 3
    assert len(stats["accept_rate"]) == D and all(len(r) == K for r in stats["accept_rate"])
    assert stats["reached"][0] > 0 and sum(stats["hits"][0]) == stats["reached"][0]
    for d in range(1, D):  # reaching depth d needs the depth d-1 token among the top-K (and in the tree)
        assert stats["reached"][d] <= sum(stats["hits"][d - 1][:K])
    # brute force: re-draft every round from the final greedy output and walk its depths
    reached, hits = [0] * D, [[0] * (K + 1) for _ in range(D)]
    for p in ([1, 2, 3], [4, 5], [6]):
        out, st = speculative_generate(target, head, p, 16, budget=16, topk=3)
        o = 0
        for a in st.accepted:
            with torch.no_grad():
                top = head.draft_logits(target, torch.tensor(p + out[:o])).topk(K, dim=-1).indices.tolist()
            for d in range(min(D, len(out) - o)):
                reached[d] += 1
                r = top[d].index(out[o + d]) if out[o + d] in top[d] else K
                hits[d][r] += 1
                if r == K:
                    break
            o += a
    assert stats["reached"] == reached and stats["hits"] == hits
    # the statistics do not depend on the tree that ran: a budget-4 tree (depth <= 1) measures the same
    small = collect_accept_stats(target, head, [[1, 2, 3], [4, 5], [6]], 16, budget=4, topk=3)
    assert small["reached"][2] > 0
    path = save_accept_stats(stats, tmp_path / "accept_stats.json")
    tree = calibrate_static_tree(path, budget=12)
    assert tree.num_nodes == 12
    out, st = speculative_generate(target, head, [1, 2, 3], 16, budget=12, topk=3, tree=tree)
    assert out == speculative_generate(target, head, [1, 2, 3], 16, budget=12, topk=3)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_commit_writes_exact_rows(dtype):
    """The CPU commit path writes through numpy views (bf16 as raw 16-bit words): exactly rows [0, n) of each
    graph output into cache rows [at, at + n), nothing else, and never past the cache's S rows."""
    from jetspec_compile.decode import CacheDims, Decoder

    dims = CacheDims(target_layers=3, target_kv_heads=2, target_head_dim=8, head_layers=2, head_kv_heads=1,
                     head_head_dim=4, depth=3, dtype=dtype)
    dec = Decoder({}, budget=4, topk=2, max_seq_len=12, prefill_chunk=4, dims=dims)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(c.shape[0], c.shape[1], 5, c.shape[3], generator=g).to(dtype) for c in dec._caches]
    expect = [c.clone() for c in dec._caches]
    for e, r in zip(expect, rows):
        e[:, :, 6:9] = r[:, :, :3]
    dec._write(6, 3, *rows)
    for c, e in zip(dec._caches, expect):
        assert torch.equal(c, e)
    dec._write(10, 5, *rows[:2])  # cut at S = 12; no context rows
    assert torch.equal(dec.k_cache[:, :, 10:12], rows[0][:, :, :2]) and not dec.ctx_k[:, :, 10:].any()
    other = Decoder({}, budget=4, topk=2, max_seq_len=12, prefill_chunk=4, dims=dims)
    other.use_caches(*dec._caches)  # a decoder sharing dec's caches (the profile's sweep) writes into them
    other._write(0, 1, *rows)
    assert all(torch.equal(c[:, :, :1], r[:, :, :1]) for c, r in zip(dec._caches, rows))
