#!/usr/bin/env python
"""Per-graph latency of an artifact at a realistic cache length: ar_step, draft, verify (one thread).

    python scripts/bench_graphs.py ARTIFACT [--cache-len 415] [--iters 300] [--json out.json]

Fills the caches by prefilling a prompt of --cache-len tokens from the demo's held-out files (or random
tokens when the artifact has no tokenizer), then times each graph call --iters times after a warm-up
and prints median / p90 milliseconds, plus the break-even tau of a round (draft + verify) / ar_step.
"""

from __future__ import annotations

import argparse
import gc
import sys

from bench_timing import call_seconds, median, write_json


def timed(fn, iters: int) -> dict:
    xs = call_seconds(fn, iters)
    return {"median_ms": 1e3 * median(xs), "p90_ms": 1e3 * xs[int(0.9 * (len(xs) - 1))]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--cache-len", type=int, default=415)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from jetspec_compile.runtime import load

    eng = load(args.artifact)
    dec = eng.decoder
    prompt = torch.randint(3, 100, (args.cache_len + 1,), generator=torch.Generator().manual_seed(0)).tolist()
    L = dec.prefill(prompt)
    g = dec.graphs
    cl = dec._cache_len(L)
    anchor = torch.tensor([prompt[-1]])
    chain = (torch.zeros(dec.L, dtype=torch.int64), torch.tensor([dec.L])) if getattr(dec, "L", 0) else ()  # a full chain
    tree = g["draft"](anchor, cl, dec.ctx_k, dec.ctx_v, *chain)
    tok = torch.tensor([5])
    gc.collect()
    gc.freeze()
    gc.disable()
    res = {
        "ar_step": timed(lambda: g["ar_step"](tok, cl, dec.k_cache, dec.v_cache), args.iters),
        "draft": timed(lambda: g["draft"](anchor, cl, dec.ctx_k, dec.ctx_v, *chain), args.iters),
        "verify": timed(lambda: g["verify"](*tree[:4], cl, dec.k_cache, dec.v_cache), args.iters),
    }
    gc.enable()
    ar = res["ar_step"]["median_ms"]
    res["break_even_tau"] = (res["draft"]["median_ms"] + res["verify"]["median_ms"]) / ar
    res["budget"], res["cache_len"] = dec.B, L
    for k in ("ar_step", "draft", "verify"):
        print(f"{k:8s} median {res[k]['median_ms']:.3f} ms  p90 {res[k]['p90_ms']:.3f} ms")
    print(f"B={dec.B} L={getattr(dec, 'L', 0)} D={dec.D} cache_len={L}: break-even tau {res['break_even_tau']:.2f}")
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
