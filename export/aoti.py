"""AOTInductor backend: one `.pt2` package per graph, compiled without its weights; at load time every
graph's constants are pointed at one shared set of tensors (weights.safetensors), so a model's weights
are stored and held in memory once however many graphs use them. CPU (the default where no GPU is
present) and CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from jetspec_compile.errors import BackendUnavailableError

NAME = "aoti"
EXT = "pt2"
ATTENTION_FORM = "op"  # the jetspec op stays one node; Inductor calls its CPU or CUDA kernel


def check_available(device: str) -> None:
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("aoti on cuda: torch.cuda.is_available() is False on this machine")


def compile_graph(ep: torch.export.ExportedProgram, example_args: tuple, path: Path, device: str) -> dict:
    configs = {
        "aot_inductor.package_constants_in_so": False,  # weights live once in weights.safetensors
    }
    torch._inductor.aoti_compile_and_package(ep, package_path=str(path), inductor_configs=configs)
    return {}


def load_graph(path: Path, device: str, weights: dict[str, torch.Tensor]) -> Callable:
    import jetspec_compile.ops  # noqa: F401  (the jetspec ops must be registered in the loading process)

    dev = torch.device(device)
    model = torch._inductor.aoti_load_package(str(path), device_index=dev.index if dev.index is not None else -1)
    fqns = model.get_constant_fqns()
    missing = [k for k in fqns if k not in weights]
    if missing:
        from jetspec_compile.errors import ArtifactError

        raise ArtifactError(f"{path}: weights.safetensors lacks constants {missing[:5]}")
    model.load_constants({k: weights[k] for k in fqns}, check_full_update=True, user_managed=True)

    def run(*args):
        return model(*args)

    return run
