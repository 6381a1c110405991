"""The kit's command line: run (default), step and worker (internal), summarize, readme."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import Ctx, write_json
from .models import package_name
from .runner import run_all, run_step_here
from .steps import STEP_BY_NAME
from .steps.aoti_compile import compile_one
from .summary import render_readme_status, write_summary


def _model_options(q) -> None:
    q.add_argument("--layers", type=int, default=None, help="target layers (GPU default 2)")
    q.add_argument("--seq-len", type=int, default=None, help="S, KV cache rows (GPU default 2048)")
    q.add_argument("--budgets", type=int, nargs="+", default=None, help="verify budgets (GPU default 16 64 256)")
    q.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    from . import __doc__ as kit_doc

    p = argparse.ArgumentParser(prog="gpu_check", description=kit_doc.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")

    r = sub.add_parser("run", help="run the kit (default)")
    r.add_argument("--out", required=True, help="output folder (logs, JSON, Markdown)")
    r.add_argument("--dry-run", action="store_true", help="CPU only, tiny shapes: checks the kit's plumbing")
    r.add_argument("--steps", default=None, help="comma-separated subset of steps")
    r.add_argument("--skip", default=None, help="comma-separated steps to leave out")
    r.add_argument("--work", default=None, help="work folder for packages and caches (default: a temp folder, removed)")
    r.add_argument("--keep-work", action="store_true")
    r.add_argument("--budget-s", type=float, default=None, help="overall time budget (GPU default 460 s)")
    r.add_argument("--in-process", action="store_true",
                   help="run the steps in this process, one after the other, without timeouts (debugging, tests)")
    _model_options(r)

    s = sub.add_parser("step", help="(internal) run one step and write steps/<name>.json")
    s.add_argument("name", choices=sorted(STEP_BY_NAME))
    s.add_argument("--out", required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--options", default="{}")

    w = sub.add_parser("worker", help="(internal) compile one AOTI package")
    w.add_argument("--graph", required=True)
    w.add_argument("--budget", type=int, required=True)
    w.add_argument("--result", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--work", required=True)
    w.add_argument("--dry-run", action="store_true")
    w.add_argument("--options", default="{}")

    m = sub.add_parser("summarize", help="rebuild summary.json / summary.md from OUTDIR/results.json")
    m.add_argument("outdir")
    m.add_argument("--results", default=None, help="a results.json elsewhere")

    d = sub.add_parser("readme", help="print the README 'GPU status' section from OUTDIR/summary.json")
    d.add_argument("outdir", nargs="?", default=None)
    return p


def _step(args) -> int:
    ctx = Ctx(args.out, args.work, args.dry_run, json.loads(args.options))
    rec = run_step_here(args.name, ctx)
    write_json(Path(args.out) / "steps" / f"{args.name}.json", rec)
    return 0


def _worker(args) -> int:
    ctx = Ctx(args.out, args.work, args.dry_run, json.loads(args.options))
    if args.dry_run:
        import torch

        torch.set_num_threads(1)
    res = compile_one(ctx, args.graph, args.budget, Path(args.work) / "packages" / package_name(args.graph, args.budget))
    write_json(Path(args.result), res)
    return 0


def _summarize(args) -> int:
    src = Path(args.results) if args.results else Path(args.outdir) / "results.json"
    js, md = write_summary(json.loads(src.read_text()), args.outdir)
    print(md.read_text())
    return 0


def _readme(args) -> int:
    summary = None
    if args.outdir:
        summary = json.loads((Path(args.outdir) / "summary.json").read_text())
    print(render_readme_status(summary), end="")
    return 0


COMMANDS = {"run": run_all, "step": _step, "worker": _worker, "summarize": _summarize, "readme": _readme}


def main(argv=None) -> int:
    p = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run"] + argv
    args = p.parse_args(argv)
    if args.cmd in COMMANDS:
        return COMMANDS[args.cmd](args)
    p.print_help()
    return 2
