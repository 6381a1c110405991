"""Export: capture every graph with torch.export, compile it with a backend, write the artifact folder."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from jetspec_compile.artifact import library_versions, write_manifest
from jetspec_compile.atomic import atomic_folder
from jetspec_compile.backends import capture, get_backend, graph_weights
from jetspec_compile.errors import JetSpecError
from jetspec_compile.graphs import (GRAPH_NAMES, PLAIN_BUDGET, SpecConfig, _static_tree,
                                    budget_graph_name, budget_graph_names, budget_spec, build_graphs,
                                    example_inputs, split_graph_name)
from jetspec_compile.head import DraftHead
from jetspec_compile.linear import native_linears
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
    any, a plain step (budget 1) is compiled too, and the runtime picks a budget each round (adaptive).
    ``static_trees``: per extra budget, a calibrated static topology (tree policy static)."""
    be = get_backend(backend)
    be.check_available(device)
    be.check_spec(spec)
    head.check_compatible(target)
    spec.validate(head)
    full_depth = head.depth
    if spec.tree == "static" and spec.static_tree is None:  # freeze the default topology at the full depth
        spec = replace(spec, static_tree=_static_tree(spec, head).to_json())
    extra = sorted({int(b) for b in budgets} - {spec.budget})
    if extra and extra[0] < 1:
        raise JetSpecError(f"budgets {list(budgets)}: expected integers >= 1")
    specs = {spec.budget: spec}
    for b in (extra + [PLAIN_BUDGET] if extra and PLAIN_BUDGET not in extra else extra):
        specs[b] = budget_spec(spec, b, (static_trees or {}).get(b))
        specs[b].validate(head)
    try:
        return _export(target, head, specs, spec.budget, Path(out), be, device=device,
                       sampling=sampling, force=force, tokenizer_dir=tokenizer_dir, sources=sources, log=log,
                       _fail_after=_fail_after, full_depth=full_depth)
    finally:
        head.set_depth(full_depth)


def _jobs(target, head, specs: dict[int, SpecConfig], main: int, sampling: bool, full_depth: int):
    """(graph name, budget, drafted depth, module) for every graph to compile, in order; yields each module
    with the head set to its budget's reachable depth (depth is read while the graph is captured)."""
    for b, spec in specs.items():
        head.set_depth(full_depth)
        depth = spec.reachable_depth(head)
        head.set_depth(depth)
        if b == main:
            names = [n for n in GRAPH_NAMES if sampling or n != "verify_sample"]
        else:
            names = list(budget_graph_names(b, sampling))
        graphs = build_graphs(target, head, spec, names)
        for n in names:
            yield (n if b == main else budget_graph_name(n, b)), b, depth, graphs[n], spec


