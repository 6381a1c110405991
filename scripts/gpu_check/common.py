"""Small helpers shared by the kit's modules. No torch at import time: the orchestrator never imports
torch or touches CUDA; steps import it inside their functions."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

KIT_DIR = Path(__file__).resolve().parent  # run as `python scripts/gpu_check ...` (also by the step subprocesses)
ROOT = KIT_DIR.parents[1]  # the checkout
KIT_VERSION = 1
STATUSES = ("pass", "fail", "skip", "error", "timeout")
BAD = ("fail", "error", "timeout")


class StepSkip(Exception):
    """Raised by a step to record status "skip" with a reason."""


def python_cmd() -> list[str]:
    """This interpreter, keeping -S (tests run the kit without site-packages' .pth files)."""
    return [sys.executable] + (["-S"] if sys.flags.no_site else [])


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if hasattr(x, "item") and getattr(x, "numel", lambda: 2)() == 1:
        return _jsonable(x.item())
    return str(x)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def tail(path: Path, n: int = 2500) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-n:]


def last_error(path: Path) -> str:
    """The last exception line of a log (or its last line)."""
    lines = [ln.strip() for ln in tail(path, 20000).splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) or head in ("AssertionError", "SystemExit"):
            return ln[:400]
    return lines[-1][:400] if lines else "(empty log)"


def _rnd(x, nd=4):
    return None if x is None else round(float(x), nd)


class Ctx:
    """What a step gets: where to write, the work folder, dry-run or not, the model options."""

    def __init__(self, out: Path, work: Path, dry_run: bool, opts: dict, log=print):
        self.out = Path(out)
        self.work = Path(work)
        self.dry_run = bool(dry_run)
        self.opts = dict(opts)
        self._log = log
        self.device = "cpu" if dry_run else "cuda"

    def log(self, msg: str) -> None:
        self._log(msg)
        sys.stdout.flush()


def kit_options(args) -> dict:
    return dict(layers=args.layers, seq_len=args.seq_len, budgets=args.budgets, seed=args.seed)


def load_file_module(name: str, path: Path):
    """Import a file that is not on the path (a benchmark script, a test helper of tests/)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tests_module(name: str):
    """A helper module of the checkout's tests/ folder (the kit reuses the test suite's fakes and case
    builders rather than keeping copies)."""
    mod = sys.modules.get(name)
    if mod is None or Path(getattr(mod, "__file__", "")).resolve() != ROOT / "tests" / f"{name}.py":
        mod = load_file_module(name, ROOT / "tests" / f"{name}.py")
    return mod
