"""Serving: an OpenAI-compatible HTTP server over an artifact (``jetspec-compile serve``), with replicas that
share one set of weights, a bounded queue, streaming and Prometheus metrics.

```python
from jetspec_compile.runtime.serve import build_model, create_app
app = create_app(build_model("artifacts/demo", replicas=2))   # a FastAPI app; run it with uvicorn
```

The server's packages (FastAPI, uvicorn, prometheus-client) are imported only when a server is built, so
the CLI's other commands do not need them (``pip install -e ".[serve]"``).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

_LAZY = {"create_app": "app", "ServedModel": "model", "replica_engines": "model", "ReplicaPool": "pool",
         "GenParams": "pool", "QueueFull": "pool", "Result": "pool"}
__all__ = ["build_model", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


def build_model(artifact: str | Path, replicas: int = 1, *, name: str | None = None, speculative: bool = True,
                device: str | None = None, threads: int = 1):
    """Load (and so validate) an artifact with ``runtime.load`` and make ``replicas`` engines over it."""
    import torch

    from ..engine import load
    from .model import ServedModel, replica_engines

    torch.set_num_threads(threads)
    engine = load(artifact, device)
    return ServedModel(replica_engines(engine, replicas), name or Path(artifact).resolve().name,
                       speculative=speculative)
