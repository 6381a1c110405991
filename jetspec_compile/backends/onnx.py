"""ONNX backend (interchange). Two files per graph:

* ``<graph>.onnx`` — the decomposed form: tree attention written in standard ONNX ops, run by
  ONNX Runtime (CPU here); this is what the runtime loads.
* ``<graph>.custom.onnx`` — tree attention as one custom-domain node ``jetspec.TreeAttention``
  (registered OpSchema, attribute ``scale``): the form a TensorRT plugin consumes through the ONNX parser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from jetspec_compile.errors import BackendUnavailableError

DOMAIN = "jetspec"
OP_TYPE = "TreeAttention"


_SCHEMA_REGISTERED = []


def register_schema() -> None:
    """Register the jetspec.TreeAttention OpSchema (once per process)."""
    if _SCHEMA_REGISTERED:
        return
    import onnx
    from onnx.defs import OpSchema

    P = OpSchema.FormalParameter
    schema = OpSchema(
        OP_TYPE, DOMAIN, 1,
        doc="Attention of T new rows over a KV-cache prefix [0, cache_len) plus the new rows under a bool mask.",
        inputs=[P("q", "T"), P("k", "T"), P("v", "T"), P("k_cache", "T"), P("v_cache", "T"),
                P("cache_len", "tensor(int64)"), P("mask", "tensor(bool)")],
        outputs=[P("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float types")],
        attributes=[OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "softmax scale")],
    )
    onnx.defs.register_schema(schema)
    _SCHEMA_REGISTERED.append(True)


def _custom_table() -> dict:
    import onnxscript

    register_schema()
    jetspec = onnxscript.values.Opset(DOMAIN, 1)

    def tree_attention(q, k, v, k_cache, v_cache, cache_len, mask, scale: float):
        return jetspec.TreeAttention(q, k, v, k_cache, v_cache, cache_len, mask, scale=scale)

    return {torch.ops.jetspec.tree_attention.default: tree_attention}


class OnnxBackend:
    """ONNX: ``<graph>.onnx`` run by ONNX Runtime on the CPU, plus ``<graph>.custom.onnx`` (custom-op form)."""

    name = "onnx"
    ext = "onnx"
    attention_form = "dense"
    devices = ("cpu",)
    version_libs = ()  # ONNX files are portable across library versions
    device_bound = False  # the graphs run in ONNX Runtime on the CPU, whatever device exported them

    def check_available(self, device: str) -> None:
        missing = []
        for mod in ("onnx", "onnxscript", "onnxruntime"):
            try:
                __import__(mod)
            except ImportError:
                missing.append(mod)
        if missing:
            raise BackendUnavailableError(f"onnx backend needs {', '.join(missing)}: "
                                          "pip install 'jetspec-compile[onnx]'")
        if torch.device(device).type != "cpu":
            raise BackendUnavailableError("onnx backend: this runtime runs ONNX graphs with ONNX Runtime on the "
                                          "CPU; use --device cpu (or the tensorrt / aoti backends on a GPU)")

    def check_spec(self, spec) -> None:
        pass  # every SpecConfig exports (a lookup chain too: the draft then takes the chain's inputs)

    def native_linear(self, device: str) -> bool:
        return False

    def compile_graph(self, ep: torch.export.ExportedProgram, example_args: tuple, path: Path, device: str, *,
                      module: torch.nn.Module | None = None) -> dict:
        """Write the decomposed graph (``ep``, captured with dense attention) and, when ``module`` is given, the
        custom-op form (``module`` captured again with the op)."""
        import warnings

        from .base import capture

        custom_ep = capture(module, example_args, "op") if module is not None else None

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(ep, example_args, str(path), dynamo=True, optimize=True, verbose=False)
            meta = {}
            if custom_ep is not None:
                cpath = path.with_suffix(".custom.onnx")
                torch.onnx.export(custom_ep, example_args, str(cpath), dynamo=True, optimize=True, verbose=False,
                                  custom_translation_table=_custom_table())
                meta["custom_file"] = cpath.name
        return meta

    def load_graph(self, path: Path, device: str, weights: dict[str, torch.Tensor] | None = None, *,
                   graph: str | None = None) -> Callable:
        """ONNX Runtime binds inputs by name: the runner feeds its positional arguments under the graph
        class's forward argument names (``graph`` given) or the session's own input order. The exporter drops
        inputs a graph does not read, so only the names the session has are fed. A draft compiled with a
        lookup chain (its session has the ``chain`` inputs) takes ``DraftLookup``'s arguments."""
        import numpy as np
        import onnxruntime as ort

        from jetspec_compile.graphs import graph_class, split_graph_name

        from .base import forward_arg_names

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        order = names
        if graph is not None:
            order = forward_arg_names(graph_class(split_graph_name(graph)[0], lookup="chain" in names))

        def run(*args):
            feed = {}
            for n, a in zip(order, args):
                if n in names:
                    feed[n] = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            return tuple(torch.from_numpy(o) for o in sess.run(None, feed))

        return run
