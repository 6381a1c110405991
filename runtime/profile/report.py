"""Reporting: the per-budget rows and the profile.json dict, the CSV, the PNG plots and the printed table."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

from .measure import HF_LOOKUP, STAGES, Measurements, Run, machine_info, median, stage_summary
from .sweep import SWEEP_GRAPHS, artifact_key


def _ratios(num: list[Run], den: list[Run], attr: str) -> list[float]:
    return [getattr(a, attr) / getattr(d, attr) if getattr(d, attr) > 0 else float("nan")
            for a, d in zip(num, den)]


def method_summary(runs: list[Run]) -> dict:
    return {"tokens_per_s": median([x.tokens_per_s for x in runs]),
            "decode_tokens_per_s": median([x.decode_tokens_per_s for x in runs]),
            "tokens_per_s_reps": [x.tokens_per_s for x in runs],
            "new_tokens": runs[0].tokens if runs else 0}


def _budget_order(key: str) -> tuple:
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def budget_share(counts: dict) -> dict:
    """Rounds per budget key ("plain": plain steps) as shares of all rounds, budgets ascending, plain last."""
    total = sum(counts.values())
    return {k: counts[k] / total for k in sorted(counts, key=_budget_order)} if total else {}


def budget_row(b: int, m: Measurements, base_budget: int, folder: Path, sweep: dict, lookup: int = 0,
               chain: bool = True) -> dict:
    """One budget's row. ``lookup``: the artifact's chain length L; ``chain``: whether the chain was proposed
    (False: the lookup-off run of the same graphs, whose L chain rows are padding)."""
    runs, ar_runs, hf_runs, pld_runs = m.spec_runs[b], m.ar_runs, m.hf_runs, m.pld_runs
    rounds = sum(x.rounds for x in runs)
    committed = sum(x.committed for x in runs)
    decode_s = sum(x.decode_s for x in runs)
    sw = sweep.get(b)
    return {
        "budget": b,
        "lookup": lookup if chain else 0,
        "lookup_rows": lookup,  # chain rows verified each round (padding when the chain is off)
        "lookup_rounds": sum(x.lookup_rounds for x in runs) if chain and lookup else None,
        "source": "artifact" if b == base_budget else "sweep",
        "graphs": str(folder if b == base_budget else sw.folder),
        **method_summary(runs),
        "tau": committed / rounds if rounds else 0.0,
        "rounds": rounds,
        "speedup_vs_ar": median(_ratios(runs, ar_runs, "tokens_per_s")),
        "speedup_vs_ar_reps": _ratios(runs, ar_runs, "tokens_per_s"),
        "decode_speedup_vs_ar": median(_ratios(runs, ar_runs, "decode_tokens_per_s")),
        "speedup_vs_hf": median(_ratios(runs, hf_runs, "tokens_per_s")) if hf_runs else None,
        "speedup_vs_hf_reps": _ratios(runs, hf_runs, "tokens_per_s") if hf_runs else None,
        "decode_speedup_vs_hf": median(_ratios(runs, hf_runs, "decode_tokens_per_s")) if hf_runs else None,
        "speedup_vs_hf_lookup": median(_ratios(runs, pld_runs, "tokens_per_s")) if pld_runs else None,
        "host_share": median([x.host_share for x in runs]),
        "round_ms": 1e3 * decode_s / rounds if rounds else float("nan"),
        "stages_ms": {k: stage_summary(m.stage_s[b][k]) for k in STAGES},
        "round_stages_ms": stage_summary(m.round_total_s[b]),
        "budget_rounds": {k: m.budget_rounds[b][k] for k in sorted(m.budget_rounds[b], key=_budget_order)},
        "budget_share": budget_share(m.budget_rounds[b]),
        "lossless_prompts": m.match_ar[b],
        "compile_s": round(sw.build_s, 3) if sw else 0.0,
        "compile_cached": sw.cached if sw else None,
        "tree_note": sw.note if sw else None,
    }


def build_result(m: Measurements, *, folder: Path, manifest, dev, base_budget: int, sweep: dict,
                 sweep_root: Path, ids: list[list[int]], reps: int, max_new_tokens: int,
                 prompts_source: str | None, threads: int, hf: bool) -> dict:
    """The profile.json dict (without autotune, total_s and outputs). With a lookup-off run (artifacts with a
    lookup chain), ``lookup_off`` holds its rows, one per budget, beside ``budgets`` (the chain on)."""
    L = manifest.lookup
    rows = [budget_row(b, m, base_budget, folder, sweep, L) for b in m.budgets]
    off = m.lookup_off
    off_rows = [budget_row(b, off, base_budget, folder, sweep, L, chain=False) for b in off.budgets] if off else []
    best = max(rows, key=lambda x: x["tokens_per_s"])
    ar = method_summary(m.ar_runs)
    ar["ms_per_token"] = stage_summary(m.ar_step_s)
    return {
        "artifact": str(folder),
        "artifact_name": manifest.name if manifest.name is not None else folder.name,
        "artifact_key": artifact_key(manifest),
        "backend": manifest.backend,
        "device": str(dev),
        "dtype": manifest.dtype,
        "shapes": manifest.shapes_json,
        "tree": manifest.tree_policy,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(dev),
        "settings": {"budgets": m.budgets, "reps": reps, "max_new_tokens": max_new_tokens, "prompts": len(ids),
                     "prompts_source": prompts_source, "prompt_tokens_mean": sum(map(len, ids)) / len(ids),
                     "threads": threads, "hf": hf,
                     "tokens_per_s": "new tokens / generate wall time (prefill + decode), summed over prompts",
                     "decode_tokens_per_s": "new tokens / decode time (after prefill; HF: after the first new token)",
                     "host_share": "(decode time - time inside draft and verify graph calls) / decode time",
                     "stages": "per-round stage times; median and p90 over all rounds of all reps and prompts",
                     "budget_share": "share of the rounds run at each compiled budget ('plain': plain steps of "
                                     "adaptive decoding), over all reps and prompts"},
        "baselines": {"ar_step": ar,
                      "hf_generate": ({**method_summary(m.hf_runs), "matches_ar_step_prompts": m.hf_match_ar}
                                      if m.hf_runs else None),
                      "hf_prompt_lookup": ({**method_summary(m.pld_runs), "num_tokens": HF_LOOKUP}
                                           if m.pld_runs else None)},
        "budgets": rows,
        "lookup": {"length": L, "off": off_rows or None,
                   "note": ("lookup_off: the same graphs and budgets with no chain proposed (chain_len 0): the L "
                            "chain rows are verified as padding, and the host still runs the n-gram index")
                   if off_rows else None},
        "best": {"budget": best["budget"], "tokens_per_s": best["tokens_per_s"],
                 "speedup_vs_ar": best["speedup_vs_ar"]},
        "sweep": {"folder": str(sweep_root) if sweep else None,
                  "compiled": {str(b): {"capture_s": sw.capture_s, "compile_s": sw.compile_s, "cached": sw.cached,
                                        "build_s": round(sw.build_s, 3)} for b, sw in sweep.items()},
                  "build_s_this_run": round(sum(sw.build_s for sw in sweep.values() if not sw.cached), 3),
                  "graphs_per_budget": list(SWEEP_GRAPHS)},
        "total_s": None,
    }


def autotune_record(result: dict, *, base_budget: int, sweep: dict, max_new_tokens: int, out: Path) -> dict:
    """The manifest's ``autotune`` field: the best measured budget and where its compiled graphs are."""
    best = next(r for r in result["budgets"] if r["budget"] == result["best"]["budget"])
    b = best["budget"]
    return {"budget": b, "tokens_per_s": best["tokens_per_s"], "speedup_vs_ar": best["speedup_vs_ar"],
            "tau": best["tau"], "compiled_budget": base_budget,
            "graphs": "artifact" if b == base_budget else str(sweep[b].folder.resolve()),
            "note": ("the artifact's compiled budget" if b == base_budget else
                     f"re-export with --budget {b} (this artifact's graphs are compiled for B={base_budget})"),
            "measured_at": result["measured_at"], "machine": result["machine"],
            "max_new_tokens": max_new_tokens, "prompts": result["settings"]["prompts"],
            "budgets": result["settings"]["budgets"], "profile": str((out / "profile.json").resolve())}


