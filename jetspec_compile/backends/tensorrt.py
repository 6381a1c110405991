"""TensorRT backend through torch-tensorrt (GPU only; its wheels come from NVIDIA's own package index).

Written against the torch-tensorrt 2.13 dynamo API and kept thin. It has NOT run on this project's
machines (no TensorRT can be installed without NVIDIA's index, and it needs a GPU). Every import of
torch_tensorrt is lazy: without it, or without CUDA, the backend raises BackendUnavailableError
saying what to install.

The jetspec ops become TensorRT plugins with `torch_tensorrt.dynamo.conversion.plugins.custom_op`,
which generates a Quickly Deployable Plugin from the op's fake (shape) function and a JIT
implementation that calls the op's CUDA kernel (the Triton kernel). The compiled module is saved as
an ExportedProgram (`.ep`) with the engine serialized inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from jetspec_compile.errors import BackendUnavailableError

INSTALL_HINT = ("install torch-tensorrt 2.13.x (pip install 'jetspec-compile[tensorrt]' with NVIDIA's package "
                "index configured) on a machine with an NVIDIA GPU and CUDA torch 2.13")


def _import():
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as e:  # ImportError, or OSError from missing CUDA / TensorRT libraries
        raise BackendUnavailableError(f"tensorrt backend: torch_tensorrt cannot be imported ({type(e).__name__}: "
                                      f"{e}); {INSTALL_HINT}") from None
    return torch_tensorrt


_PLUGINS = []


def register_plugins() -> None:
    """Register jetspec::tree_attention as a TensorRT plugin + converter (once per process)."""
    if _PLUGINS:
        return
    _import()
    from torch_tensorrt.dynamo.conversion.plugins import custom_op

    import jetspec_compile.ops  # noqa: F401

    custom_op("jetspec::tree_attention", capability_validator=lambda node, settings: True,
              supports_dynamic_shapes=False)
    _PLUGINS.append(True)


class TensorRTBackend:
    """torch-tensorrt: ``<graph>.ep`` ExportedPrograms with the TensorRT engine inside (CUDA only)."""

    name = "tensorrt"
    ext = "ep"
    attention_form = "op"
    devices = ("cuda",)
    version_libs = ("torch", "torch-tensorrt")
    device_bound = True

    def check_available(self, device: str) -> None:
        if torch.device(device).type != "cuda":
            raise BackendUnavailableError(f"tensorrt backend needs --device cuda (got {device!r}); {INSTALL_HINT}")
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"tensorrt backend: no CUDA device is available; {INSTALL_HINT}")
        _import()

    def check_spec(self, spec) -> None:
        pass

    def native_linear(self, device: str) -> bool:
        return False

    def compile_graph(self, ep: torch.export.ExportedProgram, example_args: tuple, path: Path, device: str, *,
                      module: torch.nn.Module | None = None) -> dict:
        torch_tensorrt = _import()
        register_plugins()
        trt_module = torch_tensorrt.dynamo.compile(
            ep,
            arg_inputs=list(example_args),
            device=torch.device(device),
            min_block_size=1,
            require_full_compilation=False,  # small integer glue (tree, acceptance) may stay in torch
        )
        torch_tensorrt.save(trt_module, str(path), output_format="exported_program", arg_inputs=list(example_args))
        return {"torch_tensorrt": torch_tensorrt.__version__}

    def load_graph(self, path: Path, device: str, weights: dict[str, torch.Tensor] | None = None, *,
                   graph: str | None = None) -> Callable:
        torch_tensorrt = _import()
        register_plugins()  # JIT plugins must be registered in the process that deserializes the engine
        module = torch_tensorrt.load(str(path)).module()

        def run(*args):
            return module(*args)

        return run
