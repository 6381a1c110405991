"""The artifact folder: manifest.json, compiled graphs, shared weights, tokenizer. Atomic writes, verified reads.

```
artifacts/<name>/
  manifest.json        schema version, backend, device, dtype, B/D/K/S/P, tree policy, model configs, tap
                       layers, tokenizer info, library versions, sha256 of every other file, and
                       manifest_sha256: the sha256 of the manifest's own canonical form
  weights.safetensors  every target + head tensor once (keys = the graphs' parameter names)
  prefill.<ext> draft.<ext> verify.<ext> [verify_sample.<ext>] ar_step.<ext>
  tokenizer.json       when the target folder has one
```

Every path in a manifest is relative and resolves inside the folder (``artifact_path``), and every file
it names is hashed. The hashes detect corruption and edits, not a malicious author: a compiled graph is
native code, so artifacts are loaded only from sources the user trusts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from jetspec_compile.errors import ArtifactError

from .schema import check_fields, check_graph_shapes

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
DIGEST = "manifest_sha256"


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


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces, ASCII) without ``manifest_sha256``."""
    body = {k: v for k, v in manifest.items() if k != DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def artifact_path(folder: str | Path, rel: object, field: str = "files") -> Path:
    """The resolved path of ``rel`` inside ``folder``; ArtifactError when it is absolute, has ``..``, or
    leaves the folder through a symlink."""
    folder = Path(folder)
    where = f"{folder / MANIFEST}: field {field}"
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ArtifactError(f"{where} is {rel!r}; expected a relative path inside the artifact folder")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or os.path.isabs(rel) or ".." in pure.parts or rel.startswith("~"):
        raise ArtifactError(f"{where} is {rel!r}; expected a relative path inside the artifact folder "
                            "(no absolute path, no '..')")
    root = folder.resolve()
    resolved = (root / rel).resolve()
    if resolved == root or root not in resolved.parents:
        raise ArtifactError(f"{where} is {rel!r}, which resolves to {resolved} outside the artifact folder "
                            f"{root}; expected a file inside it (no symlink out)")
    return resolved


def load_tokenizer(folder: str | Path, rel: str):
    """The artifact's tokenizer.json (inside the folder), or one ArtifactError."""
    from tokenizers import Tokenizer

    path = artifact_path(folder, rel, "tokenizer.file")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception
        raise ArtifactError(f"{path}: cannot read the tokenizer ({str(e)[:200]}); expected a tokenizer.json "
                            "written by Hugging Face tokenizers") from None


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Hash every file in ``folder`` (but the manifest) into manifest["files"], add the manifest's own
    digest and write manifest.json (atomically)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith("."):
            files[str(p.relative_to(folder))] = sha256(p)
    body = {k: v for k, v in manifest.items() if k != DIGEST}
    return _write(folder, dict(body, schema_version=SCHEMA_VERSION, files=files))


def _write(folder: Path, manifest: dict) -> dict:
    manifest = dict(manifest, **{DIGEST: manifest_digest(manifest)})
    tmp = folder / f".{MANIFEST}.tmp-pid{os.getpid()}"
    try:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n")
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def read_manifest(folder: str | Path, *, verify_hashes: bool = True) -> dict:
    """Read and check an artifact's manifest: schema, paths, shapes against the compiled graphs, the
    manifest's own digest and (``verify_hashes``) every file's sha256. Raises one ArtifactError."""
    folder = Path(folder)
    path = folder / MANIFEST
    manifest = _parse(folder, path)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: field schema_version is {version!r}; this jetspec-compile reads schema "
                            f"version {SCHEMA_VERSION} (re-export the model)")
    check_fields(manifest, path)
    _check_paths(folder, manifest)
    check_graph_shapes(manifest, path)
    digest = manifest.get(DIGEST)
    if digest != manifest_digest(manifest):
        raise ArtifactError(f"{path}: field {DIGEST} is {digest!r}; expected the sha256 of the manifest's "
                            "canonical form: the manifest was edited after export (re-export the model)")
    if verify_hashes:
        _verify_files(folder, manifest)
    return manifest


def _parse(folder: Path, path: Path) -> dict:
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: artifact folder not found")
    if not path.is_file():
        raise ArtifactError(f"{path}: not found (not an artifact folder)")
    artifact_path(folder, MANIFEST, "manifest.json")  # not a symlink out of the folder
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 (byte {e.start}); expected a UTF-8 JSON object") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read ({e.strerror})") from None
    try:
        manifest = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{path}: invalid JSON ({e}); expected a JSON object") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: the manifest is a JSON {type(manifest).__name__}; expected a JSON object")
    return manifest


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _check_paths(folder: Path, m: dict) -> None:
    """Every path is safe, and every file the loader opens is listed (hashed) in ``files``."""
    path = folder / MANIFEST
    files = m["files"]
    named = [("weights", m["weights"])] + [(f"graphs.{n}.file", g["file"]) for n, g in m["graphs"].items()]
    tok = m.get("tokenizer")
    if tok:
        named.append(("tokenizer.file", tok["file"]))
        named += [(f"tokenizer.files[{i}]", f) for i, f in enumerate(tok.get("files") or [])]
    for field, rel in named:
        artifact_path(folder, rel, field)
        if rel not in files:
            raise ArtifactError(f"{path}: field {field} is {rel!r}, which is not listed in field 'files'; "
                                "expected a hashed file of the artifact")
    for rel in files:
        artifact_path(folder, rel, f"files[{rel!r}]")


def _verify_files(folder: Path, m: dict) -> None:
    for rel, digest in m["files"].items():
        p = artifact_path(folder, rel, f"files[{rel!r}]")
        if not p.is_file():
            raise ArtifactError(f"{folder / rel}: missing (listed in {MANIFEST} field 'files')")
        got = sha256(p)
        if got != digest:
            raise ArtifactError(f"{folder / rel}: sha256 mismatch (manifest {digest[:16]}..., file {got[:16]}...): "
                                "the file was modified after export")
    listed = set(m["files"])
    for p in sorted(folder.iterdir()):
        if p.name != MANIFEST and not p.name.startswith(".") and not p.is_dir() and p.name not in listed:
            raise ArtifactError(f"{p}: not listed in {folder / MANIFEST} field 'files'; expected every file of "
                                "the artifact to be hashed (remove it or re-export)")


def update_manifest(folder: str | Path, **fields) -> dict:
    """Set top-level manifest fields (e.g. autotune results) without touching the hashed files; the
    manifest's digest is recomputed."""
    folder = Path(folder)
    manifest = read_manifest(folder, verify_hashes=False)
    manifest.update(fields)
    check_fields(manifest, folder / MANIFEST)
    return _write(folder, manifest)
