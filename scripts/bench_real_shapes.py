#!/usr/bin/env python
"""Real Qwen3 shapes on the CPU: export a synthetic (random-weight) target + paper-proportioned head with aoti,
record export time, peak RSS and artifact size, then time ar_step / draft / verify(B) per budget (one thread)
and derive break-even tau and a PROJECTED speedup at the paper's published HumanEval tau.

    flock /tmp/jetspec-heavy.lock python scripts/bench_real_shapes.py --synthetic qwen3-0.6b \
        --budgets 4,8,16,32,64 --out runs/real-shapes

Each budget is one export (draft and verify are static in B). The projection is
speedup = tau_paper / ((draft + verify(B)) / ar_step): a projection from published tau, not a measurement
(the weights are random; tau is not measured here). Writes <out>/real_shapes.json and real_shapes.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

PAPER_TAU = {16: 5.32, 32: 5.35, 64: 5.52, 128: 6.39}   # JetSpec paper, HumanEval


def peak_rss_bytes() -> dict:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self": self_kb * 1024, "children": child_kb * 1024}


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", default="qwen3-0.6b")
    ap.add_argument("--budgets", default="4,8,16,32,64")
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=2048)
    ap.add_argument("--prefill-chunk", type=int, default=128)
    ap.add_argument("--cache-len", type=int, default=512)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/real-shapes")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from bench_graphs import timed
    from jetspec_compile import SpecConfig
    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.runtime import load
    from jetspec_compile.synthetic import synthetic_head, synthetic_target, weight_bytes
    from jetspec_compile.tiny import tiny_head, tiny_target

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.synthetic == "tiny":      # a check of the script itself
        target = tiny_target(vocab_size=128, num_layers=4)
        head = tiny_head(target, num_layers=2, block_size=16)
    else:
        target = synthetic_target(args.synthetic)
        head = synthetic_head(target)
    build_s = time.perf_counter() - t0
    wbytes = weight_bytes(target.model if hasattr(target, "model") else target) + weight_bytes(head)
    res = {"synthetic": args.synthetic, "weight_bytes": wbytes, "build_s": build_s, "threads": args.threads,
           "cache_len": args.cache_len, "max_seq_len": args.max_seq_len, "topk": args.topk, "budgets": {}}
    print(f"built {args.synthetic}: {wbytes / 2**30:.2f} GiB fp32 weights in {build_s:.0f} s", flush=True)
    for b in [int(x) for x in args.budgets.split(",")]:
        depth = min(15, -(-(b - 1) // args.topk))
        spec = SpecConfig(budget=b, topk=args.topk, max_seq_len=args.max_seq_len, prefill_chunk=args.prefill_chunk)
        art = out / f"{args.synthetic}-b{b}"
        t1 = time.perf_counter()
        export_model(target, head, spec, art, backend="aoti", sampling=False, force=True)
        exp_s = time.perf_counter() - t1
        rss = peak_rss_bytes()
        eng = load(str(art))
        dec = eng.decoder
        prompt = torch.randint(3, min(1000, target.vocab_size - 2), (args.cache_len + 1,), generator=torch.Generator().manual_seed(0)).tolist()
        L = dec.prefill(prompt)
        g, cl = dec.graphs, dec._cache_len(L)
        anchor = torch.tensor([prompt[-1]])
        tree = g["draft"](anchor, cl, dec.ctx_k, dec.ctx_v)
        tok = torch.tensor([5])
        gc.collect(); gc.disable()
        r = {"ar_step": timed(lambda: g["ar_step"](tok, cl, dec.k_cache, dec.v_cache), args.iters),
             "draft": timed(lambda: g["draft"](anchor, cl, dec.ctx_k, dec.ctx_v), args.iters),
             "verify": timed(lambda: g["verify"](*tree[:4], cl, dec.k_cache, dec.v_cache), args.iters)}
        gc.enable()
        # host share: a short greedy generation, round wall time outside the graph calls
        gen = eng.generate(prompt[:64], 32)
        st = gen.stats
        ar = r["ar_step"]["median_ms"]
        r.update(export_s=exp_s, peak_rss=rss, artifact_bytes=dir_bytes(art), depth=dec.D,
                 verify_over_ar=r["verify"]["median_ms"] / ar, draft_over_ar=r["draft"]["median_ms"] / ar,
                 break_even_tau=(r["draft"]["median_ms"] + r["verify"]["median_ms"]) / ar,
                 stats={k: getattr(st, k) for k in ("rounds", "tau") if hasattr(st, k)})
        if b in PAPER_TAU:
            r["paper_tau"] = PAPER_TAU[b]
            r["projected_speedup"] = PAPER_TAU[b] / r["break_even_tau"]
        res["budgets"][b] = r
        print(f"B={b}: export {exp_s:.0f} s, verify/ar {r['verify_over_ar']:.2f}, draft/ar {r['draft_over_ar']:.2f},"
              f" break-even tau {r['break_even_tau']:.2f}", flush=True)
        del eng, dec, g
        gc.collect()
        (out / "real_shapes.json").write_text(json.dumps(res, indent=2, default=str))
    lines = ["| B | verify/ar_step | draft/ar_step | break-even tau | paper tau | projected speedup (not measured) |",
             "|---|---|---|---|---|---|"]
    for b, r in res["budgets"].items():
        lines.append(f"| {b} | {r['verify_over_ar']:.2f} | {r['draft_over_ar']:.2f} | {r['break_even_tau']:.2f} | "
                     f"{r.get('paper_tau', '-')} | {r.get('projected_speedup', float('nan')):.2f} |")
    (out / "real_shapes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    sys.exit(main())
