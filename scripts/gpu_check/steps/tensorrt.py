"""Step `tensorrt`: the TensorRT backend when torch_tensorrt imports; otherwise a skip saying why."""

from __future__ import annotations

import time

from ..common import Ctx, StepSkip


def run(ctx: Ctx) -> dict:
    try:
        import torch_tensorrt
    except Exception as e:  # noqa: BLE001
        raise StepSkip(f"torch_tensorrt is not importable here ({type(e).__name__}: {str(e)[:160]}); TensorRT "
                       "installs only from NVIDIA's own package index, with a matching torch minor version")
    if ctx.dry_run:
        raise StepSkip("dry run: TensorRT needs CUDA")
    import torch

    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.runtime import load
    from jetspec_compile.eager_oracle import speculative_generate
    from jetspec_compile.tiny import tiny_head, tiny_target

    torch.manual_seed(0)
    target = tiny_target(num_layers=4, eos_token_id=None)
    head = tiny_head(target, block_size=6)
    target.to("cuda")
    head.to("cuda")
    out = ctx.work / "trt-artifact"
    t0 = time.perf_counter()
    export_model(target, head, SpecConfig(budget=16, topk=3, max_seq_len=96, prefill_chunk=16), out,
                 backend="tensorrt", device="cuda", sampling=False, force=True, log=ctx.log)
    export_s = time.perf_counter() - t0
    engine = load(out, "cuda")
    ids = torch.randint(0, 127, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    got = engine.generate(ids, 16).tokens
    ref = speculative_generate(target, head, ids, 16, budget=16, topk=3, max_seq_len=96, prefill_chunk=16)[0]
    figures = dict(torch_tensorrt=torch_tensorrt.__version__, export_s=export_s, tokens_equal=got == ref)
    if got != ref:
        return dict(status="fail", reason="TensorRT generation differs from eager", figures=figures,
                    details=dict(got=got, ref=ref))
    return dict(status="pass", figures=figures, details={})
