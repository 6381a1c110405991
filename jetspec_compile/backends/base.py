"""The ``Backend`` protocol every adapter implements, and the capture step every backend compiles from."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class Backend(Protocol):
    """What export, the profile's sweep and the runtime need from a backend.

    name            the ``--backend`` value and the manifest's ``backend`` field
    ext             the graph files' extension (``prefill.<ext>``)
    attention_form  "op" (``jetspec::tree_attention`` stays one node) or "dense" (plain torch ops)
    devices         the device types its graphs run on
    version_libs    the libraries whose minor version must match the one that compiled the graphs
    device_bound    whether a graph loads only on the device type it was exported for
    """

    name: str
    ext: str
    attention_form: str
    devices: tuple[str, ...]
    version_libs: tuple[str, ...]
    device_bound: bool

    def check_available(self, device: str) -> None:
        """Raise BackendUnavailableError (saying what to install or use) when this backend cannot run here."""

    def check_spec(self, spec) -> None:
        """Raise JetSpecError for a SpecConfig this backend cannot export."""

    def native_linear(self, device: str) -> bool:
        """Whether linear layers are captured as ``jetspec::linear`` (weights prepacked at load)."""

    def compile_graph(self, ep: torch.export.ExportedProgram, example_args: tuple, path: Path, device: str, *,
                      module: torch.nn.Module | None = None) -> dict:
        """Compile ``ep`` into ``path``; returns extra manifest fields of the graph. ``module``: the captured
        module, for backends that write another form of the graph next to it."""

    def load_graph(self, path: Path, device: str, weights: dict[str, torch.Tensor] | None = None, *,
                   graph: str | None = None) -> Callable:
        """A runner over the graph file: takes the graph's flat tensor arguments, returns its outputs.
        ``graph``: the graph's name in the artifact (``verify``, ``draft.b4``, ...)."""


def capture(module: torch.nn.Module, args: tuple, form: str = "op") -> torch.export.ExportedProgram:
    """torch.export (non-strict, static shapes) of one graph module; `form` picks op or dense attention."""
    from jetspec_compile.attention import attention_form  # loads the native ops: not at CLI start-up

    with torch.no_grad(), attention_form(form):
        return torch.export.export(module, args, strict=False)


def graph_weights(graphs: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the graphs, once, keyed by the graphs' own names."""
    out: dict[str, torch.Tensor] = {}
    for m in graphs.values():
        for k, v in list(m.named_parameters(remove_duplicate=False)) + list(m.named_buffers(remove_duplicate=False)):
            out.setdefault(k, v.detach())
    return out


def forward_arg_names(module: torch.nn.Module | type) -> list[str]:
    """The names of a graph module's (or graph class's) forward arguments, in order."""
    return [p for p in inspect.signature(module.forward).parameters if p != "self"]
