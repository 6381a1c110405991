"""`jetspec-compile serve` (OpenAI-compatible HTTP) and `jetspec-compile serve-triton` (Triton Inference Server)."""

from __future__ import annotations

import argparse
import socket
import sys

from jetspec_compile.errors import JetSpecError
from jetspec_compile.validate import THREADS_MAX, at_least, device, nonempty_text, utf8_text

MAX_REPLICAS = 64


def register(sub) -> None:
    s = sub.add_parser("serve", help="serve an artifact over an OpenAI-compatible HTTP API")
    _common(s)
    s.add_argument("--host", type=nonempty_text, default="127.0.0.1", help="address to listen on (default loopback)")
    s.add_argument("--port", type=at_least(0, 65535), default=8000, help="0 = any free port (printed)")
    s.add_argument("--replicas", type=at_least(1, MAX_REPLICAS), default=1,
                   help="engines decoding at once (shared weights, own caches)")
    s.add_argument("--max-queue", type=at_least(0, 1_000_000), default=16,
                   help="requests waiting for a replica before new ones get 503")
    s.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="warning")
    s.set_defaults(func=run_serve)

    t = sub.add_parser("serve-triton", help="serve an artifact as a Triton Inference Server model (PyTriton)")
    _common(t)
    t.add_argument("--host", type=nonempty_text, default="127.0.0.1", help="address Triton listens on")
    t.add_argument("--http-port", type=at_least(1, 65535), default=8000)
    t.add_argument("--grpc-port", type=at_least(1, 65535), default=8001)
    t.add_argument("--metrics-port", type=at_least(1, 65535), default=8002)
    t.add_argument("--instances", type=at_least(1, MAX_REPLICAS), default=1, help="model instances (replicas)")
    t.add_argument("--max-queue", type=at_least(0, 1_000_000), default=16,
                   help="requests waiting for a replica before new ones are refused")
    t.add_argument("--workspace", type=utf8_text, default=None,
                   help="PyTriton's workspace folder (default: a temporary folder, removed at exit)")
    t.set_defaults(func=run_serve_triton)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=utf8_text)
    p.add_argument("--model-name", type=nonempty_text, default=None, help="served model name (default: folder name)")
    p.add_argument("--ar", action="store_true", help="plain decoding with the ar_step graph (the baseline)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda or cuda:N (default: the artifact's)")
    p.add_argument("--threads", type=at_least(1, THREADS_MAX), default=1, help="torch CPU threads per replica")


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (port 0: any free port), or one JetSpecError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise JetSpecError(f"--host {host!r}: cannot resolve it ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise JetSpecError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from . import build_model
    from .app import create_app

    sock = listen(args.host, args.port)  # fail fast on a busy port, before loading the artifact
    try:
        model = build_model(args.artifact, args.replicas, name=args.model_name, speculative=not args.ar,
                            device=args.device, threads=args.threads)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    app = create_app(model, max_queue=args.max_queue, threads=args.threads)
    print(f"serving {model.name!r} on http://{_url_host(host)}:{port}/v1 ({args.replicas} replica(s), queue "
          f"{args.max_queue}, {'speculative' if model.speculative else 'ar_step'})", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level in ("info", "debug"))
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run_serve_triton(args: argparse.Namespace) -> int:
    from ..triton_serve import serve_triton

    return serve_triton(args)
