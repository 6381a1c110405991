"""The summary writer: works on recorded results alone (no torch, no GPU)."""

from __future__ import annotations

import math
from pathlib import Path

from .common import BAD, KIT_VERSION, STATUSES, _rnd, write_json
from .steps import STEP_BY_NAME, STEPS


def _fmt(x, nd=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "-"
        if x != 0 and (abs(x) >= 1e4 or abs(x) < 10 ** (-nd)):
            return f"{x:.2e}"
        return f"{x:.{nd}f}"
    return str(x)


def headline(rec: dict) -> str:
    """A one-line digest of a step's figures for the summary table."""
    f = rec.get("figures") or {}
    n = rec.get("name")
    if not f:
        return ""
    try:
        if n == "env":
            return (f"{f.get('gpu') or 'no GPU'}, driver {f.get('driver') or '-'}, torch {f.get('torch')}, "
                    f"CUDA {f.get('cuda') or '-'}, Triton {f.get('triton')}, transformers {f.get('transformers')}; "
                    f"API probes {f.get('api_probes', 0) - len(f.get('api_missing') or [])}/{f.get('api_probes', 0)} ok")
        if n == "kernel_tests":
            return (f"{f.get('passed', 0)} passed, {f.get('failures', 0)} failed, {f.get('errors', 0)} errors, "
                    f"{f.get('skipped', 0)} skipped")
        if n == "kernel_cases":
            errs = ", ".join(f"{k[8:]} {_fmt(v, 4)}" for k, v in f.items() if k.startswith("max_err_"))
            return (f"{f.get('cases', 0) - f.get('failed', 0)}/{f.get('cases', 0)} cases ok ({f.get('path')}); "
                    f"B {f.get('B')}, committed {f.get('committed')}, GQA {f.get('gqa')}; max err {errs}")
        if n == "lossless":
            return (f"fp32 {f.get('fp32_runs', 0) - f.get('fp32_mismatches', 0)}/{f.get('fp32_runs', 0)} runs "
                    f"token-exact; bf16 {f.get('bf16_mismatches', 0)}/{f.get('bf16_runs', 0)} differ (report only)")
        if n == "bench":
            return (f"Triton vs SDPA speedup geomean {_fmt(f.get('geomean_speedup_vs_sdpa'), 2)}x "
                    f"(min {_fmt(f.get('min_speedup_vs_sdpa'), 2)}, max {_fmt(f.get('max_speedup_vs_sdpa'), 2)}); "
                    f"{len(f.get('rows') or [])} shapes, {f.get('dtype')}")
        if n == "aoti_compile":
            p = f.get("packages") or {}
            return ", ".join(f"{k} {v['compile_s']:.0f}s" for k, v in p.items())
        if n == "aoti_export":
            g = f.get("graphs") or {}
            return (f"export {_fmt(f.get('export_s'), 0)}s: " + ", ".join(f"{k} {v['compile_s']:.0f}s" for k, v in g.items()))
        if n == "aoti_latency":
            parts = [f"B={r['budget']} {_fmt(r.get('ratio_compiled'), 2)}x" for r in f.get("rows") or []
                     if r["graph"] == "verify"]
            eq = f.get("equality") or []
            ok = sum(1 for e in eq if e.get("ok"))
            return f"verify/ar_step (compiled): {', '.join(parts) or '-'}; compiled==eager {ok}/{len(eq)}"
        if n == "aoti_artifact":
            eq = f.get("equality") or []
            ok = sum(1 for e in eq if e.get("ok"))
            same = f.get("generate_equal") or {}
            return (f"graphs compiled==eager {ok}/{len(eq)}; generate spec==ar {_fmt(same.get('spec_vs_ar'))}, "
                    f"compiled==eager {_fmt(same.get('compiled_vs_eager'))}")
        if n == "tensorrt":
            return f"torch_tensorrt {f.get('torch_tensorrt')}, tokens equal {_fmt(f.get('tokens_equal'))}"
    except (KeyError, TypeError, ValueError):
        return "(figures unreadable)"
    return ""


def build_summary(results: dict) -> dict:
    """The summary of recorded results: overall verdict, counts, environment, per-step status and figures."""
    kit = results.get("kit", {})
    steps = results.get("steps", {})
    order = [s.name for s in STEPS if s.name in steps] + [n for n in steps if n not in STEP_BY_NAME]
    rows = []
    for name in order:
        r = steps[name]
        status = r.get("status") if r.get("status") in STATUSES else "error"
        rows.append(dict(name=name, title=r.get("title") or getattr(STEP_BY_NAME.get(name), "title", name),
                         status=status, seconds=_rnd(r.get("seconds", r.get("step_s"))), reason=r.get("reason"),
                         headline=headline(r), figures=r.get("figures") or {},
                         concurrent_steps=r.get("concurrent_steps") or []))
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in STATUSES}
    env = (steps.get("env") or {}).get("figures") or {}
    info = ((steps.get("env") or {}).get("details") or {}).get("info") or {}
    expected = kit.get("steps") or [r["name"] for r in rows]
    missing = [n for n in expected if n not in steps]
    if any(counts[s] for s in BAD):
        overall = "fail"
    elif missing:
        overall = "incomplete"
    else:
        overall = "pass"
    return dict(
        kit_version=kit.get("version", KIT_VERSION), dry_run=bool(kit.get("dry_run")), started=kit.get("started"),
        finished=kit.get("finished"), wall_s=_rnd(kit.get("wall_s"), 1), overall=overall, counts=counts,
        missing_steps=missing,
        environment=dict(gpu=env.get("gpu"), driver=env.get("driver"), torch=env.get("torch"), cuda=env.get("cuda"),
                         triton=env.get("triton"), transformers=env.get("transformers"), python=env.get("python"),
                         capability=info.get("capability"), gpu_memory_gib=info.get("gpu_memory_gib"),
                         commit=(info.get("checkout") or {}).get("commit")),
        steps=rows,
    )


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
    return out


