"""Step `aoti_artifact`: runtime.load of the exported artifact: every graph compiled == eager, and generation
through the runtime (speculative and autoregressive)."""

from __future__ import annotations

import time

from ..common import Ctx, StepSkip
from ..compare import compare_outputs, eager_call, verify_path_margin
from ..models import State, build_models, model_dims, spec_for

EQUALITY_KEYS = ("graph", "ok", "near_tie", "tokens_equal", "token_equal", "tree_equal", "accepted_compiled",
                 "accepted_eager", "rows_rel_max", "score_max_abs", "path_margin", "eager_top2_margin")


def _eager_graphs(engine, folder, dims: dict, device: str):
    """The artifact's graphs rebuilt eagerly over its own weights.safetensors: (target, head, spec, graphs)."""
    import torch

    from jetspec_compile.backends import graph_weights
    from jetspec_compile.graphs import build_graphs
    from jetspec_compile.safetensors_io import load_safetensors

    target, head = build_models(dims, device)
    m = engine.artifact
    head.set_depth(int(m.head.depth))  # export drafts only the depths the tree can reach
    spec = spec_for(dims, m.shapes.budget)
    eager = build_graphs(target, head, spec, list(m.graphs))
    w = load_safetensors(folder / m.weights, device=device)
    with torch.no_grad():
        for k, t in graph_weights(eager).items():
            t.copy_(w[k])
    return target, head, spec, eager


def _compare_graphs(ctx: Ctx, engine, target, head, spec, eager: dict, dims: dict) -> list[dict]:
    import torch

    state = State(target, head, dims, ctx.device)
    state.greedy_chain(eager_call(eager["ar_step"]), head.depth + 1)
    checks = []
    for name in engine.artifact.graphs:
        tree = state.tree(head.depth, dims["topk"], spec.budget, target.vocab_size) if name == "verify" else None
        args = state.args(name, tree)
        margin = verify_path_margin(eager[name], args) if name == "verify" else None
        with torch.inference_mode():
            c = compare_outputs(name, engine.decoder.graphs[name](*args), eager[name](*args), dims["dtype"], margin)
        checks.append(c)
        ctx.log(f"  {name}: {'ok' if c['ok'] else 'MISMATCH'} {c}")
    return checks


def _generate(ctx: Ctx, engine, target, head, spec, eager: dict, n_new: int) -> tuple[dict, list[int]]:
    """Generation through the runtime (random weights: acceptance is ~0, this checks the loop and the caches),
    speculative and autoregressive, and the eager oracle's speculative tokens."""
    import torch

    from jetspec_compile.decode import Decoder
    from jetspec_compile.eager_oracle import EagerGraphs, cache_dims

    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, target.vocab_size - 1, (min(200, spec.max_seq_len // 4),), generator=g).tolist()
    gen = {}
    for mode, spec_flag in (("speculative", True), ("autoregressive", False)):
        t1 = time.perf_counter()
        r = engine.generate(prompt, n_new, speculative=spec_flag)
        gen[mode] = dict(tokens=r.tokens, seconds=time.perf_counter() - t1, rounds=r.stats.rounds,
                         tau=r.stats.tau, tokens_per_s=r.stats.tokens_per_s, finish=r.finish_reason)
    oracle = Decoder(EagerGraphs(eager), budget=spec.budget, topk=spec.topk, max_seq_len=spec.max_seq_len,
                     prefill_chunk=spec.prefill_chunk, dims=cache_dims(target, head), device=ctx.device)
    return gen, [t for c in oracle.speculative(prompt, n_new) for t in c]


def run(ctx: Ctx) -> dict:
    from jetspec_compile.artifact import MANIFEST
    from jetspec_compile.runtime import load

    folder = ctx.work / "artifact"
    if not (folder / MANIFEST).is_file():
        raise StepSkip("no artifact (aoti_export did not finish)")
    dims = model_dims(ctx)
    t0 = time.perf_counter()
    engine = load(folder, ctx.device)
    load_s = time.perf_counter() - t0
    target, head, spec, eager = _eager_graphs(engine, folder, dims, ctx.device)
    checks = _compare_graphs(ctx, engine, target, head, spec, eager, dims)
    n_new = 8 if ctx.dry_run else 32
    gen, eager_tokens = _generate(ctx, engine, target, head, spec, eager, n_new)
    same = dict(spec_vs_ar=gen["speculative"]["tokens"] == gen["autoregressive"]["tokens"],
                compiled_vs_eager=gen["speculative"]["tokens"] == eager_tokens)
    figures = dict(model=dims["name"], dtype=dims["dtype"], load_s=load_s,
                   equality=[{k: c[k] for k in c if k in EQUALITY_KEYS} for c in checks],
                   generate={m: {k: v for k, v in d.items() if k != "tokens"} for m, d in gen.items()},
                   generate_equal=same)
    details = dict(checks=checks, generate=gen, eager_tokens=eager_tokens)
    bad = [c["graph"] for c in checks if not c["ok"]]
    exact = dims["dtype"] == "float32"
    if bad:
        return dict(status="fail", reason=f"compiled != eager for {bad}", figures=figures, details=details)
    if any(len(d["tokens"]) != n_new for d in gen.values()):
        return dict(status="fail", reason="generation stopped early", figures=figures, details=details)
    if exact and not all(same.values()):
        return dict(status="fail", reason=f"fp32 generation differs: {same}", figures=figures, details=details)
    if not all(same.values()):
        figures["note"] = "bf16: generated tokens differ (near-tie flips between graph shapes; reported only)"
    return dict(status="pass", figures=figures, details=details)
