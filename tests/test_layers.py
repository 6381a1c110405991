"""Imports run one way: core -> backends -> artifact -> export / runtime -> CLI (checked on the source)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "jetspec_compile"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (relative imports resolved against its package name)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("export", "runtime"):
        parts = ["jetspec_compile"] + parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("jetspec_compile")}


def _files(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _violations(files, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {m}" for p in files for m in sorted(_imports(p))
            if any(m == f or m.startswith(f + ".") for f in forbidden)]


def test_runtime_does_not_import_export():
    assert _violations(_files(ROOT / "runtime"), ("jetspec_compile.export",)) == []


def test_export_does_not_import_runtime():
    assert _violations(_files(ROOT / "export"), ("jetspec_compile.runtime",)) == []


def test_artifact_and_backends_import_only_the_core():
    files = _files(PKG / "artifact") + _files(PKG / "backends")
    assert _violations(files, ("jetspec_compile.export", "jetspec_compile.runtime")) == []
    assert _violations(_files(PKG / "backends"), ("jetspec_compile.artifact",)) == []


def test_core_imports_no_upper_layer():
    core = [p for p in _files(PKG) if p.parent == PKG and p.name not in ("cli.py", "__init__.py")]
    core += _files(PKG / "train") + _files(PKG / "kernels")
    upper = ("jetspec_compile.export", "jetspec_compile.runtime", "jetspec_compile.artifact",
             "jetspec_compile.backends")
    assert _violations(core, upper) == []
