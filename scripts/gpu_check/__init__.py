"""GPU validation kit: one command that proves the GPU paths of jetspec-compile on a lent GPU machine.

    scripts/gpu_check.sh OUTDIR                 # on the GPU machine (its own python3, repo on PYTHONPATH)
    scripts/gpu_check.sh OUTDIR --dry-run       # the same plumbing on the CPU, tiny shapes, no CUDA

Everything lands in OUTDIR: ``results.json`` (every step's record), ``summary.json`` + ``summary.md`` (one
table of pass / fail / skip and the figures), ``steps/<step>.log`` and ``steps/<step>.json``, the kernel
benchmark's JSON and pytest's junit XML. Large things (compiled packages, the 8B-shaped artifact with its
~3 GB of weights, Inductor / Triton caches) go to a work folder outside OUTDIR that is deleted at the end.

Steps (each runs in its own process with its own timeout; a failure never stops the others):

  env            versions (torch, CUDA, Triton, transformers, GPU, driver) and probes of every torch /
                 transformers / Triton API the project calls
  aoti_compile   background: AOTInductor packages (CUDA) of the verify graph at B = 16 / 64 / 256 and of
                 ar_step, for a Qwen3-8B-shaped target cut to a few layers (random bf16 weights) + a
                 1-layer block-16 head, one worker process per package
  aoti_export    background: export.pipeline.export_model(..., backend="aoti", device="cuda") of the
                 same models at B = 16 (prefill, draft, verify, ar_step + weights + manifest)
  kernel_tests   python -m pytest -m gpu tests/test_tree_attention_kernel.py
  kernel_cases   the Triton kernel against the fp32 torch reference: fp16 / bf16 x B x committed
                 length x GQA ratio (Qwen3-8B heads)
  lossless       greedy speculative == autoregressive == HF generate, tiny models on CUDA (fp32 dense and
                 MoE must match token for token; bf16 is reported only: near-tie flips are expected)
  tensorrt       the TensorRT backend when torch_tensorrt imports; otherwise a skip saying why
  bench          scripts/bench_tree_attention.py at Qwen3-8B head shapes (Triton vs SDPA with a mask)
  aoti_latency   verify (B = 16 / 64 / 256) vs ar_step latency of the compiled packages (CUDA events,
                 medians) and compiled == eager on the same inputs (accepted tokens equal, K/V rows close)
  aoti_artifact  runtime.load of the exported artifact: every graph compiled == eager, and generation
                 through the runtime (speculative and autoregressive)

The summary writer (`summary.py`: `build_summary`, `render_markdown`, `write_summary`; CLI ``summarize
OUTDIR``) works on recorded results alone. ``readme OUTDIR`` prints the README "GPU status" section from a
summary.

Layout: `steps/<name>.py` holds one step each (a `run(ctx) -> dict`), `steps/__init__.py` the step table;
`runner.py` runs them (subprocesses, timeouts, the time budget); `models.py` builds the kit's models and
inputs, `compare.py` compares compiled with eager outputs, `common.py` holds small helpers, `cli.py` the
command line. The lossless step's oracle draft and the kernel case builders come from the test suite's
helpers (tests/helpers.py, tests/tree_attention_interp.py), so the kit needs the checkout's tests/ folder.

Run it as ``python scripts/gpu_check [run] --out OUTDIR ...`` (the folder's ``__main__.py``); the shell
wrapper does that.

Time: the kit keeps to a budget of 460 s (``--budget-s``): every step's timeout is clipped to it, timing steps
wait for the background compiles only while the rest still fits, and a step with too little time left is
skipped (recorded as such). The shell wrapper adds a hard limit of 560 s. Knobs if a GPU box is slower than
planned: ``--layers 1``, ``--budgets 16 64``, ``--skip aoti_export``, ``--steps ...``.

On a lent GPU machine (the device tool runs in a copy of the working tree, $OUT comes back):
    bash scripts/gpu_check.sh "$OUT/gpu_check"          # timeout_s 600
"""

from __future__ import annotations

from .cli import main
from .common import BAD, KIT_VERSION, ROOT, STATUSES, Ctx, StepSkip
from .compare import compare_outputs
from .runner import Running, run_all, run_step_here, select_steps
from .steps import STEP_BY_NAME, STEPS, StepSpec
from .summary import GPU_PATHS, build_summary, render_markdown, render_readme_status, write_summary

__all__ = ["BAD", "GPU_PATHS", "KIT_VERSION", "ROOT", "STATUSES", "STEPS", "STEP_BY_NAME", "Ctx", "Running",
           "StepSkip", "StepSpec", "build_summary", "compare_outputs", "main", "render_markdown",
           "render_readme_status", "run_all", "run_step_here", "select_steps", "write_summary"]
