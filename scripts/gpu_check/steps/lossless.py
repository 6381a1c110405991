"""Step `lossless`: greedy speculative == autoregressive == HF generate, tiny models on the kit's device
(fp32 dense and MoE must match token for token; bf16 is reported only: near-tie flips are expected)."""

from __future__ import annotations

from ..common import Ctx, tests_module
from ..models import torch_dtype

# (model, dtype, target options, prompts, budgets, tree policies)
DRY_CONFIGS = [("dense", "float32", {}, 2, (1, 16), ("dynamic",)),
               ("moe", "float32", {"moe": True}, 1, (16,), ("dynamic",)),
               ("dense", "bfloat16", {}, 1, (16,), ("dynamic",))]
GPU_CONFIGS = [("dense", "float32", {}, 6, (1, 16, 64), ("dynamic", "static")),
               ("moe", "float32", {"moe": True}, 3, (16, 64), ("dynamic", "static")),
               ("dense", "bfloat16", {}, 4, (16, 64), ("dynamic",)),
               ("moe", "bfloat16", {"moe": True}, 2, (16,), ("dynamic",))]


def _hf_greedy(target, ids, n_new: int, dev: str) -> list[int]:
    import torch

    with torch.no_grad():
        out = target.model.generate(ids[None].to(dev), attention_mask=torch.ones_like(ids[None]).to(dev),
                                    max_new_tokens=n_new, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.numel():].tolist()


def _check_prompts(row: dict, target, head, n_prompts: int, budgets, trees, n_new: int, dev: str, g) -> None:
    """Random prompts: autoregressive and every (budget, tree) speculative run against HF greedy."""
    import torch

    from jetspec_compile.eager_oracle import autoregressive_generate, speculative_generate

    for i in range(n_prompts):
        ids = torch.randint(0, 127, (int(torch.randint(1, 24, (1,), generator=g)),), generator=g)
        hf = _hf_greedy(target, ids, n_new, dev)
        outs = {"ar": autoregressive_generate(target, head, ids, n_new)[0]}
        for b in budgets:
            for tree in trees:
                outs[f"spec_b{b}_{tree}"] = speculative_generate(target, head, ids, n_new, budget=b, tree=tree)[0]
        for name, out in outs.items():
            row["runs"] += 1
            if out != hf:
                row["mismatches"] += 1
                k = next((j for j, (a, b_) in enumerate(zip(out, hf)) if a != b_), min(len(out), len(hf)))
                row["first_divergence"].append(dict(prompt=i, run=name, index=k))


def _check_oracle(row: dict, target, head, n_new: int, dev: str, g) -> None:
    """The oracle draft of tests/helpers.py: deep accepted paths, multi-row commits on this device."""
    import torch

    from jetspec_compile.decode import Stats
    from jetspec_compile.graphs import SpecConfig, build_graphs
    from jetspec_compile.eager_oracle import eager_decoder

    ids = torch.randint(0, 127, (9,), generator=g)
    ref = _hf_greedy(target, ids, n_new + head.depth + 1, dev)
    spec = SpecConfig(budget=16, topk=4, max_seq_len=ids.numel() + n_new + 40, prefill_chunk=8)
    dec = eager_decoder(target, head, spec, ("prefill", "draft", "verify"))
    dec.graphs["draft"] = tests_module("helpers").OracleDraft(
        build_graphs(target, head, spec, ("draft",))["draft"], ids.tolist() + ref, target.vocab_size, spec.topk,
        miss=0.15)
    st = Stats()
    out = [t for c in dec.speculative(ids.tolist(), n_new, stats=st) for t in c]
    row["runs"] += 1
    row["tau_oracle"] = st.tau
    if out != ref[:n_new]:
        row["mismatches"] += 1
        k = next((j for j, (a, b_) in enumerate(zip(out, ref)) if a != b_), len(out))
        row["first_divergence"].append(dict(prompt="oracle", run="spec_b16_oracle", index=k))


def _verdict(results: list[dict], dev: str) -> dict:
    exact = [r for r in results if r["dtype"] == "float32"]
    fails = [r for r in exact if r["mismatches"]]
    shallow = [r for r in exact if (r["tau_oracle"] or 0) <= 1.5]
    figures = dict(device=dev, results=[{k: v for k, v in r.items() if k != "first_divergence"} for r in results],
                   fp32_runs=sum(r["runs"] for r in exact), fp32_mismatches=sum(r["mismatches"] for r in exact),
                   bf16_runs=sum(r["runs"] for r in results if r["dtype"] != "float32"),
                   bf16_mismatches=sum(r["mismatches"] for r in results if r["dtype"] != "float32"))
    details = dict(results=results)
    if fails:
        return dict(status="fail", reason="fp32 speculative output differs from greedy decoding: "
                    + "; ".join(f"{r['model']}: {r['mismatches']}/{r['runs']}" for r in fails),
                    figures=figures, details=details)
    if shallow:
        return dict(status="fail", reason="the oracle draft did not get multi-row commits (tau <= 1.5)",
                    figures=figures, details=details)
    return dict(status="pass", figures=figures, details=details)


def run(ctx: Ctx) -> dict:
    import torch

    from jetspec_compile.tiny import tiny_head, tiny_target

    dev = ctx.device
    configs, n_new = (DRY_CONFIGS, 10) if ctx.dry_run else (GPU_CONFIGS, 24)
    results = []
    for model_kind, dt_name, kw, n_prompts, budgets, trees in configs:
        dtype = torch_dtype(dt_name)
        torch.manual_seed(0)
        target = tiny_target(num_layers=4, eos_token_id=None, **kw)
        target.to(device=dev, dtype=dtype)
        head = tiny_head(target, block_size=6, num_layers=1).to(device=dev, dtype=dtype)
        g = torch.Generator().manual_seed(7)
        row = dict(model=model_kind, dtype=dt_name, runs=0, mismatches=0, first_divergence=[], tau_oracle=None)
        _check_prompts(row, target, head, n_prompts, budgets, trees, n_new, dev, g)
        _check_oracle(row, target, head, n_new, dev, g)
        results.append(row)
        ctx.log(f"  {model_kind} {dt_name}: {row['runs']} runs, {row['mismatches']} mismatches, "
                f"oracle tau {row['tau_oracle']:.2f}")
        del target, head
    return _verdict(results, dev)