def _export(target, head, specs, main, out, be, *, device, sampling, force, tokenizer_dir, sources, log,
            _fail_after, full_depth) -> dict:
    spec = specs[main]
    target.to(device).eval()
    head.to(device).eval()
    if target.is_moe:
        _static_experts(target)
    n_graphs = sum(len(budget_graph_names(b, sampling)) for b in specs if b != main) + 4 + int(sampling)
    t_start = time.perf_counter()
    report: dict[str, dict] = {}
    modules: dict[str, torch.nn.Module] = {}
    depths: dict[int, int] = {}
    native = be.native_linear(device)
    log(f"exporting {n_graphs} graphs with backend {be.name} on {device} "
        f"(B={spec.budget}{' + budgets ' + ','.join(map(str, sorted(b for b in specs if b != main))) if len(specs) > 1 else ''} "
        f"K={spec.topk} S={spec.max_seq_len} P={spec.prefill_chunk}, tree={spec.tree}, head depth {full_depth}"
        f"{', native linears' if native else ''}) -> {out}")
    with atomic_folder(out, force=force) as tmp:
        for i, (name, b, depth, module, bspec) in enumerate(_jobs(target, head, specs, main, sampling, full_depth), 1):
            depths[b], modules[name] = depth, module
            args = example_inputs(split_graph_name(name)[0], target, head, bspec, device)
            t0 = time.perf_counter()
            with native_linears(target, head, enabled=native):
                ep = capture(module, args, be.attention_form)
            t1 = time.perf_counter()
            log(f"  [{i}/{n_graphs}] {name}: captured in {t1 - t0:.1f}s, compiling ({be.name}) ...")
            path = tmp / f"{name}.{be.ext}"
            meta = be.compile_graph(ep, args, path, device, module=module)
            t2 = time.perf_counter()
            if _fail_after == name:
                raise RuntimeError(f"injected failure after compiling {name}")
            size = path.stat().st_size
            log(f"  [{i}/{n_graphs}] {name}: compiled in {t2 - t1:.1f}s ({_fmt_bytes(size)})")
            report[name] = dict(file=path.name, capture_s=round(t1 - t0, 3), compile_s=round(t2 - t1, 3),
                                bytes=size, jetspec_ops=_count_op(ep, "tree_attention"),
                                native_linears=_count_op(ep, "linear"),
                                inputs=[str(getattr(a, "dtype", type(a))) + str(list(getattr(a, "shape", [])))
                                        for a in args], **meta, **_budget_fields(b, main, module))
        head.set_depth(depths[main])
        log("  writing weights and tokenizer ...")
        weights = graph_weights(modules)
        save_safetensors(_unshared(weights), tmp / WEIGHTS)
        tok = _copy_tokenizer(tokenizer_dir, tmp)
        budgets = None
        if len(specs) > 1:
            log("  calibrating the cost of a round at each budget ...")
            costs = calibrate_costs(tmp, report, be, device, weights, specs, main, depths, target, head)
            budgets = {"compiled": sorted(specs), "depth": {str(b): depths[b] for b in sorted(specs)},
                       "cost_ms": costs, "default": "adaptive"}
            log("  round cost (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
        manifest = {
            "name": out.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "backend": be.name,
            "device": str(device),
            "dtype": str(target.dtype).removeprefix("torch."),
            "shapes": {"budget": spec.budget, "depth": depths[main], "topk": spec.topk,
                       "max_seq_len": spec.max_seq_len, "prefill_chunk": spec.prefill_chunk},
            "tree": {"policy": spec.tree,
                     "static": modules["draft"].static.to_json() if modules["draft"].static else None},
            "sampling": sampling,
            "lookup": {"length": spec.lookup},
            "graphs": report,
            "weights": WEIGHTS,
            "target": {"config": json.loads(target.config.to_json_string()), "tap_layers": head.target_layer_ids,
                       "model_type": target.config.model_type, "num_layers": target.num_layers,
                       "moe_experts": getattr(target.config, "_experts_implementation", None) if target.is_moe else None},
            "head": {"config": head.config_dict(), "depth": depths[main], "block_depth": full_depth},
            "tokenizer": tok,
            "eos_token_ids": _eos_ids(target, tokenizer_dir),
            "sources": sources or {},
            "versions": library_versions(),
            "export_s": round(time.perf_counter() - t_start, 3),
        }
        if budgets:
            manifest["budgets"] = budgets
        manifest = write_manifest(tmp, manifest)
    total = time.perf_counter() - t_start
    log(f"done in {total:.1f}s: " + ", ".join(f"{n} {r['compile_s']:.0f}s/{_fmt_bytes(r['bytes'])}"
                                               for n, r in report.items()))
    return manifest


def _budget_fields(budget: int, main: int, module) -> dict:
    """A budget graph's extra manifest fields: its budget and, for a static draft, its topology."""
    if budget == main:
        return {}
    static = getattr(module, "static", None)
    return {"budget": budget, **({"static_tree": static.to_json()} if static is not None else {})}


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


def _count_op(ep: torch.export.ExportedProgram, name: str) -> int:
    op = getattr(torch.ops.jetspec, name).default
    return sum(1 for n in ep.graph.nodes if n.op == "call_function" and n.target == op)


def _static_experts(target: Target) -> None:
    """Qwen3-MoE: use transformers' static-shape batched expert kernel (gathers each token's k experts)."""
    for m in target.model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_experts_implementation"):
            cfg._experts_implementation = "batched_mm"


def _copy_tokenizer(folder, dest: Path) -> dict | None:
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
    return {"file": "tokenizer.json", "files": copied}


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
