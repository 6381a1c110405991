#!/usr/bin/env python3
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

The summary writer (`build_summary`, `render_markdown`, `write_summary`; CLI ``summarize OUTDIR``) works
on recorded results alone. ``readme OUTDIR`` prints the README "GPU status" section from a summary.

Time: the kit keeps to a budget of 460 s (``--budget-s``): every step's timeout is clipped to it, timing steps
wait for the background compiles only while the rest still fits, and a step with too little time left is
skipped (recorded as such). The shell wrapper adds a hard limit of 560 s. Knobs if a GPU box is slower than
planned: ``--layers 1``, ``--budgets 16 64``, ``--skip aoti_export``, ``--steps ...``.

On a lent GPU machine (the device tool runs in a copy of the working tree, $OUT comes back):
    bash scripts/gpu_check.sh "$OUT/gpu_check"          # timeout_s 600
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT_VERSION = 1
STATUSES = ("pass", "fail", "skip", "error", "timeout")
BAD = ("fail", "error", "timeout")


# ==================================================================================================
# the step table


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


class StepSkip(Exception):
    """Raised by a step to record status "skip" with a reason."""


# ==================================================================================================
# small helpers (no torch at import time: the orchestrator never imports torch or touches CUDA)


def python_cmd() -> list[str]:
    """This interpreter, keeping -S (tests run the kit without site-packages' .pth files)."""
    return [sys.executable] + (["-S"] if sys.flags.no_site else [])


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if hasattr(x, "item") and getattr(x, "numel", lambda: 2)() == 1:
        return _jsonable(x.item())
    return str(x)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def tail(path: Path, n: int = 2500) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-n:]


def last_error(path: Path) -> str:
    """The last exception line of a log (or its last line)."""
    lines = [ln.strip() for ln in tail(path, 20000).splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) or head in ("AssertionError", "SystemExit"):
            return ln[:400]
    return lines[-1][:400] if lines else "(empty log)"


def _rnd(x, nd=4):
    return None if x is None else round(float(x), nd)


class Ctx:
    """What a step gets: where to write, the work folder, dry-run or not, the model options."""

    def __init__(self, out: Path, work: Path, dry_run: bool, opts: dict, log=print):
        self.out = Path(out)
        self.work = Path(work)
        self.dry_run = bool(dry_run)
        self.opts = dict(opts)
        self._log = log
        self.device = "cpu" if dry_run else "cuda"

    def log(self, msg: str) -> None:
        self._log(msg)
        sys.stdout.flush()


def kit_options(args) -> dict:
    return dict(layers=args.layers, seq_len=args.seq_len, budgets=args.budgets, seed=args.seed)


# ==================================================================================================
# models: a Qwen3-8B-shaped target cut to a few layers + a matching 1-layer head (tiny in a dry run)


def model_dims(ctx: Ctx) -> dict:
    o = ctx.opts
    if ctx.dry_run:
        d = dict(name="tiny (dry run)", vocab_size=256, hidden_size=64, intermediate_size=128, heads=4,
                 kv_heads=2, head_dim=16, layers=2, block_size=6, topk=3, seq_len=96, prefill=16,
                 budgets=[4, 8], dtype="float32", committed=40)
    else:
        d = dict(name="Qwen3-8B-shaped", vocab_size=151936, hidden_size=4096, intermediate_size=12288, heads=32,
                 kv_heads=8, head_dim=128, layers=2, block_size=16, topk=7, seq_len=2048, prefill=128,
                 budgets=[16, 64, 256], dtype="bfloat16", committed=1024)
    if o.get("layers"):
        d["layers"] = int(o["layers"])
    if o.get("seq_len"):
        d["seq_len"] = int(o["seq_len"])
    if o.get("budgets"):
        d["budgets"] = [int(b) for b in o["budgets"]]
    d["committed"] = min(d["committed"], d["seq_len"] - max(d["budgets"]) - d["block_size"] - 2)
    d["taps"] = [min(d["layers"] - 1, int(round(i * (d["layers"] - 1) / 4))) for i in range(5)]
    d["seed"] = int(o.get("seed") or 0)
    return d


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def build_models(dims: dict, device: str):
    """Random-weight target (HF Qwen3ForCausalLM, built directly on `device`) and head, in dims["dtype"]."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from jetspec_compile.target import load_target
    from jetspec_compile.tiny import tiny_head

    dtype = _dtype(dims["dtype"])
    cfg = Qwen3Config(
        vocab_size=dims["vocab_size"], hidden_size=dims["hidden_size"], intermediate_size=dims["intermediate_size"],
        num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"], num_key_value_heads=dims["kv_heads"],
        head_dim=dims["head_dim"], max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="sdpa",
        initializer_range=0.02 if dims["hidden_size"] > 256 else 0.2,  # tiny: larger, so greedy is not degenerate
    )
    torch.manual_seed(dims["seed"])
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg)
    model = model.to(dtype).eval()
    target = load_target(model, tap_layers=dims["taps"], dtype=dtype, device=device)
    std = 0.02 if dims["hidden_size"] > 256 else 0.2
    head = tiny_head(target, num_layers=1, block_size=dims["block_size"], std=std, seed=dims["seed"])
    head = head.to(device=device, dtype=dtype).eval()
    return target, head


def spec_for(dims: dict, budget: int):
    from jetspec_compile.graphs import SpecConfig

    return SpecConfig(budget=int(budget), topk=dims["topk"], max_seq_len=dims["seq_len"],
                      prefill_chunk=dims["prefill"])


def package_name(graph: str, budget: int) -> str:
    return f"{graph}_b{budget}.pt2"


def compile_plan(dims: dict) -> list[tuple[str, int]]:
    return [("verify", b) for b in dims["budgets"]] + [("ar_step", dims["budgets"][0])]


# ==================================================================================================
# realistic inputs and comparisons


class State:
    """Random committed caches of length L, a prompt chunk, an anchor, and an oracle tree whose first
    path is the target's own greedy continuation (so acceptance goes deep)."""

    def __init__(self, target, head, dims: dict, device: str):
        import torch

        self.device = device
        self.dtype = target.dtype
        self.L = int(dims["committed"])
        S, P = dims["seq_len"], dims["prefill"]
        g = torch.Generator().manual_seed(1234 + dims["seed"])

        def rnd(*shape):
            return torch.randn(*shape, generator=g).to(device=device, dtype=self.dtype)

        nl, hkv, hd = target.num_layers, target.num_kv_heads, target.head_dim
        self.k_cache, self.v_cache = rnd(nl, hkv, S, hd), rnd(nl, hkv, S, hd)
        self.ctx_k = rnd(len(head.layers), head.num_kv_heads, S, head.head_dim)
        self.ctx_v = rnd(len(head.layers), head.num_kv_heads, S, head.head_dim)
        i64 = dict(dtype=torch.int64, device=device)
        V = target.vocab_size
        self.prompt_chunk = torch.randint(0, V - 1, (P,), generator=g).to(device)
        self.prefill_len = torch.tensor([max(0, self.L - P)], **i64)
        self.anchor = torch.randint(0, V - 1, (1,), generator=g).to(device)
        self.cache_len = torch.tensor([self.L], **i64)
        self.gen = g
        self.chain: list[int] | None = None

    def greedy_chain(self, ar_step, n: int) -> list[int]:
        """n greedy tokens after the anchor from the eager ar_step graph (rows written into cache copies)."""
        import torch

        kc, vc = self.k_cache.clone(), self.v_cache.clone()
        tok = self.anchor.clone()
        out = []
        with torch.inference_mode():
            for i in range(n):
                cl = torch.tensor([self.L + i], dtype=torch.int64, device=self.device)
                nxt, _, k, v = ar_step(tok, cl, kc, vc)
                kc[:, :, self.L + i] = k[:, :, 0]
                vc[:, :, self.L + i] = v[:, :, 0]
                tok = nxt.reshape(1)
                out.append(int(tok[0]))
        self.chain = out
        return out

    def tree(self, depth: int, topk: int, budget: int, vocab: int):
        """A best-first tree whose rank-0 candidates are the greedy chain (other ranks random, distinct)."""
        import torch

        from jetspec_compile.tree import build_tree

        toks = torch.zeros(depth, topk, dtype=torch.int64)
        for d in range(depth):
            true = self.chain[d] if self.chain and d < len(self.chain) else 0
            perm = torch.randperm(vocab - 1, generator=self.gen)
            perm = perm[perm != true][:topk]
            perm[0] = true
            toks[d] = perm
        lps = torch.full((depth, topk), -3.0) - torch.arange(topk).float()
        lps[:, 0] = -0.01
        dev = self.device
        return build_tree(self.anchor, toks.to(dev), lps.to(dev), budget)

    def args(self, name: str, tree=None) -> tuple:
        if name == "prefill":
            return (self.prompt_chunk, self.prefill_len, self.k_cache, self.v_cache)
        if name == "draft":
            return (self.anchor, self.cache_len, self.ctx_k, self.ctx_v)
        if name == "ar_step":
            return (self.anchor, self.cache_len, self.k_cache, self.v_cache)
        if name == "verify":
            return (tree.tokens, tree.parents, tree.depth, tree.mask, self.cache_len, self.k_cache, self.v_cache)
        raise ValueError(name)


def rel_diff(a, b) -> dict:
    a, b = a.float(), b.float()
    d = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    return dict(max_abs=d, rel=d / scale if scale > 0 else d)


def near_tie_tol(top1_abs: float, dtype: str) -> float:
    """A logit gap this small can flip between two correct implementations (2 bf16 ulps at the top logit)."""
    return (2 * 2.0**-7 * top1_abs + 1e-3) if dtype != "float32" else (1e-4 * top1_abs + 1e-5)


