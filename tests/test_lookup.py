"""Prompt-lookup building blocks: NgramIndex against a brute-force scan, attach_chain against a
brute-force construction, acceptance on combined trees, and torch.export of attach_chain."""

from __future__ import annotations

import random

import pytest
import torch

from jetspec_compile.accept import accept
from jetspec_compile.lookup import NgramIndex, attach_chain, chain_tensors
from jetspec_compile.tree import Tree, build_tree, static_tree_from_paths

# ---- NgramIndex ---------------------------------------------------------------------------------------------


def ref_propose(s: list[int], length: int, n_max: int, n_min: int, periodic: bool = False) -> list[int]:
    """Brute force: scan backwards for the most recent earlier occurrence, longest n first."""
    T = len(s)
    if length <= 0:
        return []
    for n in range(n_max, n_min - 1, -1):
        if T < n + 1:
            continue
        suffix = s[T - n:]
        for e in range(T - 1, n - 1, -1):  # exclusive end e <= T-1
            if s[e - n:e] == suffix:
                out = s[e:e + length]
                if periodic:
                    ext = s + []
                    while len(out) < length:  # overlapping copy: the proposal continues the sequence
                        ext.append(ext[e + len(ext) - T])
                        out = ext[e:e + length]
                return out
    return []


def test_ngram_doc_example():
    idx = NgramIndex(n_max=2)
    idx.extend([5, 6, 7, 8, 5, 6])
    assert idx.propose(3) == [7, 8, 5]
    assert idx.propose(10) == [7, 8, 5, 6]  # cut at the end of the sequence
    assert idx.propose(6, periodic=True) == [7, 8, 5, 6, 7, 8]
    assert idx.match() == (2, 2)


def test_ngram_edge_cases():
    idx = NgramIndex()
    assert idx.propose(4) == [] and len(idx) == 0
    idx.extend([])
    assert idx.propose(4) == []
    idx.extend([7])  # one token: nothing earlier
    assert idx.propose(4) == [] and idx.match() == (0, -1)
    idx.extend([7])  # [7, 7]: suffix (7,) occurred ending at 1
    assert idx.propose(4) == [7]
    assert idx.propose(4, periodic=True) == [7, 7, 7, 7]
    assert idx.propose(0) == []
    idx.extend([8])
    assert idx.propose(3) == []  # 8 never occurred before
    with pytest.raises(ValueError):
        NgramIndex(n_max=1, n_min=2)
    with pytest.raises(ValueError):
        NgramIndex(n_max=3, n_min=0)


def test_ngram_suffix_is_not_its_own_match():
    idx = NgramIndex(n_max=3, n_min=3)
    idx.extend([1, 2, 3])
    assert idx.propose(2) == []  # only occurrence of (1, 2, 3) is the suffix itself
    idx.extend([1, 2, 3])
    assert idx.propose(2) == [1, 2]
    idx.extend([9, 1, 2, 3])  # latest earlier occurrence now ends at 6
    assert idx.propose(4) == [9, 1, 2, 3]


def test_ngram_longest_match_first():
    # (2, 3) occurred late followed by 8; the 3-gram (1, 2, 3) occurred early followed by 5
    s = [1, 2, 3, 5, 0, 2, 3, 8, 0, 1, 2, 3]
    idx = NgramIndex(n_max=3)
    idx.extend(s)
    assert idx.propose(1) == [5]
    idx2 = NgramIndex(n_max=2)
    idx2.extend(s)
    assert idx2.propose(1) == [8]


@pytest.mark.parametrize("n_max,n_min", [(n_max, n_min) for n_max in range(1, 6) for n_min in range(1, n_max + 1)])
def test_ngram_matches_brute_force(n_max, n_min):
    rng = random.Random(n_max * 10 + n_min)
    for trial in range(12):
        vocab = rng.choice([2, 3, 5, 12])
        idx = NgramIndex(n_max=n_max, n_min=n_min)
        s: list[int] = []
        prompt = [rng.randrange(vocab) for _ in range(rng.choice([0, 1, 2, 7, 30]))]
        chunks = [prompt] + [[rng.randrange(vocab) for _ in range(rng.randint(1, 16))] for _ in range(12)]
        for chunk in chunks:
            idx.extend(chunk)
            s.extend(chunk)
            assert idx.tokens == s
            for length in (0, 1, 3, 10):
                assert idx.propose(length) == ref_propose(s, length, n_max, n_min), (s, length)
            assert idx.propose(8, periodic=True) == ref_propose(s, 8, n_max, n_min, periodic=True)


