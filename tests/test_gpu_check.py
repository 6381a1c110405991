"""Stage 7: the GPU validation kit (scripts/gpu_check.sh + the scripts/gpu_check/ package), checked on the CPU.

* the summary writer on a recorded example (tests/data/gpu_check_example/results.json, a CPU dry run);
* a bare checkout: the shell entry point on a copy of the sources elsewhere, from PYTHONPATH alone
  (`python -S`, so no .pth file and no editable-install finder is used): `jetspec_compile.export` /
  `.runtime` resolve to the copy; the step runner's subprocesses, results and timeouts;
* a dry run of the steps in this process (tiny shapes on the CPU, no CUDA, no TensorRT);
* (slow) the whole kit as a dry run, AOTInductor steps included.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "data" / "gpu_check_example" / "results.json"


def _load_kit():
    folder = ROOT / "scripts" / "gpu_check"
    spec = importlib.util.spec_from_file_location("gpu_check", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # its modules import each other through the package
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def kit():
    return _load_kit()


def _copy_checkout(dest: Path) -> Path:
    """The sources a GPU machine receives (working tree), without any installation, at another path."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "demo", ".pytest_cache")
    for sub in ("jetspec_compile", "export", "runtime", "scripts"):
        shutil.copytree(ROOT / sub, dest / sub, ignore=ignore)
    (dest / "tests").mkdir()
    for f in ("tree_attention_interp.py", "helpers.py"):
        shutil.copy2(ROOT / "tests" / f, dest / "tests" / f)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _bare_env(extra_path: str = "") -> dict:
    """Environment for `python -S`: site-packages on PYTHONPATH, so their .pth files (the editable finder) never run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "TORCHINDUCTOR", "TRITON"))}
    # the site-packages folders this Python sees (a venv may chain another one through a .pth line)
    sites = [p for p in sys.path if p.rstrip("/").endswith("-packages") and Path(p).is_dir()]
    sites = sites or [sysconfig.get_paths()["purelib"]]
    env["PYTHONPATH"] = os.pathsep.join([extra_path] * bool(extra_path) + sites)
    env["OMP_NUM_THREADS"] = "1"
    return env


# ---- the summary writer ----------------------------------------------------------------------------


def test_summary_from_recorded_example(kit, tmp_path):
    results = json.loads(EXAMPLE.read_text())
    js, md = kit.write_summary(results, tmp_path)
    summary = json.loads(js.read_text())
    # golden files next to the recording (regenerate with: python scripts/gpu_check summarize <that folder>)
    assert md.read_text() == (EXAMPLE.parent / "summary.md").read_text()
    assert summary == json.loads((EXAMPLE.parent / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["overall"] == "pass"
    names = [s["name"] for s in summary["steps"]]
    assert names == [s.name for s in kit.STEPS]  # every step recorded, in the kit's order
    assert sum(summary["counts"].values()) == len(names)
    for s in summary["steps"]:
        assert s["status"] in kit.STATUSES and isinstance(s["headline"], str)
    text = md.read_text()
    assert text.startswith("# JetSpec GPU check: DRY RUN")
    assert "| step | status | time (s) | figures / reason |" in text
    for n in names:
        assert f"| `{n}` |" in text
    for section in ("## Tree-attention kernel vs SDPA", "## Verify vs single-step latency",
                    "## Compiled (AOTInductor) vs eager", "## Lossless greedy decoding", "## export_model (aoti)"):
        assert section in text
    # every Markdown table row has as many cells as its header
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            width = lines[i - 1].count(" | ")
            j = i + 1
            while j < len(lines) and lines[j].startswith("| "):
                assert lines[j].replace("\\|", "").count(" | ") == width, lines[j]
                j += 1
    # the CLI rebuilds the same files from results.json alone
    out = tmp_path / "again"
    out.mkdir()
    shutil.copy2(EXAMPLE, out / "results.json")
    assert kit.main(["summarize", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text()) == summary


def test_summary_verdicts(kit):
    base = json.loads(EXAMPLE.read_text())
    res = json.loads(json.dumps(base))
    res["steps"]["bench"].update(status="timeout", reason="timed out after 180s", figures={})
    res["steps"]["lossless"]["figures"] = {"fp32_runs": "garbled"}  # unreadable figures never break the writer
    s = kit.build_summary(res)
    assert s["overall"] == "fail" and s["counts"]["timeout"] == 1
    md = kit.render_markdown(s)
    assert "TIMEOUT" in md and "timed out after 180s" in md
    del res["steps"]["aoti_artifact"]
    res["steps"]["bench"]["status"] = "pass"
    s = kit.build_summary(res)
    assert s["overall"] == "incomplete" and s["missing_steps"] == ["aoti_artifact"]


def test_readme_status_text(kit):
    text = kit.render_readme_status(None)
    assert text.startswith("## GPU status")
    assert text.count("not yet run on a GPU") == len(kit.GPU_PATHS) + 1
    # a dry run is never reported as a GPU run
    dry = kit.build_summary(json.loads(EXAMPLE.read_text()))
    assert kit.render_readme_status(dry) == text
    gpu = json.loads(EXAMPLE.read_text())
    gpu["kit"]["dry_run"] = False
    s = kit.build_summary(gpu)
    filled = kit.render_readme_status(s)
    assert "Last GPU run" in filled and "not yet run" not in filled


# ---- bare checkout -----------------------------------------------------------------------------------


def test_subpackages_resolve_to_this_checkout():
    import jetspec_compile.export
    import jetspec_compile.runtime

    assert Path(jetspec_compile.export.__file__).resolve() == ROOT / "export" / "__init__.py"
    assert Path(jetspec_compile.runtime.__file__).resolve() == ROOT / "runtime" / "__init__.py"


def test_gpu_check_sh_on_a_bare_pythonpath_copy(tmp_path):
    """No install: the shell entry point on a copy of the sources elsewhere, Python started with -S (site-packages
    only on PYTHONPATH, so no .pth file runs and the editable-install finder is absent). The env step imports
    jetspec_compile.export.pipeline and jetspec_compile.runtime.engine in the step's own subprocess and records
    where they came from; also checks the subprocess step runner, results and summary files."""
    copy = _copy_checkout(tmp_path / "checkout")
    out = tmp_path / "out"
    env = _bare_env()
    env["PYTHON"] = f"{sys.executable} -S"
    proc = subprocess.run(["bash", str(copy / "scripts" / "gpu_check.sh"), str(out), "--dry-run", "--steps", "env"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for f in ("results.json", "summary.json", "summary.md", "gpu_check.log", "steps/env.log", "steps/env.json"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"] == "pass" and summary["dry_run"] is True
    env_rec = json.loads((out / "results.json").read_text())["steps"]["env"]
    assert env_rec["status"] == "pass", env_rec.get("reason")
    assert env_rec["figures"]["api_missing"] == []
    where = env_rec["details"]["info"]["checkout"]
    assert Path(where["root"]).resolve() == copy.resolve()
    assert Path(where["export"]).resolve() == (copy / "export" / "__init__.py").resolve()
    assert Path(where["runtime"]).resolve() == (copy / "runtime" / "__init__.py").resolve()
    assert Path(where["pipeline"]).resolve() == (copy / "export" / "pipeline.py").resolve()
    assert Path(where["engine"]).resolve() == (copy / "runtime" / "engine.py").resolve()
    assert where["no_site"] == 1
    assert not any("editable" in f.lower() for f in where["meta_path"]), where["meta_path"]
    assert not list(copy.rglob("__pycache__"))  # the kit leaves the checkout as it found it
    assert "JetSpec GPU check: DRY RUN" in proc.stdout


def test_step_timeout_kills_the_step(kit, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    (out / "steps").mkdir(parents=True)
    work.mkdir()
    ctx = kit.Ctx(out, work, True, {})
    t0 = time.monotonic()
    r = kit.Running("env", ctx, timeout=0.3)  # importing torch alone takes longer
    assert r.wait()
    assert time.monotonic() - t0 < 30
    rec = r.record
    assert rec["status"] == "timeout" and "timed out" in rec["reason"]
    with pytest.raises(ProcessLookupError):
        os.killpg(r.proc.pid, 0)  # the step's whole process group is gone


def test_compare_outputs_near_ties(kit):
    import torch

    rows = torch.randn(2, 2, 1, 4)
    logits = torch.zeros(10)
    logits[3], logits[5] = 6.0, 5.99  # a 0.01 gap at a top logit of 6: within 2 bf16 ulps
    ar = lambda tok: (torch.tensor([tok]), logits, rows, rows)  # noqa: E731
    assert kit.compare_outputs("ar_step", ar(3), ar(3), "bfloat16")["ok"]
    flip = kit.compare_outputs("ar_step", ar(5), ar(3), "bfloat16")
    assert flip["ok"] and flip["near_tie"]
    assert not kit.compare_outputs("ar_step", ar(5), ar(3), "float32")["ok"]  # fp32 has no such excuse
    logits[5] = 5.0
    assert not kit.compare_outputs("ar_step", ar(5), ar(3), "bfloat16")["ok"]  # a clear gap: a real mismatch
    bad_rows = (torch.tensor([3]), logits, rows + 1.0, rows)
    assert not kit.compare_outputs("ar_step", bad_rows, ar(3), "bfloat16")["ok"]

    out = lambda toks, n: (torch.tensor(toks), torch.tensor([n]), rows, rows, rows, rows)  # noqa: E731
    assert kit.compare_outputs("verify", out([1, 2, 3, 3], 2), out([1, 2, 3, 3], 2), "bfloat16", (0.5, 6.0))["ok"]
    c = kit.compare_outputs("verify", out([1, 2, 9, 9], 2), out([1, 2, 3, 3], 2), "bfloat16", (0.5, 6.0))
    assert not c["ok"] and not c["near_tie"]
    c = kit.compare_outputs("verify", out([1, 9, 9, 9], 1), out([1, 2, 3, 3], 2), "bfloat16", (0.02, 6.0))
    assert c["ok"] and c["near_tie"] and c["path_margin"] == 0.02


def test_select_steps(kit):
    assert kit.select_steps(None, None) == [s.name for s in kit.STEPS]
    assert kit.select_steps("bench,env", None) == ["env", "bench"]
    assert "tensorrt" not in kit.select_steps(None, "tensorrt")
    with pytest.raises(SystemExit):
        kit.select_steps("nope", None)


# ---- dry run of the steps ------------------------------------------------------------------------------


def test_dry_run_in_process(kit, tmp_path):
    """The kernel case grid, the lossless check, the TensorRT probe and the benchmark, on the CPU."""
    import signal

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    out = tmp_path / "out"
    try:
        rc = kit.main(["run", "--out", str(out), "--work", str(tmp_path / "work"), "--dry-run", "--in-process",
                       "--steps", "kernel_cases,lossless,tensorrt,bench"])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert rc == 0, (status, [s.get("reason") for s in summary["steps"]])
    assert status == {"kernel_cases": "pass", "lossless": "pass", "tensorrt": "skip", "bench": "pass"}
    steps = json.loads((out / "results.json").read_text())["steps"]
    assert steps["kernel_cases"]["figures"]["cases"] == 16 and steps["kernel_cases"]["figures"]["failed"] == 0
    ll = steps["lossless"]["figures"]
    assert ll["fp32_runs"] > 0 and ll["fp32_mismatches"] == 0
    assert all(r["tau_oracle"] > 1.5 for r in ll["results"] if r["dtype"] == "float32")
    assert "torch_tensorrt" in steps["tensorrt"]["reason"]
    assert (out / "bench_tree_attention.json").is_file() and len(steps["bench"]["figures"]["rows"]) == 4
    assert "## Lossless greedy decoding" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_full_dry_run(tmp_path):
    """Every step as a dry run through the shell entry point (AOTInductor compiles on the CPU: minutes)."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--dry-run"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=3600)
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert proc.returncode == 0, (status, proc.stdout[-4000:])
    assert status["kernel_tests"] == "skip" and status["tensorrt"] == "skip"
    assert all(v == "pass" for k, v in status.items() if k not in ("kernel_tests", "tensorrt")), status
    steps = json.loads((out / "results.json").read_text())["steps"]
    lat = steps["aoti_latency"]["figures"]
    assert {r["budget"] for r in lat["rows"] if r["graph"] == "verify"} == {4, 8}
    assert all(q["ok"] for q in lat["equality"])
    assert all(q["ok"] for q in steps["aoti_artifact"]["figures"]["equality"])
