"""`jetspec-compile serve-triton`: a live Triton Inference Server (PyTriton) on 127.0.0.1 with the tiny
artifact as a decoupled model with 2 instances; `tritonclient` gRPC streaming equals Engine.generate."""

from __future__ import annotations

import os
import queue
import sysconfig
import threading

import numpy as np
import pytest

from jetspec_compile.runtime import load
from serve_helpers import free_port

pytest.importorskip("pytriton")
grpcclient = pytest.importorskip("tritonclient.grpc")

PROMPTS = ["def f(x):", "hello world", "abc"]


@pytest.fixture(scope="module")
def triton(aoti_artifact):
    from jetspec_compile.runtime.serve import build_model
    from jetspec_compile.runtime.triton_serve import TritonServer

    model = build_model(aoti_artifact, 2, name="tiny model")  # the space becomes '_' in Triton's name
    server = TritonServer(model, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    workspace = server.workspace
    with server:
        server.reference = load(aoti_artifact)
        yield server
    assert not workspace.exists()  # the temporary workspace is removed at stop


def _inputs(prompt: str, max_tokens: int | None = None, stop: list[str] | None = None):
    inp = grpcclient.InferInput("prompt", [1], "BYTES")
    inp.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
    out = [inp]
    if max_tokens is not None:
        m = grpcclient.InferInput("max_tokens", [1], "INT32")
        m.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
        out.append(m)
    if stop:
        s = grpcclient.InferInput("stop", [len(stop)], "BYTES")
        s.set_data_from_numpy(np.array([x.encode() for x in stop], dtype=object))
        out.append(s)
    return out


def _stream(server, prompt, max_tokens=None, stop=None, timeout=60):
    """One streamed generation: (text pieces, finish_reason, completion_tokens) or the error message."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports['grpc']}")
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    try:
        client.async_stream_infer(server.name, _inputs(prompt, max_tokens, stop), enable_empty_final_response=True)
        pieces = []
        while True:
            result, error = events.get(timeout=timeout)
            if error is not None:
                return str(error)
            response = result.get_response()
            if response.outputs:
                pieces.append(result.as_numpy("text")[0].decode())
                reason = result.as_numpy("finish_reason")[0].decode()
                if reason:
                    return pieces, reason, int(result.as_numpy("completion_tokens")[0])
            if response.parameters["triton_final_response"].bool_param:
                return pieces, None, None
    finally:
        client.stop_stream()
        client.close()


def test_triton_streaming_equals_generate(triton):
    assert triton.name == "tiny_model"
    for prompt in PROMPTS:
        want = triton.reference.generate(prompt, 20)
        pieces, reason, n = _stream(triton, prompt, 20)
        assert "".join(pieces) == want.text and len(pieces) > 2
        assert reason == "length" and n == 20
    full = triton.reference.generate("hello world", 40)
    stop = full.text[10:13]
    pieces, reason, n = _stream(triton, "hello world", 40, stop=[stop])
    want = triton.reference.generate("hello world", 40, stop=[stop])
    assert "".join(pieces) == want.text and reason == "stop" and n == len(want.tokens)


def test_triton_two_instances_concurrently(triton):
    want = {p: triton.reference.generate(p, 16).text for p in PROMPTS}
    results = {}

    def one(i):
        p = PROMPTS[i % len(PROMPTS)]
        results[i] = (p, _stream(triton, p, 16))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 6
    assert all(not isinstance(r, str) and "".join(r[0]) == want[p] for p, r in results.values()), results


@pytest.mark.parametrize("prompt,max_tokens,needle", [("", 4, "prompt is empty"), ("abc", 0, "max_tokens"),
                                                      ("x" * 200, 4, "allows at most")])
def test_triton_bad_requests_are_one_line(triton, prompt, max_tokens, needle):
    error = _stream(triton, prompt, max_tokens)
    assert isinstance(error, str) and needle in error and "Traceback" not in error, error


def test_libpython_first_puts_the_interpreter_libdir_first(monkeypatch):
    from jetspec_compile.runtime.triton_serve import libpython_first

    monkeypatch.setenv("LD_LIBRARY_PATH", "/a:/b")
    libdir = sysconfig.get_config_var("LIBDIR")
    with libpython_first() as used:
        if used:
            assert used == libdir and os.environ["LD_LIBRARY_PATH"].split(":")[0] == libdir
            assert os.environ["LD_LIBRARY_PATH"].endswith("/a:/b")
    assert os.environ["LD_LIBRARY_PATH"] == "/a:/b"


def _flaky_launch(monkeypatch, failures: int):
    """Make TritonServer._launch fail ``failures`` times (leaving a workspace behind, as PyTriton does), then
    succeed without starting anything. Returns the list of calls."""
    from jetspec_compile.runtime.triton_serve import TritonServer

    calls = []

    def launch(self, *classes):
        calls.append(self.workspace.exists())
        self.workspace.mkdir(parents=True)
        if len(calls) <= failures:
            raise RuntimeError("load failed for model tiny_model\nmore lines")

    monkeypatch.setattr(TritonServer, "_launch", launch)
    return calls


def test_start_retries_once(aoti_artifact, monkeypatch, capsys):
    from jetspec_compile.runtime.serve import build_model
    from jetspec_compile.runtime.triton_serve import TritonServer

    calls = _flaky_launch(monkeypatch, failures=1)
    server = TritonServer(build_model(aoti_artifact, 1), http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port())
    with server:
        assert calls == [False, False]  # the second launch found no stale workspace
    assert "did not start (load failed for model tiny_model); retrying once" in capsys.readouterr().err
    assert not server.workspace.exists()


def test_start_fails_cleanly_after_one_retry(aoti_artifact, monkeypatch):
    from jetspec_compile.errors import JetSpecError
    from jetspec_compile.runtime.serve import build_model
    from jetspec_compile.runtime.triton_serve import TritonServer

    calls = _flaky_launch(monkeypatch, failures=2)
    server = TritonServer(build_model(aoti_artifact, 1), http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port())
    with pytest.raises(JetSpecError, match=r"did not start \(load failed for model tiny_model\)$"):
        server.start()
    assert len(calls) == 2 and not server.workspace.parent.exists()  # the temporary folder is gone
