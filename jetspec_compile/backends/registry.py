"""The backend registry: name -> adapter instance, in the order the CLI lists them."""

from __future__ import annotations

from jetspec_compile.errors import JetSpecError

from .aoti import AotiBackend
from .base import Backend
from .onnx import OnnxBackend
from .tensorrt import TensorRTBackend

BACKENDS: dict[str, Backend] = {b.name: b for b in (AotiBackend(), TensorRTBackend(), OnnxBackend())}


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise JetSpecError(f"backend {name!r}; expected one of {sorted(BACKENDS)}") from None
