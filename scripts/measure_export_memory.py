#!/usr/bin/env python
"""Time and resident memory of a whole export, phase by phase: builds a synthetic real-shape model and exports
it in this process while a thread samples VmRSS every 10 ms. Prints, per phase, the RSS when the phase began and
its peak, as multiples of the fp32 weight bytes (target + head parameters and buffers); the whole process's
peak is VmHWM (the kernel's high-water mark, which no sampling can miss).

    flock /tmp/jetspec-heavy.lock python scripts/measure_export_memory.py --synthetic qwen3-0.6b \\
        --budget 16 --budgets 4,8,32,64 --out runs/export-memory --name multi

Phases: build (the random model), capture+compile (every graph), write weights, and with --budgets the cost
calibration split into its parts: ``calibrate: load graphs`` (aoti_load_package + user-managed constants),
``calibrate: prepack`` (registering each graph's linear weights with jetspec::linear: one packed copy of
every 2-D weight, once; 16-column panels for fp32), ``calibrate: time rounds`` (Decoder.calibrate), then
finish (manifest, rename). The phase
marks come from the export's log lines and from wrappers around the backend's load_graph, the ops'
prepack_linear_weights and Decoder.calibrate; the wrappers only record RSS, they change nothing.

Writes <out>/memory_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    return _status("VmRSS")


class Sampler:
    def __init__(self):
        self.phase = "build"
        self.peaks: dict[str, int] = {}
        self.start_rss: dict[str, int] = {"build": rss_bytes()}
        self.start_s: dict[str, float] = {"build": time.perf_counter()}
        self.marks: list[tuple[str, float, int]] = []  # (label, seconds since start, rss)
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        r = rss_bytes()
        with self._lock:
            if r > self.peaks.get(self.phase, 0):
                self.peaks[self.phase] = r

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.01)

    def enter(self, phase: str) -> None:
        self._sample()
        with self._lock:
            if phase != self.phase:
                self.phase = phase
                if phase not in self.start_rss:
                    self.start_rss[phase] = rss_bytes()
                    self.start_s[phase] = time.perf_counter()
        self._sample()

    def mark(self, label: str) -> None:
        self.marks.append((label, round(time.perf_counter() - self.t0, 2), rss_bytes()))

    def log(self, line: str) -> None:
        print(line, flush=True)
        s = line.strip()
        if "captured in" in s:
            self.enter("capture+compile")
        elif s.startswith("writing weights"):
            self.enter("write weights")
        elif s.startswith("calibrating"):
            self.enter("calibrate")
            self.mark("calibrate begins")
        elif s.startswith("round cost"):
            self.enter("finish")
            self.mark("calibrate ends")
        elif s.startswith("done in"):
            self.enter("finish")


def instrument(s: Sampler) -> None:
    """Phase marks around the calibration's parts (records RSS only)."""
    from jetspec_compile import ops
    from jetspec_compile.backends.aoti import AotiBackend
    from jetspec_compile.decode import Decoder

    load, prepack, calibrate = AotiBackend.load_graph, ops.prepack_linear_weights, Decoder.calibrate
    state = {"loads": 0, "packed": 0, "packed_bytes": 0}

    def load_graph(self, path, *a, **k):
        s.enter("calibrate: load graphs")
        out = load(self, path, *a, **k)
        state["loads"] += 1
        s.mark(f"loaded {Path(path).name}")
        return out

    def prepack_linear_weights(weights):
        s.enter("calibrate: prepack")
        n = prepack(weights)
        state["packed"] = int(ops.torch.ops.jetspec.registered_linear_weights())
        s.enter("calibrate: load graphs")
        return n

    def dec_calibrate(self, *a, **k):
        s.enter("calibrate: time rounds")
        s.mark("timing begins")
        out = calibrate(self, *a, **k)
        s.mark("timing ends")
        return out

    AotiBackend.load_graph = load_graph
    ops.prepack_linear_weights = prepack_linear_weights
    Decoder.calibrate = dec_calibrate
    s.state = state


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", default="qwen3-0.6b")
    ap.add_argument("--num-layers", type=int, default=None, help="decoder layers to build (default: the published number)")
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--budgets", default="4", help="extra budgets, comma separated ('' for one budget)")
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=2048)
    ap.add_argument("--out", default="runs/export-memory")
    ap.add_argument("--name", default=None, help="result file name part (default: single or multi)")
    args = ap.parse_args(argv)
    s = Sampler()
    s._t.start()
    import torch

    torch.set_num_threads(1)
    from jetspec_compile.artifact.manifest import Manifest
    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.synthetic import synthetic_head, synthetic_target, weight_bytes

    instrument(s)
    t_start = time.perf_counter()
    target = synthetic_target(args.synthetic, num_layers=args.num_layers)
    head = synthetic_head(target)
    wb = weight_bytes(target.model) + weight_bytes(head)
    emb = int(target.model.get_input_embeddings().weight.numel()) * target.dtype.itemsize
    two_d = sum(int(p.numel()) * p.element_size() for m in (target.model, head) for p in m.parameters() if p.dim() == 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    s.enter("capture+compile")
    s.mark("export begins")
    t0 = time.perf_counter()
    manifest = export_model(target, head, SpecConfig(budget=args.budget, topk=args.topk, max_seq_len=args.max_seq_len),
                            out / "artifact", backend="aoti", sampling=False, force=True, budgets=budgets, log=s.log)
    export_s = time.perf_counter() - t0
    manifest = Manifest.from_json(manifest)  # typed: no manifest key is spelled here
    s.mark("export ends")
    time.sleep(0.1)
    s._stop.set()
    hwm = _status("VmHWM")
    art = out / "artifact"
    art_bytes = sum(p.stat().st_size for p in art.iterdir() if p.is_file())
    name = args.name or ("multi" if budgets else "single")
    res = {
        "synthetic": args.synthetic, "num_layers": target.num_layers, "budget": args.budget, "budgets": budgets,
        "topk": args.topk, "max_seq_len": args.max_seq_len, "graphs": len(manifest.graphs),
        "weight_bytes": wb, "embedding_bytes": emb, "two_d_weight_bytes": two_d, "artifact_bytes": art_bytes,
        "build_s": round(t0 - t_start, 1), "export_s": round(export_s, 1), "total_s": round(time.perf_counter() - t_start, 1),
        "manifest_export_s": manifest.export_s, "budget_cost_ms": manifest.budgets.cost_ms if manifest.budgets else None,
        "peak_rss_bytes": hwm, "peak_over_weights": round(hwm / wb, 3),
        "phases": {k: {"start_over_weights": round(s.start_rss[k] / wb, 3),
                       "peak_over_weights": round(s.peaks.get(k, 0) / wb, 3),
                       "start_bytes": s.start_rss[k], "peak_bytes": s.peaks.get(k, 0)} for k in s.start_rss},
        "marks": [{"at_s": t, "label": lab, "rss_over_weights": round(r / wb, 3)} for lab, t, r in s.marks],
        "packed_weights": s.state["packed"],
        "command": "python scripts/measure_export_memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "torch_threads": torch.get_num_threads(), "pid": os.getpid(),
    }
    (out / f"memory_{name}.json").write_text(json.dumps(res, indent=2))
    print(f"weights {wb / 1e9:.2f} GB (embedding {emb / 1e9:.2f} GB, 2-D {two_d / 1e9:.2f} GB); "
          f"build {res['build_s']} s, export {res['export_s']} s, total {res['total_s']} s")
    for k, v in res["phases"].items():
        print(f"{k:26s} start {v['start_over_weights']:.2f}x  peak {v['peak_over_weights']:.2f}x")
    print(f"process peak (VmHWM) {hwm / 1e9:.2f} GB = {hwm / wb:.2f}x weights; artifact {art_bytes / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
