"""Step `kernel_tests`: python -m pytest -m gpu tests/test_tree_attention_kernel.py, counted from its junit XML."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..common import ROOT, Ctx, StepSkip, python_cmd


def run(ctx: Ctx) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError as e:
        raise StepSkip(f"pytest cannot be imported in this Python ({e}); kernel_cases runs the same kind "
                       "of checks without it")
    xml = ctx.out / "kernel_tests.junit.xml"
    cmd = python_cmd() + ["-m", "pytest", "-m", "gpu", "tests/test_tree_attention_kernel.py", "-q", "-rA",
                          "-p", "no:cacheprovider", "-o", "addopts=", f"--junitxml={xml}"]
    ctx.log("$ " + " ".join(cmd))
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=float(ctx.opts.get("inner_timeout", 170)))
    ctx.log(r.stdout[-6000:] + r.stderr[-3000:])
    counts, failed = _junit_counts(xml)
    figures = dict(counts, returncode=r.returncode)
    details = dict(failed=failed, junit=xml.name)
    if not xml.is_file():
        return dict(status="error", reason=f"pytest wrote no junit XML (exit {r.returncode})", figures=figures,
                    details=details)
    if counts["tests"] == 0:
        return dict(status="fail", reason="no GPU test was collected", figures=figures, details=details)
    if counts["failures"] or counts["errors"]:
        return dict(status="fail", reason=f"{counts['failures']} failed, {counts['errors']} errors: {failed[:4]}",
                    figures=figures, details=details)
    if counts["passed"] == 0:
        why = "dry run: no CUDA, every GPU test skipped" if ctx.dry_run else "every GPU test skipped"
        return dict(status="skip" if ctx.dry_run else "fail", reason=f"{why} ({counts['skipped']} collected)",
                    figures=figures, details=details)
    if counts["skipped"] and not ctx.dry_run:
        return dict(status="fail", reason=f"{counts['skipped']} GPU tests skipped on a GPU machine",
                    figures=figures, details=details)
    return dict(status="pass", figures=figures, details=details)


def _junit_counts(xml: Path) -> tuple[dict, list[str]]:
    import xml.etree.ElementTree as ET

    counts = dict(tests=0, passed=0, failures=0, errors=0, skipped=0)
    failed: list[str] = []
    if not xml.is_file():
        return counts, failed
    root = ET.parse(xml).getroot()
    for case in root.iter("testcase"):
        counts["tests"] += 1
        tags = {child.tag for child in case}
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if "failure" in tags:
            counts["failures"] += 1
            failed.append(name)
        elif "error" in tags:
            counts["errors"] += 1
            failed.append(name)
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, failed