# ---- attach_chain ---------------------------------------------------------------------------------------------


def tree_lists(t: Tree) -> tuple[list[int], list[int], list[int], list[bool]]:
    return t.tokens.tolist(), t.parents.tolist(), t.depth.tolist(), t.valid.tolist()


def ref_attach(t: Tree, chain: list[int], n: int, merge: bool) -> dict:
    """Brute force: walk the tree from the root along the chain, then append the rest node by node."""
    tok, par, dep, val = tree_lists(t)
    B, L = len(tok), len(chain)
    n = max(0, min(n, L))
    node, d = 0, 0
    if merge:
        while d < n:
            kids = [c for c in range(B) if val[c] and par[c] == node and tok[c] == chain[d]]
            if not kids:
                break
            node, d = kids[0], d + 1
    tokens, parents, depth, valid = tok + [0] * L, par + [-1] * L, dep + [0] * L, val + [False] * L
    score = t.score.tolist() + [float("-inf")] * L
    for i in range(d, n):
        k = B + i
        tokens[k], parents[k], depth[k], valid[k] = chain[i], (node if i == d else k - 1), i + 1, True
        score[k] = float(t.score[node])
    N = B + L
    mask = [[False] * N for _ in range(N)]
    for a in range(N):
        if not valid[a]:
            continue
        x = a
        while x >= 0:
            mask[a][x] = True
            x = parents[x]
    return dict(tokens=tokens, parents=parents, depth=depth, score=score, mask=mask, attach=(node, d))


def assert_tree_equal(got: Tree, ref: dict):
    assert got.tokens.tolist() == ref["tokens"]
    assert got.parents.tolist() == ref["parents"]
    assert got.depth.tolist() == ref["depth"]
    assert got.mask.tolist() == ref["mask"]
    assert got.score.tolist() == ref["score"]


def random_tree(rng: random.Random, B: int, K: int, D: int, vocab: int, static: bool) -> Tree:
    top = torch.stack([torch.tensor(rng.sample(range(vocab), K)) for _ in range(D)])  # distinct per depth
    lp = torch.log_softmax(torch.randn(D, K, generator=torch.Generator().manual_seed(rng.randrange(10**6))), -1)
    lp = lp.sort(dim=-1, descending=True).values
    root = torch.tensor([rng.randrange(vocab)])
    if not static:
        return build_tree(root, top, lp, B)
    paths = [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)][: rng.randint(1, min(6, B - 1))]
    paths = [p for p in paths if len(p) <= D and max(p) < K]
    return static_tree_from_paths(paths, B).materialize(root, top, lp)


def tree_path_tokens(t: Tree, node: int) -> list[int]:
    tok, par, _, _ = tree_lists(t)
    out = []
    while node > 0:
        out.append(tok[node])
        node = par[node]
    return out[::-1]


def random_case(rng: random.Random):
    B, K, D, L = rng.choice([4, 8, 16]), rng.choice([2, 3]), rng.choice([2, 3, 5]), rng.choice([1, 3, 6])
    vocab = rng.choice([3, 4, 8])
    t = random_tree(rng, B, K, D, vocab, static=rng.random() < 0.4)
    valid_nodes = [i for i in range(B) if t.valid[i]]
    prefix = tree_path_tokens(t, rng.choice(valid_nodes)) if rng.random() < 0.7 else []
    chain = (prefix + [rng.randrange(vocab) for _ in range(L)])[:L]
    n = rng.randint(0, L)
    return t, chain, n


@pytest.mark.parametrize("merge", [True, False])
def test_attach_chain_matches_brute_force(merge):
    rng = random.Random(1 + merge)
    for _ in range(150):
        t, chain, n = random_case(rng)
        got = attach_chain(t, torch.tensor(chain), torch.tensor([n]), merge=merge)
        assert_tree_equal(got, ref_attach(t, chain, n, merge))


def test_attach_chain_unmerged_layout():
    t = build_tree(torch.tensor([1]), torch.tensor([[2, 3], [4, 5]]), torch.log(torch.tensor([[0.6, 0.4], [0.55, 0.45]])), 5)
    c = attach_chain(t, torch.tensor([2, 4, 9, 0]), torch.tensor([3]), merge=False)
    B = 5
    assert c.tokens.tolist()[B:] == [2, 4, 9, 0]
    assert c.parents.tolist()[B:] == [0, B, B + 1, -1]
    assert c.depth.tolist()[B:] == [1, 2, 3, 0]
    assert c.valid.tolist()[B:] == [True, True, True, False]
    assert c.mask[B + 2].nonzero().flatten().tolist() == [0, B, B + 1, B + 2]
    assert not c.mask[:, B + 3].any() and not c.mask[B + 3].any()
    assert c.score.tolist()[B:B + 3] == [0.0, 0.0, 0.0]


