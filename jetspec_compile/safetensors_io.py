"""Safetensors reading with precise errors. Weights load only through safetensors, never pickle."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import JetSpecError

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def check_safetensors(path: Path) -> dict:
    """Validate a .safetensors file's header against its size; return the header. Raise JetSpecError."""
    path = Path(path)
    if not path.is_file():
        raise JetSpecError(f"{path}: file not found (expected a .safetensors weights file)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise JetSpecError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise JetSpecError(f"{path}: truncated safetensors file (header says {n} header bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise JetSpecError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise JetSpecError(f"{path}: not a safetensors file (header is not an object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            a, b = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise JetSpecError(f"{path}: tensor {name!r} has no valid data_offsets in the header") from None
        end = max(end, b)
    if 8 + n + end > size:
        raise JetSpecError(
            f"{path}: truncated safetensors file (tensors need {8 + n + end} bytes, file has {size})"
        )
    return header


def load_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    check_safetensors(path)
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise JetSpecError(f"{path}: cannot read safetensors file: {e}") from None


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or {"format": "pt"})
