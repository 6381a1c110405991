"""The native C++ CPU kernel of `jetspec::tree_attention` (jetspec_compile/csrc/tree_attention.cpp).

* Equal to the plain-torch reference over the same case grid as the Triton kernel (T 1/5/16/33,
  committed 0/7/70, GQA 1/2/4, head dims 8-64, tree/random/causal/full masks, strided views, NaN
  garbage past cache_len that must never be read, capacity 0), in fp32, fp16 and bf16.
* `torch.library.opcheck` (schema, fake tensor, dispatch).
* The op is defined in C++: it has no Python kernel for CPU, so compiled graphs never re-enter the
  interpreter to run it.
* A cache_len outside [0, S] is a clear error, not an out-of-bounds read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import jetspec_compile.ops  # noqa: F401  (loads the native library)
from jetspec_compile.native import load_native

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tree_attention_interp", ROOT / "tests" / "tree_attention_interp.py")
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)  # CASES and input builders only; imports no Triton

OP = torch.ops.jetspec.tree_attention


def _bf16(case):
    c = dict(case, dtype="bf16")
    c["id"] = case["id"].replace("fp16", "bf16").replace("fp32", "bf16")
    return c


CASES = H.CASES + [_bf16(c) for c in H.CASES[:12]]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_native_kernel_equals_reference(case):
    args = H.make_inputs(case)
    out = OP(*args)
    ref = H.reference_fp32(args)
    assert out.shape == (case["T"], case["hkv"] * case["g"], case["hd"])
    assert out.is_contiguous() and out.dtype == args[0].dtype
    assert torch.isfinite(out).all(), "NaN in the output: the kernel read the cache past cache_len"
    r = H.compare(out, ref, case["dtype"])
    assert r["excess"] <= 0, f"max abs error {r['err']:.3g} beyond tolerance {H.TOL[case['dtype']]}"
    if case["n"] == 0:
        dead = ~args[6].any(1)
        assert (out[dead] == 0).all(), "rows that see no key must be zeros"


@pytest.mark.parametrize("case_id", [
    "T5-n7-kv2x2-d16-fp32-random-tk12",
    "T16-n70-kv2x2-d32-fp32-tree-capacity100-stridedTrue",
    "T5-n0-kv2x2-d16-fp32-random",
    "T16-n7-kv2x2-d64-fp16-tree",
    "T1-n70-kv1x4-d32-fp32-full",
])
def test_native_opcheck(case_id):
    case = next(c for c in H.CASES if c["id"] == case_id)
    torch.library.opcheck(OP.default, H.make_inputs(case))


def test_native_op_is_defined_in_cpp():
    assert Path(load_native()).is_file()
    schema = str(OP.default._schema)
    assert schema.startswith("jetspec::tree_attention(Tensor q, Tensor k, Tensor v")
    # A CPU kernel registered from C++: the dispatcher's table names no Python kernel for CPU.
    table = torch._C._dispatch_dump_table("jetspec::tree_attention")
    cpu = next(line for line in table.splitlines() if line.startswith("CPU:"))
    assert "python" not in cpu.lower(), cpu


@pytest.mark.parametrize("n", [-1, 97])
def test_native_rejects_cache_len_out_of_range(n):
    case = next(c for c in H.CASES if c["id"] == "T5-n7-kv2x2-d16-fp32-random-tk12")
    args = list(H.make_inputs(case))
    args[5] = torch.tensor([n])
    with pytest.raises(RuntimeError, match="cache_len"):
        OP(*args)
