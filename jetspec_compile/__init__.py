"""jetspec-compile: compile JetSpec speculative decoding (Qwen3 target + draft head) into static engines."""

from __future__ import annotations

from .errors import ArtifactError, BackendUnavailableError, JetSpecError
from .accept import Acceptance, accept
from .decode import Stats
from .graphs import SpecConfig
from .head import DraftHead, load_draft_head
from .speculative import autoregressive_generate, speculative_generate
from .target import Target, TargetOutput, default_tap_layers, load_target
from .tree import StaticTree, Tree, build_tree, calibrate_static_tree, static_tree_from_paths

__version__ = "0.1.0"

__all__ = [
    "Acceptance",
    "ArtifactError",
    "SpecConfig",
    "StaticTree",
    "Stats",
    "Tree",
    "accept",
    "autoregressive_generate",
    "build_tree",
    "calibrate_static_tree",
    "speculative_generate",
    "static_tree_from_paths",
    "BackendUnavailableError",
    "DraftHead",
    "JetSpecError",
    "Target",
    "TargetOutput",
    "default_tap_layers",
    "load_draft_head",
    "load_target",
]
