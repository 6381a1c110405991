"""The manifest schema: every field's type and range, and the agreement of shapes with the compiled graphs.

Each check raises one ArtifactError naming the manifest file, the field (dotted path) and the expected value.
``check_graph_shapes`` is the one place that knows what the recorded graph inputs mean.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from jetspec_compile.backends import BACKENDS
from jetspec_compile.errors import ArtifactError
from jetspec_compile.graphs import split_graph_name

BACKEND_EXT = {name: b.ext for name, b in BACKENDS.items()}  # graph file extension per backend
DTYPES = ("float32", "float16", "bfloat16")
REQUIRED_GRAPHS = ("prefill", "draft", "verify", "ar_step")
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
INPUT_RE = re.compile(r"^torch\.(\w+)\[([\d, ]*)\]$")
_MISSING = object()


class Checker:
    """Field access with type and range checks; every failure names ``path`` and the dotted field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, value: Any, expected: str) -> ArtifactError:
        shown = "missing" if value is _MISSING else f"{_short(value)}"
        return ArtifactError(f"{self.path}: field {field} is {shown}; expected {expected}")

    def get(self, obj: dict, key: str, field: str, kind: type | tuple, expected: str, *, optional: bool = False):
        value = obj.get(key, _MISSING)
        if value is _MISSING or (optional and value is None):
            if optional:
                return None
            raise self.fail(field, value, expected)
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            raise self.fail(field, value, expected)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(field, value, expected)
        return value

    def obj(self, obj: dict, key: str, field: str, *, optional: bool = False) -> dict | None:
        return self.get(obj, key, field, dict, "an object", optional=optional)

    def int(self, obj: dict, key: str, field: str, lo: int = 0, hi: int | None = None, *,
            optional: bool = False) -> int | None:
        rng = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
        value = self.get(obj, key, field, int, rng, optional=optional)
        if value is not None and (value < lo or (hi is not None and value > hi)):
            raise self.fail(field, value, rng)
        return value

    def num(self, obj: dict, key: str, field: str, *, optional: bool = False) -> float | None:
        value = self.get(obj, key, field, (int, float), "a finite number >= 0", optional=optional)
        if value is not None and value < 0:
            raise self.fail(field, value, "a finite number >= 0")
        return value

    def str(self, obj: dict, key: str, field: str, choices=None, *, optional: bool = False) -> str | None:
        expected = f"one of {list(choices)}" if choices else "a string"
        value = self.get(obj, key, field, str, expected, optional=optional)
        if value is not None and choices and value not in choices:
            raise self.fail(field, value, expected)
        return value

    def str_list(self, obj: dict, key: str, field: str, *, optional: bool = False) -> list | None:
        value = self.get(obj, key, field, list, "a list of strings", optional=optional)
        for i, v in enumerate(value or []):
            if not isinstance(v, str):
                raise self.fail(f"{field}[{i}]", v, "a string")
        return value

    def int_list(self, obj: dict, key: str, field: str, lo: int = 0, *, optional: bool = False) -> list | None:
        value = self.get(obj, key, field, list, f"a list of integers >= {lo}", optional=optional)
        for i, v in enumerate(value or []):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise self.fail(f"{field}[{i}]", v, f"an integer >= {lo}")
        return value


def _tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- the fields -----------------------------------------------------------------------------------------

def check_fields(m: dict, path: Path) -> None:
    """Type and range of every field the loader, the runtime and `inspect` read."""
    c = Checker(path)
    backend = c.str(m, "backend", "backend", tuple(BACKEND_EXT))
    device = c.str(m, "device", "device")
    if not DEVICE_RE.match(device):
        raise c.fail("device", device, "'cpu', 'cuda' or 'cuda:N'")
    c.str(m, "dtype", "dtype", DTYPES)
    for key in ("name", "created"):
        c.str(m, key, key, optional=True)
    _check_shapes(c, m)
    _check_tree(c, m)
    sampling = c.get(m, "sampling", "sampling", bool, "true or false")
    _check_graphs(c, m, backend, sampling)
    c.str(m, "weights", "weights")
    _check_target(c, m)
    _check_head(c, m)
    tok = c.obj(m, "tokenizer", "tokenizer", optional=True)
    if tok is not None:
        c.str(tok, "file", "tokenizer.file")
        c.str_list(tok, "files", "tokenizer.files", optional=True)
    c.int_list(m, "eos_token_ids", "eos_token_ids", optional=True)
    c.obj(m, "sources", "sources", optional=True)
    versions = c.obj(m, "versions", "versions", optional=True) or {}
    for lib, v in versions.items():
        if v is not None and not isinstance(v, str):
            raise c.fail(f"versions.{lib}", v, "a version string or null")
    c.num(m, "export_s", "export_s", optional=True)
    c.obj(m, "autotune", "autotune", optional=True)
    files = c.obj(m, "files", "files")
    for rel, digest in files.items():
        if not isinstance(digest, str) or not SHA_RE.match(digest):
            raise c.fail(f"files[{rel!r}]", digest, "a sha256 hex digest (64 lowercase hex digits)")