def verify_path_margin(verify_module, args) -> tuple[float, float]:
    """(smallest top-1 / top-2 logit gap, largest |top-1 logit|) of the eager target over the nodes of the eager
    accepted path, root included: where compiled and eager acceptance can first disagree."""
    import torch

    from jetspec_compile.accept import accept, greedy_tokens

    tokens, parents, depth, mask, cache_len, kc, vc = args
    with torch.inference_mode():
        logits, _, _ = verify_module._forward_tree(tokens, depth, mask, cache_len, kc, vc)
        acc = accept(tokens, parents, depth, mask, greedy_tokens(logits), verify_module.depth)
        nodes = acc.path[: int(acc.length.reshape(-1)[0]) + 1]
        top2 = torch.topk(logits.float().index_select(0, nodes), 2, dim=-1).values
    return float((top2[:, 0] - top2[:, 1]).min()), float(top2[:, 0].abs().max())


def compare_outputs(name: str, got, ref, dtype: str, margin: tuple[float, float] | None = None) -> dict:
    """compiled-vs-eager comparison of one graph's outputs; `ok` is the pass criterion.

    A token difference counts as a near-tie flip (ok, flagged `near_tie`) only when the eager target's own
    top-1 / top-2 gap where it happened is within `near_tie_tol`; K/V rows must then still be close."""
    import torch

    tol = 5e-2 if dtype != "float32" else 1e-3
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    r: dict = {"graph": name}
    if name == "verify":
        r["tokens_equal"] = bool(torch.equal(got[0].cpu(), ref[0].cpu()))
        r["length_equal"] = bool(torch.equal(got[1].cpu(), ref[1].cpu()))
        r["accepted_compiled"] = int(got[1].reshape(-1)[0])
        r["accepted_eager"] = int(ref[1].reshape(-1)[0])
        rows = {k: rel_diff(g, e) for k, g, e in zip(("k_rows", "v_rows", "ctx_k", "ctx_v"), got[2:], ref[2:])}
        r["rows"] = rows
        r["rows_rel_max"] = max(v["rel"] for v in rows.values())
        same = r["tokens_equal"] and r["length_equal"]
        if margin is not None:
            r["path_margin"], r["path_top1"] = margin
        r["near_tie"] = (not same and margin is not None and margin[0] <= near_tie_tol(margin[1], dtype))
        # different accepted paths commit different rows: rows are compared only when the paths agree
        r["ok"] = (same and r["rows_rel_max"] <= tol) or r["near_tie"]
    elif name == "ar_step":
        r["token_equal"] = bool(torch.equal(got[0].cpu(), ref[0].cpu()))
        lg = rel_diff(got[1], ref[1])
        r["logits_max_abs"], r["logits_rel"] = lg["max_abs"], lg["rel"]
        top2 = torch.topk(ref[1].float(), 2).values
        r["eager_top2_margin"] = float(top2[0] - top2[1])
        rows = {k: rel_diff(g, e) for k, g, e in zip(("k_rows", "v_rows"), got[2:], ref[2:])}
        r["rows"] = rows
        r["rows_rel_max"] = max(v["rel"] for v in rows.values())
        r["near_tie"] = not r["token_equal"] and r["eager_top2_margin"] <= near_tie_tol(float(top2[0].abs()), dtype)
        r["ok"] = (r["token_equal"] or r["near_tie"]) and r["rows_rel_max"] <= tol
    elif name == "prefill":
        rows = {k: rel_diff(g, e) for k, g, e in zip(("k_rows", "v_rows", "ctx_k", "ctx_v"), got, ref)}
        r["rows"] = rows
        r["rows_rel_max"] = max(v["rel"] for v in rows.values())
        r["ok"] = r["rows_rel_max"] <= tol
    elif name == "draft":
        same = [bool(torch.equal(g.cpu(), e.cpu())) for g, e in zip(got[:4], ref[:4])]
        r["tree_equal"] = all(same)
        r["nodes_differ"] = int((got[0].cpu() != ref[0].cpu()).sum())
        r["score_max_abs"] = rel_diff(got[4], ref[4])["max_abs"]
        # bf16 top-k near-ties may swap candidates; the cumulative scores still agree then
        r["ok"] = r["tree_equal"] or r["score_max_abs"] <= (0.1 if dtype != "float32" else 1e-3)
    else:
        raise ValueError(name)
    return r


