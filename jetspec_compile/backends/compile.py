"""``compile_graphs``: capture and compile graph modules into a folder with a backend, one after another.

The one capture + compile loop of the project: ``export`` runs it for every graph of an artifact, the
profile's budget sweep for the draft and verify graphs of another budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .base import Backend, capture


@dataclass(frozen=True)
class GraphJob:
    """One graph to compile: its name in the folder (``verify``, ``draft.b4``), module and example inputs."""

    name: str
    module: torch.nn.Module
    args: tuple


@dataclass(frozen=True)
class CompiledGraph:
    """What compiling one graph gave: its file, timings, size, the backend's extra fields and op counts."""

    name: str
    path: Path
    args: tuple
    capture_s: float
    compile_s: float
    bytes: int
    backend_fields: dict = field(default_factory=dict)
    jetspec_ops: int = 0  # jetspec::tree_attention nodes in the captured graph
    native_linears: int = 0  # jetspec::linear nodes

    @property
    def input_types(self) -> tuple[str, ...]:
        """The example inputs' types as the manifest records them ('torch.int64[16]')."""
        return tuple(str(getattr(a, "dtype", type(a))) + str(list(getattr(a, "shape", []))) for a in self.args)


def compile_graphs(be: Backend, jobs: Iterable[GraphJob], folder: Path, device: str, *, native: bool, target, head,
                   total: int | None = None, with_module: bool = True, prefix: str = "",
                   log: Callable[[str], None] = print) -> Iterator[CompiledGraph]:
    """Capture each job (linears as ``jetspec::linear`` when ``native``) and compile it into
    ``folder/<name>.<ext>``; yields each graph once compiled. ``jobs`` is consumed lazily, so a job may set
    up the models (e.g. the head's depth) for its own capture. ``with_module``: hand the module to the
    backend too (ONNX then writes its custom-op form beside the graph). ``total``: the number of jobs, for
    the progress lines (``prefix`` starts each)."""
    from jetspec_compile.linear import native_linears

    n = "?" if total is None else total
    for i, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        with native_linears(target, head, enabled=native):
            ep = capture(job.module, job.args, be.attention_form)
        t1 = time.perf_counter()
        log(f"{prefix}[{i}/{n}] {job.name}: captured in {t1 - t0:.1f}s, compiling ({be.name}) ...")
        path = Path(folder) / f"{job.name}.{be.ext}"
        meta = be.compile_graph(ep, job.args, path, str(device), module=job.module if with_module else None)
        t2 = time.perf_counter()
        size = path.stat().st_size
        log(f"{prefix}[{i}/{n}] {job.name}: compiled in {t2 - t1:.1f}s ({size / 2**20:.1f} MiB)")
        yield CompiledGraph(job.name, path, job.args, round(t1 - t0, 3), round(t2 - t1, 3), size, dict(meta),
                            count_op(ep, "tree_attention"), count_op(ep, "linear"))


def count_op(ep: torch.export.ExportedProgram, name: str) -> int:
    """How many calls of ``torch.ops.jetspec.<name>`` the captured graph makes."""
    op = getattr(torch.ops.jetspec, name).default
    return sum(1 for n in ep.graph.nodes if n.op == "call_function" and n.target == op)
