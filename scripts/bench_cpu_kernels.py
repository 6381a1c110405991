#!/usr/bin/env python
"""Per-call cost of the CPU kernels, old vs native (one thread, medians of --iters calls).

    python scripts/bench_cpu_kernels.py [--iters 300] [--json out.json]

* tree attention: the previous kernel (a Python `torch.library.custom_op` doing `torch.cat` of the cache
  prefix + SDPA with a bool mask, called through the dispatcher as compiled graphs called it) vs the
  native C++ `jetspec::tree_attention`, at the demo's head shapes (4 query / 2 KV heads, head_dim 64,
  committed 415) and Qwen3-0.6B's (16 / 8, head_dim 128, committed 512 and 2048), T = 1, 16, 64 rows.
* linear: `F.linear` (MKL over [out, in] weights) vs `jetspec::linear` over a prepacked weight, for the demo
  target's linear shapes summed (one decoder step's weights: 6 layers + LM head), M = 1, 4, 16, 64 rows.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from bench_timing import call_seconds, median, write_json


def median_us(fn, iters: int) -> float:
    return 1e6 * median(call_seconds(fn, iters))


def old_op():
    from jetspec_compile.ops import tree_attention_cpu

    @torch.library.custom_op("jetspec_bench::tree_attention_sdpa", mutates_args=())
    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             cache_len: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        return tree_attention_cpu(q, k, v, k_cache, v_cache, cache_len, mask, scale)

    return torch.ops.jetspec_bench.tree_attention_sdpa


def attention_cases(iters: int) -> list[dict]:
    old, new = old_op(), torch.ops.jetspec.tree_attention
    rows = []
    for shape, hq, hkv, hd, ns in (("demo", 4, 2, 64, (415,)), ("qwen3-0.6b", 16, 8, 128, (512, 2048))):
        for n in ns:
            for t in (1, 16, 64):
                S = n + 128
                q = torch.randn(t, hq, hd).transpose(0, 1)
                k, v = torch.randn(hkv, t, hd), torch.randn(hkv, t, hd)
                kc, vc = torch.randn(hkv, S, hd), torch.randn(hkv, S, hd)
                mask = torch.ones(t, t, dtype=torch.bool).tril()
                args = (q, k, v, kc, vc, torch.tensor([n]), mask, hd ** -0.5)
                torch.testing.assert_close(old(*args), new(*args), rtol=1e-4, atol=1e-4)
                a, b = median_us(lambda: old(*args), iters), median_us(lambda: new(*args), iters)
                rows.append(dict(shape=shape, committed=n, rows=t, old_us=a, native_us=b, speedup=a / b))
    return rows


def linear_cases(iters: int) -> list[dict]:
    from jetspec_compile.ops import prepack_linear_weights

    ws = [torch.randn(o, i) for _ in range(6) for o, i in ((256, 256), (128, 256), (128, 256), (256, 256),
                                                             (768, 256), (768, 256), (256, 768))]
    ws.append(torch.randn(4096, 256))
    prepack_linear_weights({str(j): w for j, w in enumerate(ws)})
    rows = []
    for m in (1, 4, 16, 64):
        xs = [torch.randn(m, w.shape[1]) for w in ws]
        a = median_us(lambda: [F.linear(x, w) for x, w in zip(xs, ws)], iters)
        b = median_us(lambda: [torch.ops.jetspec.linear(x, w) for x, w in zip(xs, ws)], iters)
        rows.append(dict(rows=m, weights_mb=sum(w.numel() * 4 for w in ws) / 1e6, old_us=a, native_us=b,
                         speedup=a / b))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import jetspec_compile.ops  # noqa: F401

    res = {"attention": attention_cases(args.iters), "linear": linear_cases(args.iters // 3)}
    print("| tree attention | committed | rows T | old (us) | native (us) | speedup |\n|---|---:|---:|---:|---:|---:|")
    for r in res["attention"]:
        print(f"| {r['shape']} | {r['committed']} | {r['rows']} | {r['old_us']:.0f} | {r['native_us']:.0f} | "
              f"{r['speedup']:.1f}x |")
    print("\n| linear, demo step weights | rows M | F.linear (us) | jetspec::linear (us) | speedup |\n|---|---:|---:|---:|---:|")
    for r in res["linear"]:
        print(f"| {r['weights_mb']:.1f} MB | {r['rows']} | {r['old_us']:.0f} | {r['native_us']:.0f} | {r['speedup']:.2f}x |")
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
