"""The Backend protocol and registry: one adapter class per module, the same signatures, the CLI's choices."""

from __future__ import annotations

import inspect

import pytest

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
