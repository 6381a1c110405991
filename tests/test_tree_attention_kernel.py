"""Stage 3: the Triton tree-attention kernel behind `jetspec::tree_attention`.

* Interpreter: `tests/tree_attention_interp.py` runs the kernel under TRITON_INTERPRET=1 in a
  subprocess (the variable must be set before the kernel module is imported; this process keeps it
  unset so opcheck and fake tracing never meet the interpreter, which patches Triton process-wide) and
  reports, per case, the max abs error against `tree_attention_reference`.
* opcheck of the op's CPU path; the launch heuristic; an sm_90 ahead-of-time compile of the kernels
  (no GPU needed); the benchmark script's --dry-run plumbing.
* GPU (`-m gpu`): the CUDA op against the reference in fp16 and bf16, without host syncs and under
  CUDA-graph replay with a changed cache_len.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jetspec_compile.ops  # noqa: F401  (registers torch.ops.jetspec.tree_attention)
from jetspec_compile.ops import tree_attention_reference

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "tree_attention_interp.py"
BENCH = ROOT / "scripts" / "bench_tree_attention.py"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


H = _load("tree_attention_interp", HELPER)  # CASES and input builders only; imports no Triton


def _subprocess_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------------
# (a) the kernel under the Triton interpreter


@pytest.fixture(scope="module")
def interp_results():
    proc = subprocess.run(
        [sys.executable, str(HELPER)], cwd=ROOT, env=_subprocess_env(TRITON_INTERPRET="1"),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r["id"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("case_id", [c["id"] for c in H.CASES])
def test_interpreted_kernel_matches_reference(interp_results, case_id):
    case = next(c for c in H.CASES if c["id"] == case_id)
    r = interp_results[case_id]
    tk_hq = [case["T"], case["hkv"] * case["g"], case["hd"]]
    assert r["shape"] == tk_hq and r["contiguous"] and r["dtype_ok"]
    assert r["finite"], "NaN/inf in the output (the kernel read the cache past cache_len?)"
    assert r["dead_rows_zero"], "rows that see no key must be zeros"
    assert r["excess"] <= 0, f"max abs error {r['err']:.3g} beyond tolerance {H.TOL[case['dtype']]}"


def test_interpreter_cases_cover_the_brief():
    seen = {(c["T"], c["n"], c["g"]) for c in H.CASES}
    for T in (1, 5, 16, 33):
        for n in (0, 7, 70):
            for g in (1, 2, 4):
                assert (T, n, g) in seen
    assert {c["hd"] for c in H.CASES} >= {16, 32, 64}
    assert {c["dtype"] for c in H.CASES} == {"fp32", "fp16"}  # bf16 is broken in the interpreter
    assert {c["mask"] for c in H.CASES} >= {"tree", "random", "causal", "full"}
    assert any(c.get("num_splits", 1) > 1 for c in H.CASES)
    assert any(c.get("strided") for c in H.CASES)


def test_interpreter_helper_refuses_without_env():
    proc = subprocess.run([sys.executable, str(HELPER)], cwd=ROOT,
                          env=_subprocess_env(TRITON_INTERPRET="0"), capture_output=True, text=True)
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr


# --------------------------------------------------------------------------------------------------
# (b) the op's CPU path


def test_interp_not_set_in_this_process():
    # opcheck and fake tracing must never call the interpreted kernel (TRITON_INTERPRET=1 patches Triton for
    # the whole process once the kernel module is imported)
    assert os.environ.get("TRITON_INTERPRET", "0") != "1"


@pytest.mark.parametrize("case_id", [
    "T5-n7-kv2x2-d16-fp32-random-tk12",
    "T16-n70-kv2x2-d32-fp32-tree-capacity100-stridedTrue",
    "T5-n0-kv2x2-d16-fp32-random",
    "T16-n7-kv2x2-d64-fp16-tree",
])
def test_opcheck_cpu(case_id):
    case = next(c for c in H.CASES if c["id"] == case_id)
    args = H.make_inputs(case)
    torch.library.opcheck(torch.ops.jetspec.tree_attention.default, args)
    out = torch.ops.jetspec.tree_attention(*args)
    assert out.is_contiguous() and out.shape == (case["T"], case["hkv"] * case["g"], case["hd"])
    # the CPU kernel is torch's fused SDPA: equal to the plain reference up to float rounding
    tol = 1e-5 if out.dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out, tree_attention_reference(*args), rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------------
# launch heuristic and ahead-of-time compile (no GPU needed)


@pytest.fixture
def kernel_module():
    """The compiled (non-interpreted) kernel module, dropped again afterwards if this test imported
    it, so that a later TRITON_INTERPRET=1 import elsewhere gets interpreted kernels."""
    name = "jetspec_compile.kernels.tree_attention"
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("needs the compiled (non-interpreted) kernels")
    was_loaded = name in sys.modules
    mod = importlib.import_module(name)
    yield mod
    if not was_loaded:
        sys.modules.pop(name, None)
        import jetspec_compile.kernels as pkg

        pkg.__dict__.pop("tree_attention", None)


def test_choose_config(kernel_module):
    choose_config = kernel_module.choose_config

    # Qwen3-8B decode-like verification: 16 rows x 4 heads per KV head, 8 KV heads, H200 (132 SMs)
    c = choose_config(rows=64, hkv=8, head_dim=128, cache_capacity=16384, sm_count=132)
    assert c["block_m"] == 64 and c["block_d"] == 128 and c["num_splits"] == 32
    # a short cache never gets splits of fewer than two key blocks
    c = choose_config(rows=64, hkv=8, head_dim=128, cache_capacity=1024, sm_count=132)
    assert c["num_splits"] * 2 * c["block_n"] <= 1024
    # prefill-sized query blocks fill the GPU without splits
    c = choose_config(rows=4 * 2048, hkv=8, head_dim=128, cache_capacity=16384, sm_count=132)
    assert c["block_m"] == 128 and c["num_splits"] == 1 and c["num_warps"] == 8
    for rows in (1, 5, 16, 33, 64, 65, 1000):
        for hd in (16, 64, 96, 128, 256):
            c = choose_config(rows=rows, hkv=2, head_dim=hd, cache_capacity=70, sm_count=132)
            assert c["block_m"] >= 16 and c["block_d"] >= hd and c["block_d"] & (c["block_d"] - 1) == 0
            assert c["num_splits"] == 1  # 70 keys: nothing to split


@pytest.mark.parametrize("dtype,head_dim,rows,cap", [
    (torch.bfloat16, 128, 64, 16384),   # split-KV + combine
    (torch.bfloat16, 128, 4096, 4096),  # BLOCK_M 128, one pass
    (torch.float16, 64, 20, 70),
    (torch.float32, 32, 16, 1024),      # fp32: ieee dot, no tensor cores
])
def test_kernels_compile_for_sm90(dtype, head_dim, rows, cap, tmp_path, monkeypatch, kernel_module):
    """The kernels build for Hopper (sm_90) on this CPU-only machine: catches typing errors the
    interpreter lets through, and checks shared memory fits an H200 (227 KiB per block)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    ast_sources, choose_config = kernel_module.ast_sources, kernel_module.choose_config
    cfg = choose_config(rows=rows, hkv=8, head_dim=head_dim, cache_capacity=cap, sm_count=132)
    srcs = ast_sources(dtype, head_dim, cfg)
    assert [name for name, _ in srcs] == (["fwd", "combine"] if cfg["num_splits"] > 1 else ["fwd"])
    for name, src in srcs:
        opts = (dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]) if name == "fwd"
                else dict(num_warps=cfg["combine_num_warps"]))
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
        assert kernel.metadata.shared <= 227 * 1024
        assert "ptx" in kernel.asm


