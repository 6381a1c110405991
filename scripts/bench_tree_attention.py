#!/usr/bin/env python
"""Benchmark `jetspec::tree_attention` (Triton on CUDA) against torch SDPA with an explicit mask.

Qwen3-8B attention shapes by default: 32 query heads, 8 KV heads, head_dim 128, bf16. For every
B (= T, the new rows: a random token tree) and committed cache length it times

  * triton     torch.ops.jetspec.tree_attention (the Triton kernel; reads cache_len on the device)
  * sdpa       F.scaled_dot_product_attention on the prepared contiguous keys cat(cache[:n], k) with
               K/V repeated to all query heads and a materialised additive float mask [B, n + B]
               (the concat, repeat and mask building are done once, outside the timing, which
               favours SDPA)
  * sdpa_gqa   the same with enable_gqa=True instead of the repeat (may fall back to the math
               kernel when a mask is given)

with warmup and CUDA events (median of --reps repetitions of --inner back-to-back calls), and checks
the max abs error of each against `tree_attention_reference` (fp32 math). Prints a table and writes
JSON to --out. TFLOP/s count the dense work 4 * Hq * B * (n + B) * hd.

Without CUDA the script exits with code 2; `--dry-run` instead runs a tiny fp32 configuration on the
CPU (the op's CPU kernel is the reference) to check the plumbing and the JSON output.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import jetspec_compile.ops  # noqa: F401  (registers torch.ops.jetspec.tree_attention)
from jetspec_compile.ops import tree_attention_reference

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def tree_mask(T: int, gen: torch.Generator) -> torch.Tensor:
    """Random token tree in topological order: each node sees its ancestors and itself."""
    parent = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, T)]
    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        m[i, i] = True
        if parent[i] >= 0:
            m[i] |= m[parent[i]]
    return m


def make_case(B, n, hq, hkv, hd, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed + 1000 * B + n)
    cap = n + B  # a static cache with room for the new rows
    q = torch.randn(B, hq, hd, generator=gen).to(device, dtype).transpose(0, 1)  # [Hq, B, hd] view
    k = torch.randn(hkv, B, hd, generator=gen).to(device, dtype)
    v = torch.randn(hkv, B, hd, generator=gen).to(device, dtype)
    kc = torch.randn(hkv, cap, hd, generator=gen).to(device, dtype)
    vc = torch.randn(hkv, cap, hd, generator=gen).to(device, dtype)
    mask = tree_mask(B, gen).to(device)
    cache_len = torch.tensor([n], dtype=torch.int64, device=device)
    return q, k, v, kc, vc, cache_len, mask


def sdpa_inputs(q, k, v, kc, vc, n, mask, repeat: bool):
    """Prepared SDPA operands: q [1, Hq, B, hd], K/V [1, H, n + B, hd], additive mask [1, 1, B, n+B]."""
    hq, hkv = q.shape[0], k.shape[0]
    keys = torch.cat([kc[:, :n], k], dim=1)
    vals = torch.cat([vc[:, :n], v], dim=1)
    if repeat:
        keys = keys.repeat_interleave(hq // hkv, dim=0)
        vals = vals.repeat_interleave(hq // hkv, dim=0)
    B = q.shape[1]
    add = torch.zeros(B, n + B, dtype=q.dtype, device=q.device)
    add[:, n:] = torch.where(mask, 0.0, float("-inf")).to(q.dtype)
    return q.unsqueeze(0), keys.unsqueeze(0).contiguous(), vals.unsqueeze(0).contiguous(), add[None, None]


def time_fn(fn, *, device, warmup: int, reps: int, inner: int) -> float:
    """Median milliseconds of one call."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / inner)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(samples)


