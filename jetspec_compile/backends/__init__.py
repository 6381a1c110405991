"""Backends: one adapter class per module (``aoti``, ``onnx``, ``tensorrt``), all behind one ``Backend``
protocol, and the registry the CLI's ``--backend`` choices, the manifest schema, ``export`` and the
runtime all read.

Layering: this package depends only on the core (``jetspec_compile`` modules); ``jetspec_compile.artifact``,
``export`` and ``runtime`` build on it. A backend name is tested only inside its own adapter: everything
else asks the adapter (``ext``, ``attention_form``, ``devices``, ``version_libs``, ``device_bound``,
``check_spec``, ``native_linear``). ``compile_graphs`` (``compile.py``) is the one capture + compile loop,
used by ``export`` and by the profile's budget sweep.
"""

from __future__ import annotations

from .base import Backend, capture, forward_arg_names, graph_weights
from .compile import CompiledGraph, GraphJob, compile_graphs
from .registry import BACKENDS, backend_names, get_backend

__all__ = ["BACKENDS", "Backend", "CompiledGraph", "GraphJob", "backend_names", "capture", "compile_graphs",
           "forward_arg_names", "get_backend", "graph_weights"]
