"""The artifact layer: reading, checking and writing an artifact folder's manifest, for export and the runtime.

Layering (imports run one way): the core (``jetspec_compile`` modules, ``jetspec_compile.backends``) ->
this package -> ``export`` / ``runtime`` -> the command lines. Neither ``export`` nor ``runtime`` imports the
other's internals; what both need lives here or below.

``store``: paths, hashes, the manifest's own digest, atomic manifest writes and verified reads.
``manifest``: ``Manifest``, the typed view of manifest.json (the only reader of its keys).
``schema``: every manifest field's type and range, and the shapes against the compiled graphs.
"""

from __future__ import annotations

from .manifest import Budgets, GraphEntry, Manifest, ModelInfo, Shapes, load_manifest
from .schema import BACKEND_EXT, check_fields, check_graph_shapes
from .store import (DIGEST, MANIFEST, SCHEMA_VERSION, artifact_path, library_versions, load_tokenizer,
                    manifest_digest, read_manifest, sha256, update_manifest, write_manifest)

__all__ = ["BACKEND_EXT", "Budgets", "GraphEntry", "Manifest", "ModelInfo", "Shapes", "load_manifest", "DIGEST", "MANIFEST", "SCHEMA_VERSION", "artifact_path", "check_fields",
           "check_graph_shapes", "library_versions", "load_tokenizer", "manifest_digest", "read_manifest", "sha256",
           "update_manifest", "write_manifest"]
