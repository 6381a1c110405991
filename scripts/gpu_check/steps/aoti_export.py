"""Step `aoti_export` (background): export.pipeline.export_model(..., backend="aoti") of the kit's models."""

from __future__ import annotations

from ..common import Ctx
from ..models import build_models, model_dims, spec_for


def run(ctx: Ctx) -> dict:
    from jetspec_compile.artifact import load_manifest
    from jetspec_compile.export.pipeline import export_model

    dims = model_dims(ctx)
    target, head = build_models(dims, ctx.device)
    spec = spec_for(dims, dims["budgets"][0])
    out = ctx.work / "artifact"
    export_model(target, head, spec, out, backend="aoti", device=ctx.device, sampling=False, force=True, log=ctx.log)
    m = load_manifest(out)
    figures = dict(model=dims["name"], layers=dims["layers"], dtype=dims["dtype"], budget=spec.budget,
                   seq_len=spec.max_seq_len, export_s=m.export_s,
                   graphs={n: dict(compile_s=g.compile_s, capture_s=g.capture_s, mib=g.bytes / 2**20,
                                   jetspec_ops=g.jetspec_ops) for n, g in m.graphs.items()},
                   weights_mib=(out / m.weights).stat().st_size / 2**20)
    return dict(status="pass", figures=figures,
                details=dict(dims=dims, manifest_graphs={n: g.to_json() for n, g in m.graphs.items()}))
