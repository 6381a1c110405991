"""The Backend protocol and registry: one adapter class per module, the same signatures, the CLI's choices."""

from __future__ import annotations

import inspect

import pytest
import torch

from jetspec_compile.backends import BACKENDS, Backend, backend_names, get_backend
from jetspec_compile.errors import BackendUnavailableError, JetSpecError
from jetspec_compile.graphs import SpecConfig


def test_registry_holds_one_adapter_per_backend():
    assert backend_names() == ("aoti", "tensorrt", "onnx")  # the CLI lists them in this order
    for name, be in BACKENDS.items():
        assert isinstance(be, Backend) and be.name == name
        assert be.attention_form in ("op", "dense")
        assert set(be.devices) <= {"cpu", "cuda"} and be.devices
    assert {n: (b.ext, b.devices, b.version_libs, b.device_bound) for n, b in BACKENDS.items()} == {
        "aoti": ("pt2", ("cpu", "cuda"), ("torch",), True),
        "tensorrt": ("ep", ("cuda",), ("torch", "torch-tensorrt"), True),
        "onnx": ("onnx", ("cpu",), (), False),
    }


@pytest.mark.parametrize("method", ["check_available", "check_spec", "native_linear", "compile_graph", "load_graph"])
def test_every_backend_has_the_same_signature(method):
    sigs = {n: inspect.signature(getattr(type(b), method)) for n, b in BACKENDS.items()}
    assert len({str(s) for s in sigs.values()}) == 1, sigs


def test_unknown_backend_is_one_error():
    with pytest.raises(JetSpecError, match=r"backend 'tvm'; expected one of \['aoti', 'onnx', 'tensorrt'\]"):
        get_backend("tvm")


def test_cli_choices_come_from_the_registry(capsys):
    from jetspec_compile.cli import main

    with pytest.raises(SystemExit) as e:
        main(["export", "--backend", "tvm"])
    assert e.value.code == 1
    assert "invalid choice: 'tvm' (choose from 'aoti', 'tensorrt', 'onnx')" in capsys.readouterr().err


def test_onnx_and_aoti_take_a_lookup_chain():
    for name in ("onnx", "aoti"):  # the onnx runner binds the lookup draft's inputs (tests/test_lookup_decode.py)
        get_backend(name).check_spec(SpecConfig(budget=8, topk=3, lookup=4))
        get_backend(name).check_spec(SpecConfig(budget=8, topk=3))


def test_native_linears_only_for_aoti_on_cpu():
    assert get_backend("aoti").native_linear("cpu")
    assert not get_backend("aoti").native_linear("cuda")
    assert not get_backend("onnx").native_linear("cpu")
    assert not get_backend("tensorrt").native_linear("cuda")


def test_tensorrt_adapter_imports_torch_tensorrt_lazily():
    trt = get_backend("tensorrt")
    with pytest.raises(BackendUnavailableError, match="tensorrt backend needs --device cuda"):
        trt.check_available("cpu")


def test_compile_graphs_captures_lazily_and_reports_each_graph(tmp_path):
    """The one capture + compile loop (export and the profile's sweep): jobs are taken one at a time (a job
    may set the models up for its own capture), each compiled into folder/<name>.<ext>, with timings, size,
    the backend's fields and the jetspec op counts."""
    from jetspec_compile.backends import GraphJob, compile_graphs
    from jetspec_compile.tiny import tiny_head, tiny_target

    class Fake:
        name, ext, attention_form = "fake", "bin", "op"
        compiled: list = []

        def compile_graph(self, ep, args, path, device, *, module=None):
            self.compiled.append((path.name, module is not None))
            path.write_bytes(b"x" * (10 + len(self.compiled)))
            return {"note": path.stem}

    class Scale(torch.nn.Module):
        def forward(self, x):
            return x * 2

    taken, lines = [], []

    def jobs():
        for name in ("a", "b.b4"):
            taken.append((name, len(Fake.compiled)))  # how many were compiled when this job was made
            yield GraphJob(name, Scale(), (torch.ones(3),))

    target = tiny_target(num_layers=1, num_taps=1)
    head = tiny_head(target, block_size=2, mask_token_id=127)
    out = list(compile_graphs(Fake(), jobs(), tmp_path, "cpu", native=False, target=target, head=head, total=2,
                              with_module=False, prefix="  ", log=lines.append))
    assert taken == [("a", 0), ("b.b4", 1)]
    assert Fake.compiled == [("a.bin", False), ("b.b4.bin", False)]
    assert [(c.name, c.path.name, c.bytes, c.backend_fields) for c in out] == [
        ("a", "a.bin", 11, {"note": "a"}), ("b.b4", "b.b4.bin", 12, {"note": "b.b4"})]
    assert all(c.capture_s >= 0 and c.compile_s >= 0 and c.jetspec_ops == 0 and c.native_linears == 0 for c in out)
    assert out[0].input_types == ("torch.float32[3]",)
    assert lines[0].startswith("  [1/2] a: captured in ") and lines[0].endswith("compiling (fake) ...")
    assert lines[3].startswith("  [2/2] b.b4: compiled in ")