def _check_shapes(c: Checker, m: dict) -> None:
    s = c.obj(m, "shapes", "shapes")
    for key in ("budget", "depth", "topk", "max_seq_len", "prefill_chunk"):
        c.int(s, key, f"shapes.{key}", lo=1)
    c.int(s, "draft_depth", "shapes.draft_depth", lo=1, hi=s["depth"], optional=True)
    if s["budget"] > s["max_seq_len"]:
        raise c.fail("shapes.budget", s["budget"], f"at most shapes.max_seq_len ({s['max_seq_len']})")
    lookup = c.obj(m, "lookup", "lookup", optional=True)
    if lookup is not None:
        c.int(lookup, "length", "lookup.length", lo=0, optional=True)
    budgets = c.obj(m, "budgets", "budgets", optional=True)
    if budgets is not None:
        compiled = c.int_list(budgets, "compiled", "budgets.compiled", lo=1)
        depth = c.obj(budgets, "depth", "budgets.depth")
        cost = c.obj(budgets, "cost_ms", "budgets.cost_ms")
        for b in compiled:
            c.int(depth, str(b), f"budgets.depth.{b}", lo=1)
            c.num(cost, str(b), f"budgets.cost_ms.{b}")
            if b != s["budget"] and f"verify.b{b}" not in (m.get("graphs") or {}):
                raise c.fail("budgets.compiled", compiled, f"budgets whose graphs are listed (no graphs.verify.b{b})")
        c.num(cost, "chain", "budgets.cost_ms.chain", optional=True)  # the lookup chain alone


def _check_tree(c: Checker, m: dict) -> None:
    tree = c.obj(m, "tree", "tree")
    c.str(tree, "policy", "tree.policy", ("dynamic", "static"))
    static = c.obj(tree, "static", "tree.static", optional=True)
    if static is not None:
        c.get(static, "paths", "tree.static.paths", list, "a list of paths")


def _check_graphs(c: Checker, m: dict, backend: str, sampling: bool) -> None:
    graphs = c.obj(m, "graphs", "graphs")
    required = REQUIRED_GRAPHS + (("verify_sample",) if sampling else ())
    for name in required:
        if name not in graphs:
            raise c.fail(f"graphs.{name}", _MISSING, f"an object (the {name} graph of this artifact)")
    ext = BACKEND_EXT[backend]
    for name in graphs:
        g = c.obj(graphs, name, f"graphs.{name}")
        f = c.str(g, "file", f"graphs.{name}.file")
        if not f.endswith(f".{ext}"):
            raise c.fail(f"graphs.{name}.file", f, f"a .{ext} file (backend is {backend!r})")
        for key in ("capture_s", "compile_s"):
            c.num(g, key, f"graphs.{name}.{key}")
        c.int(g, "bytes", f"graphs.{name}.bytes")
        c.int(g, "jetspec_ops", f"graphs.{name}.jetspec_ops", optional=True)
        inputs = c.str_list(g, "inputs", f"graphs.{name}.inputs")
        for i, text in enumerate(inputs):
            if not INPUT_RE.match(text):
                raise c.fail(f"graphs.{name}.inputs[{i}]", text, "a tensor type like 'torch.int64[16]'")


def _check_model_config(c: Checker, cfg: dict, field: str) -> None:
    for key in ("num_hidden_layers", "num_key_value_heads", "num_attention_heads", "hidden_size"):
        c.int(cfg, key, f"{field}.{key}", lo=1)
    c.int(cfg, "head_dim", f"{field}.head_dim", lo=1, optional=True)


def _check_target(c: Checker, m: dict) -> None:
    t = c.obj(m, "target", "target")
    cfg = c.obj(t, "config", "target.config")
    _check_model_config(c, cfg, "target.config")
    c.int(cfg, "vocab_size", "target.config.vocab_size", lo=1)
    c.str(cfg, "model_type", "target.config.model_type")
    c.str(t, "model_type", "target.model_type")
    n = cfg["num_hidden_layers"]
    c.int(t, "num_layers", "target.num_layers", lo=n, hi=n)
    taps = c.int_list(t, "tap_layers", "target.tap_layers")
    for i, tap in enumerate(taps):
        if tap >= n:
            raise c.fail(f"target.tap_layers[{i}]", tap, f"a layer index < {n} (target.config.num_hidden_layers)")


