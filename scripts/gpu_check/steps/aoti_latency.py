"""Step `aoti_latency`: verify vs ar_step latency of the compiled packages and compiled == eager on the
same inputs."""

from __future__ import annotations

import traceback

from ..common import Ctx, StepSkip
from ..compare import compare_outputs, eager_call, time_call, verify_path_margin
from ..models import State, build_models, compile_plan, model_dims, package_name, spec_for

EQUALITY_KEYS = ("graph", "budget", "ok", "near_tie", "tokens_equal", "token_equal", "accepted_compiled",
                 "accepted_eager", "rows_rel_max", "logits_rel", "eager_top2_margin", "path_margin")


def _load_packages(ctx: Ctx, have, pkg, weights) -> tuple[dict, list[str]]:
    from jetspec_compile.backends import get_backend

    aoti = get_backend("aoti")

    compiled, load_errors = {}, []
    for g, b in have:
        try:
            compiled[(g, b)] = aoti.load_graph(pkg / package_name(g, b), ctx.device, weights)
        except Exception as e:  # noqa: BLE001
            load_errors.append(f"{g}_b{b}: {type(e).__name__}: {e}"[:300])
            ctx.log(traceback.format_exc())
    return compiled, load_errors


def _time_and_compare(ctx: Ctx, eager: dict, compiled: dict, state: State, head, target, dims: dict,
                      warmup: int, reps: int) -> tuple[list[dict], list[dict]]:
    """Per graph: eager and compiled median ms, and the compiled == eager check on the same inputs."""
    import torch

    rows, checks = [], []
    for (g, b), mod in eager.items():
        tree = state.tree(head.depth, dims["topk"], b, target.vocab_size) if g == "verify" else None
        args = state.args(g, tree)
        row = dict(graph=g, budget=b if g == "verify" else 1)
        row["eager_ms"] = time_call(eager_call(mod), args, ctx.device, warmup, reps)
        if (g, b) in compiled:
            fn = compiled[(g, b)]
            row["compiled_ms"] = time_call(fn, args, ctx.device, warmup, reps)
            margin = verify_path_margin(mod, args) if g == "verify" else None
            with torch.inference_mode():
                c = compare_outputs(g, fn(*args), mod(*args), dims["dtype"], margin)
            c["budget"] = row["budget"]
            checks.append(c)
        rows.append(row)
        ctx.log(f"  {g} B={row['budget']}: eager {row['eager_ms']:.3f} ms, "
                f"compiled {row.get('compiled_ms', float('nan')):.3f} ms")
    ar = next((r for r in rows if r["graph"] == "ar_step"), None)
    for r in rows:
        if r["graph"] == "verify" and ar:
            if r.get("compiled_ms") and ar.get("compiled_ms"):
                r["ratio_compiled"] = r["compiled_ms"] / ar["compiled_ms"]
            r["ratio_eager"] = r["eager_ms"] / ar["eager_ms"]
    return rows, checks


def run(ctx: Ctx) -> dict:
    from jetspec_compile.backends import graph_weights
    from jetspec_compile.graphs import build_graphs

    dims = model_dims(ctx)
    pkg = ctx.work / "packages"
    plan = compile_plan(dims)
    have = [(g, b) for g, b in plan if (pkg / package_name(g, b)).is_file()]
    if not have:
        raise StepSkip("no compiled package (aoti_compile produced none)")
    target, head = build_models(dims, ctx.device)
    eager = {(g, b): build_graphs(target, head, spec_for(dims, b), (g,))[g] for g, b in plan}
    weights = graph_weights({f"{g}_{b}": m for (g, b), m in eager.items()})
    compiled, load_errors = _load_packages(ctx, have, pkg, weights)
    state = State(target, head, dims, ctx.device)
    state.greedy_chain(eager_call(eager[("ar_step", dims["budgets"][0])]), head.depth + 1)
    warmup, reps = (2, 3) if ctx.dry_run else (5, 30)
    rows, checks = _time_and_compare(ctx, eager, compiled, state, head, target, dims, warmup, reps)
    figures = dict(model=dims["name"], layers=dims["layers"], dtype=dims["dtype"], committed=state.L,
                   depth=head.depth, timing="CUDA events, median" if ctx.device == "cuda" else "perf_counter, median",
                   reps=reps, rows=rows, equality=[{k: c[k] for k in c if k in EQUALITY_KEYS} for c in checks],
                   greedy_chain_len=len(state.chain or []))
    details = dict(checks=checks, load_errors=load_errors, dims=dims)
    bad = [c for c in checks if not c["ok"]]
    missing = [f"{g}_b{b}" for g, b in plan if (g, b) not in compiled]
    if bad or load_errors:
        why = [f"{c['graph']} B={c['budget']} compiled != eager" for c in bad] + load_errors
        return dict(status="fail", reason="; ".join(why)[:500], figures=figures, details=details)
    if missing:
        return dict(status="fail", reason=f"packages missing (aoti_compile): {missing}", figures=figures,
                    details=details)
    return dict(status="pass", figures=figures, details=details)
