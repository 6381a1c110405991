"""Step `kernel_cases`: the Triton kernel against the fp32 torch reference over fp16 / bf16 x B x committed
length x GQA ratio (Qwen3-8B heads), with the case builders of tests/tree_attention_interp.py."""

from __future__ import annotations

import os

from ..common import Ctx, tests_module


def kernel_case_grid(dry_run: bool) -> list[dict]:
    H = tests_module("tree_attention_interp")
    cases = []
    if dry_run:
        for dtype in ("fp32", "fp16"):  # the interpreter mishandles bf16
            for T in (1, 5):
                for n in (0, 7):
                    for g in (1, 2):
                        cases.append(H._case(T, n, 2, g, 16, dtype, "full" if T == 1 else "tree"))
        return cases
    for dtype in ("fp16", "bf16"):
        for T in (1, 16, 64, 256):
            for n in (0, 1000, 4097):
                for g in (1, 4, 8):  # 32 query heads over 32 / 8 / 4 KV heads
                    cases.append(H._case(T, n, 32 // g, g, 128, dtype, "full" if T == 1 else "tree"))
    return cases


def run(ctx: Ctx) -> dict:
    import torch

    H = tests_module("tree_attention_interp")
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    use_triton = ctx.device == "cuda" or interp
    path = "triton" if ctx.device == "cuda" else ("triton-interpreter" if interp else "cpu-reference-op")
    ctx.log(f"kernel path: {path}")
    rows, bad = [], []
    for c in kernel_case_grid(ctx.dry_run):
        try:
            if use_triton:
                r = H.run_case(c, device=ctx.device)
            else:
                args = H.make_inputs(c)
                out = torch.ops.jetspec.tree_attention(*args)
                r = dict(id=c["id"], **H.compare(out, H.reference_fp32(args), c["dtype"]), finite=True,
                         shape=list(out.shape), contiguous=out.is_contiguous(), dtype_ok=True, dead_rows_zero=True)
            ok = r["excess"] <= 0 and r["finite"] and r["contiguous"] and r["dtype_ok"] and r["dead_rows_zero"]
        except Exception as e:  # noqa: BLE001
            r, ok = dict(id=c["id"], error=f"{type(e).__name__}: {e}"[:300]), False
        r.update(T=c["T"], committed=c["n"], hkv=c["hkv"], gqa=c["g"], head_dim=c["hd"], dtype=c["dtype"], ok=ok)
        rows.append(r)
        if not ok:
            bad.append(c["id"])
            ctx.log(f"  FAIL {c['id']}: {r}")
    if ctx.device == "cuda":
        torch.cuda.synchronize()
    figures = dict(path=path, cases=len(rows), failed=len(bad))
    for dt in sorted({r["dtype"] for r in rows}):
        errs = [r["err"] for r in rows if r["dtype"] == dt and "err" in r]
        figures[f"max_err_{dt}"] = max(errs) if errs else None
    figures["B"] = sorted({r["T"] for r in rows})
    figures["committed"] = sorted({r["committed"] for r in rows})
    figures["gqa"] = sorted({r["gqa"] for r in rows})
    details = dict(cases=rows)
    if bad:
        return dict(status="fail", reason=f"{len(bad)}/{len(rows)} cases beyond tolerance: {bad[:4]}",
                    figures=figures, details=details)
    return dict(status="pass", figures=figures, details=details)
