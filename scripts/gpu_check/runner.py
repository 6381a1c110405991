"""Running steps: each in its own subprocess with its own timeout (or all in this process), within the
kit's time budget; results.json is rewritten after every step."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .common import KIT_DIR, KIT_VERSION, ROOT, Ctx, StepSkip, kit_options, now_iso, python_cmd, tail, write_json
from .steps import STEP_BY_NAME, STEPS, step_function
from .summary import headline, write_summary


def run_step_here(name: str, ctx: Ctx) -> dict:
    """Run one step in this process; never raises. Returns the step's record (without timing by the caller)."""
    t0 = time.perf_counter()
    try:
        if not ctx.dry_run:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            import torch

            torch.set_num_threads(1)  # two OpenMP threads on a 2-core box give random latency spikes
        rec = step_function(name)(ctx)
    except StepSkip as e:
        rec = dict(status="skip", reason=str(e), figures={}, details={})
    except Exception as e:  # noqa: BLE001
        ctx.log(traceback.format_exc())
        rec = dict(status="error", reason=f"{type(e).__name__}: {e}"[:600], figures={},
                   details=dict(traceback=traceback.format_exc()[-4000:]))
    rec = dict(name=name, title=STEP_BY_NAME[name].title, **rec)
    rec["step_s"] = time.perf_counter() - t0
    return rec


