"""The `profile` subcommand: arguments, and the printed table after the run."""

from __future__ import annotations

import argparse
from pathlib import Path

from jetspec_compile.errors import JetSpecError

DEFAULT_BUDGETS = (8, 16, 32, 64, 128)


def register(sub) -> None:
    from jetspec_compile.validate import INT32_MAX, THREADS_MAX, at_least, device, out_folder, utf8_text

    p = sub.add_parser(
        "profile", help="latency profile over tree budgets: tau, tokens/s, per-stage times, speedups",
        description="Profile an artifact over tree budgets in one run: tau, tokens/s, per-stage latency "
                    "(median/p90), host-overhead share, speedup over the artifact's ar_step decoding and over "
                    "Hugging Face generate() and prompt lookup; an artifact with a lookup chain runs every budget with the "
                    "chain on and off. Budgets other than the artifact's own are compiled (draft + verify "
                    "graphs, cached) into OUT/sweep/b<B>/. Writes profile.json, profile.csv and PNG plots.")
    p.add_argument("artifact", type=utf8_text)
    p.add_argument("--prompts", required=True, type=utf8_text, help="JSONL file with a 'prompt' string per line")
    p.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)),
                   help="comma-separated tree budgets (the artifact's own budget is always included)")
    p.add_argument("--max-new-tokens", type=at_least(1, INT32_MAX), default=128)
    p.add_argument("--limit", type=at_least(1, INT32_MAX), default=None, help="use the first N prompts")
    p.add_argument("--reps", type=at_least(1), default=3, help="repetitions (medians are reported)")
    p.add_argument("--out", default=None, type=out_folder, help="output folder (default runs/profile-<artifact name>/)")
    p.add_argument("--sweep-dir", default=None, type=out_folder,
                   help="where the sweep's compiled graphs are cached (default OUT/sweep; share it across --out)")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face generate() baseline")
    p.add_argument("--autotune", action="store_true",
                   help="record the budget with the best tokens/s in the artifact's manifest (field autotune)")
    p.add_argument("--device", default=None, type=device)
    p.add_argument("--threads", type=at_least(1, THREADS_MAX), default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=run_profile)


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = sorted({int(b) for b in str(text).split(",") if b.strip()})
    except ValueError:
        raise JetSpecError(f"--budgets {text!r}: expected comma-separated integers, e.g. 8,16,32") from None
    if not budgets or budgets[0] < 1:
        raise JetSpecError(f"--budgets {text!r}: expected integers >= 1")
    return budgets


def run_profile(args: argparse.Namespace) -> int:
    from ..prompts import read_prompts
    from .report import format_table
    from .run import profile_artifact

    if args.reps < 1:
        raise JetSpecError(f"--reps is {args.reps}; expected >= 1")
    prompts = read_prompts(args.prompts, args.limit)
    out = Path(args.out) if args.out else Path("runs") / f"profile-{Path(args.artifact).resolve().name}"
    result = profile_artifact(args.artifact, prompts, parse_budgets(args.budgets), max_new_tokens=args.max_new_tokens,
                              reps=args.reps, out=out, hf=not args.no_hf, autotune=args.autotune,
                              device=args.device, threads=args.threads, prompts_source=str(args.prompts),
                              sweep_dir=args.sweep_dir,
                              log=lambda s: print(s, flush=True))
    print(format_table(result))
    print(f"wrote {', '.join(result['outputs'].values())}")
    return 0
