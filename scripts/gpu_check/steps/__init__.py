"""The step table. Each step is a module of this package with a `run(ctx) -> dict` function."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class StepSpec:
    name: str
    title: str
    timeout_s: int  # limit on a GPU machine (a dry run on a small CPU box gets `dry_timeout_s`)
    est_s: int  # expected duration on an H200 box (used to decide how long timing steps may wait)
    background: bool = False  # started first, runs beside the others
    quiet: bool = False  # a timing step: waits for background steps to end while the budget allows
    needs: tuple[str, ...] = ()  # background steps whose output it reads
    dry_timeout_s: int = 900


STEPS = [
    StepSpec("env", "versions, GPU, driver, API probes", 90, 15),
    StepSpec("aoti_compile", "AOTI packages (CUDA): verify B=16/64/256 + ar_step, Qwen3-8B shapes", 330, 150,
             background=True, dry_timeout_s=1500),
    StepSpec("aoti_export", "export_model(backend='aoti', device='cuda'), Qwen3-8B shapes, B=16", 400, 240,
             background=True, dry_timeout_s=1500),
    StepSpec("kernel_tests", "pytest -m gpu tests/test_tree_attention_kernel.py", 180, 45),
    StepSpec("kernel_cases", "Triton kernel vs fp32 reference: fp16/bf16 x B x committed x GQA", 150, 60),
    StepSpec("lossless", "greedy speculative == autoregressive == HF generate (tiny models)", 200, 50),
    StepSpec("tensorrt", "TensorRT backend (torch_tensorrt)", 200, 5),
    StepSpec("bench", "tree-attention benchmark, Qwen3-8B heads (Triton vs SDPA)", 180, 60, quiet=True),
    StepSpec("aoti_latency", "verify vs ar_step latency + compiled == eager (AOTI packages)", 180, 60,
             quiet=True, needs=("aoti_compile",)),
    StepSpec("aoti_artifact", "runtime.load(artifact): compiled == eager per graph, generate", 180, 60,
             needs=("aoti_export",)),
]


STEP_BY_NAME = {s.name: s for s in STEPS}


def step_function(name: str):
    """The `run(ctx)` of step `name` (imported on demand: the orchestrator imports no step)."""
    return importlib.import_module(f"{__name__}.{name}").run
