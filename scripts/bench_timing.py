"""What the micro-benchmark scripts share (``bench_cpu_kernels.py``, ``bench_graphs.py``): timing one call
after a warm-up, and the optional JSON output."""

from __future__ import annotations

import json
import time


def call_seconds(fn, iters: int) -> list[float]:
    """Seconds of ``iters`` calls of ``fn`` after max(5, iters / 10) untimed warm-up calls, sorted."""
    for _ in range(max(5, iters // 10)):
        fn()
    xs = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t0)
    return sorted(xs)


def median(xs: list[float]) -> float:
    """The median of sorted ``xs``."""
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def write_json(path: str | None, res: dict) -> None:
    """``res`` as indented JSON at ``path`` (nothing when path is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
