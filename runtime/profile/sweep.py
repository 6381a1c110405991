"""The budget sweep: compile draft + verify for budgets the artifact was not built with (cached), and one
decoder per budget over the artifact's own prefill and ar_step graphs and caches."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

SWEEP_GRAPHS = ("draft", "verify")  # the budget-dependent graphs a greedy profile needs
SWEEP_META = "sweep.json"


def artifact_key(manifest) -> str:
    """A hash of what the compiled graphs depend on: every artifact file's sha256, backend, device, shapes."""
    return manifest.content_key()


def sweep_spec(manifest, base, head, budget: int):
    """The SpecConfig of the artifact at another budget (static trees: recalibrated or default topology)."""
    from jetspec_compile.tree import calibrate_static_tree, default_static_tree

    spec = replace(base, budget=budget, static_tree=None)
    note = None
    if base.tree == "static":
        stats = manifest.sources.get("tree_stats")
        if stats and Path(stats).is_file():
            spec.static_tree = calibrate_static_tree(stats, budget, depth=head.depth, topk=base.topk).to_json()
            note = f"static tree recalibrated from {stats}"
        else:
            spec.static_tree = default_static_tree(head.depth, base.topk, budget).to_json()
            note = ("static tree: default (uncalibrated) topology; no calibration statistics found at the "
                    "artifact's sources.tree_stats")
    spec.validate(head)
    return spec, note


@dataclass
class SweepGraphs:
    budget: int
    folder: Path
    graphs: dict
    cached: bool
    capture_s: dict = field(default_factory=dict)
    compile_s: dict = field(default_factory=dict)
    note: str | None = None
    depth: int = 0

    @property
    def build_s(self) -> float:
        return sum(self.capture_s.values()) + sum(self.compile_s.values())


def _file_hashes(folder: Path, names) -> dict:
    from jetspec_compile.artifact import sha256

    return {n: sha256(folder / n) for n in names}


def _cached_meta(folder: Path, key: dict, files: dict) -> dict | None:
    """The sweep.json of ``folder`` when it was compiled for ``key`` and its files are intact, else None."""
    meta_path = folder / SWEEP_META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        ok = (meta.get("key") == key and all((folder / f).is_file() for f in files.values())
              and meta.get("files") == _file_hashes(folder, files.values()))
    except (json.JSONDecodeError, OSError):
        return None
    return meta if ok else None


