#!/usr/bin/env python
"""jetspec::linear (prepacked: the panel GEMM for fp32) vs F.linear (MKL) on a Qwen3-0.6B-sized LM head [151936, 1024], fp32, one thread,
at M = 1..16 rows (median of 9 after 3 warm-up calls). Usage: flock /tmp/jetspec-heavy.lock python scripts/bench_lm_head_rows.py"""
import time, torch
torch.set_num_threads(1)
import jetspec_compile.ops  # registers jetspec::linear and prepack
w = torch.randn(151936, 1024) * 0.02
torch.ops.jetspec.prepack_linear(w)
for M in (1, 2, 4, 8, 16):
    x = torch.randn(M, 1024)
    for _ in range(3): torch.ops.jetspec.linear(x, w)
    ts = []
    for _ in range(9):
        t0 = time.perf_counter(); torch.ops.jetspec.linear(x, w); ts.append(time.perf_counter() - t0)
    ts2 = []
    for _ in range(9):
        t0 = time.perf_counter(); torch.nn.functional.linear(x, w); ts2.append(time.perf_counter() - t0)
    print(f"M={M}: jetspec::linear (packed) {sorted(ts)[4]*1e3:.1f} ms, F.linear {sorted(ts2)[4]*1e3:.1f} ms", flush=True)
