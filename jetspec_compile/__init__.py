"""jetspec-compile: compile JetSpec speculative decoding (Qwen3 target + draft head) into static engines."""

from __future__ import annotations


def _map_sibling_subpackages() -> None:
    """Let ``jetspec_compile.export`` / ``jetspec_compile.runtime`` resolve in a bare source checkout.

    Installed, these two subpackages come from the top-level ``export/`` and ``runtime/`` folders through
    setuptools' package-dir mapping (a wheel copies them into the package; an editable install adds a
    finder). A checkout used from PYTHONPATH alone has neither, so a finder placed here maps exactly these
    two names to the folders beside *this* package. It is added only when the package folder has no such
    subpackage of its own (i.e. never for a wheel install), and always points at the same checkout as the
    imported ``jetspec_compile``, so an installed copy elsewhere is never mixed in.
    """
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    mapping = {}
    for sub in ("export", "runtime"):
        if (here / sub / "__init__.py").is_file():
            continue
        folder = here.parent / sub
        if (folder / "__init__.py").is_file():
            mapping[f"{__name__}.{sub}"] = folder
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "_jetspec_sibling_subpackages", False)]
    if not mapping:
        return

    class _SiblingSubpackageFinder:
        _jetspec_sibling_subpackages = True

        @staticmethod
        def find_spec(fullname, path=None, target=None):
            folder = mapping.get(fullname)
            if folder is None:
                return None
            return importlib.util.spec_from_file_location(
                fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])

    sys.meta_path.insert(0, _SiblingSubpackageFinder())


_map_sibling_subpackages()
del _map_sibling_subpackages

from .errors import ArtifactError, BackendUnavailableError, JetSpecError
from .accept import Acceptance, accept
from .decode import Stats
from .graphs import SpecConfig
from .head import DraftHead, load_draft_head
from .eager_oracle import autoregressive_generate, speculative_generate
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
