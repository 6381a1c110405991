"""The typed artifact contract: ``Manifest``, what manifest.json says, as dataclasses.

``Manifest.from_json(obj, path)`` checks every field with ``schema`` (the same one-line errors naming the
file, the field and the expected value) and builds the typed view; ``to_json()`` gives back the JSON object.
Export builds a ``Manifest`` from the dataclasses and writes ``to_json()`` (serialized from the fields);
a manifest read from disk gives back the object exactly as read (older manifests may lack fields that
newer exports write), so it keeps its format and its ``manifest_sha256``. This module is the only place
that reads or writes a manifest field by its key; export, the runtime, ``inspect``, the profile and the
scripts use the attributes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .schema import check_fields, check_graph_shapes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Shapes:
    """B (budget), D (drafted depth), K (top-K), S (cache rows), P (prefill chunk)."""

    budget: int
    depth: int
    topk: int
    max_seq_len: int
    prefill_chunk: int


@dataclass(frozen=True)
class GraphEntry:
    """One compiled graph: its file, the budget it was compiled for (None: the artifact's own), its static
    tree topology (budget graphs of a static tree), timings, size and the input types it was compiled for."""

    name: str
    file: str
    bytes: int
    capture_s: float
    compile_s: float
    inputs: tuple[str, ...]
    jetspec_ops: int | None = None
    budget: int | None = None
    static_tree: dict | None = None
    native_linears: int | None = None  # jetspec::linear nodes (aoti on the CPU)
    backend_fields: dict = field(default_factory=dict)  # what the backend's compile_graph adds (onnx: custom_file)

    def to_json(self) -> dict:
        """The graph's object in the manifest's ``graphs``."""
        out = {"file": self.file, "capture_s": self.capture_s, "compile_s": self.compile_s, "bytes": self.bytes}
        out.update(_present(jetspec_ops=self.jetspec_ops, native_linears=self.native_linears))
        out["inputs"] = list(self.inputs)
        out.update(self.backend_fields)
        out.update(_present(budget=self.budget, static_tree=self.static_tree))
        return out


@dataclass(frozen=True)
class ModelInfo:
    """The target's or the head's Hugging Face config (a dict, as ``config.json`` holds it) and its role."""

    config: dict
    model_type: str | None = None
    num_layers: int | None = None
    tap_layers: tuple[int, ...] = ()
    depth: int | None = None  # head: the drafted depth (the deepest the tree reaches)
    block_depth: int | None = None  # head: its full block
    moe_experts: str | None = None  # target: transformers' expert kernel of a MoE target (None: dense)

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def vocab_size(self) -> int | None:
        return self.config.get("vocab_size")

    @property
    def num_hidden_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def pad_token_id(self) -> int | None:
        return self.config.get("pad_token_id")

    @property
    def causal_head(self) -> bool | None:
        return (self.config.get("dflash_config") or {}).get("causal_head")


@dataclass(frozen=True)
class Budgets:
    """Adaptive budgets: every compiled budget (1: the plain step), its drafted depth and round cost (ms)."""

    compiled: tuple[int, ...]
    depth: dict[int, int]
    cost_ms: dict[str, float]  # keys: the budgets as strings, and "ar_step"
    default: str = "adaptive"  # what the runtime runs without an explicit budget

    def to_json(self) -> dict:
        return {"compiled": sorted(self.compiled), "depth": {str(b): int(self.depth[b]) for b in sorted(self.compiled)},
                "cost_ms": dict(self.cost_ms), "default": self.default}

    def cost(self, budget: int) -> float:
        """The calibrated round cost of ``budget`` in ms."""
        return float(self.cost_ms[str(budget)])

    def cost_s(self, budget: int) -> float:
        """The round cost in seconds (1 ms where none was recorded)."""
        return float(self.cost_ms.get(str(budget), 1.0)) / 1e3

    @property
    def ar_step_ms(self) -> float | None:
        """The calibrated cost of one ar_step, when recorded."""
        return self.cost_ms.get("ar_step")


@dataclass(frozen=True)
class Manifest:
    """An artifact's manifest.json, checked and typed. ``to_json()`` is the object on disk."""

    backend: str
    device: str
    dtype: str
    shapes: Shapes
    tree_policy: str
    static_tree: dict | None
    sampling: bool
    lookup: int
    graphs: dict[str, GraphEntry]
    weights: str
    target: ModelInfo
    head: ModelInfo
    files: dict[str, str]
    name: str | None = None
    tokenizer_file: str | None = None
    tokenizer_files: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] | None = None
    sources: dict = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    budgets: Budgets | None = None
    autotune: dict | None = None
    schema_version: int | None = None
    created: str | None = None
    export_s: float | None = None
    _json: dict = field(default_factory=dict, repr=False, compare=False)  # the object as read ({}: built here)

    # ---- JSON -------------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, m: dict, path: str | Path = "manifest.json") -> "Manifest":
        """Check ``m`` (one ArtifactError naming ``path``, the field and the expected value) and type it."""
        path = Path(path)
        check_fields(m, path)
        check_graph_shapes(m, path)
        s, t, h, tok = m["shapes"], m["target"], m["head"], m.get("tokenizer") or {}
        budgets = m.get("budgets")
        return cls(
            backend=m["backend"], device=m["device"], dtype=m["dtype"],
            shapes=Shapes(**{k: s[k] for k in ("budget", "depth", "topk", "max_seq_len", "prefill_chunk")}),
            tree_policy=m["tree"]["policy"], static_tree=m["tree"].get("static"), sampling=m["sampling"],
            lookup=int((m.get("lookup") or {}).get("length", 0) or 0),
            graphs={n: _graph(n, g) for n, g in m["graphs"].items()}, weights=m["weights"],
            target=ModelInfo(t["config"], t.get("model_type"), t.get("num_layers"), tuple(t["tap_layers"]),
                             moe_experts=t.get("moe_experts")),
            head=ModelInfo(h["config"], depth=h["depth"], block_depth=h.get("block_depth", h["depth"])),
            files=dict(m["files"]), name=m.get("name"), tokenizer_file=tok.get("file"),
            tokenizer_files=tuple(tok.get("files") or ()), eos_token_ids=None if m.get("eos_token_ids") is None else tuple(m["eos_token_ids"]),
            sources=dict(m.get("sources") or {}), versions=dict(m.get("versions") or {}),
            budgets=None if budgets is None else Budgets(
                tuple(budgets["compiled"]), {b: int(budgets["depth"][str(b)]) for b in budgets["compiled"]},
                dict(budgets["cost_ms"]), budgets.get("default", "adaptive")),
            autotune=m.get("autotune"), schema_version=m.get("schema_version"), created=m.get("created"),
            export_s=m.get("export_s"), _json=copy.deepcopy(m))

    def to_json(self) -> dict:
        """The manifest object (a copy): as read from disk, or serialized from the fields for one built by
        export (``write_manifest`` then adds ``files``, ``schema_version`` and the digest)."""
        return copy.deepcopy(self._json) if self._json else self.fields_json()

    def fields_json(self) -> dict:
        """The manifest object serialized from the fields, in the current format."""
        s = self.shapes
        m = {"name": self.name, "created": self.created, "backend": self.backend, "device": self.device,
             "dtype": self.dtype,
             "shapes": {"budget": s.budget, "depth": s.depth, "topk": s.topk, "max_seq_len": s.max_seq_len,
                        "prefill_chunk": s.prefill_chunk},
             "tree": {"policy": self.tree_policy, "static": copy.deepcopy(self.static_tree)},
             "sampling": self.sampling, "lookup": {"length": self.lookup},
             "graphs": {n: g.to_json() for n, g in self.graphs.items()}, "weights": self.weights,
             "target": {"config": copy.deepcopy(self.target.config), "tap_layers": list(self.target.tap_layers),
                        "model_type": self.target.model_type, "num_layers": self.target.num_layers,
                        "moe_experts": self.target.moe_experts},
             "head": {"config": copy.deepcopy(self.head.config), "depth": self.head.depth,
                      "block_depth": self.head.block_depth},
             "tokenizer": (None if self.tokenizer_file is None else
                           {"file": self.tokenizer_file, "files": list(self.tokenizer_files)}),
             "eos_token_ids": None if self.eos_token_ids is None else list(self.eos_token_ids),
             "sources": copy.deepcopy(self.sources), "versions": dict(self.versions), "export_s": self.export_s}
        m.update(_present(budgets=self.budgets.to_json() if self.budgets else None,
                          autotune=copy.deepcopy(self.autotune), schema_version=self.schema_version,
                          files=dict(self.files) if self.files else None))
        return m

    # ---- what the runtime derives from it ---------------------------------------------------------------
    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def shapes_json(self) -> dict:
        """The ``shapes`` object as recorded (for reports)."""
        return copy.deepcopy(self._json["shapes"])

    def cache_dims(self):
        """The K/V cache shapes of this artifact (``CacheDims.from_configs`` of the two configs)."""
        from jetspec_compile.decode import CacheDims

        return CacheDims.from_configs(self.target.config, self.head.config, self.shapes.depth, self.torch_dtype)

    def spec(self):
        """The SpecConfig the artifact was exported with."""
        from jetspec_compile.graphs import SpecConfig

        s = self.shapes
        return SpecConfig(budget=s.budget, topk=s.topk, max_seq_len=s.max_seq_len, prefill_chunk=s.prefill_chunk,
                          tree=self.tree_policy, static_tree=self.static_tree, lookup=self.lookup)

    @property
    def static_tree_nodes(self) -> int | None:
        """Nodes of the recorded static tree (its paths plus the root), or None for a dynamic tree."""
        return len(self.static_tree["paths"]) + 1 if self.static_tree else None

    def budget_static_tree(self, budget: int) -> dict | None:
        """The static topology recorded with the draft graph compiled for ``budget``, if any."""
        from jetspec_compile.graphs import budget_graph_name

        g = self.graphs.get(budget_graph_name("draft", budget))
        return g.static_tree if g is not None else None

    def content_key(self) -> str:
        """A hash of what the compiled graphs depend on: every file's sha256, backend, device, dtype, shapes,
        tree (the profile's sweep cache key)."""
        keep = {k: self._json.get(k) for k in ("files", "backend", "device", "dtype", "shapes", "tree")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


_GRAPH_KEYS = ("file", "bytes", "capture_s", "compile_s", "inputs", "jetspec_ops", "budget", "static_tree",
               "native_linears")


def _graph(name: str, g: dict) -> GraphEntry:
    return GraphEntry(name=name, file=g["file"], bytes=g["bytes"], capture_s=g["capture_s"], compile_s=g["compile_s"],
                      inputs=tuple(g["inputs"]), jetspec_ops=g.get("jetspec_ops"),
                      budget=g.get("budget") if isinstance(g.get("budget"), int) else None,
                      static_tree=g.get("static_tree"), native_linears=g.get("native_linears"),
                      backend_fields={k: v for k, v in g.items() if k not in _GRAPH_KEYS})


def _present(**fields) -> dict:
    """The fields that are set (optional manifest fields are left out rather than written as null)."""
    return {k: v for k, v in fields.items() if v is not None}




def load_manifest(folder: str | Path, *, verify_hashes: bool = True) -> Manifest:
    """``read_manifest`` (paths, digest, hashes) of an artifact folder, typed."""
    from .store import MANIFEST, read_manifest

    return Manifest.from_json(read_manifest(folder, verify_hashes=verify_hashes), Path(folder) / MANIFEST)
