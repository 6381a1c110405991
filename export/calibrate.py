"""Export-time calibration: load the freshly compiled graphs and time one round of each budget.

The costs are measured as the runtime runs the graphs: the compiled graphs of the artifact, over the shared
weights, with every linear weight prepacked for oneDNN (``load_graph``), one thread, at a 256-row cache.

Memory. This is a multi-budget export's peak: the process holds the model's weights, what capture and compile
left on the heap, a packed copy of every 2-D weight (as the runtime holds it; 1.00x of the weight bytes at
Qwen3-0.6B shape) and the decoder's caches. Measured at Qwen3-0.6B shape, B=16 + 4,8,32,64, the whole export
peaked at 2.56x the weight bytes before and 2.27x after the two changes below
(results/export_memory_qwen3-0.6b_multi_{before,after}_calibrate_fix.json), which do not change what is timed
(results/calibrate_caches_zeros_vs_lazy_qwen3-0.6b.json: the same costs within run-to-run noise):
- before loading, free what the capture and compile left (a garbage-collector pass, then glibc's
  ``malloc_trim`` hands the freed heap back to the system);
- the caches (S rows per layer: 0.16x of the weights at Qwen3-0.6B shape, S = 2048) are zero pages mapped
  on demand: the rows the timed rounds read (below the cache length) are written with zeros first, as the
  runtime's would be; the rows above it are never read by the graphs, so they cost no memory.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
from pathlib import Path

import torch

from jetspec_compile.head import DraftHead
from jetspec_compile.target import Target

CACHE_LEN = 256          # the timed rounds' cache length (min(256, S/2), as Decoder.calibrate takes it)
REPS = 10                # interleaved repetitions per budget (median)
REPS_SLOW = 5            # ... when one ar_step takes SLOW_S or more (real shapes: a round costs 0.2-1.3 s;
                         # calibration 58 s -> 40 s at Qwen3-0.6B shape, six budgets)
SLOW_S = 0.05


def release_heap() -> None:
    """Collect garbage and give the freed heap back to the system (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def lazy_zeros(like: torch.Tensor) -> torch.Tensor:
    """A zero tensor shaped like ``like`` (CPU) over an anonymous private mapping: the kernel maps its pages
    on first touch, so rows never written or read cost no memory."""
    n = like.numel() * like.element_size()
    if n == 0:
        return torch.zeros_like(like)
    buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(buf, dtype=like.dtype).view(like.shape)


def calibrate_costs(folder: Path, report: dict, be, device: str, weights: dict, specs: dict, main: int,
                    depths: dict[int, int], target: Target, head: DraftHead) -> dict[str, float]:
    """Load the compiled graphs and time one round of each budget (draft + verify) and one ar_step, in ms."""
    from jetspec_compile.adaptive import Arm
    from jetspec_compile.decode import CacheDims, Decoder

    release_heap()
    spec = specs[main]
    dims = CacheDims.from_models(target, head, depths[main])
    arms = [Arm(b, depths[b], 0.0) for b in specs]
    graphs: dict = {}
    dec = Decoder(graphs, budget=main, topk=spec.topk, max_seq_len=spec.max_seq_len,
                  prefill_chunk=spec.prefill_chunk, dims=dims, device=device, lookup=spec.lookup, arms=arms)
    cache_len = min(CACHE_LEN, dec.S // 2)
    if torch.device(device).type == "cpu":
        for name in ("k_cache", "v_cache", "ctx_k", "ctx_v"):
            cache = lazy_zeros(getattr(dec, name))
            cache[:, :, :cache_len].zero_()  # the rows the rounds read are resident, as at run time
            setattr(dec, name, cache)
        release_heap()
    for name, info in report.items():  # the decoder reads the graphs at call time
        graphs[name] = be.load_graph(folder / info["file"], device, weights, graph=name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runtime is measured; two OpenMP threads spike 5-10x on small CPUs
    try:
        return {k: round(v * 1e3, 4) for k, v in dec.calibrate(_reps(dec, cache_len), cache_len).items()}
    finally:
        torch.set_num_threads(threads)


def _reps(dec, cache_len: int) -> int:
    """REPS, or REPS_SLOW when one ar_step takes SLOW_S or more (its second call, timed here)."""
    import time

    ar = dec.graphs.get("ar_step")
    if ar is None:
        return REPS
    anchor = torch.zeros(1, dtype=torch.int64, device=dec.device)
    cl = torch.full((1,), cache_len, dtype=torch.int64, device=dec.device)
    dt = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        int(ar(anchor, cl, dec.k_cache, dec.v_cache)[0].reshape(-1)[0])
        dt = time.perf_counter() - t0
    return REPS_SLOW if dt >= SLOW_S else REPS
