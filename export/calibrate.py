"""Export-time calibration: load the freshly compiled graphs and time one round of each budget.

The costs are measured as the runtime runs the graphs: the compiled graphs of the artifact, over the shared
weights, with every linear weight prepacked for `jetspec::linear` (``load_graph``), one thread, at a 256-row cache
(`Decoder.calibrate`: 10 interleaved repetitions, 5 when a call takes 50 ms or more).

Memory. This is a multi-budget export's peak: the process holds the model's weights, what capture and compile
left on the heap, a packed copy of every 2-D weight (as the runtime holds it; 1.00x of the weight bytes at
Qwen3-0.6B shape) and the decoder's caches. Measured at Qwen3-0.6B shape, B=16 + 4,8,32,64, the whole export
peaked at 2.56x the weight bytes before and 2.27x after the two changes below
(results/export_memory_qwen3-0.6b_multi_{before,after}_calibrate_fix.json), which do not change what is timed
(results/calibrate_caches_zeros_vs_lazy_qwen3-0.6b.json: the same costs within run-to-run noise):
- before loading, free what the capture and compile left (a garbage-collector pass, then glibc's
  ``malloc_trim`` hands the freed heap back to the system);
- the caches (S rows per layer: 0.16x of the weights at Qwen3-0.6B shape, S = 2048) are zero pages mapped
  on demand (`decode.zero_cache`, as at run time): the rows the timed rounds read are written with zeros
  first, as the runtime's prefill writes them; the rows above, which no graph reads, cost no memory.
"""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import torch

from jetspec_compile.head import DraftHead
from jetspec_compile.target import Target

CACHE_LEN = 256  # the timed rounds' cache length (min(256, S/2), as Decoder.calibrate takes it)


def release_heap() -> None:
    """Collect garbage and give the freed heap back to the system (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


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
    for cache in (dec.k_cache, dec.v_cache, dec.ctx_k, dec.ctx_v):
        cache[:, :, :cache_len].zero_()  # the rows the rounds read are resident, as at run time
    for name, info in report.items():  # the decoder reads the graphs at call time
        graphs[name] = be.load_graph(folder / info["file"], device, weights, graph=name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runtime is measured; two OpenMP threads spike 5-10x on small CPUs
    try:
        return {k: round(v * 1e3, 4) for k, v in dec.calibrate(cache_len=cache_len).items()}
    finally:
        torch.set_num_threads(threads)
