"""Step `aoti_export` (background): export.pipeline.export_model(..., backend="aoti") of the kit's models."""

from __future__ import annotations

from ..common import Ctx
from ..models import build_models, model_dims, spec_for


def run(ctx: Ctx) -> dict:
    from jetspec_compile.export.pipeline import export_model

    dims = model_dims(ctx)
    target, head = build_models(dims, ctx.device)
    spec = spec_for(dims, dims["budgets"][0])
    out = ctx.work / "artifact"
    manifest = export_model(target, head, spec, out, backend="aoti", device=ctx.device, sampling=False, force=True,
                            log=ctx.log)
    g = manifest["graphs"]
    figures = dict(model=dims["name"], layers=dims["layers"], dtype=dims["dtype"], budget=spec.budget,
                   seq_len=spec.max_seq_len, export_s=manifest["export_s"],
                   graphs={n: dict(compile_s=r["compile_s"], capture_s=r["capture_s"], mib=r["bytes"] / 2**20,
                                   jetspec_ops=r["jetspec_ops"]) for n, r in g.items()},
                   weights_mib=(out / manifest["weights"]).stat().st_size / 2**20)
    return dict(status="pass", figures=figures, details=dict(dims=dims, manifest_graphs=g))
