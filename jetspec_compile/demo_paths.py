"""Where the bundled demo lives inside the installed package.

``jetspec_compile/demo/`` is a data folder (package data ``demo/**/*``), built by
``scripts/build_demo.py``: a small Qwen3 trained from scratch on the Python standard library
(``target/``: config.json, model.safetensors, tokenizer.json) and a JetSpec head for it (``head/``).
Its held-out files are stdlib sources of the running interpreter, listed by relative path.

    from jetspec_compile import load_target, load_draft_head
    from jetspec_compile.demo_paths import demo_head_path, demo_target_path

    head = load_draft_head(demo_head_path())
    target = load_target(demo_target_path(), tap_layers=head.target_layer_ids)
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from .errors import JetSpecError

__all__ = ["demo_dir", "demo_target_path", "demo_head_path", "demo_heldout_files"]


def demo_dir() -> Path:
    """The package's ``demo`` data folder."""
    return Path(__file__).resolve().parent / "demo"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise JetSpecError(f"{path}: the bundled demo {what} is missing from this installation "
                           "(rebuild it with scripts/build_demo.py, or reinstall the package with its data)")
    return path


def demo_target_path() -> Path:
    """The demo target folder (Hugging Face Qwen3 layout: config.json, model.safetensors, tokenizer.json)."""
    return _need(demo_dir() / "target" / "model.safetensors", "target").parent


def demo_head_path() -> Path:
    """The demo JetSpec head folder (released layout: config.json, model.safetensors)."""
    return _need(demo_dir() / "head" / "model.safetensors", "head").parent


def demo_heldout_files(existing_only: bool = True) -> list[Path]:
    """The held-out stdlib source files (never trained on), resolved in this interpreter's stdlib.

    The list was made on the build machine's interpreter; with ``existing_only`` the files this
    interpreter lacks are left out.
    """
    listing = _need(demo_dir() / "heldout_files.txt", "held-out file list")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [root / line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return [f for f in files if f.is_file()] if existing_only else files
