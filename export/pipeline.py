"""Export: capture every graph with torch.export, compile it with a backend, write the artifact folder."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from jetspec_compile.artifact import (Budgets, GraphEntry, Manifest, ModelInfo, Shapes, library_versions,
                                      write_manifest)
from jetspec_compile.atomic import atomic_folder
from jetspec_compile.backends import GraphJob, compile_graphs, get_backend, graph_weights
from jetspec_compile.graphs import (CHAIN_BUDGET, GRAPH_NAMES, SpecConfig, _static_tree, budget_graph_name,
                                    budget_graph_names, budget_spec, build_graphs, example_inputs, extra_budgets)
from jetspec_compile.head import DraftHead
from jetspec_compile.safetensors_io import save_safetensors
from jetspec_compile.target import Target

from .calibrate import calibrate_costs


WEIGHTS = "weights.safetensors"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def export_model(
    target: Target,
    head: DraftHead,
    spec: SpecConfig,
    out: str | Path,
    *,
    backend: str = "aoti",
    device: str = "cpu",
    sampling: bool = True,
    force: bool = False,
    tokenizer_dir: str | Path | None = None,
    sources: dict | None = None,
    budgets: Sequence[int] = (),
    static_trees: dict[int, dict] | None = None,
    log: Callable[[str], None] = print,
    _fail_after: str | None = None,
) -> dict:
    """Capture and compile the graphs into the artifact folder ``out`` (atomically). Returns the manifest.

    ``budgets``: more tree budgets to compile draft and verify for (they share the one weights file); with
    any, a plain step (budget 1) is compiled too, and with a lookup chain the chain alone (``verify.chain``),
    and the runtime picks what runs each round (adaptive).
    ``static_trees``: per extra budget, a calibrated static topology (tree policy static)."""
    be = get_backend(backend)
    be.check_available(device)
    be.check_spec(spec)
    head.check_compatible(target)
    spec.validate(head)
    full_depth = head.depth
    if spec.tree == "static" and spec.static_tree is None:  # freeze the default topology at the full depth
        spec = replace(spec, static_tree=_static_tree(spec, head).to_json())
    specs = {spec.budget: spec}
    for b in extra_budgets(spec.budget, budgets, spec.lookup):
        specs[b] = budget_spec(spec, b, (static_trees or {}).get(b))
        specs[b].validate(head)
    try:
        return _export(target, head, specs, spec.budget, Path(out), be, device=device,
                       sampling=sampling, force=force, tokenizer_dir=tokenizer_dir, sources=sources, log=log,
                       _fail_after=_fail_after, full_depth=full_depth)
    finally:
        head.set_depth(full_depth)


@dataclass
class _Planned:
    """What the job list noted for each graph: its budget and module, and each budget's drafted depth."""

    budget: dict[str, int] = field(default_factory=dict)
    module: dict[str, torch.nn.Module] = field(default_factory=dict)
    depth: dict[int, int] = field(default_factory=dict)


def _jobs(target, head, specs: dict[int, SpecConfig], main: int, sampling: bool, full_depth: int, device,
          seen: _Planned):
    """Every graph to compile, in order, as GraphJobs (noting each in ``seen``). Yields each job with the
    head set to its budget's reachable depth (the depth is read while the graph is captured)."""
    for b, spec in specs.items():
        head.set_depth(full_depth)
        depth = spec.reachable_depth(head)
        head.set_depth(depth)
        seen.depth[b] = depth
        if b == main:
            names = [n for n in GRAPH_NAMES if sampling or n != "verify_sample"]
        else:
            names = list(budget_graph_names(b, sampling))
        graphs = build_graphs(target, head, spec, names)
        for n in names:
            name = n if b == main else budget_graph_name(n, b)
            seen.budget[name], seen.module[name] = b, graphs[n]
            yield GraphJob(name, graphs[n], example_inputs(n, target, head, spec, device))


def _header(be, specs: dict, main: int, n_graphs: int, device, full_depth: int, native: bool, out: Path) -> str:
    spec = specs[main]
    more = sorted(b for b in specs if b != main)
    return (f"exporting {n_graphs} graphs with backend {be.name} on {device} "
            f"(B={spec.budget}{' + budgets ' + ','.join(budget_graph_name('', b)[1:] for b in more) if more else ''} "
            f"K={spec.topk} S={spec.max_seq_len} P={spec.prefill_chunk}, tree={spec.tree}, head depth {full_depth}"
            f"{', native linears' if native else ''}) -> {out}")


def _n_graphs(specs: dict, main: int, sampling: bool) -> int:
    return sum(len(budget_graph_names(b, sampling)) for b in specs if b != main) + 4 + int(sampling)


def _compile_all(target, head, specs, main, tmp: Path, be, *, device, sampling, full_depth, native, log,
                 _fail_after) -> tuple[dict[str, GraphEntry], dict[str, torch.nn.Module], dict[int, int]]:
    """Capture and compile every graph into ``tmp``: (manifest entries, modules, drafted depth per budget)."""
    n_graphs = _n_graphs(specs, main, sampling)
    seen = _Planned()
    jobs = _jobs(target, head, specs, main, sampling, full_depth, device, seen)
    report: dict[str, GraphEntry] = {}
    for c in compile_graphs(be, jobs, tmp, device, native=native, target=target, head=head, total=n_graphs,
                            prefix="  ", log=log):
        if _fail_after == c.name:
            raise RuntimeError(f"injected failure after compiling {c.name}")
        b = seen.budget[c.name]
        static = getattr(seen.module[c.name], "static", None) if b != main else None
        report[c.name] = GraphEntry(
            name=c.name, file=c.path.name, capture_s=c.capture_s, compile_s=c.compile_s, bytes=c.bytes,
            jetspec_ops=c.jetspec_ops, native_linears=c.native_linears, inputs=c.input_types,
            backend_fields=c.backend_fields, budget=b if b != main else None,
            static_tree=static.to_json() if static is not None else None)
    return report, seen.module, seen.depth