def _md_overview(summary: dict) -> list[str]:
    e = summary["environment"]
    where = ("DRY RUN on the CPU (tiny shapes; no CUDA was used)" if summary["dry_run"]
             else (e.get("gpu") or "no GPU detected"))
    c = summary["counts"]
    lines = [f"# JetSpec GPU check: {where}", "",
             f"Overall **{summary['overall'].upper()}**: " + ", ".join(f"{c[s]} {s}" for s in STATUSES if c[s])
             + f". Started {summary.get('started') or '-'}, {_fmt(summary.get('wall_s'), 0)} s in all.", ""]
    if summary.get("missing_steps"):
        lines += [f"Steps without a result: {', '.join(summary['missing_steps'])}.", ""]
    lines += _md_table(["GPU", "driver", "torch", "CUDA", "Triton", "transformers", "Python", "commit"],
                       [[e.get("gpu") or "-", e.get("driver") or "-", e.get("torch") or "-", e.get("cuda") or "-",
                         e.get("triton") or "-", e.get("transformers") or "-", e.get("python") or "-",
                         (e.get("commit") or "-")[:10]]])
    lines += [""]
    lines += _md_table(["step", "status", "time (s)", "figures / reason"],
                       [[f"`{r['name']}`", r["status"].upper(), _fmt(r["seconds"], 1),
                         " — ".join(x for x in (r["headline"], r.get("reason")) if x) or "-"]
                        for r in summary["steps"]])
    return lines


