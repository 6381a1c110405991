#!/usr/bin/env python
"""Stage 5 benchmark on the bundled demo model: speculative decoding vs the same artifact's ar_step
decoding vs Hugging Face generate(), on prompts cut from the demo's held-out stdlib files.

    python scripts/bench_demo.py                       # export (or reuse) artifacts/demo-aoti-b64, measure
    python scripts/bench_demo.py --artifact ART --prompts prompts.jsonl   # any artifact / prompt file

Steps: export the demo (jetspec_compile.demo_paths) with the aoti backend at B=64 unless the artifact
folder already holds one; make prompts from the first --prompt-tokens tokens of held-out files (files
never trained on); then one run of `jetspec_compile.runtime.profile.profile_artifact` (every method on
every prompt, --reps repetitions, medians of per-repetition ratios). Writes bench.json and bench.md (plus
the profile's JSON/CSV/plots under <out>/profile/) and prints the Markdown table.

Goals (Stage 5): speculative >= 2x ar_step, >= 5x HF generate, host overhead <= 5 % of a round at B=64.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"speedup_vs_ar": 2.0, "speedup_vs_hf": 5.0, "host_share": 0.05}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", default=None,
                   help="artifact folder (default artifacts/demo-aoti-b<B>, exported from the demo if missing)")
    p.add_argument("--prompts", default=None,
                   help="JSONL prompt file (default: prompts cut from the demo's held-out stdlib files)")
    p.add_argument("--budget", type=int, default=64, help="B of the exported demo artifact")
    p.add_argument("--budgets", default=None, help="extra budgets to sweep, comma-separated (compiles them)")
    p.add_argument("--backend", default="aoti", choices=("aoti", "onnx", "tensorrt"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-prompts", type=int, default=8, help="held-out files used as prompts")
    p.add_argument("--prompt-set", default="code", choices=("code", "repeat"),
                   help="code: the first --prompt-tokens tokens of held-out files; repeat: 'rewrite this code' "
                        "prompts (a held-out snippet, a comment asking for the same code refactored, then its "
                        "first lines again), text the model continues by copying")
    p.add_argument("--lookup", type=int, default=0, help="with --force-export: prompt-lookup chain tokens L")
    p.add_argument("--topk", type=int, default=7, help="with --force-export: K")
    p.add_argument("--tree", default="dynamic", choices=("dynamic", "static"), help="with --force-export")
    p.add_argument("--prompt-tokens", type=int, default=200, help="tokens taken from the start of each file")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face generate() baseline")
    p.add_argument("--force-export", action="store_true", help="re-export the demo artifact")
    p.add_argument("--out", default=None, help="output folder (default runs/bench-demo-<artifact name>)")
    return p.parse_args(argv)


def ensure_artifact(args) -> Path:
    """The artifact to measure: --artifact as given, or the demo exported at --budget (reused when present)."""
    from jetspec_compile.cli import main as cli
    from jetspec_compile.errors import ArtifactError
    from jetspec_compile.artifact import load_manifest

    if args.artifact and not args.force_export:
        return Path(args.artifact)
    art = Path(args.artifact) if args.artifact else ROOT / "artifacts" / f"demo-{args.backend}-b{args.budget}"
    if art.exists() and not args.force_export:
        try:
            m = load_manifest(art, verify_hashes=True)
            stale = _stale(art / m.weights)
            if m.backend == args.backend and m.shapes.budget == args.budget and not stale:
                print(f"reusing {art}", flush=True)
                return art
            why = f"{stale} is newer than the artifact" if stale else f"backend {m.backend} B={m.shapes.budget}"
            print(f"{art}: {why}; re-exporting", flush=True)
        except ArtifactError as e:
            print(f"{art}: {e}; re-exporting", flush=True)
    print(f"exporting the demo to {art} ({args.backend}, B={args.budget}) ...", flush=True)
    t0 = time.perf_counter()
    rc = cli(["export", "--backend", args.backend, "--budget", str(args.budget), "--device", args.device,
              "--topk", str(args.topk), "--tree", args.tree, "--lookup", str(args.lookup), "--no-sampling",
              "--out", str(art), "--force"])
    if rc != 0:
        sys.exit(rc)
    print(f"exported in {time.perf_counter() - t0:.0f}s", flush=True)
    return art


def _stale(weights: Path) -> Path | None:
    """A demo model file written after the artifact's weights (the demo was rebuilt), if any."""
    from jetspec_compile.demo_paths import demo_head_path, demo_target_path

    for f in (demo_target_path() / "model.safetensors", demo_head_path() / "model.safetensors"):
        if f.stat().st_mtime > weights.stat().st_mtime:
            return f
    return None