def _export(target, head, specs, main, out, be, *, device, sampling, force, tokenizer_dir, sources, log,
            _fail_after, full_depth) -> dict:
    target.to(device).eval()
    head.to(device).eval()
    if target.is_moe:
        _static_experts(target)
    t_start = time.perf_counter()
    native = be.native_linear(device)
    log(_header(be, specs, main, _n_graphs(specs, main, sampling), device, full_depth, native, out))
    with atomic_folder(out, force=force) as tmp:
        report, modules, depths = _compile_all(target, head, specs, main, tmp, be, device=device, sampling=sampling,
                                               full_depth=full_depth, native=native, log=log,
                                               _fail_after=_fail_after)
        head.set_depth(depths[main])
        log("  writing weights and tokenizer ...")
        weights = graph_weights(modules)
        save_safetensors(_unshared(weights), tmp / WEIGHTS)
        tok = _copy_tokenizer(tokenizer_dir, tmp)
        budgets = None
        if len(specs) > 1:
            log("  calibrating the cost of a round at each budget ...")
            costs = calibrate_costs(tmp, {n: g.to_json() for n, g in report.items()}, be, device, weights, specs,
                                    main, depths, target, head)
            compiled = tuple(sorted(b for b in specs if b != CHAIN_BUDGET))  # (the chain: its cost only)
            budgets = Budgets(compiled=compiled, depth={b: depths[b] for b in compiled}, cost_ms=costs)
            log("  round cost (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
        manifest = _manifest(target, head, specs[main], out, be, device=device, sampling=sampling, report=report,
                             modules=modules, depths=depths, main=main, full_depth=full_depth, tok=tok,
                             tokenizer_dir=tokenizer_dir, sources=sources, budgets=budgets,
                             export_s=round(time.perf_counter() - t_start, 3))
        written = write_manifest(tmp, manifest.to_json())
    total = time.perf_counter() - t_start
    log(f"done in {total:.1f}s: " + ", ".join(f"{n} {g.compile_s:.0f}s/{_fmt_bytes(g.bytes)}"
                                               for n, g in report.items()))
    return written


def _manifest(target, head, spec, out: Path, be, *, device, sampling, report, modules, depths, main, full_depth,
              tok, tokenizer_dir, sources, budgets, export_s) -> Manifest:
    """The artifact's typed manifest (``files`` and the schema version are added as it is written)."""
    static = modules["draft"].static
    return Manifest(
        name=out.name, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), backend=be.name, device=str(device),
        dtype=str(target.dtype).removeprefix("torch."),
        shapes=Shapes(budget=spec.budget, depth=depths[main], topk=spec.topk, max_seq_len=spec.max_seq_len,
                      prefill_chunk=spec.prefill_chunk),
        tree_policy=spec.tree, static_tree=static.to_json() if static else None,
        sampling=sampling, lookup=spec.lookup, graphs=report, weights=WEIGHTS,
        target=ModelInfo(json.loads(target.config.to_json_string()), model_type=target.config.model_type,
                         num_layers=target.num_layers, tap_layers=tuple(head.target_layer_ids),
                         moe_experts=getattr(target.config, "_experts_implementation", None) if target.is_moe else None),
        head=ModelInfo(head.config_dict(), depth=depths[main], block_depth=full_depth),
        files={}, tokenizer_file=tok[0] if tok else None, tokenizer_files=tok[1] if tok else (),
        eos_token_ids=tuple(_eos_ids(target, tokenizer_dir)), sources=sources or {},
        versions=library_versions(), budgets=budgets, export_s=export_s)


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights as safetensors takes them: contiguous CPU tensors, copying only a tensor whose storage
    another one already uses (tied embeddings). A copy of every weight would double the export's peak
    (measured at Qwen3-0.6B shape: 2.35x -> 1.35x of the weight bytes while writing)."""
    out, seen = {}, set()
    for k, v in weights.items():
        v = v.detach().contiguous().cpu()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _static_experts(target: Target) -> None:
    """Qwen3-MoE: use transformers' static-shape batched expert kernel (gathers each token's k experts)."""
    for m in target.model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_experts_implementation"):
            cfg._experts_implementation = "batched_mm"


def _copy_tokenizer(folder, dest: Path) -> tuple[str, tuple[str, ...]] | None:
    """Copy the target folder's tokenizer files into ``dest``: (the tokenizer file, every file copied)."""
    if folder is None:
        return None
    folder = Path(folder)
    src = folder / "tokenizer.json"
    if not src.is_file():
        return None
    shutil.copy2(src, dest / "tokenizer.json")
    copied = ["tokenizer.json"]
    for extra in ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        if (folder / extra).is_file():
            shutil.copy2(folder / extra, dest / extra)
            copied.append(extra)
    return "tokenizer.json", tuple(copied)


def _eos_ids(target: Target, folder) -> list[int]:
    ids = []
    for src in (target.config.eos_token_id,
                _json_field(Path(folder) / "generation_config.json", "eos_token_id") if folder else None):
        if src is None:
            continue
        ids += [src] if isinstance(src, int) else list(src)
    return sorted(set(int(i) for i in ids))


def _json_field(path: Path, key: str):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get(key)
    except json.JSONDecodeError:
        return None