def _check_head(c: Checker, m: dict) -> None:
    h = c.obj(m, "head", "head")
    cfg = c.obj(h, "config", "head.config")
    _check_model_config(c, cfg, "head.config")
    c.obj(cfg, "dflash_config", "head.config.dflash_config")
    depth = c.int(h, "depth", "head.depth", lo=1)
    c.int(h, "block_depth", "head.block_depth", lo=depth, optional=True)


# ---- shapes against the compiled graphs -----------------------------------------------------------------

def parse_input(text: str) -> tuple[str, list[int]]:
    """'torch.float32[4, 2, 96, 16]' -> ('float32', [4, 2, 96, 16])."""
    match = INPUT_RE.match(text)
    assert match, text  # check_fields has validated the form
    dims = [int(d) for d in match.group(2).replace(" ", "").split(",") if d]
    return match.group(1), dims


def _cache_dims(cfg: dict, field: str) -> list[tuple[str, int]]:
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return [(f"{field}.num_hidden_layers", cfg["num_hidden_layers"]),
            (f"{field}.num_key_value_heads", cfg["num_key_value_heads"]),
            ("shapes.max_seq_len", None), (f"{field}.head_dim", head_dim)]


def check_graph_shapes(m: dict, path: Path) -> None:
    """The manifest's shapes and configs must be the ones the graphs were compiled for.

    Only inputs whose meaning is stable are used: prefill tokens[P]; every 4-D input of prefill, verify*,
    ar_step is a target K/V cache [Lt, Hkv, S, hd] and of draft a draft-context cache [Ld, Hkv, S, hd];
    verify* tokens[n] and mask[n, n] with n = B (or B + lookup.length with a lookup chain).
    """
    c = Checker(path)
    s, graphs = m["shapes"], m["graphs"]
    if m["head"]["depth"] != s["depth"]:
        raise c.fail("head.depth", m["head"]["depth"], f"shapes.depth ({s['depth']})")
    caches = {"draft": _cache_dims(m["head"]["config"], "head.config")}
    target_cache = _cache_dims(m["target"]["config"], "target.config")
    for name, g in graphs.items():
        inputs = [parse_input(t) for t in g["inputs"]]
        field = f"graphs.{name}.inputs"
        name = split_graph_name(name)[0]  # a graph compiled for another budget (verify.b16, verify.chain)
        if name in ("prefill", "verify", "verify_sample") and (not inputs or len(inputs[0][1]) != 1):
            raise c.fail(field, g["inputs"], "the recorded input types, the first a 1-D token tensor")
        want = caches.get(name, target_cache)
        for i, (dtype, dims) in enumerate(inputs):
            if len(dims) == 4:
                _expect_cache(c, m, f"{field}[{i}]", dtype, dims, want)
        if name == "prefill":
            _expect(c, s, "prefill_chunk", inputs[0][1][:1], f"{field}[0]", g["inputs"][0])
        if name.startswith("verify"):
            _expect_tree(c, m, field, inputs, g["inputs"], g.get("budget"))


def _expect(c: Checker, s: dict, key: str, got: list[int], field: str, text: str) -> None:
    if got != [s[key]]:
        raise c.fail(f"shapes.{key}", s[key], f"{got[0] if got else '?'} (the compiled graph's {field} is {text})")


def _expect_cache(c: Checker, m: dict, field: str, dtype: str, dims: list[int], want) -> None:
    for (name, value), got in zip(want, dims):
        value = m["shapes"]["max_seq_len"] if value is None else value
        if value != got:
            raise c.fail(name, value, f"{got} (the compiled graph's {field} is {dims})")
    if dtype != m["dtype"]:
        raise c.fail("dtype", m["dtype"], f"{dtype!r} (the compiled graph's {field} is torch.{dtype})")


def _expect_tree(c: Checker, m: dict, field: str, inputs, texts, budget: int | None = None) -> None:
    budget = budget if isinstance(budget, int) else m["shapes"]["budget"]
    chain = (m.get("lookup") or {}).get("length") or 0
    n = inputs[0][1]
    allowed = (1 + chain,) if budget == 0 else (budget, budget + chain) if budget > 1 else (1,)  # 0: verify.chain
    if len(n) != 1 or n[0] not in allowed:
        raise c.fail("shapes.budget", budget, f"{n[0] if n else '?'} (the compiled graph's {field}[0] is {texts[0]})")
    mask = next((dims for dtype, dims in inputs if dtype == "bool"), None)
    if mask is not None and mask != [n[0], n[0]]:
        raise c.fail("shapes.budget", budget, f"a [{n[0]}, {n[0]}] tree mask (the compiled graph's mask is {mask})")