# ---- outputs -----------------------------------------------------------------------------------------------

def json_safe(x):
    """JSON-safe: NaN / inf become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


CSV_COLUMNS = ["budget", "lookup", "source", "tau", "tokens_per_s", "decode_tokens_per_s", "speedup_vs_ar",
               "decode_speedup_vs_ar", "speedup_vs_hf", "decode_speedup_vs_hf", "host_share", "round_ms",
               *[f"{k}_ms_{s}" for k in STAGES for s in ("median", "p90")], "rounds", "new_tokens",
               "lossless_prompts", "compile_s", "budget_share"]


def _csv_row(row: dict) -> dict:
    flat = dict(row)
    for k in STAGES:
        for s in ("median", "p90"):
            flat[f"{k}_ms_{s}"] = row["stages_ms"][k][s]
    out = {}
    for c in CSV_COLUMNS:
        v = flat.get(c)
        out[c] = "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
    out["budget_share"] = " ".join(f"{k}:{v:.4g}" for k, v in (row.get("budget_share") or {}).items())
    return out


def write_outputs(result: dict, out: Path, plots: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "profile.json"), "csv": str(out / "profile.csv")}
    with open(out / "profile.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in result["budgets"] + (result.get("lookup", {}).get("off") or []):
            w.writerow(_csv_row(row))
    if plots:
        paths.update(write_plots(result, out))
    return paths


def _lookup_off(result: dict) -> list[dict]:
    return (result.get("lookup") or {}).get("off") or []


def _budget_axis(ax, B: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(B)
    ax.set_xticklabels([str(b) for b in B])
    ax.set_xlabel("tree budget B (nodes verified per round)")
    ax.grid(True, alpha=0.3)


def _plot_speedup(ax, result: dict, name: str) -> None:
    rows = result["budgets"]
    B = [r["budget"] for r in rows]
    ax.plot(B, [r["speedup_vs_ar"] for r in rows], "o-", label="vs ar_step (same artifact)")
    off = _lookup_off(result)
    if off:
        ax.plot(B, [r["speedup_vs_ar"] for r in off], "x--", label="lookup off, vs ar_step")
    if result["baselines"].get("hf_generate"):
        ax.plot(B, [r["speedup_vs_hf"] for r in rows], "s-", label="vs HF generate()")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    _budget_axis(ax, B)
    ax.set_ylabel("speedup (tokens/s ratio)")
    ax.set_title(f"speedup vs budget\n{name}", fontsize=9)
    ax.legend()


def _plot_tau(ax, result: dict, name: str) -> None:
    rows = result["budgets"]
    B = [r["budget"] for r in rows]
    off = _lookup_off(result)
    ax.plot(B, [r["tau"] for r in rows], "o-", label=f"lookup L={result['lookup']['length']}" if off else None)
    if off:
        ax.plot(B, [r["tau"] for r in off], "x--", label="lookup off")
        ax.legend()
    _budget_axis(ax, B)
    ax.set_ylabel("tau (tokens committed per round)")
    ax.set_title(f"tau vs budget\n{name}", fontsize=9)


def _plot_stages(ax, result: dict, name: str) -> None:
    rows = result["budgets"]
    x = list(range(len(rows)))
    bottom = [0.0] * len(rows)
    parts = [(k, [r["stages_ms"][k]["mean"] for r in rows]) for k in STAGES]
    parts.append(("loop (rest)", [max(0.0, r["round_ms"] - sum(r["stages_ms"][k]["mean"] for k in STAGES))
                                  for r in rows]))
    for label, vals in parts:
        ax.bar(x, vals, bottom=bottom, label=label)
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax.set_xticks(x)
    ax.set_xticklabels([str(r["budget"]) for r in rows])
    ax.set_xlabel("tree budget B")
    ax.set_ylabel("ms per round (mean)")
    ax.set_title(f"time per round by stage\n{name}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


PLOTS = (("speedup", _plot_speedup), ("tau", _plot_tau), ("stages", _plot_stages))


def write_plots(result: dict, out: Path) -> dict:
    """speedup.png, tau.png and stages.png; returns {"<name>_png": path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = f"{result['artifact_name']} ({result['backend']}, {result['device']})"
    paths = {}
    for stem, plot in PLOTS:
        fig, ax = plt.subplots(figsize=(6, 4))
        plot(ax, result, name)
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=100)
        plt.close(fig)
        paths[f"{stem}_png"] = str(out / f"{stem}.png")
    return paths


