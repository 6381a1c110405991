"""``profile_artifact``: one profile run, sweep -> measure -> report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from jetspec_compile.errors import JetSpecError

from .cli import DEFAULT_BUDGETS
from .measure import Bench, encode_prompts
from .report import autotune_record, build_result, json_safe, write_outputs
from .sweep import budget_decoders, lookup_off_decoders


def _check_budgets(engine, budgets: list[int]) -> None:
    depth = engine.decoder.D
    too_big = [b for b in budgets if b + depth + 2 > engine.max_seq_len]
    if too_big:
        raise JetSpecError(f"budgets {too_big} do not fit this artifact's max_seq_len {engine.max_seq_len} "
                           f"(depth {depth}: a budget needs max_seq_len >= B + {depth + 2})")
    if any(b < 1 for b in budgets):
        raise JetSpecError(f"budgets {budgets}: expected integers >= 1")


def _eager(engine, folder: Path, needed: bool) -> tuple:
    """The eager target + head rebuilt from the artifact (the Hugging Face baselines and the sweep's
    captures) and its SpecConfig; (None, None, None) when not ``needed``."""
    from jetspec_compile.safetensors_io import load_safetensors

    from ..engine import eager_models

    if not needed:
        return None, None, None
    weights = load_safetensors(folder / engine.artifact.weights, device=engine.device)
    return eager_models(folder, engine.artifact, weights, engine.device)


def profile_artifact(artifact: str | Path, prompts: Sequence[str | Sequence[int]], budgets: Sequence[int] | None = None,
                     *, max_new_tokens: int = 128, reps: int = 3, out: str | Path | None = None, hf: bool = True,
                     autotune: bool = False, device: str | None = None, threads: int | None = 1,
                     prompts_source: str | None = None, plots: bool = True, sweep_dir: str | Path | None = None,
                     log: Callable[[str], None] = print) -> dict:
    """Profile ``artifact`` over ``budgets`` (see the package docstring). Returns the profile.json dict.

    ``prompts``: text (needs the artifact's tokenizer) or token-id lists."""
    from jetspec_compile.artifact import update_manifest

    from ..engine import load

    if reps < 1:
        raise JetSpecError(f"reps is {reps}; expected >= 1")
    if max_new_tokens < 1:
        raise JetSpecError(f"max_new_tokens is {max_new_tokens}; expected >= 1")
    if threads:
        torch.set_num_threads(int(threads))
    folder = Path(artifact)
    out = Path(out) if out is not None else Path("runs") / f"profile-{folder.resolve().name}"
    t_start = time.perf_counter()
    log(f"loading {folder} ...")
    engine = load(folder, device)
    manifest, dev, base_budget = engine.artifact, engine.device, engine.budget
    budgets = sorted(set(int(b) for b in (budgets or DEFAULT_BUDGETS)) | {base_budget})
    _check_budgets(engine, budgets)
    ids = encode_prompts(engine, prompts, max_new_tokens, max(budgets), log)

    target, head, base_spec = _eager(engine, folder, needed=hf or any(b != base_budget for b in budgets))
    sweep_root = Path(sweep_dir) if sweep_dir is not None else out / "sweep"
    decoders, sweep = budget_decoders(engine, budgets, manifest, target, head, base_spec, sweep_root, log)
    chain_off = lookup_off_decoders(decoders)  # L > 0: every budget again with the chain off at run time

    hf_model = target.model if (hf and target is not None) else None
    bench = Bench(engine.decoder, decoders, list(engine.eos_token_ids), hf_model,
                  manifest.target.pad_token_id, ids, max_new_tokens, log, lookup_off=chain_off)
    log("warming up ...")
    bench.warm_up()
    measured = bench.measure(reps)

    result = build_result(measured, folder=folder, manifest=manifest, dev=dev, base_budget=base_budget, sweep=sweep,
                          sweep_root=sweep_root, ids=ids, reps=reps, max_new_tokens=max_new_tokens,
                          prompts_source=prompts_source, threads=torch.get_num_threads(), hf=hf_model is not None)
    if autotune:
        record = autotune_record(result, base_budget=base_budget, sweep=sweep, max_new_tokens=max_new_tokens, out=out)
        update_manifest(folder, autotune=record)
        result["autotune"] = record
        log(f"autotune: best budget {record['budget']} ({record['tokens_per_s']:.1f} tok/s) recorded in "
            f"{folder / 'manifest.json'}")
    result["total_s"] = round(time.perf_counter() - t_start, 3)
    result["outputs"] = write_outputs(result, out, plots=plots)
    (out / "profile.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    return result