def _step_env(ctx: Ctx, name: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and Path(p).resolve() != ROOT])
    # Own Inductor caches: aoti_export compiles the same verify / ar_step graphs as the aoti_compile workers at
    # the same time, and two processes compiling one graph into one cache folder overwrite each other's files
    # (seen: an empty JSON inside a .pt2). The workers compile distinct graphs, so they share one folder.
    env["TORCHINDUCTOR_CACHE_DIR"] = str(ctx.work / ("inductor-export" if name == "aoti_export" else "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(ctx.work / "triton-cache"))
    if name in ("aoti_compile", "aoti_export"):
        # up to five compiling processes at once: a few Inductor compile workers each, not one per core each
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, min(4, (os.cpu_count() or 1) // 4))))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TRITON_INTERPRET", None)
    if ctx.dry_run:
        env["OMP_NUM_THREADS"] = "1"
        if name == "kernel_cases":
            env["TRITON_INTERPRET"] = "1"  # the Triton kernel itself, on CPU tensors
    return env


class Running:
    """A step running in a subprocess."""

    def __init__(self, name: str, ctx: Ctx, timeout: float):
        self.name, self.ctx, self.timeout = name, ctx, timeout
        self.log = ctx.out / "steps" / f"{name}.log"
        self.res = ctx.out / "steps" / f"{name}.json"
        self.res.unlink(missing_ok=True)
        opts = dict(ctx.opts, inner_timeout=max(10, int(timeout) - 15))
        cmd = python_cmd() + [str(KIT_DIR), "step", name, "--out", str(ctx.out),
                              "--work", str(ctx.work), "--options", json.dumps(opts)]
        if ctx.dry_run:
            cmd.append("--dry-run")
        self.fh = open(self.log, "w")
        self.t0 = time.monotonic()
        self.started = now_iso()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_step_env(ctx, name), stdout=self.fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.record: dict | None = None
        _RUNNING.append(self)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def poll(self) -> bool:
        """True once finished (record set)."""
        if self.record is not None:
            return True
        rc = self.proc.poll()
        if rc is None and self.elapsed() < self.timeout:
            return False
        timed_out = rc is None
        if timed_out:
            self._kill()
            rc = self.proc.wait()
        self.fh.close()
        rec = None
        if self.res.is_file():
            try:
                rec = json.loads(self.res.read_text())
            except json.JSONDecodeError:
                rec = None
        if rec is None:
            spec = STEP_BY_NAME[self.name]
            status = "timeout" if timed_out else "error"
            why = (f"timed out after {self.timeout:.0f}s" if timed_out
                   else f"step process exited {rc} without a result")
            rec = dict(name=self.name, title=spec.title, status=status, reason=why, figures={},
                       details=dict(log_tail=tail(self.log)))
        rec["returncode"] = rc
        rec["seconds"] = self.elapsed()
        rec["started"] = self.started
        rec["log"] = f"steps/{self.name}.log"
        self.record = rec
        return True

    def kill_now(self) -> None:
        if self.record is None and self.proc.poll() is None:
            self._kill()

    def _kill(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                self.proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait(self, until: float | None = None) -> bool:
        while not self.poll():
            for other in _RUNNING:  # background steps past their own timeout are stopped meanwhile
                other.poll()
            if until is not None and time.monotonic() >= until:
                return False
            time.sleep(0.5)
        return True


_RUNNING: list[Running] = []


class KitStopped(Exception):
    pass


def _on_signal(signum, frame):
    raise KitStopped(f"stopped by signal {signum}")


def select_steps(steps: str | None, skip: str | None) -> list[str]:
    names = [s.name for s in STEPS]
    chosen = names if not steps else [n.strip() for n in steps.split(",") if n.strip()]
    dropped = set() if not skip else {n.strip() for n in skip.split(",") if n.strip()}
    unknown = [n for n in chosen + sorted(dropped) if n not in STEP_BY_NAME]
    if unknown:
        raise SystemExit(f"gpu_check: unknown step(s) {unknown}; steps are {names}")
    return [n for n in names if n in chosen and n not in dropped]


class Session:
    """One run of the kit: where it writes, its log, its deadline and the results recorded so far."""

    def __init__(self, args):
        self.t0 = time.monotonic()
        self.args = args
        self.out = Path(args.out).resolve()
        (self.out / "steps").mkdir(parents=True, exist_ok=True)
        self.own_work = args.work is None
        self.work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="jetspec-gpu-check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.opts = kit_options(args)
        self.opts["in_process"] = bool(args.in_process)
        self.log_fh = open(self.out / "gpu_check.log", "a")
        self.ctx = Ctx(self.out, self.work, args.dry_run, self.opts, log=self.log)
        self.names = select_steps(args.steps, args.skip)
        self.budget = args.budget_s if args.budget_s else (3600 if args.dry_run else 460)
        self.deadline = self.t0 + self.budget
        self.results = dict(kit=dict(version=KIT_VERSION, argv=sys.argv[1:], dry_run=args.dry_run, started=now_iso(),
                                     budget_s=self.budget, steps=self.names, root=str(ROOT), out=str(self.out),
                                     work=str(self.work), mode="in-process" if args.in_process else "subprocess",
                                     python=sys.executable),
                            steps={})

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.log_fh.write(line + "\n")
        self.log_fh.flush()

    def limit(self, name: str) -> float:
        """A step's timeout, clipped to the time left in the kit's budget."""
        spec = STEP_BY_NAME[name]
        t = spec.dry_timeout_s if self.args.dry_run else spec.timeout_s
        return max(5.0, min(t, self.deadline - time.monotonic()))

    def record(self, rec: dict) -> None:
        self.results["steps"][rec["name"]] = rec
        write_json(self.out / "results.json", self.results)
        self.log(f"{rec['name']}: {rec['status'].upper()} ({rec.get('seconds', rec.get('step_s', 0)):.1f}s)"
                 + (f" - {rec['reason']}" if rec.get("reason") else "") + f"  {headline(rec)}")

    def skip(self, name: str, reason: str) -> None:
        self.record(dict(name=name, title=STEP_BY_NAME[name].title, status="skip", seconds=0.0, figures={},
                         details={}, reason=reason))

    def run_in_process(self) -> None:
        """Every step in this process, one after the other, without timeouts (debugging, tests)."""
        out, work, args = self.out, self.work, self.args
        for name in self.names:
            if time.monotonic() >= self.deadline:
                self.skip(name, "kit time budget used up")
                continue
            t0 = time.monotonic()
            with open(out / "steps" / f"{name}.log", "w") as fh:
                sctx = Ctx(out, work, args.dry_run, self.opts, log=lambda m, fh=fh: (fh.write(m + "\n"), fh.flush()))
                with contextlib.redirect_stdout(fh):
                    rec = run_step_here(name, sctx)
            rec.update(seconds=time.monotonic() - t0, log=f"steps/{name}.log", started=None)
            write_json(out / "steps" / f"{name}.json", rec)
            self.record(rec)

    def run_subprocesses(self) -> None:
        """Background steps first, then the others one at a time, each in its own process."""
        background = {n: Running(n, self.ctx, self.limit(n)) for n in self.names if STEP_BY_NAME[n].background}
        for n in background:
            self.log(f"{n}: started in the background (timeout {background[n].timeout:.0f}s)")
        main = [n for n in self.names if not STEP_BY_NAME[n].background]
        for i, name in enumerate(main):
            self._run_foreground(name, background, rest=sum(STEP_BY_NAME[n].est_s for n in main[i:]))
        for b in background.values():
            b.wait()
            if b.name not in self.results["steps"]:
                self.record(b.record)

    def _run_foreground(self, name: str, background: dict, rest: float) -> None:
        spec = STEP_BY_NAME[name]
        for dep in spec.needs:
            if dep in background and not background[dep].poll():
                self.log(f"{name}: waiting for {dep} ...")
                background[dep].wait()
            if dep in background and background[dep].record["name"] not in self.results["steps"]:
                self.record(background[dep].record)
        if spec.quiet:  # a timing step: let the background compiles end first, while the budget allows
            busy = [b for b in background.values() if not b.poll()]
            if busy:
                self.log(f"{name}: waiting for {[b.name for b in busy]} to finish before timing "
                         f"(at most until {rest}s before the deadline)")
                for b in busy:
                    b.wait(until=self.deadline - rest)
        blocked = [d for d in spec.needs if d in background and background[d].record["status"] != "pass"]
        if blocked:
            self.skip(name, f"needs {blocked[0]}, which ended {background[blocked[0]].record['status']}")
            return
        left = self.deadline - time.monotonic()
        if left < 5 or (not self.args.dry_run and left < min(spec.est_s, 30)):
            self.skip(name, f"kit time budget used up ({left:.0f}s left)")
            return
        concurrent = [b.name for b in background.values() if not b.poll()]
        r = Running(name, self.ctx, self.limit(name))
        r.wait()
        r.record["concurrent_steps"] = concurrent
        self.record(r.record)

    def finish(self) -> None:
        """Stop what still runs, write results.json and the summary, remove the work folder; the exit status."""
        results, out = self.results, self.out
        for r in _RUNNING:
            r.kill_now()
            if r.record is None:
                r.poll()
            if r.name not in results["steps"] and r.record is not None:
                r.record.update(status="timeout" if r.record["status"] == "error" else r.record["status"],
                                reason=r.record.get("reason") or "kit stopped")
                results["steps"][r.name] = r.record
        results["kit"]["finished"] = now_iso()
        results["kit"]["wall_s"] = time.monotonic() - self.t0
        results["steps"] = {n: results["steps"][n] for n in self.names if n in results["steps"]}
        write_json(out / "results.json", results)
        js, md = write_summary(results, out)
        self.log(f"wrote {out / 'results.json'}, {js}, {md}")
        print(md.read_text())
        self.log_fh.close()
        if self.own_work and not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)


def run_all(args) -> int:
    _RUNNING.clear()
    kit = Session(args)
    kit.log(f"gpu_check v{KIT_VERSION}: {'DRY RUN (CPU) ' if args.dry_run else ''}steps {kit.names}; budget "
            f"{kit.budget}s; out {kit.out}; work {kit.work}")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        if args.in_process:
            kit.run_in_process()
        else:
            kit.run_subprocesses()
    except KitStopped as e:
        kit.log(f"{e}: stopping the running steps")
        kit.results["kit"]["stopped"] = str(e)
    finally:
        kit.finish()
    summary = json.loads((kit.out / "summary.json").read_text())
    return 0 if summary["overall"] == "pass" else 1