# --------------------------------------------------------------------------------------------------
# benchmark script plumbing


@pytest.fixture(scope="module")
def bench():
    return _load("bench_tree_attention", BENCH)  # in-process: no second torch import


def test_bench_dry_run(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--dry-run", "--out", str(out)]) == 0
    assert "speedup" in capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rep["config"]["dry_run"] is True
    rows = rep["results"]
    assert {(r["B"], r["committed"]) for r in rows} == {(4, 0), (4, 8), (5, 0), (5, 8)}
    for r in rows:
        assert r["triton_max_abs_err"] <= 1e-5 and r["sdpa_max_abs_err"] <= 1e-5
        assert r["triton_ms"] > 0 and r["sdpa_ms"] > 0 and r["speedup_vs_sdpa"] > 0
        assert r["keys"] == r["B"] + r["committed"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit path")
def test_bench_without_cuda_exits_2(bench, capsys):
    assert bench.main([]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# (c) GPU

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")

GPU_CASES = [
    # Qwen3-8B heads (32 q / 8 kv, hd 128): verification trees, decode step, prefill
    H._case(16, 1000, 8, 4, 128, "x", "tree", capacity=4096),
    H._case(64, 4097, 8, 4, 128, "x", "tree"),
    H._case(1, 1, 8, 4, 128, "x", "full"),
    H._case(256, 0, 8, 4, 128, "x", "causal"),
    H._case(200, 333, 8, 4, 128, "x", "random"),
    H._case(33, 70, 2, 2, 64, "x", "random", strided=True, capacity=100),
    H._case(16, 3000, 8, 4, 128, "x", "tree", num_splits=1),
    H._case(5, 777, 4, 2, 64, "x", "tree", num_splits=7, block_n=32),
]


def _gpu_case(case, dtype):
    c = dict(case)
    c["dtype"] = dtype
    c["id"] = case["id"].replace("-x-", f"-{dtype}-")
    return c


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=[c["id"] for c in GPU_CASES])
def test_cuda_op_matches_reference(case, dtype):
    from jetspec_compile.kernels.tree_attention import triton_tree_attention

    c = _gpu_case(case, dtype)
    args = H.make_inputs(c, device="cuda")
    ref = H.reference_fp32(args)
    overrides = {k: c[k] for k in ("block_m", "block_n", "num_splits") if k in c}
    if overrides:
        out = triton_tree_attention(*args, **overrides)
    else:
        out = torch.ops.jetspec.tree_attention(*args)
    torch.cuda.synchronize()
    assert out.shape == ref.shape and out.is_contiguous() and out.dtype == args[0].dtype
    assert torch.isfinite(out).all()
    r = H.compare(out, ref, dtype)
    assert r["excess"] <= 0, f"max abs error {r['err']:.3g} beyond tolerance {H.TOL[dtype]}"


@pytest.mark.gpu
@requires_cuda
def test_cuda_fp32_and_opcheck():
    base = H._case(16, 70, 2, 2, 64, "x", "tree")
    args = H.make_inputs(_gpu_case(base, "fp32"), device="cuda")
    out = torch.ops.jetspec.tree_attention(*args)
    torch.testing.assert_close(out, tree_attention_reference(*args), rtol=1e-4, atol=1e-4)
    args = tuple(torch.nan_to_num(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in H.make_inputs(_gpu_case(base, "fp16"), device="cuda"))
    torch.library.opcheck(torch.ops.jetspec.tree_attention.default, args)


@pytest.mark.gpu
@requires_cuda
def test_cuda_no_host_sync_and_graph_replay():
    """cache_len is read on the device: no host sync, and a captured CUDA graph follows a new
    cache_len written into the same tensor."""
    c = _gpu_case(H._case(16, 500, 8, 4, 128, "x", "tree", capacity=2048), "bf16")
    q, k, v, kc, vc, cache_len, mask, scale = H.make_inputs(c, device="cuda")
    kc, vc = torch.nan_to_num(kc), torch.nan_to_num(vc)
    op = torch.ops.jetspec.tree_attention
    op(q, k, v, kc, vc, cache_len, mask, scale)  # compile outside the checks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        op(q, k, v, kc, vc, cache_len, mask, scale)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        op(q, k, v, kc, vc, cache_len, mask, scale)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = op(q, k, v, kc, vc, cache_len, mask, scale)
    for n in (500, 0, 1, 1999, 2048):
        cache_len.fill_(n)
        graph.replay()
        torch.cuda.synchronize()
        ref = H.reference_fp32((q, k, v, kc, vc, cache_len, mask, scale))
        r = H.compare(static_out, ref, "bf16")
        assert r["excess"] <= 0, f"cache_len={n}: max abs error {r['err']:.3g}"
