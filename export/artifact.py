"""The artifact folder: manifest.json, compiled graphs, shared weights, tokenizer. Atomic writes, verified reads.

```
artifacts/<name>/
  manifest.json        schema version, backend, device, dtype, B/D/K/S/P, tree policy, model configs, tap
                       layers, tokenizer info, library versions, sha256 of every other file
  weights.safetensors  every target + head tensor once (keys = the graphs' parameter names)
  prefill.<ext> draft.<ext> verify.<ext> [verify_sample.<ext>] ar_step.<ext>
  tokenizer.json       when the target folder has one
```
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from jetspec_compile.errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in ("jetspec-compile", "torch", "transformers", "triton", "onnx", "onnxscript", "onnxruntime",
                 "torch-tensorrt", "tensorrt"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


@contextlib.contextmanager
def atomic_folder(dest: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; on success rename it to ``dest``, on any error delete it.

    An interrupted export therefore leaves no artifact folder (and never half of one)."""
    dest = Path(dest)
    if dest.exists() and not force:
        raise ArtifactError(f"{dest}: already exists (pass --force to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Hash every file in ``folder`` (but the manifest) into manifest["files"] and write manifest.json."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[str(p.relative_to(folder))] = sha256(p)
    manifest = dict(manifest, schema_version=SCHEMA_VERSION, files=files)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(folder: str | Path, *, verify_hashes: bool = True) -> dict:
    """Read and check an artifact's manifest. Raises ArtifactError saying exactly what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: artifact folder not found")
    if not path.is_file():
        raise ArtifactError(f"{path}: not found (not an artifact folder)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: invalid JSON ({e})") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: field schema_version is {version!r}; this jetspec-compile reads schema "
                            f"version {SCHEMA_VERSION} (re-export the model)")
    for key in ("backend", "graphs", "files", "shapes", "target", "head", "dtype", "device"):
        if key not in manifest:
            raise ArtifactError(f"{path}: field {key!r} is missing")
    files = manifest["files"]
    for g, info in manifest["graphs"].items():
        if info["file"] not in files:
            raise ArtifactError(f"{path}: graph {g!r} file {info['file']!r} is not listed in field 'files'")
    if verify_hashes:
        for rel, digest in files.items():
            p = folder / rel
            if not p.is_file():
                raise ArtifactError(f"{p}: missing (listed in {MANIFEST} field 'files')")
            got = sha256(p)
            if got != digest:
                raise ArtifactError(f"{p}: sha256 mismatch (manifest {digest[:16]}..., file {got[:16]}...): "
                                    "the file was modified after export")
    return manifest


def update_manifest(folder: str | Path, **fields) -> dict:
    """Set top-level manifest fields (e.g. autotune results) without touching the hashed files."""
    folder = Path(folder)
    manifest = read_manifest(folder, verify_hashes=False)
    manifest.update(fields)
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return manifest
