"""AOTInductor backend: one `.pt2` package per graph, compiled without its weights; at load time every
graph's constants are pointed at one shared set of tensors (weights.safetensors), so a model's weights
are stored and held in memory once however many graphs use them. CPU (the default where no GPU is
present) and CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from jetspec_compile.errors import BackendUnavailableError


class AotiBackend:
    """AOTInductor: ``<graph>.pt2`` packages over the shared weights file (CPU and CUDA)."""

    name = "aoti"
    ext = "pt2"
    attention_form = "op"  # the jetspec op stays one node; Inductor calls its CPU or CUDA kernel
    devices = ("cpu", "cuda")
    version_libs = ("torch",)
    device_bound = True

    def check_available(self, device: str) -> None:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("aoti on cuda: torch.cuda.is_available() is False on this machine")

    def check_spec(self, spec) -> None:
        pass

    def native_linear(self, device: str) -> bool:
        """On the CPU, linear layers run `jetspec::linear` over weights prepacked once at load time."""
        return torch.device(device).type == "cpu"

    def compile_graph(self, ep: torch.export.ExportedProgram, example_args: tuple, path: Path, device: str, *,
                      module: torch.nn.Module | None = None) -> dict:
        configs = {
            "aot_inductor.package_constants_in_so": False,  # weights live once in weights.safetensors
        }
        torch._inductor.aoti_compile_and_package(ep, package_path=str(path), inductor_configs=configs)
        return {}

    def load_graph(self, path: Path, device: str, weights: dict[str, torch.Tensor] | None = None, *,
                   graph: str | None = None) -> Callable:
        """Load one graph over the shared ``weights`` (kept alive by the returned runner). The runner takes
        the graph's flat tensor arguments and returns its flat list of outputs (no per-call pytree work)."""
        from jetspec_compile.ops import prepack_linear_weights  # also registers the jetspec ops

        dev = torch.device(device)
        model = torch._inductor.aoti_load_package(str(path), device_index=dev.index if dev.index is not None else -1)
        fqns = model.get_constant_fqns()
        missing = [k for k in fqns if k not in weights]
        if missing:
            from jetspec_compile.errors import ArtifactError

            raise ArtifactError(f"{path}: weights.safetensors lacks constants {missing[:5]}")
        model.load_constants({k: weights[k] for k in fqns}, check_full_update=True, user_managed=True)
        if dev.type == "cpu":
            prepack_linear_weights({k: weights[k] for k in fqns})  # idempotent: packed once per weight
        boxed_run = model.loader.boxed_run

        def run(*args, _keep_alive=weights):  # user-managed constants must outlive the graph
            return boxed_run(list(args))

        return run
