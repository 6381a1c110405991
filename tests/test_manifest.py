"""The typed artifact contract: Manifest.from_json / to_json over real manifests, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jetspec_compile.artifact import Manifest, load_manifest, manifest_digest, read_manifest
from jetspec_compile.errors import ArtifactError

ROOT = Path(__file__).resolve().parent.parent


def _saved_artifacts() -> list[Path]:
    """Artifacts exported earlier into artifacts/ (if any): their manifests must still load unchanged."""
    return sorted(p.parent for p in (ROOT / "artifacts").glob("*/manifest.json"))


def test_round_trip_keeps_the_json_and_its_digest(aoti_artifact):
    m = json.loads((Path(aoti_artifact) / "manifest.json").read_text())
    typed = Manifest.from_json(m, Path(aoti_artifact) / "manifest.json")
    assert typed.to_json() == m
    assert manifest_digest(typed.to_json()) == m["manifest_sha256"]
    assert typed.to_json() is not typed.to_json()  # a copy: the typed view cannot be edited through it


def test_typed_fields(aoti_artifact):
    m = load_manifest(aoti_artifact)
    raw = read_manifest(aoti_artifact)
    assert m.backend == raw["backend"] == "aoti" and m.device == "cpu" and m.torch_dtype == torch.float32
    assert (m.shapes.budget, m.shapes.topk, m.shapes.max_seq_len) == (16, 3, 96)
    assert m.shapes.depth == m.head.depth == raw["head"]["depth"]
    assert set(m.graphs) == set(raw["graphs"]) and m.graphs["verify"].file == "verify.pt2"
    assert list(m.target.tap_layers) == raw["target"]["tap_layers"]
    spec = m.spec()
    assert (spec.budget, spec.topk, spec.tree, spec.lookup) == (16, 3, raw["tree"]["policy"], 0)
    dims = m.cache_dims()
    assert dims.target_layers == raw["target"]["config"]["num_hidden_layers"] and dims.depth == m.shapes.depth
    assert m.tokenizer_file == "tokenizer.json" and m.files == raw["files"]


def test_from_json_keeps_the_schema_errors(aoti_artifact, tmp_path):
    path = Path(aoti_artifact) / "manifest.json"
    m = json.loads(path.read_text())
    m["shapes"]["topk"] = 0
    with pytest.raises(ArtifactError, match=r"manifest.json: field shapes.topk is 0; expected an integer >= 1"):
        Manifest.from_json(m, path)
    m = json.loads(path.read_text())
    del m["graphs"]["verify"]
    with pytest.raises(ArtifactError, match=r"field graphs.verify is missing; expected an object"):
        Manifest.from_json(m, path)


@pytest.mark.parametrize("folder", _saved_artifacts(), ids=lambda p: p.name)
def test_saved_artifacts_still_load(folder):
    m = load_manifest(folder, verify_hashes=False)
    assert m.to_json() == json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("fixture", ["aoti_artifact", "onnx_artifact"])
def test_the_fields_serialize_to_the_manifest_on_disk(fixture, request):
    """Export writes ``Manifest.to_json()`` of a Manifest built from the dataclasses: serializing the typed
    fields of a fresh export gives back every field on disk (all but the digest write_manifest adds)."""
    import dataclasses

    folder = Path(request.getfixturevalue(fixture))
    m = json.loads((folder / "manifest.json").read_text())
    built = dataclasses.replace(Manifest.from_json(m, folder / "manifest.json"), _json={})
    assert built.to_json() == {k: v for k, v in m.items() if k != "manifest_sha256"}
    assert manifest_digest(built.to_json()) == m["manifest_sha256"]


@pytest.mark.parametrize("folder", _saved_artifacts(), ids=lambda p: p.name)
def test_saved_artifacts_fields_serialize_back(folder):
    """The fields of a saved artifact (the demo: aoti, adaptive budgets, tokenizer) serialize to its JSON."""
    import dataclasses

    disk = json.loads((folder / "manifest.json").read_text())
    built = dataclasses.replace(load_manifest(folder, verify_hashes=False), _json={}).to_json()
    assert built == {k: v for k, v in disk.items() if k != "manifest_sha256"}