def time_call(fn, args, device: str, warmup: int, reps: int) -> float:
    """Median milliseconds of one call (CUDA events on the current stream; perf_counter on the CPU)."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            fn(*args)
        samples = []
        if device == "cuda":
            torch.cuda.synchronize()
            for _ in range(reps):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn(*args)
                e.record()
                e.synchronize()
                samples.append(s.elapsed_time(e))
        else:
            for _ in range(reps):
                t0 = time.perf_counter()
                fn(*args)
                samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


# ==================================================================================================
# steps


def step_env(ctx: Ctx) -> dict:
    import importlib.metadata as md

    import torch

    info: dict = {"python": platform.python_version(), "platform": platform.platform(),
                  "executable": sys.executable, "cpu_count": os.cpu_count()}
    for mod in ("torch", "triton", "transformers", "tokenizers", "safetensors", "numpy", "pytest"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            info[mod] = None
            info[f"{mod}_error"] = f"{type(e).__name__}: {e}"[:200]
    info["torch_cuda"] = torch.version.cuda
    info["torch_git"] = getattr(torch.version, "git_version", None)
    info["cuda_available"] = torch.cuda.is_available()
    try:
        info["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        info["cudnn"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    gpu_memory_gib=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count)
    info["driver"] = _driver_version()
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run([smi], capture_output=True, text=True, timeout=30)
        ctx.log(r.stdout[-3000:])
    try:
        import torch_tensorrt  # noqa: F401

        info["torch_tensorrt"] = torch_tensorrt.__version__
    except Exception as e:  # noqa: BLE001
        info["torch_tensorrt"] = None
        info["torch_tensorrt_error"] = f"{type(e).__name__}: {e}"[:200]
    import jetspec_compile
    import jetspec_compile.export as jexport
    import jetspec_compile.export.pipeline as jpipeline
    import jetspec_compile.runtime as jruntime
    import jetspec_compile.runtime.engine as jengine

    try:
        installed = md.version("jetspec-compile")
    except md.PackageNotFoundError:
        installed = None
    info["checkout"] = dict(root=str(ROOT), commit=_git_commit(), jetspec_compile=jetspec_compile.__file__,
                            export=jexport.__file__, runtime=jruntime.__file__, pipeline=jpipeline.__file__,
                            engine=jengine.__file__, installed_dist=installed, no_site=sys.flags.no_site,
                            meta_path=[getattr(f, "__name__", type(f).__name__) for f in sys.meta_path])
    probes = api_probes()
    missing = {k: v for k, v in probes.items() if v is not True}
    for k, v in probes.items():
        ctx.log(f"  api {k}: {'ok' if v is True else v}")
    figures = dict(gpu=info.get("gpu"), driver=info["driver"], torch=info["torch"], cuda=info["torch_cuda"],
                   triton=info["triton"], transformers=info["transformers"], python=info["python"],
                   api_probes=len(probes), api_missing=sorted(missing))
    details = dict(info=info, api_probes=probes)
    if missing:
        return dict(status="fail", reason=f"{len(missing)} API probe(s) failed: {sorted(missing)}",
                    figures=figures, details=details)
    if not ctx.dry_run and not info["cuda_available"]:
        return dict(status="fail", reason="torch.cuda.is_available() is False", figures=figures, details=details)
    return dict(status="pass", figures=figures, details=details)


def _driver_version() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30)
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:  # libcuda's own answer (the CUDA version the driver supports, e.g. 12080)
        import ctypes

        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            return f"CUDA driver API {v.value // 1000}.{(v.value % 1000) // 10}"
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        return None
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def api_probes() -> dict:
    """Every torch / transformers / Triton API the project calls, probed in this Python. True or a reason."""
    import inspect

    def params(fn) -> set:
        return set(inspect.signature(fn).parameters)

    def p_custom_op():
        import torch

        import jetspec_compile.ops  # noqa: F401  (custom_op + register_kernel("cuda") + register_fake)

        op = torch.ops.jetspec.tree_attention.default
        assert callable(torch.library.custom_op) and callable(torch.library.opcheck)
        assert op is not None

    def p_export():
        import torch

        assert {"strict", "dynamic_shapes"} <= params(torch.export.export)

    def p_aoti_compile():
        import torch

        assert {"package_path", "inductor_configs"} <= params(torch._inductor.aoti_compile_and_package)
        assert hasattr(torch._inductor.config.aot_inductor, "package_constants_in_so")

    def p_aoti_load():
        import torch

        assert "device_index" in params(torch._inductor.aoti_load_package)
        from torch._inductor.package import AOTICompiledModel

        assert {"check_full_update", "user_managed"} <= params(AOTICompiledModel.load_constants)
        assert hasattr(AOTICompiledModel, "get_constant_fqns")

    def p_attention_interface():
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        from jetspec_compile.attention import ATTN_IMPLEMENTATION

        assert ATTN_IMPLEMENTATION in AttentionInterface._global_mapping
        assert ATTN_IMPLEMENTATION in AttentionMaskInterface._global_mapping
        assert callable(sdpa_mask) and callable(sdpa_attention_forward)

    def p_qwen3():
        from transformers import Qwen3Config
        from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RotaryEmbedding, rotate_half

        cfg = Qwen3Config()
        assert isinstance(getattr(cfg, "rope_parameters", None), dict) and "rope_theta" in cfg.rope_parameters
        assert {"position_embeddings", "position_ids", "attention_mask"} <= params(Qwen3DecoderLayer.forward)
        assert callable(rotate_half) and Qwen3RotaryEmbedding is not None

    def p_moe_experts():
        from transformers import Qwen3MoeConfig

        cfg = Qwen3MoeConfig()
        assert hasattr(cfg, "_experts_implementation")
        from transformers.integrations import moe

        reg = getattr(moe, "ExpertsInterface", None)
        assert reg is not None and "batched_mm" in reg._global_mapping

    def p_triton():
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401

        assert "input_precision" in params(tl.dot)
        assert callable(triton.next_power_of_2) and callable(triton.cdiv)

    out = {}
    for name, fn in [("torch.library.custom_op/register_fake/register_kernel", p_custom_op),
                     ("torch.export.export(strict=)", p_export),
                     ("torch._inductor.aoti_compile_and_package + package_constants_in_so", p_aoti_compile),
                     ("aoti_load_package(device_index=) + load_constants(user_managed=)", p_aoti_load),
                     ("transformers AttentionInterface/AttentionMaskInterface/sdpa_mask", p_attention_interface),
                     ("transformers Qwen3 (rope_parameters, DecoderLayer kwargs)", p_qwen3),
                     ("transformers Qwen3-MoE _experts_implementation='batched_mm'", p_moe_experts),
                     ("triton (tl.dot input_precision, ASTSource, GPUTarget)", p_triton)]:
        try:
            fn()
            out[name] = True
        except Exception as e:  # noqa: BLE001
            out[name] = f"{type(e).__name__}: {e}"[:300] or type(e).__name__
    return out


# ---- kernel ------------------------------------------------------------------------------------------


def step_kernel_tests(ctx: Ctx) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError as e:
        raise StepSkip(f"pytest cannot be imported in this Python ({e}); kernel_cases runs the same kind "
                       "of checks without it")
    xml = ctx.out / "kernel_tests.junit.xml"
    cmd = python_cmd() + ["-m", "pytest", "-m", "gpu", "tests/test_tree_attention_kernel.py", "-q", "-rA",
                          "-p", "no:cacheprovider", "-o", "addopts=", f"--junitxml={xml}"]
    ctx.log("$ " + " ".join(cmd))
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=float(ctx.opts.get("inner_timeout", 170)))
    ctx.log(r.stdout[-6000:] + r.stderr[-3000:])
    counts, failed = _junit_counts(xml)
    figures = dict(counts, returncode=r.returncode)
    details = dict(failed=failed, junit=xml.name)
    if not xml.is_file():
        return dict(status="error", reason=f"pytest wrote no junit XML (exit {r.returncode})", figures=figures,
                    details=details)
    if counts["tests"] == 0:
        return dict(status="fail", reason="no GPU test was collected", figures=figures, details=details)
    if counts["failures"] or counts["errors"]:
        return dict(status="fail", reason=f"{counts['failures']} failed, {counts['errors']} errors: {failed[:4]}",
                    figures=figures, details=details)
    if counts["passed"] == 0:
        why = "dry run: no CUDA, every GPU test skipped" if ctx.dry_run else "every GPU test skipped"
        return dict(status="skip" if ctx.dry_run else "fail", reason=f"{why} ({counts['skipped']} collected)",
                    figures=figures, details=details)
    if counts["skipped"] and not ctx.dry_run:
        return dict(status="fail", reason=f"{counts['skipped']} GPU tests skipped on a GPU machine",
                    figures=figures, details=details)
    return dict(status="pass", figures=figures, details=details)


def _junit_counts(xml: Path) -> tuple[dict, list[str]]:
    import xml.etree.ElementTree as ET

    counts = dict(tests=0, passed=0, failures=0, errors=0, skipped=0)
    failed: list[str] = []
    if not xml.is_file():
        return counts, failed
    root = ET.parse(xml).getroot()
    for case in root.iter("testcase"):
        counts["tests"] += 1
        tags = {child.tag for child in case}
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if "failure" in tags:
            counts["failures"] += 1
            failed.append(name)
        elif "error" in tags:
            counts["errors"] += 1
            failed.append(name)
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, failed


def _load_file_module(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kernel_case_grid(dry_run: bool) -> list[dict]:
    H = _load_file_module("tree_attention_interp", ROOT / "tests" / "tree_attention_interp.py")
    cases = []
    if dry_run:
        for dtype in ("fp32", "fp16"):  # the interpreter mishandles bf16
            for T in (1, 5):
                for n in (0, 7):
                    for g in (1, 2):
                        cases.append(H._case(T, n, 2, g, 16, dtype, "full" if T == 1 else "tree"))
        return cases
    for dtype in ("fp16", "bf16"):
        for T in (1, 16, 64, 256):
            for n in (0, 1000, 4097):
                for g in (1, 4, 8):  # 32 query heads over 32 / 8 / 4 KV heads
                    cases.append(H._case(T, n, 32 // g, g, 128, dtype, "full" if T == 1 else "tree"))
    return cases


def step_kernel_cases(ctx: Ctx) -> dict:
    import torch

    H = _load_file_module("tree_attention_interp", ROOT / "tests" / "tree_attention_interp.py")
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    use_triton = ctx.device == "cuda" or interp
    path = "triton" if ctx.device == "cuda" else ("triton-interpreter" if interp else "cpu-reference-op")
    ctx.log(f"kernel path: {path}")
    rows, bad = [], []
    for c in kernel_case_grid(ctx.dry_run):
        try:
            if use_triton:
                r = H.run_case(c, device=ctx.device)
            else:
                args = H.make_inputs(c)
                out = torch.ops.jetspec.tree_attention(*args)
                r = dict(id=c["id"], **H.compare(out, H.reference_fp32(args), c["dtype"]), finite=True,
                         shape=list(out.shape), contiguous=out.is_contiguous(), dtype_ok=True, dead_rows_zero=True)
            ok = r["excess"] <= 0 and r["finite"] and r["contiguous"] and r["dtype_ok"] and r["dead_rows_zero"]
        except Exception as e:  # noqa: BLE001
            r, ok = dict(id=c["id"], error=f"{type(e).__name__}: {e}"[:300]), False
        r.update(T=c["T"], committed=c["n"], hkv=c["hkv"], gqa=c["g"], head_dim=c["hd"], dtype=c["dtype"], ok=ok)
        rows.append(r)
        if not ok:
            bad.append(c["id"])
            ctx.log(f"  FAIL {c['id']}: {r}")
    if ctx.device == "cuda":
        torch.cuda.synchronize()
    figures = dict(path=path, cases=len(rows), failed=len(bad))
    for dt in sorted({r["dtype"] for r in rows}):
        errs = [r["err"] for r in rows if r["dtype"] == dt and "err" in r]
        figures[f"max_err_{dt}"] = max(errs) if errs else None
    figures["B"] = sorted({r["T"] for r in rows})
    figures["committed"] = sorted({r["committed"] for r in rows})
    figures["gqa"] = sorted({r["gqa"] for r in rows})
    details = dict(cases=rows)
    if bad:
        return dict(status="fail", reason=f"{len(bad)}/{len(rows)} cases beyond tolerance: {bad[:4]}",
                    figures=figures, details=details)
    return dict(status="pass", figures=figures, details=details)


def step_bench(ctx: Ctx) -> dict:
    out = ctx.out / "bench_tree_attention.json"
    argv = ["--out", str(out)] + (["--dry-run"] if ctx.dry_run else [])
    if ctx.opts.get("in_process"):
        bench = _load_file_module("bench_tree_attention", ROOT / "scripts" / "bench_tree_attention.py")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = bench.main(argv)
        ctx.log(buf.getvalue())
    else:
        cmd = python_cmd() + [str(ROOT / "scripts" / "bench_tree_attention.py")] + argv
        ctx.log("$ " + " ".join(cmd))
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                           timeout=float(ctx.opts.get("inner_timeout", 170)))
        ctx.log(r.stdout[-8000:] + r.stderr[-3000:])
        rc = r.returncode
    if rc != 0 or not out.is_file():
        return dict(status="fail", reason=f"bench_tree_attention.py exited {rc}", figures={}, details={})
    rep = json.loads(out.read_text())
    cfg = rep["config"]
    tol = 1e-4 if cfg["dtype"] == "fp32" else 3e-2
    rows = [dict(B=r["B"], committed=r["committed"], triton_ms=r["triton_ms"], triton_tflops=r["triton_tflops"],
                 sdpa_ms=r["sdpa_ms"], sdpa_tflops=r["sdpa_tflops"], sdpa_gqa_ms=r.get("sdpa_gqa_ms"),
                 speedup_vs_sdpa=r["speedup_vs_sdpa"], speedup_vs_best_sdpa=r.get("speedup_vs_best_sdpa"),
                 triton_max_abs_err=r["triton_max_abs_err"]) for r in rep["results"]]
    sp = [r["speedup_vs_sdpa"] for r in rows if r["speedup_vs_sdpa"]]
    figures = dict(device=cfg["device"], dtype=cfg["dtype"], heads=f"{cfg['hq']}/{cfg['hkv']}x{cfg['head_dim']}",
                   rows=rows, json=out.name,
                   geomean_speedup_vs_sdpa=math.exp(sum(map(math.log, sp)) / len(sp)) if sp else None,
                   min_speedup_vs_sdpa=min(sp) if sp else None, max_speedup_vs_sdpa=max(sp) if sp else None,
                   max_err=max(r["triton_max_abs_err"] for r in rows) if rows else None)
    bad = [r for r in rows if not (r["triton_max_abs_err"] <= tol)]
    if bad:
        return dict(status="fail", reason=f"{len(bad)} configurations beyond {tol} max abs error",
                    figures=figures, details=dict(config=cfg))
    return dict(status="pass", figures=figures, details=dict(config=cfg))


# ---- lossless ----------------------------------------------------------------------------------------


class _OracleDraft:
    """Draft replacement that knows the target's greedy continuation `full` (prompt + output): the true next
    token sits at rank 0 or 1 of each depth most of the time, so long paths are accepted and committed."""

    def __init__(self, draft_module, full, vocab, topk, seed=0):
        import torch

        self.draft, self.full, self.vocab, self.topk = draft_module, list(full), vocab, topk
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, anchor, cache_len, ctx_k, ctx_v):
        import torch

        L, D, K = int(cache_len.reshape(-1)[0]), self.draft.depth, self.topk
        toks = torch.zeros(D, K, dtype=torch.int64)
        for d in range(D):
            pos = L + 1 + d
            true = self.full[pos] if pos < len(self.full) else 0
            perm = torch.randperm(self.vocab, generator=self.g)
            perm = perm[perm != true][:K]
            u = float(torch.rand(1, generator=self.g))
            if u > 0.15:
                perm[0 if (u > 0.4 or K == 1) else 1] = true
            toks[d] = perm
        lps = -torch.sort(torch.rand(D, K, generator=self.g) * 3, dim=-1).values
        dev = anchor.device
        t = self.draft.make_tree(anchor, toks.to(dev), lps.to(dev))
        return t.tokens, t.parents, t.depth, t.mask, t.score


def step_lossless(ctx: Ctx) -> dict:
    import torch

    from jetspec_compile.decode import Stats
    from jetspec_compile.graphs import SpecConfig, build_graphs
    from jetspec_compile.speculative import autoregressive_generate, eager_decoder, speculative_generate
    from jetspec_compile.tiny import tiny_head, tiny_target

    dev = ctx.device
    if ctx.dry_run:
        configs = [("dense", "float32", {}, 2, (1, 16), ("dynamic",)),
                   ("moe", "float32", {"moe": True}, 1, (16,), ("dynamic",)),
                   ("dense", "bfloat16", {}, 1, (16,), ("dynamic",))]
        n_new = 10
    else:
        configs = [("dense", "float32", {}, 6, (1, 16, 64), ("dynamic", "static")),
                   ("moe", "float32", {"moe": True}, 3, (16, 64), ("dynamic", "static")),
                   ("dense", "bfloat16", {}, 4, (16, 64), ("dynamic",)),
                   ("moe", "bfloat16", {"moe": True}, 2, (16,), ("dynamic",))]
        n_new = 24
    results = []
    for model_kind, dt_name, kw, n_prompts, budgets, trees in configs:
        dtype = _dtype(dt_name)
        torch.manual_seed(0)
        target = tiny_target(num_layers=4, eos_token_id=None, **kw)
        target.to(device=dev, dtype=dtype)
        head = tiny_head(target, block_size=6, num_layers=1).to(device=dev, dtype=dtype)
        g = torch.Generator().manual_seed(7)
        row = dict(model=model_kind, dtype=dt_name, runs=0, mismatches=0, first_divergence=[], tau_oracle=None)
        for i in range(n_prompts):
            ids = torch.randint(0, 127, (int(torch.randint(1, 24, (1,), generator=g)),), generator=g)
            with torch.no_grad():
                hf = target.model.generate(ids[None].to(dev), attention_mask=torch.ones_like(ids[None]).to(dev),
                                           max_new_tokens=n_new, do_sample=False, eos_token_id=None,
                                           pad_token_id=0)[0, ids.numel():].tolist()
            outs = {"ar": autoregressive_generate(target, head, ids, n_new)[0]}
            for b in budgets:
                for tree in trees:
                    outs[f"spec_b{b}_{tree}"] = speculative_generate(target, head, ids, n_new, budget=b, tree=tree)[0]
            for name, out in outs.items():
                row["runs"] += 1
                if out != hf:
                    row["mismatches"] += 1
                    k = next((j for j, (a, b_) in enumerate(zip(out, hf)) if a != b_), min(len(out), len(hf)))
                    row["first_divergence"].append(dict(prompt=i, run=name, index=k))
        # the oracle draft: deep accepted paths, multi-row commits on this device
        ids = torch.randint(0, 127, (9,), generator=g)
        with torch.no_grad():
            ref = target.model.generate(ids[None].to(dev), attention_mask=torch.ones_like(ids[None]).to(dev),
                                        max_new_tokens=n_new + head.depth + 1, do_sample=False, eos_token_id=None,
                                        pad_token_id=0)[0, ids.numel():].tolist()
        spec = SpecConfig(budget=16, topk=4, max_seq_len=ids.numel() + n_new + 40, prefill_chunk=8)
        dec = eager_decoder(target, head, spec, ("prefill", "draft", "verify"))
        dec.graphs["draft"] = _OracleDraft(build_graphs(target, head, spec, ("draft",))["draft"],
                                           ids.tolist() + ref, target.vocab_size, spec.topk)
        st = Stats()
        out = [t for c in dec.speculative(ids.tolist(), n_new, stats=st) for t in c]
        row["runs"] += 1
        row["tau_oracle"] = st.tau
        if out != ref[:n_new]:
            row["mismatches"] += 1
            row["first_divergence"].append(dict(prompt="oracle", run="spec_b16_oracle",
                                                 index=next((j for j, (a, b_) in enumerate(zip(out, ref)) if a != b_),
                                                            len(out))))
        results.append(row)
        ctx.log(f"  {model_kind} {dt_name}: {row['runs']} runs, {row['mismatches']} mismatches, "
                f"oracle tau {row['tau_oracle']:.2f}")
        del target, head
    exact = [r for r in results if r["dtype"] == "float32"]
    fails = [r for r in exact if r["mismatches"]]
    shallow = [r for r in exact if (r["tau_oracle"] or 0) <= 1.5]
    figures = dict(device=dev, results=[{k: v for k, v in r.items() if k != "first_divergence"} for r in results],
                   fp32_runs=sum(r["runs"] for r in exact), fp32_mismatches=sum(r["mismatches"] for r in exact),
                   bf16_runs=sum(r["runs"] for r in results if r["dtype"] != "float32"),
                   bf16_mismatches=sum(r["mismatches"] for r in results if r["dtype"] != "float32"))
    details = dict(results=results)
    if fails:
        return dict(status="fail", reason="fp32 speculative output differs from greedy decoding: "
                    + "; ".join(f"{r['model']}: {r['mismatches']}/{r['runs']}" for r in fails),
                    figures=figures, details=details)
    if shallow:
        return dict(status="fail", reason="the oracle draft did not get multi-row commits (tau <= 1.5)",
                    figures=figures, details=details)
    return dict(status="pass", figures=figures, details=details)


# ---- AOTInductor -------------------------------------------------------------------------------------


def compile_one(ctx: Ctx, graph: str, budget: int, dest: Path) -> dict:
    """Capture + compile one graph of the kit's model with the pipeline's own functions."""
    import torch

    from jetspec_compile.export import aoti
    from jetspec_compile.export.pipeline import capture
    from jetspec_compile.graphs import build_graphs, example_inputs

    dims = model_dims(ctx)
    t0 = time.perf_counter()
    target, head = build_models(dims, ctx.device)
    spec = spec_for(dims, budget)
    module = build_graphs(target, head, spec, (graph,))[graph]
    args = example_inputs(graph, target, head, spec, ctx.device)
    t1 = time.perf_counter()
    ep = capture(module, args, aoti.ATTENTION_FORM)
    t2 = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    aoti.compile_graph(ep, args, dest, ctx.device)
    t3 = time.perf_counter()
    n_ops = sum(1 for n in ep.graph.nodes
                if n.op == "call_function" and n.target == torch.ops.jetspec.tree_attention.default)
    return dict(graph=graph, budget=budget, file=dest.name, build_s=t1 - t0, capture_s=t2 - t1, compile_s=t3 - t2,
                bytes=dest.stat().st_size, jetspec_ops=n_ops)


def step_aoti_compile(ctx: Ctx) -> dict:
    dims = model_dims(ctx)
    pkg = ctx.work / "packages"
    pkg.mkdir(parents=True, exist_ok=True)
    plan = compile_plan(dims)
    results, errors = [], []
    if ctx.opts.get("in_process") or ctx.opts.get("serial_compile"):
        for graph, b in plan:
            try:
                results.append(compile_one(ctx, graph, b, pkg / package_name(graph, b)))
                ctx.log(f"  {graph} B={b}: compiled in {results[-1]['compile_s']:.1f}s")
            except Exception as e:  # noqa: BLE001
                errors.append(f"{graph}_b{b}: {type(e).__name__}: {e}"[:400])
                ctx.log(traceback.format_exc())
    else:  # one worker process per package, all at once
        procs = []
        for graph, b in plan:
            res = ctx.work / f"compile_{graph}_b{b}.json"
            log = ctx.out / "steps" / f"aoti_compile.{graph}_b{b}.log"
            cmd = python_cmd() + [str(Path(__file__).resolve()), "worker", "--graph", graph, "--budget", str(b),
                                  "--result", str(res), "--out", str(ctx.out), "--work", str(ctx.work),
                                  "--options", json.dumps(ctx.opts)] + (["--dry-run"] if ctx.dry_run else [])
            fh = open(log, "w")
            procs.append((graph, b, res, log, fh, subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)))
            ctx.log(f"  started worker {graph} B={b} (log {log.name})")
        for graph, b, res, log, fh, p in procs:
            rc = p.wait()
            fh.close()
            if rc == 0 and res.is_file():
                results.append(json.loads(res.read_text()))
                ctx.log(f"  {graph} B={b}: compiled in {results[-1]['compile_s']:.1f}s")
            else:
                errors.append(f"{graph}_b{b}: worker exited {rc}: {last_error(log)}")
    figures = dict(model=dims["name"], layers=dims["layers"], dtype=dims["dtype"], seq_len=dims["seq_len"],
                   packages={f"{r['graph']}_b{r['budget']}": dict(compile_s=r["compile_s"], capture_s=r["capture_s"],
                                                                   mib=r["bytes"] / 2**20) for r in results})
    details = dict(results=results, errors=errors, dims=dims)
    if errors:
        return dict(status="fail", reason=f"{len(errors)}/{len(plan)} packages failed: {errors[0][:300]}",
                    figures=figures, details=details)
    return dict(status="pass", figures=figures, details=details)


def step_aoti_export(ctx: Ctx) -> dict:
    from jetspec_compile.export.pipeline import export_model

    dims = model_dims(ctx)
    target, head = build_models(dims, ctx.device)
    spec = spec_for(dims, dims["budgets"][0])
    out = ctx.work / "artifact"
    manifest = export_model(target, head, spec, out, backend="aoti", device=ctx.device, sampling=False, force=True,
                            log=ctx.log)
    g = manifest["graphs"]
    figures = dict(model=dims["name"], layers=dims["layers"], dtype=dims["dtype"], budget=spec.budget,
                   seq_len=spec.max_seq_len, export_s=manifest["export_s"],
                   graphs={n: dict(compile_s=r["compile_s"], capture_s=r["capture_s"], mib=r["bytes"] / 2**20,
                                   jetspec_ops=r["jetspec_ops"]) for n, r in g.items()},
                   weights_mib=(out / manifest["weights"]).stat().st_size / 2**20)
    return dict(status="pass", figures=figures, details=dict(dims=dims, manifest_graphs=g))


def _eager(module):
    import torch

    def call(*args):
        with torch.inference_mode():
            return module(*args)

    return call


def step_aoti_latency(ctx: Ctx) -> dict:
    import torch

    from jetspec_compile.export import aoti
    from jetspec_compile.export.pipeline import graph_weights
    from jetspec_compile.graphs import build_graphs

    dims = model_dims(ctx)
    pkg = ctx.work / "packages"
    plan = compile_plan(dims)
    have = [(g, b) for g, b in plan if (pkg / package_name(g, b)).is_file()]
    if not have:
        raise StepSkip("no compiled package (aoti_compile produced none)")
    target, head = build_models(dims, ctx.device)
    eager = {}
    for g, b in plan:
        eager[(g, b)] = build_graphs(target, head, spec_for(dims, b), (g,))[g]
    weights = graph_weights({f"{g}_{b}": m for (g, b), m in eager.items()})
    compiled = {}
    load_errors = []
    for g, b in have:
        try:
            compiled[(g, b)] = aoti.load_graph(pkg / package_name(g, b), ctx.device, weights)
        except Exception as e:  # noqa: BLE001
            load_errors.append(f"{g}_b{b}: {type(e).__name__}: {e}"[:300])
            ctx.log(traceback.format_exc())
    state = State(target, head, dims, ctx.device)
    b0 = dims["budgets"][0]
    state.greedy_chain(_eager(eager[("ar_step", b0)]), head.depth + 1)
    warmup, reps = (2, 3) if ctx.dry_run else (5, 30)
    rows, checks = [], []
    for (g, b), mod in eager.items():
        tree = state.tree(head.depth, dims["topk"], b, target.vocab_size) if g == "verify" else None
        args = state.args(g, tree)
        row = dict(graph=g, budget=b if g == "verify" else 1)
        row["eager_ms"] = time_call(_eager(mod), args, ctx.device, warmup, reps)
        if (g, b) in compiled:
            fn = compiled[(g, b)]
            row["compiled_ms"] = time_call(fn, args, ctx.device, warmup, reps)
            margin = verify_path_margin(mod, args) if g == "verify" else None
            with torch.inference_mode():
                c = compare_outputs(g, fn(*args), mod(*args), dims["dtype"], margin)
            c["budget"] = row["budget"]
            checks.append(c)
        rows.append(row)
        ctx.log(f"  {g} B={row['budget']}: eager {row['eager_ms']:.3f} ms, compiled {row.get('compiled_ms', float('nan')):.3f} ms")
    ar = next((r for r in rows if r["graph"] == "ar_step"), None)
    for r in rows:
        if r["graph"] == "verify" and ar:
            if r.get("compiled_ms") and ar.get("compiled_ms"):
                r["ratio_compiled"] = r["compiled_ms"] / ar["compiled_ms"]
            r["ratio_eager"] = r["eager_ms"] / ar["eager_ms"]
    figures = dict(model=dims["name"], layers=dims["layers"], dtype=dims["dtype"], committed=state.L,
                   depth=head.depth, timing="CUDA events, median" if ctx.device == "cuda" else "perf_counter, median",
                   reps=reps, rows=rows,
                   equality=[{k: c[k] for k in c if k in ("graph", "budget", "ok", "near_tie", "tokens_equal",
                                                         "token_equal", "accepted_compiled", "accepted_eager",
                                                         "rows_rel_max", "logits_rel", "eager_top2_margin",
                                                         "path_margin")} for c in checks],
                   greedy_chain_len=len(state.chain or []))
    details = dict(checks=checks, load_errors=load_errors, dims=dims)
    bad = [c for c in checks if not c["ok"]]
    missing = [f"{g}_b{b}" for g, b in plan if (g, b) not in compiled]
    if bad or load_errors:
        why = [f"{c['graph']} B={c['budget']} compiled != eager" for c in bad] + load_errors
        return dict(status="fail", reason="; ".join(why)[:500], figures=figures, details=details)
    if missing:
        return dict(status="fail", reason=f"packages missing (aoti_compile): {missing}", figures=figures,
                    details=details)
    return dict(status="pass", figures=figures, details=details)


def step_aoti_artifact(ctx: Ctx) -> dict:
    import torch

    from jetspec_compile.decode import Decoder
    from jetspec_compile.export.pipeline import graph_weights
    from jetspec_compile.graphs import build_graphs
    from jetspec_compile.runtime import load
    from jetspec_compile.safetensors_io import load_safetensors
    from jetspec_compile.speculative import EagerGraphs, cache_dims

    folder = ctx.work / "artifact"
    if not (folder / "manifest.json").is_file():
        raise StepSkip("no artifact (aoti_export did not finish)")
    dims = model_dims(ctx)
    t0 = time.perf_counter()
    engine = load(folder, ctx.device)
    load_s = time.perf_counter() - t0
    target, head = build_models(dims, ctx.device)
    spec = spec_for(dims, engine.manifest["shapes"]["budget"])
    names = list(engine.manifest["graphs"])
    eager = build_graphs(target, head, spec, names)
    w = load_safetensors(folder / engine.manifest["weights"], device=ctx.device)
    with torch.no_grad():
        for k, t in graph_weights(eager).items():
            t.copy_(w[k])
    del w
    state = State(target, head, dims, ctx.device)
    state.greedy_chain(_eager(eager["ar_step"]), head.depth + 1)
    checks = []
    for name in names:
        tree = state.tree(head.depth, dims["topk"], spec.budget, target.vocab_size) if name == "verify" else None
        args = state.args(name, tree)
        margin = verify_path_margin(eager[name], args) if name == "verify" else None
        with torch.inference_mode():
            c = compare_outputs(name, engine.decoder.graphs[name](*args), eager[name](*args), dims["dtype"], margin)
        checks.append(c)
        ctx.log(f"  {name}: {'ok' if c['ok'] else 'MISMATCH'} {c}")
    # generation through the runtime (random weights: acceptance is ~0, this checks the loop and the caches)
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, target.vocab_size - 1, (min(200, spec.max_seq_len // 4),), generator=g).tolist()
    n_new = 8 if ctx.dry_run else 32
    gen = {}
    for mode, spec_flag in (("speculative", True), ("autoregressive", False)):
        t1 = time.perf_counter()
        r = engine.generate(prompt, n_new, speculative=spec_flag)
        gen[mode] = dict(tokens=r.tokens, seconds=time.perf_counter() - t1, rounds=r.stats.rounds,
                         tau=r.stats.tau, tokens_per_s=r.stats.tokens_per_s, finish=r.finish_reason)
    oracle = Decoder(EagerGraphs(eager), budget=spec.budget, topk=spec.topk, max_seq_len=spec.max_seq_len,
                     prefill_chunk=spec.prefill_chunk, dims=cache_dims(target, head), device=ctx.device)
    eager_tokens = [t for c in oracle.speculative(prompt, n_new) for t in c]
    same = dict(spec_vs_ar=gen["speculative"]["tokens"] == gen["autoregressive"]["tokens"],
                compiled_vs_eager=gen["speculative"]["tokens"] == eager_tokens)
    figures = dict(model=dims["name"], dtype=dims["dtype"], load_s=load_s,
                   equality=[{k: c[k] for k in c if k in ("graph", "ok", "near_tie", "tokens_equal", "token_equal",
                                                         "tree_equal", "accepted_compiled", "accepted_eager",
                                                         "rows_rel_max", "score_max_abs", "path_margin",
                                                         "eager_top2_margin")}
                             for c in checks],
                   generate={m: {k: v for k, v in d.items() if k != "tokens"} for m, d in gen.items()},
                   generate_equal=same)
    details = dict(checks=checks, generate=gen, eager_tokens=eager_tokens)
    bad = [c["graph"] for c in checks if not c["ok"]]
    exact = dims["dtype"] == "float32"
    if bad:
        return dict(status="fail", reason=f"compiled != eager for {bad}", figures=figures, details=details)
    if any(len(d["tokens"]) != n_new for d in gen.values()):
        return dict(status="fail", reason="generation stopped early", figures=figures, details=details)
    if exact and not all(same.values()):
        return dict(status="fail", reason=f"fp32 generation differs: {same}", figures=figures, details=details)
    if not all(same.values()):
        figures["note"] = "bf16: generated tokens differ (near-tie flips between graph shapes; reported only)"
    return dict(status="pass", figures=figures, details=details)


# ---- TensorRT ----------------------------------------------------------------------------------------


def step_tensorrt(ctx: Ctx) -> dict:
    try:
        import torch_tensorrt
    except Exception as e:  # noqa: BLE001
        raise StepSkip(f"torch_tensorrt is not importable here ({type(e).__name__}: {str(e)[:160]}); TensorRT "
                       "installs only from NVIDIA's own package index, with a matching torch minor version")
    if ctx.dry_run:
        raise StepSkip("dry run: TensorRT needs CUDA")
    import torch

    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.runtime import load
    from jetspec_compile.speculative import speculative_generate
    from jetspec_compile.tiny import tiny_head, tiny_target

    torch.manual_seed(0)
    target = tiny_target(num_layers=4, eos_token_id=None)
    head = tiny_head(target, block_size=6)
    target.to("cuda")
    head.to("cuda")
    out = ctx.work / "trt-artifact"
    t0 = time.perf_counter()
    export_model(target, head, SpecConfig(budget=16, topk=3, max_seq_len=96, prefill_chunk=16), out,
                 backend="tensorrt", device="cuda", sampling=False, force=True, log=ctx.log)
    export_s = time.perf_counter() - t0
    engine = load(out, "cuda")
    ids = torch.randint(0, 127, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    got = engine.generate(ids, 16).tokens
    ref = speculative_generate(target, head, ids, 16, budget=16, topk=3, max_seq_len=96, prefill_chunk=16)[0]
    figures = dict(torch_tensorrt=torch_tensorrt.__version__, export_s=export_s, tokens_equal=got == ref)
    if got != ref:
        return dict(status="fail", reason="TensorRT generation differs from eager", figures=figures,
                    details=dict(got=got, ref=ref))
    return dict(status="pass", figures=figures, details={})


STEP_FUNCS = {
    "env": step_env, "aoti_compile": step_aoti_compile, "aoti_export": step_aoti_export,
    "kernel_tests": step_kernel_tests, "kernel_cases": step_kernel_cases, "lossless": step_lossless,
    "tensorrt": step_tensorrt, "bench": step_bench, "aoti_latency": step_aoti_latency,
    "aoti_artifact": step_aoti_artifact,
}


# ==================================================================================================
# running steps


def run_step_here(name: str, ctx: Ctx) -> dict:
    """Run one step in this process; never raises. Returns the step's record (without timing by the caller)."""
    t0 = time.perf_counter()
    try:
        if not ctx.dry_run:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            import torch

            torch.set_num_threads(1)  # PITFALLS #7
        rec = STEP_FUNCS[name](ctx)
    except StepSkip as e:
        rec = dict(status="skip", reason=str(e), figures={}, details={})
    except Exception as e:  # noqa: BLE001
        ctx.log(traceback.format_exc())
        rec = dict(status="error", reason=f"{type(e).__name__}: {e}"[:600], figures={},
                   details=dict(traceback=traceback.format_exc()[-4000:]))
    rec = dict(name=name, title=STEP_BY_NAME[name].title, **rec)
    rec["step_s"] = time.perf_counter() - t0
    return rec