def _md_bench(summary: dict, by: dict) -> list[str]:
    b = by.get("bench", {}).get("figures") or {}
    if not b.get("rows"):
        return []
    lines = ["", f"## Tree-attention kernel vs SDPA ({b.get('device')}, {b.get('dtype')}, heads {b.get('heads')})", ""]
    if summary["dry_run"]:
        lines += ["Dry run: the 'Triton' column is the op's CPU reference; the figures only check the plumbing.", ""]
    return lines + _md_table(["B", "committed", "Triton ms", "Triton TFLOP/s", "SDPA ms", "SDPA TFLOP/s",
                              "SDPA-GQA ms", "speedup vs SDPA", "max abs err"],
                             [[r["B"], r["committed"], _fmt(r["triton_ms"], 4), _fmt(r["triton_tflops"], 1),
                               _fmt(r["sdpa_ms"], 4), _fmt(r["sdpa_tflops"], 1), _fmt(r.get("sdpa_gqa_ms"), 4),
                               _fmt(r["speedup_vs_sdpa"], 2), _fmt(r["triton_max_abs_err"], 4)] for r in b["rows"]])


def _md_latency(by: dict) -> list[str]:
    a = by.get("aoti_latency", {}).get("figures") or {}
    if not a.get("rows"):
        return []
    lines = ["", f"## Verify vs single-step latency ({a.get('model')}, {a.get('layers')} layers, {a.get('dtype')}, "
                 f"committed {a.get('committed')}, {a.get('timing')} of {a.get('reps')})", ""]
    return lines + _md_table(["graph", "B", "compiled ms", "eager ms", "compiled ratio to ar_step", "eager ratio"],
                             [[r["graph"], r["budget"], _fmt(r.get("compiled_ms"), 3), _fmt(r.get("eager_ms"), 3),
                               _fmt(r.get("ratio_compiled"), 2), _fmt(r.get("ratio_eager"), 2)] for r in a["rows"]])


def _md_equality(by: dict) -> list[str]:
    eq_rows = []
    for step in ("aoti_latency", "aoti_artifact"):
        for q in (by.get(step, {}).get("figures") or {}).get("equality") or []:
            tok = q.get("tokens_equal", q.get("token_equal", q.get("tree_equal")))
            acc = (f"{q.get('accepted_compiled')}/{q.get('accepted_eager')}" if "accepted_compiled" in q else "-")
            ok = ("yes (near tie)" if q.get("near_tie") else "yes") if q.get("ok") else "NO"
            eq_rows.append([step, q["graph"], q.get("budget", "-"), ok, _fmt(tok), acc, _fmt(q.get("rows_rel_max"), 4),
                            _fmt(q.get("path_margin", q.get("eager_top2_margin")), 3)])
    if not eq_rows:
        return []
    lines = ["", "## Compiled (AOTInductor) vs eager, same inputs", ""]
    lines += ["Token choices must agree except where the eager target's own top-1 / top-2 logit gap is within "
              "2 ulps of the dtype (a near tie); K/V rows must agree within a relative 5e-2 (bf16) / 1e-3 (fp32).",
              ""]
    return lines + _md_table(["step", "graph", "B", "ok", "tokens equal", "accepted (compiled/eager)",
                              "max rel diff K/V rows", "smallest eager logit gap"], eq_rows)


def _md_lossless(by: dict) -> list[str]:
    ll = by.get("lossless", {}).get("figures") or {}
    if not ll.get("results"):
        return []
    lines = ["", f"## Lossless greedy decoding ({ll.get('device')}, tiny models)", ""]
    return lines + _md_table(["model", "dtype", "runs", "differ from HF greedy", "oracle-draft tau"],
                             [[r["model"], r["dtype"], r["runs"], r["mismatches"], _fmt(r.get("tau_oracle"), 2)]
                              for r in ll["results"]])


def _md_export(by: dict) -> list[str]:
    ae = by.get("aoti_export", {}).get("figures") or {}
    if not ae.get("graphs"):
        return []
    lines = ["", f"## export_model (aoti) compile times ({ae.get('model')}, B={ae.get('budget')}, "
                 f"S={ae.get('seq_len')})", ""]
    return lines + _md_table(["graph", "capture s", "compile s", "MiB", "jetspec ops"],
                             [[k, _fmt(v.get("capture_s"), 1), _fmt(v.get("compile_s"), 1), _fmt(v.get("mib"), 1),
                               v.get("jetspec_ops")] for k, v in ae["graphs"].items()])


