"""Step `bench`: scripts/bench_tree_attention.py at Qwen3-8B head shapes (Triton vs SDPA with a mask)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess

from ..common import ROOT, Ctx, load_file_module, python_cmd


def run(ctx: Ctx) -> dict:
    out = ctx.out / "bench_tree_attention.json"
    argv = ["--out", str(out)] + (["--dry-run"] if ctx.dry_run else [])
    if ctx.opts.get("in_process"):
        bench = load_file_module("bench_tree_attention", ROOT / "scripts" / "bench_tree_attention.py")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = bench.main(argv)
        ctx.log(buf.getvalue())
    else:
        cmd = python_cmd() + [str(ROOT / "scripts" / "bench_tree_attention.py")] + argv
        ctx.log("$ " + " ".join(cmd))
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                           timeout=float(ctx.opts.get("inner_timeout", 170)))
        ctx.log(r.stdout[-8000:] + r.stderr[-3000:])
        rc = r.returncode
    if rc != 0 or not out.is_file():
        return dict(status="fail", reason=f"bench_tree_attention.py exited {rc}", figures={}, details={})
    rep = json.loads(out.read_text())
    cfg = rep["config"]
    tol = 1e-4 if cfg["dtype"] == "fp32" else 3e-2
    rows = [dict(B=r["B"], committed=r["committed"], triton_ms=r["triton_ms"], triton_tflops=r["triton_tflops"],
                 sdpa_ms=r["sdpa_ms"], sdpa_tflops=r["sdpa_tflops"], sdpa_gqa_ms=r.get("sdpa_gqa_ms"),
                 speedup_vs_sdpa=r["speedup_vs_sdpa"], speedup_vs_best_sdpa=r.get("speedup_vs_best_sdpa"),
                 triton_max_abs_err=r["triton_max_abs_err"]) for r in rep["results"]]
    sp = [r["speedup_vs_sdpa"] for r in rows if r["speedup_vs_sdpa"]]
    figures = dict(device=cfg["device"], dtype=cfg["dtype"], heads=f"{cfg['hq']}/{cfg['hkv']}x{cfg['head_dim']}",
                   rows=rows, json=out.name,
                   geomean_speedup_vs_sdpa=math.exp(sum(map(math.log, sp)) / len(sp)) if sp else None,
                   min_speedup_vs_sdpa=min(sp) if sp else None, max_speedup_vs_sdpa=max(sp) if sp else None,
                   max_err=max(r["triton_max_abs_err"] for r in rows) if rows else None)
    bad = [r for r in rows if not (r["triton_max_abs_err"] <= tol)]
    if bad:
        return dict(status="fail", reason=f"{len(bad)} configurations beyond {tol} max abs error",
                    figures=figures, details=dict(config=cfg))
    return dict(status="pass", figures=figures, details=dict(config=cfg))