def _step_env(ctx: Ctx, name: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and Path(p).resolve() != ROOT])
    # Own Inductor caches: aoti_export compiles the same verify / ar_step graphs as the aoti_compile workers at
    # the same time, and two processes compiling one graph into one cache folder overwrite each other's files
    # (seen: an empty JSON inside a .pt2). The workers compile distinct graphs, so they share one folder.
    env["TORCHINDUCTOR_CACHE_DIR"] = str(ctx.work / ("inductor-export" if name == "aoti_export" else "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(ctx.work / "triton-cache"))
    if name in ("aoti_compile", "aoti_export"):
        # up to five compiling processes at once: a few Inductor compile workers each, not one per core each
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, min(4, (os.cpu_count() or 1) // 4))))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TRITON_INTERPRET", None)
    if ctx.dry_run:
        env["OMP_NUM_THREADS"] = "1"
        if name == "kernel_cases":
            env["TRITON_INTERPRET"] = "1"  # the Triton kernel itself, on CPU tensors
    return env


class Running:
    """A step running in a subprocess."""

    def __init__(self, name: str, ctx: Ctx, timeout: float):
        self.name, self.ctx, self.timeout = name, ctx, timeout
        self.log = ctx.out / "steps" / f"{name}.log"
        self.res = ctx.out / "steps" / f"{name}.json"
        self.res.unlink(missing_ok=True)
        opts = dict(ctx.opts, inner_timeout=max(10, int(timeout) - 15))
        cmd = python_cmd() + [str(Path(__file__).resolve()), "step", name, "--out", str(ctx.out),
                              "--work", str(ctx.work), "--options", json.dumps(opts)]
        if ctx.dry_run:
            cmd.append("--dry-run")
        self.fh = open(self.log, "w")
        self.t0 = time.monotonic()
        self.started = now_iso()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_step_env(ctx, name), stdout=self.fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.record: dict | None = None
        _RUNNING.append(self)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def poll(self) -> bool:
        """True once finished (record set)."""
        if self.record is not None:
            return True
        rc = self.proc.poll()
        if rc is None and self.elapsed() < self.timeout:
            return False
        timed_out = rc is None
        if timed_out:
            self._kill()
            rc = self.proc.wait()
        self.fh.close()
        rec = None
        if self.res.is_file():
            try:
                rec = json.loads(self.res.read_text())
            except json.JSONDecodeError:
                rec = None
        if rec is None:
            spec = STEP_BY_NAME[self.name]
            status = "timeout" if timed_out else "error"
            why = (f"timed out after {self.timeout:.0f}s" if timed_out
                   else f"step process exited {rc} without a result")
            rec = dict(name=self.name, title=spec.title, status=status, reason=why, figures={},
                       details=dict(log_tail=tail(self.log)))
        rec["returncode"] = rc
        rec["seconds"] = self.elapsed()
        rec["started"] = self.started
        rec["log"] = f"steps/{self.name}.log"
        self.record = rec
        return True

    def kill_now(self) -> None:
        if self.record is None and self.proc.poll() is None:
            self._kill()

    def _kill(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                self.proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait(self, until: float | None = None) -> bool:
        while not self.poll():
            for other in _RUNNING:  # background steps past their own timeout are stopped meanwhile
                other.poll()
            if until is not None and time.monotonic() >= until:
                return False
            time.sleep(0.5)
        return True


_RUNNING: list[Running] = []


class KitStopped(Exception):
    pass


def _on_signal(signum, frame):
    raise KitStopped(f"stopped by signal {signum}")


def select_steps(steps: str | None, skip: str | None) -> list[str]:
    names = [s.name for s in STEPS]
    chosen = names if not steps else [n.strip() for n in steps.split(",") if n.strip()]
    dropped = set() if not skip else {n.strip() for n in skip.split(",") if n.strip()}
    unknown = [n for n in chosen + sorted(dropped) if n not in STEP_BY_NAME]
    if unknown:
        raise SystemExit(f"gpu_check: unknown step(s) {unknown}; steps are {names}")
    return [n for n in names if n in chosen and n not in dropped]


def run_all(args) -> int:
    global T0
    T0 = time.monotonic()
    _RUNNING.clear()
    out = Path(args.out).resolve()
    (out / "steps").mkdir(parents=True, exist_ok=True)
    own_work = args.work is None
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="jetspec-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    opts = kit_options(args)
    opts["in_process"] = bool(args.in_process)
    log_fh = open(out / "gpu_check.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.monotonic() - T0:7.1f}s] {msg}"
        print(line, flush=True)
        log_fh.write(line + "\n")
        log_fh.flush()

    ctx = Ctx(out, work, args.dry_run, opts, log=log)
    names = select_steps(args.steps, args.skip)
    budget = args.budget_s if args.budget_s else (3600 if args.dry_run else 460)
    deadline = T0 + budget
    results = dict(kit=dict(version=KIT_VERSION, argv=sys.argv[1:], dry_run=args.dry_run, started=now_iso(),
                            budget_s=budget, steps=names, root=str(ROOT), out=str(out), work=str(work),
                            mode="in-process" if args.in_process else "subprocess", python=sys.executable),
                   steps={})
    log(f"gpu_check v{KIT_VERSION}: {'DRY RUN (CPU) ' if args.dry_run else ''}steps {names}; budget {budget}s; "
        f"out {out}; work {work}")

    def limit(name: str) -> float:
        spec = STEP_BY_NAME[name]
        t = spec.dry_timeout_s if args.dry_run else spec.timeout_s
        return max(5.0, min(t, deadline - time.monotonic()))

    def record(rec: dict) -> None:
        results["steps"][rec["name"]] = rec
        write_json(out / "results.json", results)
        log(f"{rec['name']}: {rec['status'].upper()} ({rec.get('seconds', rec.get('step_s', 0)):.1f}s)"
            + (f" - {rec['reason']}" if rec.get("reason") else "") + f"  {headline(rec)}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        if args.in_process:
            for name in names:
                if time.monotonic() >= deadline:
                    record(dict(name=name, title=STEP_BY_NAME[name].title, status="skip",
                                reason="kit time budget used up", figures={}, details={}, seconds=0.0))
                    continue
                t0 = time.monotonic()
                buf_log = out / "steps" / f"{name}.log"
                with open(buf_log, "w") as fh:
                    sctx = Ctx(out, work, args.dry_run, opts, log=lambda m, fh=fh: (fh.write(m + "\n"), fh.flush()))
                    with contextlib.redirect_stdout(fh):
                        rec = run_step_here(name, sctx)
                rec.update(seconds=time.monotonic() - t0, log=f"steps/{name}.log", started=None)
                write_json(out / "steps" / f"{name}.json", rec)
                record(rec)
        else:
            background = {n: Running(n, ctx, limit(n)) for n in names if STEP_BY_NAME[n].background}
            for n in background:
                log(f"{n}: started in the background (timeout {background[n].timeout:.0f}s)")
            main = [n for n in names if not STEP_BY_NAME[n].background]
            for i, name in enumerate(main):
                spec = STEP_BY_NAME[name]
                for dep in spec.needs:
                    if dep in background and not background[dep].poll():
                        log(f"{name}: waiting for {dep} ...")
                        background[dep].wait()
                    if dep in background and background[dep].record["name"] not in results["steps"]:
                        record(background[dep].record)
                if spec.quiet:
                    rest = sum(STEP_BY_NAME[n].est_s for n in main[i:])
                    busy = [b for b in background.values() if not b.poll()]
                    if busy:
                        log(f"{name}: waiting for {[b.name for b in busy]} to finish before timing "
                            f"(at most until {rest}s before the deadline)")
                        for b in busy:
                            b.wait(until=deadline - rest)
                blocked = [d for d in spec.needs if d in background and background[d].record["status"] != "pass"]
                if blocked:
                    record(dict(name=name, title=spec.title, status="skip", seconds=0.0, figures={}, details={},
                                reason=f"needs {blocked[0]}, which ended {background[blocked[0]].record['status']}"))
                    continue
                left = deadline - time.monotonic()
                if left < 5 or (not args.dry_run and left < min(spec.est_s, 30)):
                    record(dict(name=name, title=spec.title, status="skip", seconds=0.0, figures={}, details={},
                                reason=f"kit time budget used up ({left:.0f}s left)"))
                    continue
                concurrent = [b.name for b in background.values() if not b.poll()]
                r = Running(name, ctx, limit(name))
                r.wait()
                r.record["concurrent_steps"] = concurrent
                record(r.record)
            for b in background.values():
                b.wait()
                if b.name not in results["steps"]:
                    record(b.record)
    except KitStopped as e:
        log(f"{e}: stopping the running steps")
        results["kit"]["stopped"] = str(e)
    finally:
        for r in _RUNNING:
            r.kill_now()
            if r.record is None:
                r.poll()
            if r.name not in results["steps"] and r.record is not None:
                r.record.update(status="timeout" if r.record["status"] == "error" else r.record["status"],
                                reason=r.record.get("reason") or "kit stopped")
                results["steps"][r.name] = r.record
        results["kit"]["finished"] = now_iso()
        results["kit"]["wall_s"] = time.monotonic() - T0
        results["steps"] = {n: results["steps"][n] for n in names if n in results["steps"]}
        write_json(out / "results.json", results)
        js, md = write_summary(results, out)
        log(f"wrote {out / 'results.json'}, {js}, {md}")
        print(md.read_text())
        log_fh.close()
        if own_work and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    summary = json.loads((out / "summary.json").read_text())
    return 0 if summary["overall"] == "pass" else 1


T0 = time.monotonic()


# ==================================================================================================
# summary (works on recorded results alone: no torch, no GPU)


def _fmt(x, nd=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "-"
        if x != 0 and (abs(x) >= 1e4 or abs(x) < 10 ** (-nd)):
            return f"{x:.2e}"
        return f"{x:.{nd}f}"
    return str(x)


def headline(rec: dict) -> str:
    """A one-line digest of a step's figures for the summary table."""
    f = rec.get("figures") or {}
    n = rec.get("name")
    if not f:
        return ""
    try:
        if n == "env":
            return (f"{f.get('gpu') or 'no GPU'}, driver {f.get('driver') or '-'}, torch {f.get('torch')}, "
                    f"CUDA {f.get('cuda') or '-'}, Triton {f.get('triton')}, transformers {f.get('transformers')}; "
                    f"API probes {f.get('api_probes', 0) - len(f.get('api_missing') or [])}/{f.get('api_probes', 0)} ok")
        if n == "kernel_tests":
            return (f"{f.get('passed', 0)} passed, {f.get('failures', 0)} failed, {f.get('errors', 0)} errors, "
                    f"{f.get('skipped', 0)} skipped")
        if n == "kernel_cases":
            errs = ", ".join(f"{k[8:]} {_fmt(v, 4)}" for k, v in f.items() if k.startswith("max_err_"))
            return (f"{f.get('cases', 0) - f.get('failed', 0)}/{f.get('cases', 0)} cases ok ({f.get('path')}); "
                    f"B {f.get('B')}, committed {f.get('committed')}, GQA {f.get('gqa')}; max err {errs}")
        if n == "lossless":
            return (f"fp32 {f.get('fp32_runs', 0) - f.get('fp32_mismatches', 0)}/{f.get('fp32_runs', 0)} runs "
                    f"token-exact; bf16 {f.get('bf16_mismatches', 0)}/{f.get('bf16_runs', 0)} differ (report only)")
        if n == "bench":
            return (f"Triton vs SDPA speedup geomean {_fmt(f.get('geomean_speedup_vs_sdpa'), 2)}x "
                    f"(min {_fmt(f.get('min_speedup_vs_sdpa'), 2)}, max {_fmt(f.get('max_speedup_vs_sdpa'), 2)}); "
                    f"{len(f.get('rows') or [])} shapes, {f.get('dtype')}")
        if n == "aoti_compile":
            p = f.get("packages") or {}
            return ", ".join(f"{k} {v['compile_s']:.0f}s" for k, v in p.items())
        if n == "aoti_export":
            g = f.get("graphs") or {}
            return (f"export {_fmt(f.get('export_s'), 0)}s: " + ", ".join(f"{k} {v['compile_s']:.0f}s" for k, v in g.items()))
        if n == "aoti_latency":
            parts = [f"B={r['budget']} {_fmt(r.get('ratio_compiled'), 2)}x" for r in f.get("rows") or []
                     if r["graph"] == "verify"]
            eq = f.get("equality") or []
            ok = sum(1 for e in eq if e.get("ok"))
            return f"verify/ar_step (compiled): {', '.join(parts) or '-'}; compiled==eager {ok}/{len(eq)}"
        if n == "aoti_artifact":
            eq = f.get("equality") or []
            ok = sum(1 for e in eq if e.get("ok"))
            same = f.get("generate_equal") or {}
            return (f"graphs compiled==eager {ok}/{len(eq)}; generate spec==ar {_fmt(same.get('spec_vs_ar'))}, "
                    f"compiled==eager {_fmt(same.get('compiled_vs_eager'))}")
        if n == "tensorrt":
            return f"torch_tensorrt {f.get('torch_tensorrt')}, tokens equal {_fmt(f.get('tokens_equal'))}"
    except (KeyError, TypeError, ValueError):
        return "(figures unreadable)"
    return ""


def build_summary(results: dict) -> dict:
    """The summary of recorded results: overall verdict, counts, environment, per-step status and figures."""
    kit = results.get("kit", {})
    steps = results.get("steps", {})
    order = [s.name for s in STEPS if s.name in steps] + [n for n in steps if n not in STEP_BY_NAME]
    rows = []
    for name in order:
        r = steps[name]
        status = r.get("status") if r.get("status") in STATUSES else "error"
        rows.append(dict(name=name, title=r.get("title") or getattr(STEP_BY_NAME.get(name), "title", name),
                         status=status, seconds=_rnd(r.get("seconds", r.get("step_s"))), reason=r.get("reason"),
                         headline=headline(r), figures=r.get("figures") or {},
                         concurrent_steps=r.get("concurrent_steps") or []))
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in STATUSES}
    env = (steps.get("env") or {}).get("figures") or {}
    info = ((steps.get("env") or {}).get("details") or {}).get("info") or {}
    expected = kit.get("steps") or [r["name"] for r in rows]
    missing = [n for n in expected if n not in steps]
    if any(counts[s] for s in BAD):
        overall = "fail"
    elif missing:
        overall = "incomplete"
    else:
        overall = "pass"
    return dict(
        kit_version=kit.get("version", KIT_VERSION), dry_run=bool(kit.get("dry_run")), started=kit.get("started"),
        finished=kit.get("finished"), wall_s=_rnd(kit.get("wall_s"), 1), overall=overall, counts=counts,
        missing_steps=missing,
        environment=dict(gpu=env.get("gpu"), driver=env.get("driver"), torch=env.get("torch"), cuda=env.get("cuda"),
                         triton=env.get("triton"), transformers=env.get("transformers"), python=env.get("python"),
                         capability=info.get("capability"), gpu_memory_gib=info.get("gpu_memory_gib"),
                         commit=(info.get("checkout") or {}).get("commit")),
        steps=rows,
    )


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
    return out


def render_markdown(summary: dict) -> str:
    e = summary["environment"]
    where = ("DRY RUN on the CPU (tiny shapes; no CUDA was used)" if summary["dry_run"]
             else (e.get("gpu") or "no GPU detected"))
    c = summary["counts"]
    lines = [f"# JetSpec GPU check: {where}", "",
             f"Overall **{summary['overall'].upper()}**: " + ", ".join(f"{c[s]} {s}" for s in STATUSES if c[s])
             + f". Started {summary.get('started') or '-'}, {_fmt(summary.get('wall_s'), 0)} s in all.", ""]
    if summary.get("missing_steps"):
        lines += [f"Steps without a result: {', '.join(summary['missing_steps'])}.", ""]
    lines += _md_table(["GPU", "driver", "torch", "CUDA", "Triton", "transformers", "Python", "commit"],
                       [[e.get("gpu") or "-", e.get("driver") or "-", e.get("torch") or "-", e.get("cuda") or "-",
                         e.get("triton") or "-", e.get("transformers") or "-", e.get("python") or "-",
                         (e.get("commit") or "-")[:10]]])
    lines += [""]
    lines += _md_table(["step", "status", "time (s)", "figures / reason"],
                       [[f"`{r['name']}`", r["status"].upper(), _fmt(r["seconds"], 1),
                         " — ".join(x for x in (r["headline"], r.get("reason")) if x) or "-"]
                        for r in summary["steps"]])
    by = {r["name"]: r for r in summary["steps"]}
    b = by.get("bench", {}).get("figures") or {}
    if b.get("rows"):
        lines += ["", f"## Tree-attention kernel vs SDPA ({b.get('device')}, {b.get('dtype')}, heads {b.get('heads')})",
                  ""]
        if summary["dry_run"]:
            lines += ["Dry run: the 'Triton' column is the op's CPU reference; the figures only check the plumbing.", ""]
        lines += _md_table(["B", "committed", "Triton ms", "Triton TFLOP/s", "SDPA ms", "SDPA TFLOP/s", "SDPA-GQA ms",
                            "speedup vs SDPA", "max abs err"],
                           [[r["B"], r["committed"], _fmt(r["triton_ms"], 4), _fmt(r["triton_tflops"], 1),
                             _fmt(r["sdpa_ms"], 4), _fmt(r["sdpa_tflops"], 1), _fmt(r.get("sdpa_gqa_ms"), 4),
                             _fmt(r["speedup_vs_sdpa"], 2), _fmt(r["triton_max_abs_err"], 4)] for r in b["rows"]])
    a = by.get("aoti_latency", {}).get("figures") or {}
    if a.get("rows"):
        lines += ["", f"## Verify vs single-step latency ({a.get('model')}, {a.get('layers')} layers, {a.get('dtype')}, "
                      f"committed {a.get('committed')}, {a.get('timing')} of {a.get('reps')})", ""]
        lines += _md_table(["graph", "B", "compiled ms", "eager ms", "compiled ratio to ar_step", "eager ratio"],
                           [[r["graph"], r["budget"], _fmt(r.get("compiled_ms"), 3), _fmt(r.get("eager_ms"), 3),
                             _fmt(r.get("ratio_compiled"), 2), _fmt(r.get("ratio_eager"), 2)] for r in a["rows"]])
    eq_rows = []
    for step in ("aoti_latency", "aoti_artifact"):
        for q in (by.get(step, {}).get("figures") or {}).get("equality") or []:
            tok = q.get("tokens_equal", q.get("token_equal", q.get("tree_equal")))
            acc = (f"{q.get('accepted_compiled')}/{q.get('accepted_eager')}" if "accepted_compiled" in q else "-")
            ok = ("yes (near tie)" if q.get("near_tie") else "yes") if q.get("ok") else "NO"
            eq_rows.append([step, q["graph"], q.get("budget", "-"), ok, _fmt(tok), acc, _fmt(q.get("rows_rel_max"), 4),
                            _fmt(q.get("path_margin", q.get("eager_top2_margin")), 3)])
    if eq_rows:
        lines += ["", "## Compiled (AOTInductor) vs eager, same inputs", ""]
        lines += ["Token choices must agree except where the eager target's own top-1 / top-2 logit gap is within "
                  "2 ulps of the dtype (a near tie); K/V rows must agree within a relative 5e-2 (bf16) / 1e-3 (fp32).",
                  ""]
        lines += _md_table(["step", "graph", "B", "ok", "tokens equal", "accepted (compiled/eager)",
                            "max rel diff K/V rows", "smallest eager logit gap"], eq_rows)
    ll = by.get("lossless", {}).get("figures") or {}
    if ll.get("results"):
        lines += ["", f"## Lossless greedy decoding ({ll.get('device')}, tiny models)", ""]
        lines += _md_table(["model", "dtype", "runs", "differ from HF greedy", "oracle-draft tau"],
                           [[r["model"], r["dtype"], r["runs"], r["mismatches"], _fmt(r.get("tau_oracle"), 2)]
                            for r in ll["results"]])
    ae = by.get("aoti_export", {}).get("figures") or {}
    if ae.get("graphs"):
        lines += ["", f"## export_model (aoti) compile times ({ae.get('model')}, B={ae.get('budget')}, "
                      f"S={ae.get('seq_len')})", ""]
        lines += _md_table(["graph", "capture s", "compile s", "MiB", "jetspec ops"],
                           [[k, _fmt(v.get("capture_s"), 1), _fmt(v.get("compile_s"), 1), _fmt(v.get("mib"), 1),
                             v.get("jetspec_ops")] for k, v in ae["graphs"].items()])
    return "\n".join(lines) + "\n"


def write_summary(results: dict, out_dir) -> tuple[Path, Path]:
    """Write summary.json and summary.md for `results` (the content of results.json) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = build_summary(results)
    write_json(out / "summary.json", summary)
    md = out / "summary.md"
    md.write_text(render_markdown(summary))
    return out / "summary.json", md


GPU_PATHS = [
    ("Triton tree-attention kernel on CUDA (pytest -m gpu + fp16/bf16 case grid)", ("kernel_tests", "kernel_cases")),
    ("Kernel benchmark at Qwen3-8B head shapes (Triton vs SDPA)", ("bench",)),
    ("AOTInductor export on CUDA (export_model, Qwen3-8B-shaped, few layers)", ("aoti_export", "aoti_compile")),
    ("Verify vs single-step latency ratio (B = 16 / 64 / 256)", ("aoti_latency",)),
    ("Compiled vs eager equality on CUDA (accepted tokens, K/V rows)", ("aoti_latency", "aoti_artifact")),
    ("Lossless greedy speculative decoding on CUDA (tiny models)", ("lossless",)),
    ("TensorRT backend", ("tensorrt",)),
]


def render_readme_status(summary: dict | None = None) -> str:
    """The README "GPU status" section: for each GPU path, whether it ran on a real GPU, when, and the figures."""
    lines = ["## GPU status", ""]
    if summary is None or summary.get("dry_run"):
        lines += ["No GPU has been lent to this project yet: every GPU path below is **not yet run on a GPU**. "
                  "They are tested on the CPU (Triton interpreter, AOTInductor on CPU, `scripts/gpu_check.sh "
                  "--dry-run`). The kit `scripts/gpu_check.sh OUTDIR` runs all of them in one command when a GPU "
                  "machine is lent (time budget 460 s, sized for an H200 box; its real duration is not measured "
                  "yet) and writes `summary.md` / `summary.json`, from which `python scripts/gpu_check.py readme "
                  "OUTDIR` prints this section with the figures.", ""]
        lines += _md_table(["GPU path", "run on a GPU", "when", "figures"],
                           [[p, "not yet run on a GPU", "-", "-"] for p, _ in GPU_PATHS])
        return "\n".join(lines) + "\n"
    e = summary["environment"]
    by = {r["name"]: r for r in summary["steps"]}
    when = (summary.get("started") or "-")[:10]
    lines += [f"Last GPU run: {when} on {e.get('gpu')} (driver {e.get('driver')}, torch {e.get('torch')}, CUDA "
              f"{e.get('cuda')}, Triton {e.get('triton')}, transformers {e.get('transformers')}), overall "
              f"{summary['overall']}, by `scripts/gpu_check.sh`.", ""]
    rows = []
    for path, steps in GPU_PATHS:
        got = [by[s] for s in steps if s in by]
        if not got:
            rows.append([path, "not yet run on a GPU", "-", "-"])
            continue
        st = "/".join(sorted({r["status"] for r in got}))
        ran = "yes" if any(r["status"] in ("pass", "fail") for r in got) else "no"
        figs = "; ".join(f"{r['name']}: {r['headline'] or r.get('reason') or '-'}" for r in got)
        rows.append([path, f"{ran} ({st})", when, figs])
    lines += _md_table(["GPU path", "run on a GPU", "when", "figures"], rows)
    return "\n".join(lines) + "\n"


# ==================================================================================================
# command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")

    def model_opts(q):
        q.add_argument("--layers", type=int, default=None, help="target layers (GPU default 2)")
        q.add_argument("--seq-len", type=int, default=None, help="S, KV cache rows (GPU default 2048)")
        q.add_argument("--budgets", type=int, nargs="+", default=None, help="verify budgets (GPU default 16 64 256)")
        q.add_argument("--seed", type=int, default=0)

    r = sub.add_parser("run", help="run the kit (default)")
    r.add_argument("--out", required=True, help="output folder (logs, JSON, Markdown)")
    r.add_argument("--dry-run", action="store_true", help="CPU only, tiny shapes: checks the kit's plumbing")
    r.add_argument("--steps", default=None, help="comma-separated subset of steps")
    r.add_argument("--skip", default=None, help="comma-separated steps to leave out")
    r.add_argument("--work", default=None, help="work folder for packages and caches (default: a temp folder, removed)")
    r.add_argument("--keep-work", action="store_true")
    r.add_argument("--budget-s", type=float, default=None, help="overall time budget (GPU default 460 s)")
    r.add_argument("--in-process", action="store_true",
                   help="run the steps in this process, one after the other, without timeouts (debugging, tests)")
    model_opts(r)

    s = sub.add_parser("step", help="(internal) run one step and write steps/<name>.json")
    s.add_argument("name", choices=sorted(STEP_FUNCS))
    s.add_argument("--out", required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--options", default="{}")

    w = sub.add_parser("worker", help="(internal) compile one AOTI package")
    w.add_argument("--graph", required=True)
    w.add_argument("--budget", type=int, required=True)
    w.add_argument("--result", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--work", required=True)
    w.add_argument("--dry-run", action="store_true")
    w.add_argument("--options", default="{}")

    m = sub.add_parser("summarize", help="rebuild summary.json / summary.md from OUTDIR/results.json")
    m.add_argument("outdir")
    m.add_argument("--results", default=None, help="a results.json elsewhere")

    d = sub.add_parser("readme", help="print the README 'GPU status' section from OUTDIR/summary.json")
    d.add_argument("outdir", nargs="?", default=None)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in sub.choices and argv[0] not in ("-h", "--help"):
        argv = ["run"] + argv
    args = p.parse_args(argv)
    if args.cmd == "run":
        return run_all(args)
    if args.cmd == "step":
        ctx = Ctx(args.out, args.work, args.dry_run, json.loads(args.options))
        rec = run_step_here(args.name, ctx)
        write_json(Path(args.out) / "steps" / f"{args.name}.json", rec)
        return 0
    if args.cmd == "worker":
        ctx = Ctx(args.out, args.work, args.dry_run, json.loads(args.options))
        if args.dry_run:
            import torch

            torch.set_num_threads(1)
        res = compile_one(ctx, args.graph, args.budget, Path(args.work) / "packages" / package_name(args.graph, args.budget))
        write_json(Path(args.result), res)
        return 0
    if args.cmd == "summarize":
        src = Path(args.results) if args.results else Path(args.outdir) / "results.json"
        js, md = write_summary(json.loads(src.read_text()), args.outdir)
        print(md.read_text())
        return 0
    if args.cmd == "readme":
        summary = None
        if args.outdir:
            summary = json.loads((Path(args.outdir) / "summary.json").read_text())
        print(render_readme_status(summary), end="")
        return 0
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
