"""Serve an artifact as a Triton Inference Server model with PyTriton (``jetspec-compile serve-triton``).

The model is decoupled (streaming: one response per text piece, as the rounds commit tokens; the last
one carries ``finish_reason`` and the token counts), with one model instance per replica; the replicas
(``Engine.replica()``: shared weights, own caches) decode in the same ReplicaPool as the HTTP server. Clients use Triton's gRPC streaming API
(``tritonclient.grpc``: ``start_stream`` + ``async_stream_infer``) or the HTTP ``generate_stream`` endpoint.

Inputs (all but ``prompt`` optional, each of shape [1]): ``prompt`` (bytes, UTF-8 text), ``max_tokens``
(int32, default 16), ``temperature`` (float32, 0 = greedy), ``top_k`` (int32, 0 = off), ``top_p`` (float32),
``seed`` (int64, < 0 = none), ``stop`` (bytes, shape [-1], stop strings). Outputs: ``text`` (bytes),
``finish_reason`` (bytes, empty until the last response), ``completion_tokens`` (int32).

Two things this module handles so the user does not have to:
- Triton's Python-backend stub links ``libpython3.11.so`` from the dynamic loader's path; when that is
  another 3.11 build than the running interpreter, models fail to load with ``AttributeError:
  '_thread.RLock' object has no attribute '_recursion_count'``. The server is started with the running
  interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH`` (``libpython_first``).
- PyTriton's workspace goes to a temporary folder (removed at exit) unless ``workspace`` is given, not
  under ``~/.cache/pytriton``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from jetspec_compile.errors import JetSpecError

from .serve.pool import ReplicaPool

DEFAULT_MAX_TOKENS = 16


class BadRequest(JetSpecError):
    """A request Triton's client caused. PyTriton formats an error with its ``__traceback__``; this one
    reports ``None`` there, so the client reads one line (``BadRequest: ...``), not our stack."""

    @property
    def __traceback__(self):  # noqa: D401 - the interpreter still keeps the real one internally
        return None

    @__traceback__.setter
    def __traceback__(self, value) -> None:
        pass


@contextlib.contextmanager
def libpython_first() -> Iterator[str | None]:
    """Put the running interpreter's LIBDIR first on LD_LIBRARY_PATH while Triton starts (its processes
    inherit the environment); restore the variable afterwards. Yields the directory used, or None."""
    libdir = sysconfig.get_config_var("LIBDIR")
    shared = sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and Path(libdir).is_dir()
    old = os.environ.get("LD_LIBRARY_PATH")
    if shared:
        rest = [p for p in (old or "").split(":") if p and p != libdir]
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *rest])
    try:
        yield libdir if shared else None
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


def triton_model_name(name: str) -> str:
    """Triton model names allow letters, digits, '.', '_' and '-'."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "model"
    return clean


def _scalar(request, name: str, default):
    if name not in request.data:
        return default
    arr = np.asarray(request.data[name]).reshape(-1)
    if arr.size != 1:
        raise BadRequest(f"input {name!r} has {arr.size} values; expected 1")
    value = arr[0]
    return value.item() if isinstance(value, np.generic) else value


def _text(value) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(f"prompt or stop is not valid UTF-8 (byte {e.start})") from None
    return str(value)


def request_params(model, request):
    """A GenParams from one Triton request, validated as strictly as the HTTP server does."""
    import math

    from .serve.pool import GenParams
    from .serve.protocol import INT32_MAX, MAX_STOPS, SEED_MAX, ApiError

    try:
        ids = model.prompt_ids(_text(_scalar(request, "prompt", b"")))
        max_tokens = int(_scalar(request, "max_tokens", DEFAULT_MAX_TOKENS))
        temperature = float(_scalar(request, "temperature", 0.0))
        top_k = int(_scalar(request, "top_k", 0))
        top_p = float(_scalar(request, "top_p", 1.0))
        seed = int(_scalar(request, "seed", -1))
        model.check_sampling(temperature)
    except ApiError as e:
        raise BadRequest(f"{e.param}: {e.message}" if e.param else e.message) from None
    except (TypeError, ValueError, JetSpecError) as e:
        raise BadRequest(str(e)) from None
    stops = [_text(s) for s in np.asarray(request.data.get("stop", np.array([], dtype=object))).reshape(-1)]
    checks = [(1 <= max_tokens <= INT32_MAX, "max_tokens must be >= 1"),
              (math.isfinite(temperature) and 0 <= temperature <= 2, "temperature must be in [0, 2]"),
              (0 <= top_k <= INT32_MAX, "top_k must be >= 0"),
              (math.isfinite(top_p) and 0 < top_p <= 1, "top_p must be in (0, 1]"),
              (seed <= SEED_MAX, "seed is too large"),
              (len(stops) <= MAX_STOPS and all(stops), f"stop: at most {MAX_STOPS} non-empty strings")]
    for ok, message in checks:
        if not ok:
            raise BadRequest(message)
    return GenParams(prompt=ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k or None,
                     top_p=top_p if top_p < 1 else None, seed=seed if seed >= 0 else None, stop=tuple(stops),
                     speculative=model.speculative)


def _response(text: str, finish: str = "", tokens: int = 0) -> dict:
    return {"text": np.array([text.encode("utf-8")], dtype=object),
            "finish_reason": np.array([finish.encode()], dtype=object),
            "completion_tokens": np.array([tokens], dtype=np.int32)}