def render_markdown(summary: dict) -> str:
    by = {r["name"]: r for r in summary["steps"]}
    lines = (_md_overview(summary) + _md_bench(summary, by) + _md_latency(by) + _md_equality(by)
             + _md_lossless(by) + _md_export(by))
    return "\n".join(lines) + "\n"


def write_summary(results: dict, out_dir) -> tuple[Path, Path]:
    """Write summary.json and summary.md for `results` (the content of results.json) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = build_summary(results)
    write_json(out / "summary.json", summary)
    md = out / "summary.md"
    md.write_text(render_markdown(summary))
    return out / "summary.json", md


GPU_PATHS = [
    ("Triton tree-attention kernel on CUDA (pytest -m gpu + fp16/bf16 case grid)", ("kernel_tests", "kernel_cases")),
    ("Kernel benchmark at Qwen3-8B head shapes (Triton vs SDPA)", ("bench",)),
    ("AOTInductor export on CUDA (export_model, Qwen3-8B-shaped, few layers)", ("aoti_export", "aoti_compile")),
    ("Verify vs single-step latency ratio (B = 16 / 64 / 256)", ("aoti_latency",)),
    ("Compiled vs eager equality on CUDA (accepted tokens, K/V rows)", ("aoti_latency", "aoti_artifact")),
    ("Lossless greedy speculative decoding on CUDA (tiny models)", ("lossless",)),
    ("TensorRT backend", ("tensorrt",)),
]


def render_readme_status(summary: dict | None = None) -> str:
    """The README "GPU status" section: for each GPU path, whether it ran on a real GPU, when, and the figures."""
    lines = ["## GPU status", ""]
    if summary is None or summary.get("dry_run"):
        lines += ["No GPU has been lent to this project yet: every GPU path below is **not yet run on a GPU**. "
                  "They are tested on the CPU (Triton interpreter, AOTInductor on CPU, `scripts/gpu_check.sh "
                  "--dry-run`). The kit `scripts/gpu_check.sh OUTDIR` runs all of them in one command when a GPU "
                  "machine is lent (time budget 460 s, sized for an H200 box; its real duration is not measured "
                  "yet) and writes `summary.md` / `summary.json`, from which `python scripts/gpu_check readme "
                  "OUTDIR` prints this section with the figures.", ""]
        lines += _md_table(["GPU path", "run on a GPU", "when", "figures"],
                           [[p, "not yet run on a GPU", "-", "-"] for p, _ in GPU_PATHS])
        return "\n".join(lines) + "\n"
    e = summary["environment"]
    by = {r["name"]: r for r in summary["steps"]}
    when = (summary.get("started") or "-")[:10]
    lines += [f"Last GPU run: {when} on {e.get('gpu')} (driver {e.get('driver')}, torch {e.get('torch')}, CUDA "
              f"{e.get('cuda')}, Triton {e.get('triton')}, transformers {e.get('transformers')}), overall "
              f"{summary['overall']}, by `scripts/gpu_check.sh`.", ""]
    rows = []
    for path, steps in GPU_PATHS:
        got = [by[s] for s in steps if s in by]
        if not got:
            rows.append([path, "not yet run on a GPU", "-", "-"])
            continue
        st = "/".join(sorted({r["status"] for r in got}))
        ran = "yes" if any(r["status"] in ("pass", "fail") for r in got) else "no"
        figs = "; ".join(f"{r['name']}: {r['headline'] or r.get('reason') or '-'}" for r in got)
        rows.append([path, f"{ran} ({st})", when, figs])
    lines += _md_table(["GPU path", "run on a GPU", "when", "figures"], rows)
    return "\n".join(lines) + "\n"