def _shares(row: dict) -> str:
    return " ".join(f"{k}:{100 * v:.0f}%" for k, v in (row.get("budget_share") or {}).items()) or "-"


def format_table(result: dict) -> str:
    """A plain-text table of the per-budget results."""
    hf = result["baselines"].get("hf_generate")
    pld = result["baselines"].get("hf_prompt_lookup")
    ar = result["baselines"]["ar_step"]
    lines = [f"{result['artifact_name']}: {result['backend']} on {result['device']}, "
             f"{result['settings']['prompts']} prompts x {result['settings']['max_new_tokens']} new tokens, "
             f"{result['settings']['reps']} reps (medians), {result['settings']['threads']} thread(s)",
             f"ar_step {ar['tokens_per_s']:.1f} tok/s" + (f", HF generate {hf['tokens_per_s']:.1f} tok/s" if hf else "")
             + (f", HF prompt lookup {pld['tokens_per_s']:.1f} tok/s" if pld else ""),
             f"{'B':>5} {'tau':>5} {'tok/s':>8} {'xAR':>6} {'xHF':>6} {'draft':>13} {'verify':>13} {'host':>13} "
             f"{'commit':>13} {'host%':>6} {'compile':>8}  rounds by budget",
             f"{'':>5} {'':>5} {'':>8} {'':>6} {'':>6} {'ms med/p90':>13} {'ms med/p90':>13} {'ms med/p90':>13} "
             f"{'ms med/p90':>13} {'':>6} {'s':>8}  (share; plain: plain steps)"]
    for r in result["budgets"]:
        st = r["stages_ms"]
        cell = lambda k: f"{st[k]['median']:.2f}/{st[k]['p90']:.2f}"  # noqa: E731
        xhf = f"{r['speedup_vs_hf']:.2f}" if r.get("speedup_vs_hf") is not None else "-"
        comp = ("cached" if r["compile_cached"] else f"{r['compile_s']:.1f}") if r["source"] == "sweep" else "-"
        lines.append(f"{r['budget']:>5} {r['tau']:>5.2f} {r['tokens_per_s']:>8.1f} {r['speedup_vs_ar']:>6.2f} "
                     f"{xhf:>6} {cell('draft'):>13} {cell('verify'):>13} {cell('host'):>13} {cell('commit'):>13} "
                     f"{100 * r['host_share']:>5.1f}% {comp:>8}  {_shares(r)}")
    lines += _lookup_lines(result)
    b = result["best"]
    best = next(r for r in result["budgets"] if r["budget"] == b["budget"])
    vs_pld = f", {best['speedup_vs_hf_lookup']:.2f}x HF prompt lookup" if best.get("speedup_vs_hf_lookup") else ""
    lines.append(f"best budget {b['budget']}: {b['tokens_per_s']:.1f} tok/s ({b['speedup_vs_ar']:.2f}x ar_step{vs_pld})")
    sw = result["sweep"]
    if sw["compiled"]:
        n = sum(1 for v in sw["compiled"].values() if not v["cached"])
        lines.append(f"sweep: {n} budget(s) compiled this run in {sw['build_s_this_run']:.1f}s "
                     f"({len(SWEEP_GRAPHS)} graphs each), graphs under {sw['folder']}")
    return "\n".join(lines)


def _lookup_lines(result: dict) -> list[str]:
    """The lookup branch on and off at each budget (artifacts with a lookup chain), beside HF prompt lookup."""
    off = {r["budget"]: r for r in _lookup_off(result)}
    if not off:
        return []
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [f"lookup branch L={result['lookup']['length']} on / off (off: chain rows verified as padding):",
             f"{'B':>5} {'tau on/off':>12} {'tok/s on/off':>15} {'xAR on/off':>12} {'xHF-lookup on/off':>18} "
             f"{'lookup rounds':>14}"]
    for r in result["budgets"]:
        o = off[r["budget"]]
        lines.append(f"{r['budget']:>5} {r['tau']:>5.2f}/{o['tau']:<6.2f} {r['tokens_per_s']:>7.1f}/{o['tokens_per_s']:<7.1f} "
                     f"{r['speedup_vs_ar']:>5.2f}/{o['speedup_vs_ar']:<6.2f} "
                     f"{fmt(r['speedup_vs_hf_lookup']):>8}/{fmt(o['speedup_vs_hf_lookup']):<9} "
                     f"{r['lookup_rounds'] or 0:>6}/{r['rounds']}")
    return lines