def test_attach_chain_merge_reparents():
    # tree: 0 root(1) -> 1 (2), 2 (3); 1 -> 3 (4), 4 (5)
    t = build_tree(torch.tensor([1]), torch.tensor([[2, 3], [4, 5]]), torch.log(torch.tensor([[0.6, 0.4], [0.55, 0.45]])), 5)
    assert t.parents.tolist() == [-1, 0, 0, 1, 1]
    B = 5
    c = attach_chain(t, torch.tensor([2, 4, 9, 7]), torch.tensor([4]))  # chain 2,4 is the tree path 0-1-3
    assert c.valid.tolist()[B:] == [False, False, True, True]
    assert c.parents.tolist()[B:] == [-1, -1, 3, B + 2]
    assert c.depth.tolist()[B:] == [0, 0, 3, 4]
    assert c.mask[B + 3].nonzero().flatten().tolist() == [0, 1, 3, B + 2, B + 3]
    assert c.score[B + 2] == t.score[3]
    whole = attach_chain(t, torch.tensor([3, 0]), torch.tensor([1]))  # chain entirely in the tree
    assert not whole.valid[B:].any() and not whole.mask[:, B:].any()


def ref_accept(c: Tree, target: list[int]) -> tuple[int, int]:
    """Brute force: deepest node whose root path matches (ties lowest index) -> (node, depth)."""
    tok, par, dep, val = tree_lists(c)
    best = (0, 0)
    for i in range(len(tok)):
        x, ok = i, val[i]
        while ok and x > 0:
            ok = val[x] and tok[x] == target[par[x]]
            x = par[x]
        if ok and dep[i] > best[1]:
            best = (i, dep[i])
    return best


def target_following(c: Tree, truth: list[int], noise: random.Random, vocab: int) -> list[int]:
    """Per-node target tokens of a target whose continuation is ``truth``: on-path nodes get the next
    true token, off-path nodes a random one (what a greedy target would do on other contexts)."""
    tok, par, dep, val = tree_lists(c)
    out = []
    for i in range(len(tok)):
        path = tree_path_tokens(c, i) if val[i] else None
        on = path is not None and path == truth[:len(path)] and dep[i] < len(truth)
        out.append(truth[dep[i]] if on else noise.randrange(vocab))
    return out


def test_accept_follows_chain_when_target_does():
    B, L = 5, 4
    t = build_tree(torch.tensor([1]), torch.tensor([[2, 3], [4, 5]]), torch.log(torch.tensor([[0.6, 0.4], [0.55, 0.45]])), B)
    for merge in (True, False):
        c = attach_chain(t, torch.tensor([3, 8, 9, 7]), torch.tensor([4]), merge=merge)
        rng = random.Random(0)
        tt = target_following(c, [3, 8, 9, 7, 6], rng, 10)
        acc = accept(c.tokens, c.parents, c.depth, c.mask, torch.tensor(tt), max(2, L))
        assert acc.length.item() == 4
        assert acc.out_tokens.tolist() == [3, 8, 9, 7, 6]
        if merge:  # chain node 0 (token 3) duplicates tree node 2: the path runs through it
            assert acc.path.tolist() == [0, 2, B + 1, B + 2, B + 3]
        else:
            assert acc.path.tolist() == [0, B, B + 1, B + 2, B + 3]


def test_accept_tie_goes_to_head_tree():
    B = 5
    t = build_tree(torch.tensor([1]), torch.tensor([[2, 3], [4, 5]]), torch.log(torch.tensor([[0.6, 0.4], [0.55, 0.45]])), B)
    c = attach_chain(t, torch.tensor([2, 4, 0]), torch.tensor([2]), merge=False)  # duplicates tree path 0-1-3
    tt = target_following(c, [2, 4, 6], random.Random(0), 10)
    acc = accept(c.tokens, c.parents, c.depth, c.mask, torch.tensor(tt), max(2, 3))
    assert acc.length.item() == 2 and acc.path.tolist()[:3] == [0, 1, 3]