def run(args) -> dict:
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = DTYPES[args.dtype]
    hq, hkv, hd = args.hq, args.hkv, args.head_dim
    scale = hd**-0.5
    launch = {k: getattr(args, k) for k in ("num_splits", "block_m", "block_n") if getattr(args, k)}
    if launch and not args.dry_run:
        from jetspec_compile.kernels.tree_attention import triton_tree_attention

        def tree_op(*a):
            return triton_tree_attention(*a, **launch)
    else:
        tree_op = torch.ops.jetspec.tree_attention

    results = []
    for B in args.batch:
        for n in args.committed:
            q, k, v, kc, vc, cl, mask = make_case(B, n, hq, hkv, hd, dtype, device)
            ref = tree_attention_reference(q, k, v, kc, vc, cl, mask, scale).float()  # [B, Hq, hd]
            row = dict(B=B, committed=n, keys=n + B)
            flops = 4.0 * hq * B * (n + B) * hd

            def triton_call(args=(q, k, v, kc, vc, cl, mask, scale)):
                return tree_op(*args)

            out = triton_call()
            row["triton_max_abs_err"] = (out.float() - ref).abs().max().item()
            row["triton_ms"] = time_fn(triton_call, device=device, warmup=args.warmup,
                                       reps=args.reps, inner=args.inner)
            for name, repeat in (("sdpa", True), ("sdpa_gqa", False)):
                sq, sk, sv, am = sdpa_inputs(q, k, v, kc, vc, n, mask, repeat)
                kw = {} if repeat else {"enable_gqa": True}

                def sdpa_call(sq=sq, sk=sk, sv=sv, am=am, kw=kw):
                    return F.scaled_dot_product_attention(sq, sk, sv, attn_mask=am, scale=scale, **kw)

                try:
                    o = sdpa_call()[0].transpose(0, 1)
                    row[f"{name}_max_abs_err"] = (o.float() - ref).abs().max().item()
                    row[f"{name}_ms"] = time_fn(sdpa_call, device=device, warmup=args.warmup,
                                                reps=args.reps, inner=args.inner)
                except (RuntimeError, TypeError) as exc:  # e.g. no GQA support for this backend
                    row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:200]
                    row[f"{name}_ms"] = None
                del sq, sk, sv, am
            for name in ("triton", "sdpa", "sdpa_gqa"):
                ms = row.get(f"{name}_ms")
                row[f"{name}_tflops"] = flops / (ms * 1e-3) / 1e12 if ms else None
            sdpa_times = [x for x in (row["sdpa_ms"], row["sdpa_gqa_ms"]) if x]
            best = min(sdpa_times) if sdpa_times else None
            row["speedup_vs_sdpa"] = row["sdpa_ms"] / row["triton_ms"] if row["sdpa_ms"] else None
            row["speedup_vs_best_sdpa"] = best / row["triton_ms"] if best else None
            results.append(row)
            del q, k, v, kc, vc, cl, mask, ref, out
            if device.type == "cuda":
                torch.cuda.empty_cache()

    info = dict(
        device=torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        dry_run=bool(args.dry_run), torch=torch.__version__, dtype=args.dtype,
        hq=hq, hkv=hkv, head_dim=hd, warmup=args.warmup, reps=args.reps, inner=args.inner,
        launch_overrides=launch, op="jetspec::tree_attention",
        note="speedup = sdpa_ms / triton_ms; SDPA operands (concat, repeat, float mask) prepared outside the timing",
    )
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:  # pragma: no cover
        info["triton"] = None
    return dict(config=info, results=results)


def print_table(report: dict) -> None:
    c = report["config"]
    print(f"# {c['device']}  dtype={c['dtype']}  Hq={c['hq']} Hkv={c['hkv']} hd={c['head_dim']}"
          f"  (median of {c['reps']} reps x {c['inner']} calls){'  [DRY RUN: CPU reference]' if c['dry_run'] else ''}")
    hdr = (f"{'B':>5} {'committed':>9} | {'triton ms':>9} {'TFLOP/s':>8} | {'sdpa ms':>9} {'TFLOP/s':>8}"
           f" | {'gqa ms':>9} | {'speedup':>7} | {'err triton':>10} {'err sdpa':>9}")
    print(hdr)
    print("-" * len(hdr))

    def f(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) and x is not None and math.isfinite(x) else "-"

    for r in report["results"]:
        print(f"{r['B']:>5} {r['committed']:>9} | {f(r['triton_ms'], '9.4f')} {f(r['triton_tflops'], '8.1f')}"
              f" | {f(r['sdpa_ms'], '9.4f')} {f(r['sdpa_tflops'], '8.1f')} | {f(r['sdpa_gqa_ms'], '9.4f')}"
              f" | {f(r['speedup_vs_sdpa'], '7.2f')} | {f(r['triton_max_abs_err'], '10.2e')}"
              f" {f(r.get('sdpa_max_abs_err'), '9.2e')}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny fp32 configuration on the CPU through the reference path (no GPU)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="B = T new rows (16 64 256)")
    p.add_argument("--committed", type=int, nargs="+", default=None, help="cache lengths (1024 4096 16384)")
    p.add_argument("--hq", type=int, default=None)
    p.add_argument("--hkv", type=int, default=None)
    p.add_argument("--head-dim", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--inner", type=int, default=None, help="back-to-back calls per timed repetition")
    p.add_argument("--num-splits", type=int, default=None, help="override the kernel's cache splits")
    p.add_argument("--block-m", type=int, default=None)
    p.add_argument("--block-n", type=int, default=None)
    args = p.parse_args(argv)

    defaults = dict(batch=[16, 64, 256], committed=[1024, 4096, 16384], hq=32, hkv=8, head_dim=128,
                    dtype="bf16", warmup=5, reps=10, inner=10)
    if args.dry_run:
        defaults.update(batch=[4, 5], committed=[0, 8], hq=4, hkv=2, head_dim=16, dtype="fp32",
                        warmup=1, reps=2, inner=1)
    for key, val in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, val)

    if not args.dry_run and not torch.cuda.is_available():
        print("bench_tree_attention: CUDA is not available; this benchmark needs an NVIDIA GPU "
              "(use --dry-run to check the script on the CPU)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    report = run(args)
    print_table(report)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
