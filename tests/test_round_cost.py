"""Speed 1: what a round no longer computes, and the native linear layer.

* Drafting only reachable depths: a dynamic tree of B nodes is at most B-1 deep (a chain), so the tree built
  from the pruned draft equals the one built from every depth, and a certain head reaches that depth.
* `jetspec::linear` equals `F.linear` with and without a registered (prepacked) weight; a weight modified
  in place is re-packed, a freed one forgotten. A registered fp32 weight runs the panel GEMM
  (csrc/panel_gemm.cpp) over every row count, ragged N and K, with a bias, and is bitwise batch-invariant:
  row i of linear(x) equals linear(x[i:i+1]).
* The aoti artifact's graphs call the native linear and record the pruned depth in the manifest.
"""

from __future__ import annotations

import gc
import math

import pytest
import torch
import torch.nn.functional as F

from jetspec_compile.graphs import SpecConfig
from jetspec_compile.linear import NativeLinear, native_linears
from jetspec_compile.tree import build_tree


@pytest.mark.parametrize("B,K", [(1, 7), (2, 7), (8, 7), (16, 7), (16, 3), (64, 7), (128, 2), (64, 1)])
def test_pruned_depth_builds_the_same_tree(B, K):
    D = 15
    g = torch.Generator().manual_seed(B * 10 + K)
    tok = torch.randint(0, 50, (D, K), generator=g)
    lp = torch.log_softmax(torch.randn(D, K, generator=g), -1).sort(dim=-1, descending=True).values
    d = max(1, min(D, B - 1))
    full = build_tree(torch.tensor([3]), tok, lp, B)
    pruned = build_tree(torch.tensor([3]), tok[:d], lp[:d], B)
    for name in ("tokens", "parents", "depth", "mask", "score"):
        assert torch.equal(getattr(full, name), getattr(pruned, name)), name
    assert int(full.depth.max()) <= d
    sure = torch.full((D, K), -30.0)
    sure[:, 0] = 0.0  # a certain rank 0: the tree is a chain as deep as B allows, so d cannot be smaller
    assert int(build_tree(torch.tensor([3]), tok, sure, B).depth.max()) == (d if B > 1 else 0)


def test_reachable_depth(tiny_models):
    _, head, _ = tiny_models  # block 6: D = 5
    assert SpecConfig(budget=4, topk=7).reachable_depth(head) == 3  # a chain of 3 under the root
    assert SpecConfig(budget=16, topk=7).reachable_depth(head) == 5
    assert SpecConfig(budget=1, topk=7).reachable_depth(head) == 1
    static = SpecConfig(budget=4, topk=2, tree="static",
                        static_tree={"paths": [[0], [0, 0], [0, 0, 0]], "budget": 4})
    assert static.reachable_depth(head) == 3


@pytest.mark.parametrize("m", [1, 3, 16])
def test_native_linear_equals_linear(m):
    w = torch.randn(96, 64)
    x = torch.randn(m, 64)
    ref = F.linear(x, w)
    torch.testing.assert_close(torch.ops.jetspec.linear(x, w), ref)  # unregistered: at::linear itself
    assert torch.ops.jetspec.prepack_linear(w) == 1
    torch.testing.assert_close(torch.ops.jetspec.linear(x, w), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.ops.jetspec.linear(x.reshape(1, m, 64), w), ref.reshape(1, m, 96),
                               rtol=1e-5, atol=1e-5)
    w.mul_(-2.0)  # modified in place: re-packed, never served stale
    torch.testing.assert_close(torch.ops.jetspec.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    before = torch.ops.jetspec.registered_linear_weights()
    del w
    gc.collect()
    assert torch.ops.jetspec.registered_linear_weights() == before - 1  # freed: forgotten


@pytest.mark.parametrize("N,K", [(1, 1), (15, 7), (17, 300), (40, 64), (200, 33), (200, 1400)])  # K = 1400: chunked
def test_panel_gemm_rows_ragged_shapes_and_batch_invariance(N, K):
    g = torch.Generator().manual_seed(N * 1000 + K)
    w, b = torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    assert torch.ops.jetspec.prepack_linear(w) == 1
    for m in (0, 1, 2, 3, 4, 5, 6, 7, 13, 17, 25, 64, 130):
        x = torch.randn(m, K, generator=g)
        y = torch.ops.jetspec.linear(x, w, b)
        torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5 * math.sqrt(K))
        rows = [torch.ops.jetspec.linear(x[i:i + 1], w, b) for i in range(m)]
        assert m == 0 or torch.equal(y, torch.cat(rows)), m  # the same bits whatever the row count
    xt = torch.randn(K, 9, generator=g).t()  # a non-contiguous input
    torch.testing.assert_close(torch.ops.jetspec.linear(xt, w), F.linear(xt, w), rtol=1e-5, atol=1e-5 * math.sqrt(K))


def test_native_linear_opcheck():
    torch.library.opcheck(torch.ops.jetspec.linear.default, (torch.randn(3, 32), torch.randn(48, 32), None))
    torch.library.opcheck(torch.ops.jetspec.linear.default, (torch.randn(3, 32), torch.randn(48, 32),
                                                             torch.randn(48)))


def test_native_linears_swaps_and_restores():
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    x = torch.randn(2, 8)
    ref = m(x)
    with native_linears(m) as n:
        assert n == 2 and type(m[0]) is NativeLinear
        torch.testing.assert_close(m(x), ref)
    assert type(m[0]) is torch.nn.Linear and type(m[2]) is torch.nn.Linear


def test_aoti_artifact_is_native_and_pruned(aoti_artifact):
    from jetspec_compile.artifact import read_manifest

    m = read_manifest(aoti_artifact)
    assert m["head"]["block_depth"] == 5 and m["shapes"]["depth"] == m["head"]["depth"] == 5  # B=16, K=3 -> 5
    for name, g in m["graphs"].items():
        assert g["native_linears"] > 0, name  # every graph's linears run the prepacked native GEMM
        assert g["jetspec_ops"] > 0, name


def test_generate_compare_prints_both_rates(aoti_artifact, capsys):
    from jetspec_compile.cli import main

    assert main(["generate", str(aoti_artifact), "hello", "--max-new-tokens", "12", "--compare"]) == 0
    err = capsys.readouterr().err
    assert "[speculative]" in err and "[autoregressive]" in err and "committed per round" in err
    line = next(x for x in err.splitlines() if x.startswith("compare: speculative"))
    assert "x (decode only" in line


def test_demo_export_defaults_come_from_fastest_json(tmp_path):
    import json

    from jetspec_compile.demo_paths import demo_head_path
    from jetspec_compile.export.cli import GENERIC_DEFAULTS, _demo_fastest

    rec = json.loads((demo_head_path().parent / "fastest.json").read_text())
    want = {k: rec[k] for k in GENERIC_DEFAULTS} | ({"budgets": rec["budgets"]} if rec.get("budgets") else {})
    want |= {"depth": rec["depth"]} if rec.get("depth") else {}
    assert _demo_fastest(demo_head_path().parent / "fastest.json") == want
    assert rec["command"] and rec["measured"]
    assert _demo_fastest(tmp_path / "missing.json") == GENERIC_DEFAULTS
    mine = tmp_path / "fastest.json"
    mine.write_text(json.dumps({"budget": 8, "topk": 4, "tree": "dynamic", "lookup": 3, "depth": 4}))
    assert _demo_fastest(mine) == {"budget": 8, "topk": 4, "tree": "dynamic", "lookup": 3, "depth": 4}