def _compile(be, modules: dict, target, head, spec, files: dict, folder: Path, key: dict,
             note: str | None, native: bool, device: torch.device, budget: int, log) -> tuple[dict, dict]:
    """Capture and compile the sweep graphs into ``folder`` (atomically); returns (capture_s, compile_s)."""
    from jetspec_compile.atomic import atomic_folder
    from jetspec_compile.backends import GraphJob, compile_graphs
    from jetspec_compile.graphs import example_inputs

    capture_s, compile_s = {}, {}
    jobs = (GraphJob(n, modules[n], example_inputs(n, target, head, spec, device)) for n in SWEEP_GRAPHS)
    with atomic_folder(folder, force=True) as tmp:
        for c in compile_graphs(be, jobs, tmp, str(device), native=native, target=target, head=head,
                                total=len(SWEEP_GRAPHS), with_module=False, prefix=f"[budget {budget}] ", log=log):
            capture_s[c.name], compile_s[c.name] = c.capture_s, c.compile_s
        meta = {"key": key, "files": _file_hashes(tmp, files.values()), "capture_s": capture_s,
                "compile_s": compile_s, "note": note,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / SWEEP_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return capture_s, compile_s


def _load(be, modules: dict, files: dict, folder: Path, device: torch.device) -> dict:
    from jetspec_compile.backends import graph_weights

    weights = graph_weights(modules)
    return {name: be.load_graph(folder / files[name], str(device), weights, graph=name) for name in SWEEP_GRAPHS}


def build_sweep(manifest, target, head, base_spec, budget: int, folder: Path, device: torch.device,
                log: Callable[[str], None] = print) -> SweepGraphs:
    """Compile (or reuse the cached) draft + verify graphs of ``budget`` into ``folder`` and load them."""
    from jetspec_compile.artifact import library_versions
    from jetspec_compile.backends import get_backend
    from jetspec_compile.graphs import build_graphs

    be = get_backend(manifest.backend)
    head.set_depth(int(manifest.head.block_depth))
    spec, note = sweep_spec(manifest, base_spec, head, budget)
    head.set_depth(spec.reachable_depth(head))  # as export does: draft only the depths this budget reaches
    native = be.native_linear(str(device))
    modules = build_graphs(target, head, spec, SWEEP_GRAPHS)
    files = {n: f"{n}.{be.ext}" for n in SWEEP_GRAPHS}
    key = {"artifact_key": artifact_key(manifest), "budget": budget, "backend": be.name,
           "device": str(device), "spec": spec.to_dict(), "torch": library_versions().get("torch"),
           "depth": head.depth, "native_linear": native}
    meta = _cached_meta(folder, key, files)
    if meta is not None:
        log(f"[budget {budget}] reusing compiled draft + verify from {folder}")
        capture_s, compile_s = meta.get("capture_s", {}), meta.get("compile_s", {})
    else:
        capture_s, compile_s = _compile(be, modules, target, head, spec, files, folder, key, note,
                                        native, device, budget, log)
    graphs = _load(be, modules, files, folder, device)
    return SweepGraphs(budget, folder, graphs, meta is not None, capture_s, compile_s, note, head.depth)


def _synced(fn: Callable) -> Callable:
    def call(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    return call


def _share_caches(dec, base) -> None:
    """Point ``dec`` at ``base``'s K/V and draft-context caches: every round writes the rows it reads, so
    decoders that never run at the same time can share one set (a sweep then costs no cache memory)."""
    dec.use_caches(base.k_cache, base.v_cache, base.ctx_k, base.ctx_v)


def budget_decoders(engine, budgets, manifest, target, head, base_spec, sweep_root: Path,
                    log: Callable[[str], None]) -> tuple[dict, dict]:
    """One decoder per budget: the engine's own at its budget, a sweep decoder (compiled draft + verify,
    the artifact's prefill and ar_step, shared caches) at every other. Returns (decoders, sweep graphs)."""
    from jetspec_compile.decode import Decoder

    base = engine.decoder
    shared = {n: base.graphs[n] for n in ("prefill", "ar_step")}
    decoders, sweep = {}, {}
    for b in budgets:
        if b == engine.budget:
            decoders[b] = base
            continue
        sw = build_sweep(manifest, target, head, base_spec, b, sweep_root / f"b{b}", engine.device, log)
        sweep[b] = sw
        dec = Decoder({**shared, **sw.graphs}, budget=b, topk=base.K, max_seq_len=base.S, prefill_chunk=base.P,
                      dims=replace(base.dims, depth=sw.depth), device=engine.device, lookup=base.L)
        _share_caches(dec, base)
        decoders[b] = dec
    if engine.device.type == "cuda":  # per-stage times on a GPU need a sync after each graph call
        for dec in {id(d): d for d in decoders.values()}.values():
            dec.graphs = {n: _synced(f) for n, f in dec.graphs.items()}
    return decoders, sweep


def _without_chain(draft: Callable, device: torch.device) -> Callable:
    """A lookup draft that is never given a chain: chain_len 0, so the L chain rows are padding (masked out,
    never accepted): the cost of the branch's verify rows without their benefit."""
    none = torch.zeros(1, dtype=torch.int64, device=device)

    def run(anchor, cache_len, ctx_k, ctx_v, chain, chain_len):
        return draft(anchor, cache_len, ctx_k, ctx_v, chain, none)

    return run


def lookup_off_decoders(decoders: dict) -> dict:
    """For an artifact with a lookup chain (L > 0): one decoder per budget over the same graphs and caches
    with the chain switched off at run time (every draft graph gets chain_len 0). {} when L = 0."""
    from jetspec_compile.adaptive import CHAIN
    from jetspec_compile.decode import Decoder
    from jetspec_compile.graphs import split_graph_name

    out = {}
    for b, dec in decoders.items():
        if not dec.L:
            continue
        graphs = {n: _without_chain(f, dec.device) if split_graph_name(n)[0] == "draft" else f
                  for n, f in dec.graphs.items() if split_graph_name(n)[1] != CHAIN}  # (no chain arm either)
        off = Decoder(graphs, budget=dec.B, topk=dec.K, max_seq_len=dec.S, prefill_chunk=dec.P, dims=dec.dims,
                      device=dec.device, sync=dec.sync, lookup=dec.L,
                      arms=[a for a in dec.arms.values() if a.budget != CHAIN])
        _share_caches(off, dec)
        out[b] = off
    return out
