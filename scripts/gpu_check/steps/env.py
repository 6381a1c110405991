"""Step `env`: versions (torch, CUDA, Triton, transformers, GPU, driver) and probes of every torch /
transformers / Triton API the project calls."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

from ..common import ROOT, Ctx


def _versions() -> dict:
    """Python, library, CUDA and GPU versions (a library that does not import is recorded with its error)."""
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
    return info


def _tensorrt_version(info: dict) -> None:
    try:
        import torch_tensorrt  # noqa: F401

        info["torch_tensorrt"] = torch_tensorrt.__version__
    except Exception as e:  # noqa: BLE001
        info["torch_tensorrt"] = None
        info["torch_tensorrt_error"] = f"{type(e).__name__}: {e}"[:200]


def _checkout() -> dict:
    """Where jetspec_compile and its export / runtime subpackages were imported from (a bare checkout or not)."""
    import importlib.metadata as md

    import jetspec_compile
    import jetspec_compile.export as jexport
    import jetspec_compile.export.pipeline as jpipeline
    import jetspec_compile.runtime as jruntime
    import jetspec_compile.runtime.engine as jengine

    try:
        installed = md.version("jetspec-compile")
    except md.PackageNotFoundError:
        installed = None
    return dict(root=str(ROOT), commit=_git_commit(), jetspec_compile=jetspec_compile.__file__,
                export=jexport.__file__, runtime=jruntime.__file__, pipeline=jpipeline.__file__,
                engine=jengine.__file__, installed_dist=installed, no_site=sys.flags.no_site,
                meta_path=[getattr(f, "__name__", type(f).__name__) for f in sys.meta_path])


def run(ctx: Ctx) -> dict:
    info = _versions()
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run([smi], capture_output=True, text=True, timeout=30)
        ctx.log(r.stdout[-3000:])
    _tensorrt_version(info)
    info["checkout"] = _checkout()
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


# ---- API probes: each raises when an API the project calls is missing or changed


def _params(fn) -> set:
    import inspect

    return set(inspect.signature(fn).parameters)


def _p_custom_op():
    import torch

    import jetspec_compile.ops  # noqa: F401  (custom_op + register_kernel("cuda") + register_fake)

    op = torch.ops.jetspec.tree_attention.default
    assert callable(torch.library.custom_op) and callable(torch.library.opcheck)
    assert op is not None


def _p_export():
    import torch

    assert {"strict", "dynamic_shapes"} <= _params(torch.export.export)


def _p_aoti_compile():
    import torch

    assert {"package_path", "inductor_configs"} <= _params(torch._inductor.aoti_compile_and_package)
    assert hasattr(torch._inductor.config.aot_inductor, "package_constants_in_so")


def _p_aoti_load():
    import torch

    assert "device_index" in _params(torch._inductor.aoti_load_package)
    from torch._inductor.package import AOTICompiledModel

    assert {"check_full_update", "user_managed"} <= _params(AOTICompiledModel.load_constants)
    assert hasattr(AOTICompiledModel, "get_constant_fqns")


def _p_attention_interface():
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from jetspec_compile.attention import ATTN_IMPLEMENTATION

    assert ATTN_IMPLEMENTATION in AttentionInterface._global_mapping
    assert ATTN_IMPLEMENTATION in AttentionMaskInterface._global_mapping
    assert callable(sdpa_mask) and callable(sdpa_attention_forward)


def _p_qwen3():
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RotaryEmbedding, rotate_half

    cfg = Qwen3Config()
    assert isinstance(getattr(cfg, "rope_parameters", None), dict) and "rope_theta" in cfg.rope_parameters
    assert {"position_embeddings", "position_ids", "attention_mask"} <= _params(Qwen3DecoderLayer.forward)
    assert callable(rotate_half) and Qwen3RotaryEmbedding is not None


def _p_moe_experts():
    from transformers import Qwen3MoeConfig

    cfg = Qwen3MoeConfig()
    assert hasattr(cfg, "_experts_implementation")
    from transformers.integrations import moe

    reg = getattr(moe, "ExpertsInterface", None)
    assert reg is not None and "batched_mm" in reg._global_mapping


def _p_triton():
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget  # noqa: F401
    from triton.compiler import ASTSource  # noqa: F401

    assert "input_precision" in _params(tl.dot)
    assert callable(triton.next_power_of_2) and callable(triton.cdiv)


PROBES = [("torch.library.custom_op/register_fake/register_kernel", _p_custom_op),
          ("torch.export.export(strict=)", _p_export),
          ("torch._inductor.aoti_compile_and_package + package_constants_in_so", _p_aoti_compile),
          ("aoti_load_package(device_index=) + load_constants(user_managed=)", _p_aoti_load),
          ("transformers AttentionInterface/AttentionMaskInterface/sdpa_mask", _p_attention_interface),
          ("transformers Qwen3 (rope_parameters, DecoderLayer kwargs)", _p_qwen3),
          ("transformers Qwen3-MoE _experts_implementation='batched_mm'", _p_moe_experts),
          ("triton (tl.dot input_precision, ASTSource, GPUTarget)", _p_triton)]


def api_probes() -> dict:
    """Every torch / transformers / Triton API the project calls, probed in this Python. True or a reason."""
    out = {}
    for name, fn in PROBES:
        try:
            fn()
            out[name] = True
        except Exception as e:  # noqa: BLE001
            out[name] = f"{type(e).__name__}: {e}"[:300] or type(e).__name__
    return out
