"""Replicas: N engines over one loaded artifact, one worker thread each, and a bounded queue in front.

``ReplicaPool.submit`` admits a request when fewer than ``replicas + max_queue`` are in flight (else
``QueueFull``, which the HTTP layer answers with 503). A worker runs one request at a time with
``Engine.stream`` and hands each text piece to the asyncio loop of the request. A cancelled request (its
client went away) stops after the round in progress: the worker checks the flag between rounds.

Each worker pins its own torch CPU threads (``threads``): OpenMP's thread count is per calling thread,
so a worker that did not set it would run 2 OpenMP threads per graph on a 2-core machine (measured: two
such workers decode 2x slower than one). See ``model.replica_engines`` for what replicas share.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

from jetspec_compile.errors import JetSpecError

log = logging.getLogger("jetspec_compile.serve")


class QueueFull(Exception):
    """Every replica is busy and the waiting queue is full."""


class Cancelled(Exception):
    """The request was cancelled (its client disconnected)."""


@dataclass(frozen=True)
class GenParams:
    """One generation request, already validated and tokenised."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    speculative: bool = True


@dataclass
class Result:
    """What a finished request reports: text, token counts, the decode loop's Stats."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    stats: Any
    queued_s: float
    first_piece_s: float | None

    @property
    def openai_finish_reason(self) -> str:
        """The decode loop's reason in OpenAI's words (a full cache is a length limit)."""
        return {"eos": "stop", "stop": "stop", "length": "length", "cache_full": "length"}.get(self.finish_reason,
                                                                                             "stop")


@dataclass
class Job:
    params: GenParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def emit(self, kind: str, value: Any) -> None:
        """Hand an event to the request's event loop (from a worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def cancel(self) -> None:
        self.cancelled.set()


class ReplicaPool:
    """``engines[i]`` is replica i. ``on_done(result)`` is called (in the worker) after every finished request."""

    def __init__(self, engines: list, max_queue: int, on_done: Callable[[Result], None] | None = None,
                 threads: int = 1):
        if not engines:
            raise JetSpecError("a replica pool needs at least one engine")
        self.engines = engines
        self.max_queue = max_queue
        self.on_done = on_done
        self.threads = threads
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._busy = 0
        self._threads = [threading.Thread(target=self._work, args=(e,), name=f"jetspec-replica-{i}", daemon=True)
                         for i, e in enumerate(engines)]
        for t in self._threads:
            t.start()

    # ---- admission ----------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return len(self.engines) + self.max_queue

    def load(self) -> tuple[int, int]:
        """(requests decoding now, requests waiting)."""
        with self._lock:
            return self._busy, self._in_flight - self._busy

    def submit(self, params: GenParams, loop: asyncio.AbstractEventLoop) -> Job:
        with self._lock:
            if self._in_flight >= self.capacity:
                raise QueueFull(f"all {len(self.engines)} replicas are busy and {self.max_queue} requests are "
                                "already waiting; retry later")
            self._in_flight += 1
        job = Job(params, loop)
        self._jobs.put(job)
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (requests still queued are cancelled)."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # ---- workers ------------------------------------------------------------------------------------
    def _work(self, engine) -> None:
        import torch

        torch.set_num_threads(self.threads)  # per thread: see the module docstring
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._busy += 1
            try:
                self._run(engine, job)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._in_flight -= 1

    def _run(self, engine, job: Job) -> None:
        started = time.perf_counter()
        try:
            if job.cancelled.is_set():
                raise Cancelled()
            result = run_job(engine, job.params, job.cancelled, lambda piece: job.emit("text", piece))
        except Cancelled:
            job.emit("cancelled", None)
            return
        except JetSpecError as e:
            job.emit("error", (400, str(e)))
            return
        except Exception:  # noqa: BLE001 - a server reports, logs and keeps serving
            log.exception("generation failed")
            job.emit("error", (500, "internal error while generating (see the server log)"))
            return
        result.queued_s = started - job.submitted
        job.emit("done", result)
        if self.on_done is not None:
            try:
                self.on_done(result)
            except Exception:  # noqa: BLE001 - metrics must never take a replica down
                log.exception("metrics update failed")


def run_job(engine, p: GenParams, cancelled: threading.Event, emit: Callable[[str], None]) -> Result:
    """Generate, calling ``emit`` per text piece; returns the Result (see ``generate_pieces``)."""
    pieces = generate_pieces(engine, p, cancelled)
    while True:
        try:
            emit(next(pieces))
        except StopIteration as done:
            return done.value


def generate_pieces(engine, p: GenParams, cancelled: threading.Event) -> Generator[str, None, Result]:
    """Yield the text pieces of ``engine.stream`` (the same text as ``engine.generate``) and return the
    Result; raises ``Cancelled`` at the first round boundary after ``cancelled`` is set."""
    t0 = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    engine.stream_tokens = _cancellable_rounds(engine, cancelled)
    try:
        for piece in engine.stream(p.prompt, p.max_tokens, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                                   seed=p.seed, stop=list(p.stop), speculative=p.speculative):
            if first is None:
                first = time.perf_counter() - t0
            pieces.append(piece)
            yield piece
    finally:
        del engine.stream_tokens  # back to the class's method
    stats = engine.last_stats
    text = "".join(pieces)
    n = stats.new_tokens
    if stats.finish_reason == "stop":  # cut at a stop string: count the tokens of the text sent, as generate does
        n = len(engine.encode(text)) if text else 0
    return Result(text, stats.finish_reason, len(p.prompt), n, stats, 0.0, first)


def _cancellable_rounds(engine, cancelled: threading.Event):
    """``Engine.stream_tokens`` that raises ``Cancelled`` at the first round boundary after ``cancelled``."""
    method = type(engine).stream_tokens

    def stream_tokens(*args, **kwargs):
        rounds = method(engine, *args, **kwargs)
        try:
            for chunk in rounds:
                if cancelled.is_set():
                    raise Cancelled()
                yield chunk
        finally:
            rounds.close()

    return stream_tokens
