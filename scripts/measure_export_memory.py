#!/usr/bin/env python
"""Resident memory of an export, phase by phase: exports a synthetic real-shape model in this process while a
thread samples VmRSS every 20 ms, and prints the peak of each phase (capture/compile of each graph, writing
weights, calibrating the budgets' round costs) as a multiple of the weight bytes.

    flock /tmp/jetspec-heavy.lock python scripts/measure_export_memory.py --synthetic qwen3-0.6b \\
        --budget 16 --budgets 4 [--no-clone] --out runs/export-memory

``--no-clone`` measures the export with the weight write's per-tensor ``.clone()`` removed
(export/pipeline.py builds ``{k: v.contiguous().clone().cpu()}`` before ``save_safetensors``; safetensors
0.8 writes from the tensors' own memory, so the clone only adds a full copy). The patch is applied to the
loaded module in memory, for this measurement only; the file is not changed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import threading
import time
from pathlib import Path


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    def __init__(self):
        self.phase = "build"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            r = rss_bytes()
            if r > self.peaks.get(self.phase, 0):
                self.peaks[self.phase] = r
            time.sleep(0.02)

    def log(self, line: str) -> None:
        print(line, flush=True)
        s = line.strip()
        if "captured in" in s:
            self.phase = "capture+compile"
        elif s.startswith("writing weights"):
            self.phase = "write weights"
        elif s.startswith("calibrating"):
            self.phase = "calibrate budgets"
        elif s.startswith("done in"):
            self.phase = "finish"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", default="qwen3-0.6b")
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--budgets", default="4")
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--no-clone", action="store_true")
    ap.add_argument("--out", default="runs/export-memory")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from jetspec_compile.export import pipeline
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.synthetic import synthetic_head, synthetic_target, weight_bytes

    if args.no_clone:
        src = inspect.getsource(pipeline)
        old = "{k: v.contiguous().clone().cpu() for k, v in weights.items()}"
        if old not in src:
            raise SystemExit("error: export/pipeline.py no longer has the weight clone this measures")
        exec(compile(src.replace(old, "{k: v.contiguous().cpu() for k, v in weights.items()}"),
                     pipeline.__file__, "exec"), pipeline.__dict__)
    s = Sampler()
    s._t.start()
    target = synthetic_target(args.synthetic)
    head = synthetic_head(target)
    wb = weight_bytes(target.model) + weight_bytes(head)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s.phase = "capture+compile"
    t0 = time.perf_counter()
    pipeline.export_model(target, head, SpecConfig(budget=args.budget, topk=args.topk, max_seq_len=2048),
                          out / "artifact", backend="aoti", sampling=False, force=True,
                          budgets=[int(b) for b in args.budgets.split(",") if b], log=s.log)
    wall = time.perf_counter() - t0
    time.sleep(0.1)
    s._stop.set()
    res = {"synthetic": args.synthetic, "no_clone": args.no_clone, "weight_bytes": wb, "export_s": wall,
           "peak_by_phase_bytes": s.peaks, "peak_by_phase_over_weights": {k: v / wb for k, v in s.peaks.items()}}
    name = f"memory_{'noclone' if args.no_clone else 'clone'}.json"
    (out / name).write_text(json.dumps(res, indent=2))
    for k, v in s.peaks.items():
        print(f"{k:20s} peak {v / 1e9:6.2f} GB = {v / wb:.2f}x weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