def infer_function(model, pool):
    """The decoupled inference callable of one model instance: an async generator (PyTriton runs it on
    the instance's event loop) that hands the request to the shared replica pool and yields one response
    per text piece. PyTriton interleaves the requests of one instance on that loop, so instances must not
    own engines: the pool does (one generation per engine at a time)."""
    from .serve.pool import QueueFull

    async def infer(requests):
        for request in requests:
            params = request_params(model, request)
            try:
                job = pool.submit(params, asyncio.get_running_loop())
            except QueueFull as e:
                raise BadRequest(str(e)) from None
            try:
                async for response in _responses(job):
                    yield [response]
            finally:
                job.cancel()  # a no-op once finished; stops the generation if the stream was cancelled

    return infer


async def _responses(job):
    while True:
        kind, value = await job.events.get()
        if kind == "text":
            yield _response(value)
        elif kind == "done":
            yield _response("", value.openai_finish_reason, value.completion_tokens)
            return
        elif kind == "error":
            raise BadRequest(value[1]) if value[0] == 400 else RuntimeError(value[1])
        else:
            return


def _tensors():
    from pytriton.model_config import Tensor

    inputs = [Tensor(name="prompt", dtype=bytes, shape=(1,)),
              Tensor(name="max_tokens", dtype=np.int32, shape=(1,), optional=True),
              Tensor(name="temperature", dtype=np.float32, shape=(1,), optional=True),
              Tensor(name="top_k", dtype=np.int32, shape=(1,), optional=True),
              Tensor(name="top_p", dtype=np.float32, shape=(1,), optional=True),
              Tensor(name="seed", dtype=np.int64, shape=(1,), optional=True),
              Tensor(name="stop", dtype=bytes, shape=(-1,), optional=True)]
    outputs = [Tensor(name="text", dtype=bytes, shape=(1,)),
               Tensor(name="finish_reason", dtype=bytes, shape=(1,)),
               Tensor(name="completion_tokens", dtype=np.int32, shape=(1,))]
    return inputs, outputs


class TritonServer:
    """Triton serving ``model`` (a ServedModel) as a decoupled model with one instance per engine; the
    engines decode in a ReplicaPool (``max_queue`` requests wait, more are refused).

    ``start()`` launches it (about 6 s); ``stop()`` shuts it down and removes the temporary workspace. A
    context manager. ``workspace`` must not exist yet (PyTriton creates it); default: a temporary folder."""

    def __init__(self, model, *, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, workspace: str | Path | None = None, threads: int = 1,
                 max_queue: int = 16):
        self.model, self.host, self.threads = model, host, threads
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self._tmp = None if workspace is not None else tempfile.mkdtemp(prefix="jetspec-triton-")
        self.workspace = Path(workspace) if workspace is not None else Path(self._tmp) / "workspace"
        if self.workspace.exists():
            raise JetSpecError(f"--workspace {self.workspace}: already exists; PyTriton needs a new folder")
        self.name = triton_model_name(model.name)
        self.max_queue = max_queue
        self.triton = self.pool = None

    def start(self) -> "TritonServer":
        """Launch Triton with the model loaded. A failed launch is retried once, with a warning: PyTriton's model
        handshake can race the server's start-up (its model socket refuses the first connection)."""
        try:
            from pytriton.model_config import ModelConfig
            from pytriton.triton import Triton, TritonConfig
        except ImportError as e:
            raise JetSpecError(f"serve-triton needs PyTriton ({e}); pip install -e \".[serve]\"") from None
        for attempt in (1, 2):
            try:
                with libpython_first():
                    self._launch(Triton, TritonConfig, ModelConfig)
                return self
            except Exception as e:  # noqa: BLE001 - PyTriton raises its own types; the message is what matters
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                self._shutdown()
                shutil.rmtree(self.workspace, ignore_errors=True)  # PyTriton's half-made workspace
                if attempt == 1:
                    print(f"warning: Triton Inference Server did not start ({first}); retrying once",
                          file=sys.stderr, flush=True)
                    continue
                self.stop()
                raise JetSpecError(f"Triton Inference Server did not start ({first})") from None
        return self

    def _launch(self, Triton, TritonConfig, ModelConfig) -> None:
        h, p = self.host, self.ports
        config = TritonConfig(http_address=h, http_port=p["http"], grpc_address=h, grpc_port=p["grpc"],
                              metrics_address=h, metrics_port=p["metrics"], allow_gpu_metrics=False,
                              exit_timeout_secs=5)
        self.triton = Triton(config=config, workspace=self.workspace)
        inputs, outputs = _tensors()
        self.pool = ReplicaPool(self.model.engines, self.max_queue, threads=self.threads)
        self.triton.bind(model_name=self.name, inputs=inputs, outputs=outputs,
                         infer_func=[infer_function(self.model, self.pool) for _ in self.model.engines],
                         config=ModelConfig(batching=False, decoupled=True), strict=True)
        self.triton.run()

    def serve(self) -> None:
        """Block serving requests until interrupted."""
        self.triton.serve()

    def _shutdown(self) -> None:
        if self.triton is not None:
            self.triton.stop()
            self.triton = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def stop(self) -> None:
        self._shutdown()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_triton(args) -> int:
    """The ``serve-triton`` command: start Triton and serve until interrupted."""
    from .serve import build_model

    model = build_model(args.artifact, args.instances, name=args.model_name, speculative=not args.ar,
                        device=args.device, threads=args.threads)
    server = TritonServer(model, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, workspace=args.workspace, threads=args.threads,
                          max_queue=args.max_queue)
    with server:
        print(f"serving Triton model {server.name!r} ({args.instances} instance(s), decoupled): HTTP "
              f"http://{args.host}:{args.http_port}/v2/models/{server.name}/generate_stream, gRPC "
              f"{args.host}:{args.grpc_port}, metrics http://{args.host}:{args.metrics_port}/metrics",
              file=sys.stderr, flush=True)
        server.serve()
    return 0
