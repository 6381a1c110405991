"""Stage 4: capture, backends, artifact folder, manifest checks."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from jetspec_compile.errors import ArtifactError, BackendUnavailableError, JetSpecError
from jetspec_compile.artifact import read_manifest
from jetspec_compile.backends import capture
from jetspec_compile.export.pipeline import export_model
from jetspec_compile.graphs import GRAPH_NAMES, SpecConfig, build_graphs, example_inputs
from jetspec_compile.runtime import load
from jetspec_compile.tiny import tiny_head, tiny_target
from jetspec_compile.tree import build_tree


def _round_inputs(target, head, spec, name, seed=0):
    """Realistic inputs: a cache filled with random rows, a real tree."""
    g = torch.Generator().manual_seed(seed)
    args = list(example_inputs(name, target, head, spec))
    for i, a in enumerate(args):
        if a.is_floating_point() and a.dim() == 4:
            args[i] = torch.randn(a.shape, generator=g).to(a.dtype)
    if name in ("prefill", "draft", "ar_step"):
        args[0] = torch.randint(0, 120, args[0].shape, generator=g)
        args[1] = torch.tensor([11])
    if name.startswith("verify"):
        D = head.depth
        toks = torch.randint(0, 120, (D, spec.topk), generator=g)
        tree = build_tree(torch.tensor([3]), toks, -torch.rand(D, spec.topk, generator=g).sort(-1).values, spec.budget)
        args[:5] = [tree.tokens, tree.parents, tree.depth, tree.mask, torch.tensor([11])]
    if name == "verify_sample":
        args[-1] = torch.rand(spec.budget, generator=g)
    return tuple(args)


def _close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if x.dtype in (torch.int64, torch.bool):
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tree", ["dynamic", "static"])
@pytest.mark.parametrize("moe", [False, True])
def test_captured_graphs_equal_eager(tree, moe):
    target = tiny_target(num_layers=4, moe=moe)
    head = tiny_head(target, block_size=6)
    spec = SpecConfig(budget=16, topk=3, max_seq_len=64, prefill_chunk=8, tree=tree)
    if moe:
        from jetspec_compile.export.pipeline import _static_experts

        with torch.no_grad():
            ref_graphs = build_graphs(target, head, spec)
            refs = {n: ref_graphs[n](*_round_inputs(target, head, spec, n)) for n in GRAPH_NAMES}
        _static_experts(target)  # the static-shape expert formulation used for export
    graphs = build_graphs(target, head, spec)
    for name in GRAPH_NAMES:
        args = _round_inputs(target, head, spec, name)
        ep = capture(graphs[name], args)
        n_ops = sum(n.target == torch.ops.jetspec.tree_attention.default for n in ep.graph.nodes)
        assert n_ops == (len(head.layers) if name == "draft" else target.num_layers)
        with torch.no_grad():
            want = refs[name] if moe else graphs[name](*args)
            _close(ep.module()(*args), want)


def _eager_round(target, head, spec, artifact_graphs):
    """One prefill + draft + verify round through compiled graphs vs the eager modules, same inputs."""
    eager = build_graphs(target, head, spec)
    for name in ("prefill", "draft", "verify", "ar_step"):
        args = _round_inputs(target, head, spec, name, seed=5)
        with torch.no_grad():
            _close(tuple(artifact_graphs[name](*args)), eager[name](*args))


def test_aoti_artifact_round_equals_eager(tiny_models, aoti_artifact):
    target, head, _ = tiny_models
    engine = load(aoti_artifact)
    _eager_round(target, head, SpecConfig(budget=16, topk=3, max_seq_len=96, prefill_chunk=16),
                 engine.decoder.graphs)


def test_onnx_artifact_round_equals_eager(tiny_models, onnx_artifact):
    import onnx

    target, head, _ = tiny_models
    engine = load(onnx_artifact)
    _eager_round(target, head, SpecConfig(budget=16, topk=3, max_seq_len=96, prefill_chunk=16),
                 engine.decoder.graphs)
    # the interchange form: one custom-domain jetspec.TreeAttention node per layer
    m = onnx.load(str(onnx_artifact / "verify.custom.onnx"))
    nodes = [n for n in m.graph.node if n.domain == "jetspec"]
    assert len(nodes) == target.num_layers and all(n.op_type == "TreeAttention" for n in nodes)
    assert {a.name for a in nodes[0].attribute} == {"scale"}
    plain = onnx.load(str(onnx_artifact / "verify.onnx"))
    assert not any(n.domain == "jetspec" for n in plain.graph.node)


def test_manifest_contents(aoti_artifact, tiny_models):
    target, head, _ = tiny_models
    m = read_manifest(aoti_artifact)
    assert m["backend"] == "aoti" and m["device"] == "cpu" and m["dtype"] == "float32"
    assert m["shapes"] == {"budget": 16, "depth": 5, "topk": 3, "max_seq_len": 96, "prefill_chunk": 16}
    assert m["tree"]["policy"] == "dynamic"
    assert set(m["graphs"]) == set(GRAPH_NAMES) - {"verify_sample"} and m["sampling"] is False  # fixture: greedy only
    assert m["target"]["tap_layers"] == head.target_layer_ids
    assert m["tokenizer"]["file"] == "tokenizer.json" and m["eos_token_ids"] == [126]
    assert m["versions"]["torch"].startswith("2.")
    assert set(m["files"]) == {p.name for p in aoti_artifact.iterdir() if p.name != "manifest.json"}


@pytest.fixture
def copy_of(tmp_path):
    def make(src):
        dst = tmp_path / "copy"
        shutil.copytree(src, dst)
        return dst

    return make


def test_tampering_is_detected(onnx_artifact, copy_of):
    art = copy_of(onnx_artifact)
    with open(art / "weights.safetensors", "r+b") as f:  # hash mismatch
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="weights.safetensors: sha256 mismatch"):
        load(art)
    shutil.rmtree(art)

    art = copy_of(onnx_artifact)
    (art / "verify.onnx").unlink()  # missing file
    with pytest.raises(ArtifactError, match="verify.onnx: missing"):
        load(art)
    shutil.rmtree(art)

    art = copy_of(onnx_artifact)
    m = json.loads((art / "manifest.json").read_text())
    m["schema_version"] = 99
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="schema_version is 99"):
        load(art)
    m["schema_version"] = 2
    m["backend"] = "tensorrt"  # wrong backend: the graph files are another backend's
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"field graphs\.\w+\.file is '\w+\.onnx'; expected a \.ep file"):
        load(art)
    m["backend"] = "tflite"
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(JetSpecError, match="field backend is 'tflite'; expected one of"):
        load(art)
    m["backend"] = "onnx"
    m["shapes"]["topk"] = 4  # any edit: the manifest's own digest
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="manifest_sha256 .* the manifest was edited"):
        load(art)
    with pytest.raises(ArtifactError, match="not found"):
        load(art / "nope")


def test_inspect_cli(onnx_artifact, copy_of):
    cmd = [sys.executable, "-m", "jetspec_compile.cli", "inspect"]
    r = subprocess.run(cmd + [str(onnx_artifact)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "every sha256 verified" in r.stdout and "B=16 D=5 K=3 S=96 P=16" in r.stdout
    art = copy_of(onnx_artifact)
    (art / "draft.onnx").write_bytes(b"garbage")
    r = subprocess.run(cmd + [str(art)], capture_output=True, text=True)
    assert r.returncode == 1 and "draft.onnx: sha256 mismatch" in r.stderr


def test_interrupted_export_leaves_nothing(tmp_path):
    target = tiny_target(num_layers=2, num_taps=1)
    head = tiny_head(target, block_size=4)
    out = tmp_path / "art"
    with pytest.raises(RuntimeError, match="injected failure"):
        export_model(target, head, SpecConfig(budget=8, topk=2, max_seq_len=32, prefill_chunk=8), out,
                     backend="onnx", sampling=False, log=lambda s: None, _fail_after="prefill")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial folder either


def test_existing_folder_needs_force(tmp_path):
    (tmp_path / "art").mkdir()
    target = tiny_target(num_layers=2, num_taps=1)
    head = tiny_head(target, block_size=4)
    with pytest.raises(ArtifactError, match="already exists"):
        export_model(target, head, SpecConfig(budget=8, topk=2, max_seq_len=32, prefill_chunk=8),
                     tmp_path / "art", backend="onnx", log=lambda s: None)


def test_tensorrt_without_torch_tensorrt(tmp_path):
    target = tiny_target(num_layers=2, num_taps=1)
    head = tiny_head(target, block_size=4)
    spec = SpecConfig(budget=8, topk=2, max_seq_len=32, prefill_chunk=8)
    for device in ("cpu", "cuda"):
        with pytest.raises(BackendUnavailableError, match="torch-tensorrt|--device cuda|CUDA"):
            export_model(target, head, spec, tmp_path / "trt", backend="tensorrt", device=device, log=lambda s: None)
    assert not (tmp_path / "trt").exists()


def test_bad_spec_errors():
    target = tiny_target(num_layers=2, num_taps=1)
    head = tiny_head(target, block_size=4)
    with pytest.raises(JetSpecError, match="tree policy is 'bushy'"):
        build_graphs(target, head, SpecConfig(tree="bushy", max_seq_len=128))
    with pytest.raises(JetSpecError, match="max_seq_len 20 is too small"):
        build_graphs(target, head, SpecConfig(budget=16, max_seq_len=20))
    with pytest.raises(JetSpecError, match="depth is 9"):
        head.set_depth(9)