def test_accept_never_takes_padding():
    B, L = 5, 4
    t = build_tree(torch.tensor([1]), torch.tensor([[2, 3], [4, 5]]), torch.log(torch.tensor([[0.6, 0.4], [0.55, 0.45]])), B)
    for n in (0, 1):
        c = attach_chain(t, torch.tensor([0, 0, 0, 0]), torch.tensor([n]))
        tt = torch.zeros(B + L, dtype=torch.int64)  # the target says 0 everywhere: padding tokens are 0 too
        acc = accept(c.tokens, c.parents, c.depth, c.mask, tt, max(2, L))
        assert acc.length.item() == n and acc.path.tolist()[1:] == ([B] if n else []) + [0] * (L - n)


def test_accept_on_random_combined_trees():
    rng = random.Random(7)
    for _ in range(150):
        t, chain, n = random_case(rng)
        merge = rng.random() < 0.5
        c = attach_chain(t, torch.tensor(chain), torch.tensor([n]), merge=merge)
        D = int(t.depth.max())
        vocab = 8
        truth = chain[:rng.randint(0, n)] + [rng.randrange(vocab) for _ in range(8)]
        tt = target_following(c, truth, rng, vocab)
        acc = accept(c.tokens, c.parents, c.depth, c.mask, torch.tensor(tt), max(D, len(chain)))
        node, a = ref_accept(c, tt)
        assert acc.length.item() == a and acc.path[a].item() == node
        assert bool(c.valid[acc.path[: a + 1]].all())
        assert acc.out_tokens.tolist()[: a + 1] == truth[: a + 1]
        if merge:  # siblings stay distinct after merging
            tok, par, _, val = tree_lists(c)
            kids = [(par[i], tok[i]) for i in range(len(tok)) if val[i] and par[i] >= 0]
            assert len(kids) == len(set(kids))


# ---- export ----------------------------------------------------------------------------------------------------


class _LookupModule(torch.nn.Module):
    def __init__(self, merge: bool, max_depth: int):
        super().__init__()
        self.merge = merge
        self.max_depth = max_depth

    def forward(self, tokens, parents, depth, mask, score, chain, chain_len, target_tokens):
        c = attach_chain(Tree(tokens, parents, depth, score, mask), chain, chain_len, merge=self.merge)
        acc = accept(c.tokens, c.parents, c.depth, c.mask, target_tokens, self.max_depth)
        return c.tokens, c.parents, c.depth, c.mask, c.score, acc.path, acc.length, acc.out_tokens


@pytest.mark.parametrize("merge", [True, False])
def test_attach_chain_exports(merge):
    B, L = 5, 4
    t = build_tree(torch.tensor([1]), torch.tensor([[2, 3], [4, 5]]), torch.log(torch.tensor([[0.6, 0.4], [0.55, 0.45]])), B)
    mod = _LookupModule(merge, max(2, L))

    def inputs(chain, n, tt):
        return (t.tokens, t.parents, t.depth, t.mask, t.score, torch.tensor(chain), torch.tensor([n]), torch.tensor(tt))

    ep = torch.export.export(mod, inputs([2, 4, 9, 7], 3, [0] * (B + L)), strict=False)
    run = ep.module()
    rng = random.Random(3)
    cases = [([2, 4, 9, 7], 0), ([2, 4, 9, 7], L), ([3, 8, 9, 7], L), ([2, 5, 1, 1], 2), ([9, 9, 9, 9], 4), ([2, 4, 0, 0], 2)]
    for chain, n in cases:
        for _ in range(3):
            tt = [rng.randrange(10) for _ in range(B + L)]
            c = attach_chain(t, torch.tensor(chain), torch.tensor([n]), merge=merge)
            tt = target_following(c, chain[:n] + [rng.randrange(10)], rng, 10) if rng.random() < 0.7 else tt
            want = mod(*inputs(chain, n, tt))
            got = run(*inputs(chain, n, tt))
            for w, g in zip(want, got):
                assert torch.equal(w, g)


def test_chain_tensors():
    chain, n = chain_tensors([4, 5], 4)
    assert chain.tolist() == [4, 5, 0, 0] and n.tolist() == [2] and chain.dtype == torch.int64
    chain, n = chain_tensors([1, 2, 3, 4, 5], 3)
    assert chain.tolist() == [1, 2, 3] and n.tolist() == [3]
    chain, n = chain_tensors([], 2)
    assert chain.tolist() == [0, 0] and n.tolist() == [0]