def heldout_prompts(engine, n: int, prompt_tokens: int) -> tuple[list[list[int]], list[str]]:
    """The first ``prompt_tokens`` tokens of the first ``n`` held-out files that are that long."""
    from jetspec_compile.demo_paths import demo_heldout_files

    prompts, names = [], []
    for f in demo_heldout_files():
        ids = engine.encode(f.read_text(encoding="utf-8", errors="replace"))
        if len(ids) < prompt_tokens:
            continue
        prompts.append(ids[:prompt_tokens])
        try:
            names.append(f.relative_to(sysconfig.get_paths()["stdlib"]).as_posix())
        except ValueError:
            names.append(f.name)
        if len(prompts) >= n:
            break
    if not prompts:
        raise SystemExit(f"no held-out file has {prompt_tokens} tokens")
    return prompts, names


def repeat_prompts(engine, n: int, prompt_tokens: int) -> tuple[list[list[int]], list[str]]:
    """'Rewrite this code' prompts: a held-out snippet, a request to refactor it, then its first third again."""
    code, names = heldout_prompts(engine, n, prompt_tokens)
    out = []
    for ids in code:
        text = engine.decode(ids)
        head = engine.decode(ids[: len(ids) // 3])
        out.append(engine.encode(f"{text}\n\n# The same code again, with one name changed:\n{head}"))
    return out, [f"repeat:{x}" for x in names]


def fmt(x, spec=".2f", suffix=""):
    return "-" if x is None else f"{x:{spec}}{suffix}"


def markdown(res: dict, goals: dict, budget: int) -> str:
    s = res["settings"]
    row = next(r for r in res["budgets"] if r["budget"] == budget)
    ar, hf = res["baselines"]["ar_step"], res["baselines"].get("hf_generate")
    pld = res["baselines"].get("hf_prompt_lookup")
    m = res["machine"]
    lines = [
        f"# Stage 5 benchmark: {res['artifact_name']}",
        "",
        f"{res['backend']} on {res['device']} ({m.get('platform')}, {m.get('cpu_count')} CPUs, "
        f"{s['threads']} torch thread(s)), dtype {res['dtype']}, B={budget} D={res['shapes']['depth']} "
        f"K={res['shapes']['topk']}, tree {res['tree']}; {s['prompts']} prompts of {s['prompt_tokens_mean']:.0f} "
        f"tokens, {s['max_new_tokens']} new tokens, greedy, {s['reps']} reps (medians), measured {res['measured_at']}.",
        "",
        "| method | tokens/s | decode tokens/s | speedup vs ar_step | speedup vs HF | tau | host share |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| speculative (B={budget}) | {row['tokens_per_s']:.1f} | {row['decode_tokens_per_s']:.1f} | "
        f"{row['speedup_vs_ar']:.2f}x | {fmt(row['speedup_vs_hf'], '.2f', 'x')} | {row['tau']:.2f} | "
        f"{100 * row['host_share']:.1f} % |",
        f"| ar_step (same artifact) | {ar['tokens_per_s']:.1f} | {ar['decode_tokens_per_s']:.1f} | 1.00x | "
        f"{fmt(ar['tokens_per_s'] / hf['tokens_per_s'] if hf else None, '.2f', 'x')} | 1.00 | - |",
    ]
    if hf:
        lines.append(f"| HF generate() | {hf['tokens_per_s']:.1f} | {hf['decode_tokens_per_s']:.1f} | "
                     f"{hf['tokens_per_s'] / ar['tokens_per_s']:.2f}x | 1.00x | 1.00 | - |")
    if pld:
        lines.append(f"| HF prompt lookup ({pld['num_tokens']}) | {pld['tokens_per_s']:.1f} | "
                     f"{pld['decode_tokens_per_s']:.1f} | {pld['tokens_per_s'] / ar['tokens_per_s']:.2f}x | "
                     f"{pld['tokens_per_s'] / hf['tokens_per_s']:.2f}x | - | - |")
    st = row["stages_ms"]
    lines += ["", f"Per round at B={budget} (ms, median / p90 over {row['rounds']} rounds): "
              + ", ".join(f"{k} {st[k]['median']:.2f} / {st[k]['p90']:.2f}" for k in ("draft", "verify", "host", "commit"))
              + f"; mean round {row['round_ms']:.2f} ms. ar_step: {ar['ms_per_token']['median']:.2f} ms per token "
              f"(median). Greedy speculative output equal to ar_step output on {row['lossless_prompts']}/"
              f"{s['prompts']} prompts"
              + (f"; HF generate equal on {hf['matches_ar_step_prompts']}/{s['prompts']}." if hf else "."),
              "", "| goal | target | measured | met |", "|---|---:|---:|:---:|"]
    for g in goals.values():
        lines.append(f"| {g['goal']} | {g['target']} | {g['measured']} | {'yes' if g['met'] else ('-' if g['met'] is None else 'no')} |")
    if len(res["budgets"]) > 1:
        lines += ["", "| B | tau | tokens/s | vs ar_step | vs HF | vs HF prompt lookup | draft / verify ms | host share |",
                  "|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in res["budgets"]:
            st = r["stages_ms"]
            lines.append(f"| {r['budget']} | {r['tau']:.2f} | {r['tokens_per_s']:.1f} | {r['speedup_vs_ar']:.2f}x | "
                         f"{fmt(r['speedup_vs_hf'], '.2f', 'x')} | {fmt(r.get('speedup_vs_hf_lookup'), '.2f', 'x')} | "
                         f"{st['draft']['median']:.2f} / {st['verify']['median']:.2f} | {100 * r['host_share']:.1f} % |")
    lines += ["", "tokens/s = new tokens / generate() wall time (prefill + decode), summed over prompts; decode "
              "tokens/s excludes prefill (HF: time to the first new token). Host share = (decode time - time inside "
              "the draft and verify graph calls) / decode time.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from jetspec_compile.runtime import load
    from jetspec_compile.runtime.profile import format_table, parse_budgets, profile_artifact
    from jetspec_compile.runtime.prompts import read_prompts

    art = ensure_artifact(args)
    out = Path(args.out) if args.out else ROOT / "runs" / f"bench-demo-{art.resolve().name}"
    engine = load(art, args.device)
    budget = engine.budget
    if args.prompts:
        prompts, names = read_prompts(args.prompts, args.num_prompts), None
        source = str(args.prompts)
    else:
        make = repeat_prompts if args.prompt_set == "repeat" else heldout_prompts
        prompts, names = make(engine, args.num_prompts, args.prompt_tokens)
        source = (f"{args.prompt_set} prompts from the first {args.prompt_tokens} tokens of held-out stdlib files: "
                  f"{', '.join(names)}")
    out.mkdir(parents=True, exist_ok=True)
    if names is not None:  # the same prompts as text, for `jetspec-compile profile --prompts`
        with open(out / "prompts.jsonl", "w") as f:
            for name, p in zip(names, prompts):
                f.write(json.dumps({"prompt": engine.decode(p), "source": name}) + "\n")
    del engine
    budgets = sorted({budget} | set(parse_budgets(args.budgets) if args.budgets else []))
    res = profile_artifact(art, prompts, budgets, max_new_tokens=args.max_new_tokens, reps=args.reps,
                           out=out / "profile", hf=not args.no_hf, device=args.device, threads=args.threads,
                           prompts_source=source, log=lambda s: print(s, flush=True))
    print(format_table(res))
    row = next(r for r in res["budgets"] if r["budget"] == budget)
    goals = {
        "speedup_vs_ar": {"goal": "speculative vs ar_step (same artifact)", "target": f">= {GOALS['speedup_vs_ar']:.0f}x",
                          "measured": f"{row['speedup_vs_ar']:.2f}x", "value": row["speedup_vs_ar"],
                          "met": row["speedup_vs_ar"] >= GOALS["speedup_vs_ar"]},
        "speedup_vs_hf": {"goal": "speculative vs HF generate()", "target": f">= {GOALS['speedup_vs_hf']:.0f}x",
                          "measured": fmt(row["speedup_vs_hf"], ".2f", "x"), "value": row["speedup_vs_hf"],
                          "met": None if row["speedup_vs_hf"] is None else row["speedup_vs_hf"] >= GOALS["speedup_vs_hf"]},
        "host_share": {"goal": f"host overhead share of a round at B={budget}",
                       "target": f"<= {100 * GOALS['host_share']:.0f} %",
                       "measured": f"{100 * row['host_share']:.1f} %", "value": row["host_share"],
                       "met": row["host_share"] <= GOALS["host_share"]},
    }
    out.mkdir(parents=True, exist_ok=True)
    from jetspec_compile.runtime.profile import json_safe

    bench = {"artifact": str(art), "budget": budget, "prompt_files": names, "goals": goals, "profile": res}
    (out / "bench.json").write_text(json.dumps(json_safe(bench), indent=2) + "\n")
    md = markdown(res, goals, budget)
    (out / "bench.md").write_text(md)
    print()
    print(md)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
