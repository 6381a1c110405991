"""jetspec-compile: compile JetSpec speculative decoding (Qwen3 target + draft head) into static engines."""

from __future__ import annotations

from .errors import ArtifactError, BackendUnavailableError, JetSpecError
from .head import DraftHead, load_draft_head
from .target import Target, TargetOutput, default_tap_layers, load_target

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "BackendUnavailableError",
    "DraftHead",
    "JetSpecError",
    "Target",
    "TargetOutput",
    "default_tap_layers",
    "load_draft_head",
    "load_target",
]
