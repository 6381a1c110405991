"""Helpers for the serving tests: an in-process server on a free loopback port, free ports, a gate."""

from __future__ import annotations

import socket
import threading
import time

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving ``app`` in a daemon thread on a socket bound here (no port race); a context manager."""

    def __init__(self, app, start_timeout: float = 30.0):
        import uvicorn

        from jetspec_compile.runtime.serve.cli import listen

        self.sock = listen(LOOPBACK, 0)
        self.url = f"http://{LOOPBACK}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.start_timeout = start_timeout

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def wait_until(predicate, timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
