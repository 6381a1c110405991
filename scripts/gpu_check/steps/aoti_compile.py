"""Step `aoti_compile` (background): AOTInductor packages of the verify graph at each budget and of ar_step,
one worker process per package."""

from __future__ import annotations

import json
import subprocess
import time
import traceback
from pathlib import Path

from ..common import KIT_DIR, ROOT, Ctx, last_error, python_cmd
from ..models import build_models, compile_plan, model_dims, package_name, spec_for


def compile_one(ctx: Ctx, graph: str, budget: int, dest: Path) -> dict:
    """Capture + compile one graph of the kit's model with the pipeline's own functions."""
    import torch

    from jetspec_compile.backends import capture, get_backend
    from jetspec_compile.graphs import build_graphs, example_inputs

    aoti = get_backend("aoti")

    dims = model_dims(ctx)
    t0 = time.perf_counter()
    target, head = build_models(dims, ctx.device)
    spec = spec_for(dims, budget)
    module = build_graphs(target, head, spec, (graph,))[graph]
    args = example_inputs(graph, target, head, spec, ctx.device)
    t1 = time.perf_counter()
    ep = capture(module, args, aoti.attention_form)
    t2 = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    aoti.compile_graph(ep, args, dest, ctx.device)
    t3 = time.perf_counter()
    n_ops = sum(1 for n in ep.graph.nodes
                if n.op == "call_function" and n.target == torch.ops.jetspec.tree_attention.default)
    return dict(graph=graph, budget=budget, file=dest.name, build_s=t1 - t0, capture_s=t2 - t1, compile_s=t3 - t2,
                bytes=dest.stat().st_size, jetspec_ops=n_ops)


def run(ctx: Ctx) -> dict:
    dims = model_dims(ctx)
    pkg = ctx.work / "packages"
    pkg.mkdir(parents=True, exist_ok=True)
    plan = compile_plan(dims)
    results, errors = [], []
    if ctx.opts.get("in_process") or ctx.opts.get("serial_compile"):
        for graph, b in plan:
            try:
                results.append(compile_one(ctx, graph, b, pkg / package_name(graph, b)))
                ctx.log(f"  {graph} B={b}: compiled in {results[-1]['compile_s']:.1f}s")
            except Exception as e:  # noqa: BLE001
                errors.append(f"{graph}_b{b}: {type(e).__name__}: {e}"[:400])
                ctx.log(traceback.format_exc())
    else:  # one worker process per package, all at once
        procs = []
        for graph, b in plan:
            res = ctx.work / f"compile_{graph}_b{b}.json"
            log = ctx.out / "steps" / f"aoti_compile.{graph}_b{b}.log"
            cmd = python_cmd() + [str(KIT_DIR), "worker", "--graph", graph, "--budget", str(b),
                                  "--result", str(res), "--out", str(ctx.out), "--work", str(ctx.work),
                                  "--options", json.dumps(ctx.opts)] + (["--dry-run"] if ctx.dry_run else [])
            fh = open(log, "w")
            procs.append((graph, b, res, log, fh, subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)))
            ctx.log(f"  started worker {graph} B={b} (log {log.name})")
        for graph, b, res, log, fh, p in procs:
            rc = p.wait()
            fh.close()
            if rc == 0 and res.is_file():
                results.append(json.loads(res.read_text()))
                ctx.log(f"  {graph} B={b}: compiled in {results[-1]['compile_s']:.1f}s")
            else:
                errors.append(f"{graph}_b{b}: worker exited {rc}: {last_error(log)}")
    figures = dict(model=dims["name"], layers=dims["layers"], dtype=dims["dtype"], seq_len=dims["seq_len"],
                   packages={f"{r['graph']}_b{r['budget']}": dict(compile_s=r["compile_s"], capture_s=r["capture_s"],
                                                                   mib=r["bytes"] / 2**20) for r in results})
    details = dict(results=results, errors=errors, dims=dims)
    if errors:
        return dict(status="fail", reason=f"{len(errors)}/{len(plan)} packages failed: {errors[0][:300]}",
                    figures=figures, details=details)
    return dict(status="pass", figures=figures, details=details)
