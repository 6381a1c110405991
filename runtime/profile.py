"""`jetspec-compile profile`: latency profile of an artifact over tree budgets.

One run measures, per budget B: tau (tokens committed per round), tokens/s, per-stage latency (draft,
verify, host, commit: median and p90 over rounds), the host-overhead share of a round, and the speedup
over the same artifact's ar_step decoding and over Hugging Face ``generate()`` (greedy, same weights).
Every repetition runs every method on every prompt; ratios are taken within a repetition and the
medians over repetitions are reported.

Budgets are static in the compiled graphs. The artifact's own budget runs the artifact's graphs. For any
other budget the budget-dependent graphs (draft, verify) are rebuilt from the artifact's configs and
weights, captured and compiled with the artifact's backend into ``<out>/sweep/b<B>/`` (or ``--sweep-dir``; cached: keyed by
the artifact's file hashes + budget, so a re-run does not recompile); the budget-independent prefill and
ar_step graphs are the artifact's own. Outputs: profile.json, profile.csv, speedup.png, tau.png,
stages.png.

``--autotune`` records the budget with the best measured tokens/s in the artifact's manifest (field
``autotune``; manifest.json is not among the hashed files). The artifact's compiled budget stays what it
is: the record says which budget to re-export with, and where the sweep's compiled graphs for it are.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from jetspec_compile.errors import JetSpecError

STAGES = ("draft", "verify", "host", "commit")
SWEEP_GRAPHS = ("draft", "verify")  # the budget-dependent graphs a greedy profile needs
HF_LOOKUP = 10  # prompt_lookup_num_tokens of the Hugging Face prompt-lookup baseline (its usual setting)
SWEEP_META = "sweep.json"
DEFAULT_BUDGETS = (8, 16, 32, 64, 128)


# ---- command line -----------------------------------------------------------------------------------------

def register(sub) -> None:
    from jetspec_compile.validate import INT32_MAX, THREADS_MAX, at_least, device, out_folder, utf8_text

    p = sub.add_parser(
        "profile", help="latency profile over tree budgets: tau, tokens/s, per-stage times, speedups",
        description="Profile an artifact over tree budgets in one run: tau, tokens/s, per-stage latency "
                    "(median/p90), host-overhead share, speedup over the artifact's ar_step decoding and over "
                    "Hugging Face generate(). Budgets other than the artifact's own are compiled (draft + verify "
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
    from .prompts import read_prompts

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


# ---- budget sweep: compile draft + verify for budgets the artifact was not built with -----------------------

def artifact_key(manifest: dict) -> str:
    """A hash of what the compiled graphs depend on: every artifact file's sha256, backend, device, shapes."""
    keep = {k: manifest.get(k) for k in ("files", "backend", "device", "dtype", "shapes", "tree")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def sweep_spec(manifest: dict, base, head, budget: int):
    """The SpecConfig of the artifact at another budget (static trees: recalibrated or default topology)."""
    from jetspec_compile.tree import calibrate_static_tree, default_static_tree

    spec = replace(base, budget=budget, static_tree=None)
    note = None
    if base.tree == "static":
        stats = (manifest.get("sources") or {}).get("tree_stats")
        if stats and Path(stats).is_file():
            spec.static_tree = calibrate_static_tree(stats, budget, depth=head.depth, topk=base.topk).to_json()
            note = f"static tree recalibrated from {stats}"
        else:
            spec.static_tree = default_static_tree(head.depth, base.topk, budget).to_json()
            note = ("static tree: default (uncalibrated) topology; no calibration statistics found at the "
                    "artifact's sources.tree_stats")
    spec.validate(head)
    return spec, note


@dataclass
class SweepGraphs:
    budget: int
    folder: Path
    graphs: dict
    cached: bool
    capture_s: dict = field(default_factory=dict)
    compile_s: dict = field(default_factory=dict)
    note: str | None = None
    depth: int = 0

    @property
    def build_s(self) -> float:
        return sum(self.capture_s.values()) + sum(self.compile_s.values())


def _file_hashes(folder: Path, names) -> dict:
    from jetspec_compile.export.artifact import sha256

    return {n: sha256(folder / n) for n in names}


def build_sweep(manifest: dict, target, head, base_spec, budget: int, folder: Path, device: torch.device,
                log: Callable[[str], None] = print) -> SweepGraphs:
    """Compile (or reuse the cached) draft + verify graphs of ``budget`` into ``folder`` and load them."""
    from jetspec_compile.export.artifact import atomic_folder, library_versions
    from jetspec_compile.export.pipeline import capture, get_backend, graph_weights
    from jetspec_compile.graphs import GRAPH_CLASSES, build_graphs, example_inputs

    from jetspec_compile.linear import native_linears

    backend_name = manifest["backend"]
    be = get_backend(backend_name)
    head.set_depth(int(manifest["head"].get("block_depth", head.depth)))
    spec, note = sweep_spec(manifest, base_spec, head, budget)
    head.set_depth(spec.reachable_depth(head))  # as export does: draft only the depths this budget reaches
    native = getattr(be, "native_linear", lambda d: False)(str(device))
    modules = build_graphs(target, head, spec, SWEEP_GRAPHS)
    files = {n: f"{n}.{be.EXT}" for n in SWEEP_GRAPHS}
    key = {"artifact_key": artifact_key(manifest), "budget": budget, "backend": backend_name,
           "device": str(device), "spec": spec.to_dict(), "torch": library_versions().get("torch"),
           "depth": head.depth, "native_linear": native}
    meta_path = folder / SWEEP_META
    cached = False
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            cached = (meta.get("key") == key and all((folder / f).is_file() for f in files.values())
                      and meta.get("files") == _file_hashes(folder, files.values()))
        except (json.JSONDecodeError, OSError):
            cached = False
    if cached:
        log(f"[budget {budget}] reusing compiled draft + verify from {folder}")
        capture_s, compile_s = meta.get("capture_s", {}), meta.get("compile_s", {})
    else:
        capture_s, compile_s = {}, {}
        with atomic_folder(folder, force=True) as tmp:
            for i, name in enumerate(SWEEP_GRAPHS, 1):
                args = example_inputs(name, target, head, spec, device)
                log(f"[budget {budget}] compiling {name} ({backend_name}) [{i}/{len(SWEEP_GRAPHS)}] ...")
                t0 = time.perf_counter()
                with native_linears(target, head, enabled=native):
                    ep = capture(modules[name], args, be.ATTENTION_FORM)
                t1 = time.perf_counter()
                be.compile_graph(ep, args, tmp / files[name], str(device))
                t2 = time.perf_counter()
                capture_s[name], compile_s[name] = round(t1 - t0, 3), round(t2 - t1, 3)
                log(f"[budget {budget}] {name}: captured in {t1 - t0:.1f}s, compiled in {t2 - t1:.1f}s")
            meta = {"key": key, "files": _file_hashes(tmp, files.values()), "capture_s": capture_s,
                    "compile_s": compile_s, "note": note,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / SWEEP_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    weights = graph_weights(modules)
    graphs = {}
    for name in SWEEP_GRAPHS:
        kwargs = {}
        if backend_name == "onnx":
            from jetspec_compile.export.onnx import forward_arg_names

            kwargs["input_names"] = forward_arg_names(GRAPH_CLASSES[name])
        graphs[name] = be.load_graph(folder / files[name], str(device), weights, **kwargs)
    return SweepGraphs(budget, folder, graphs, cached, capture_s, compile_s, note, head.depth)


# ---- measurement ------------------------------------------------------------------------------------------

def _q(xs: Sequence[float], q: float) -> float:
    """Quantile with linear interpolation (q in [0, 1])."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


@dataclass
class _Run:
    """Totals of one method over all prompts of one repetition."""

    tokens: int = 0
    total_s: float = 0.0
    decode_s: float = 0.0
    graph_s: float = 0.0  # time inside the draft and verify graph calls
    rounds: int = 0
    committed: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def host_share(self) -> float:
        return (self.decode_s - self.graph_s) / self.decode_s if self.decode_s > 0 else 0.0


class _FirstToken:
    """A generate() streamer that notes when the first new token arrives (the end of HF's prefill)."""

    def __init__(self):
        self.calls = 0
        self.first = None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:  # call 1 is the prompt
            self.first = time.perf_counter()

    def end(self):
        pass


def hf_generate(model, ids: list[int], max_new_tokens: int, eos: list[int], pad: int | None, lookup: int = 0):
    """Greedy Hugging Face generate() (with ``lookup`` > 0: prompt-lookup decoding proposing that many tokens);
    returns (new tokens, total seconds, seconds to the first new token)."""
    from transformers import GenerationConfig

    dev = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.int64, device=dev)
    gc = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                          eos_token_id=list(eos) if eos else None,
                          pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
                          **({"prompt_lookup_num_tokens": lookup} if lookup else {}))
    streamer = _FirstToken()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=gc, streamer=streamer)
    sync()
    t1 = time.perf_counter()
    new = out[0, len(ids):].tolist()
    first = (streamer.first - t0) if streamer.first is not None else (t1 - t0)
    return new, t1 - t0, first


def _synced(fn: Callable) -> Callable:
    def call(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    return call


def machine_info(device: torch.device) -> dict:
    info = {"node": platform.node(), "platform": platform.platform(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "python": platform.python_version(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _stage_summary(values_s: list[float]) -> dict:
    ms = [1e3 * v for v in values_s]
    return {"median": _median(ms), "p90": _q(ms, 0.9), "mean": sum(ms) / len(ms) if ms else float("nan")}


def _encode_prompts(engine, prompts, max_new_tokens: int, max_budget: int, log) -> list[list[int]]:
    S, D = engine.decoder.S, engine.decoder.D
    limit = min(S - max_budget, S - max_new_tokens - D - 2)
    if limit < 1:
        raise JetSpecError(f"max_new_tokens {max_new_tokens} and budget {max_budget} leave no room for a prompt in "
                           f"this artifact's max_seq_len {S} (depth {D}); lower --max-new-tokens")
    out = []
    for p in prompts:
        ids = engine.encode(p)
        if not ids:
            raise JetSpecError("a prompt encodes to no tokens")
        if len(ids) > limit:
            log(f"note: a prompt of {len(ids)} tokens is cut to its last {limit} (max_seq_len {S})")
            ids = ids[-limit:]
        out.append(ids)
    return out


def profile_artifact(artifact: str | Path, prompts: Sequence[str | Sequence[int]], budgets: Sequence[int] | None = None,
                     *, max_new_tokens: int = 128, reps: int = 3, out: str | Path | None = None, hf: bool = True,
                     autotune: bool = False, device: str | None = None, threads: int | None = 1,
                     prompts_source: str | None = None, plots: bool = True, sweep_dir: str | Path | None = None,
                     log: Callable[[str], None] = print) -> dict:
    """Profile ``artifact`` over ``budgets`` (see the module docstring). Returns the profile.json dict.

    ``prompts``: text (needs the artifact's tokenizer) or token-id lists."""
    from jetspec_compile.decode import Decoder, Stats
    from jetspec_compile.export.artifact import update_manifest
    from jetspec_compile.safetensors_io import load_safetensors

    from .engine import eager_models, load

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
    manifest = engine.manifest
    dev = engine.device
    base_budget = engine.budget
    budgets = sorted(set(int(b) for b in (budgets or DEFAULT_BUDGETS)) | {base_budget})
    depth = engine.decoder.D
    too_big = [b for b in budgets if b + depth + 2 > engine.max_seq_len]
    if too_big:
        raise JetSpecError(f"budgets {too_big} do not fit this artifact's max_seq_len {engine.max_seq_len} "
                           f"(depth {depth}: a budget needs max_seq_len >= B + {depth + 2})")
    if any(b < 1 for b in budgets):
        raise JetSpecError(f"budgets {budgets}: expected integers >= 1")
    ids = _encode_prompts(engine, prompts, max_new_tokens, max(budgets), log)
    eos = list(engine.eos_token_ids)

    # eager target + head rebuilt from the artifact: Hugging Face baseline and sweep captures
    target = head = base_spec = None
    if hf or any(b != base_budget for b in budgets):
        weights = load_safetensors(folder / manifest["weights"], device=dev)
        target, head, base_spec = eager_models(folder, manifest, weights, dev)
        del weights

    # one Decoder per budget; they share the engine's caches (every round writes before it reads)
    base_dec = engine.decoder
    shared = {n: base_dec.graphs[n] for n in ("prefill", "ar_step")}
    decoders: dict[int, Decoder] = {}
    sweep: dict[int, SweepGraphs] = {}
    sweep_root = Path(sweep_dir) if sweep_dir is not None else out / "sweep"
    for b in budgets:
        if b == base_budget:
            decoders[b] = base_dec
            continue
        sw = build_sweep(manifest, target, head, base_spec, b, sweep_root / f"b{b}", dev, log)
        sweep[b] = sw
        dec = Decoder({**shared, **sw.graphs}, budget=b, topk=base_dec.K, max_seq_len=base_dec.S,
                      prefill_chunk=base_dec.P, dims=replace(base_dec.dims, depth=sw.depth), device=dev, lookup=base_dec.L)
        dec.k_cache, dec.v_cache, dec.ctx_k, dec.ctx_v = base_dec.k_cache, base_dec.v_cache, base_dec.ctx_k, base_dec.ctx_v
        decoders[b] = dec
    if dev.type == "cuda":  # per-stage times on a GPU need a sync after each graph call
        for dec in {id(d): d for d in decoders.values()}.values():
            dec.graphs = {n: _synced(f) for n, f in dec.graphs.items()}
    sweep_build_s = sum(sw.build_s for sw in sweep.values() if not sw.cached)

    def run_engine(dec, prompt_ids, n, speculative) -> tuple[list[int], Stats]:
        engine.decoder = dec
        try:
            g = engine.generate(prompt_ids, n, speculative=speculative)
        finally:
            engine.decoder = base_dec
        return g.tokens, g.stats

    hf_model = target.model if (hf and target is not None) else None
    pad = manifest["target"]["config"].get("pad_token_id")

    # warm-up (first calls allocate, load kernels, fill caches): untimed
    log("warming up ...")
    w = ids[0][-8:]
    run_engine(base_dec, w, min(8, max_new_tokens), False)
    for b in budgets:
        run_engine(decoders[b], w, min(8, max_new_tokens), True)
    if hf_model is not None:
        hf_generate(hf_model, w, min(8, max_new_tokens), eos, pad)
        hf_generate(hf_model, w, min(8, max_new_tokens), eos, pad, lookup=HF_LOOKUP)

    ar_runs: list[_Run] = []
    hf_runs: list[_Run] = []
    pld_runs: list[_Run] = []
    spec_runs: dict[int, list[_Run]] = {b: [] for b in budgets}
    stage_s: dict[int, dict[str, list[float]]] = {b: {k: [] for k in STAGES} for b in budgets}
    round_total_s: dict[int, list[float]] = {b: [] for b in budgets}
    ar_step_s: list[float] = []
    ar_tokens: list[list[int]] = []
    match_ar: dict[int, int] = {b: 0 for b in budgets}
    hf_match_ar = 0
    for r in range(reps):
        tag = f"[rep {r + 1}/{reps}]"
        run = _Run()
        for i, p in enumerate(ids):
            toks, st = run_engine(base_dec, p, max_new_tokens, False)
            if r == 0:
                ar_tokens.append(toks)
            run.tokens += st.new_tokens
            run.total_s += st.total_s
            run.decode_s += st.decode_s
            run.graph_s += st.verify_s
            run.rounds += st.rounds
            ar_step_s += st.stage_s["verify"]
        ar_runs.append(run)
        log(f"{tag} ar_step: {run.tokens_per_s:.1f} tok/s")
        if hf_model is not None:
            run = _Run()
            for i, p in enumerate(ids):
                toks, total, first = hf_generate(hf_model, p, max_new_tokens, eos, pad)
                if r == 0 and toks == ar_tokens[i]:
                    hf_match_ar += 1
                run.tokens += len(toks)
                run.total_s += total
                run.decode_s += total - first if len(toks) > 1 else total
            hf_runs.append(run)
            log(f"{tag} HF generate: {run.tokens_per_s:.1f} tok/s")
            run = _Run()
            for i, p in enumerate(ids):
                toks, total, first = hf_generate(hf_model, p, max_new_tokens, eos, pad, lookup=HF_LOOKUP)
                run.tokens += len(toks)
                run.total_s += total
                run.decode_s += total - first if len(toks) > 1 else total
            pld_runs.append(run)
            log(f"{tag} HF prompt lookup ({HF_LOOKUP}): {run.tokens_per_s:.1f} tok/s")
        for b in budgets:
            run = _Run()
            for i, p in enumerate(ids):
                toks, st = run_engine(decoders[b], p, max_new_tokens, True)
                if r == 0 and toks == ar_tokens[i]:
                    match_ar[b] += 1
                run.tokens += st.new_tokens
                run.total_s += st.total_s
                run.decode_s += st.decode_s
                run.graph_s += st.draft_s + st.verify_s
                run.rounds += st.rounds
                run.committed += sum(st.accepted)
                for k in STAGES:
                    stage_s[b][k] += st.stage_s[k]
                round_total_s[b] += st.round_s
            spec_runs[b].append(run)
            tau = run.committed / run.rounds if run.rounds else 0.0
            log(f"{tag} budget {b}: {run.tokens_per_s:.1f} tok/s, tau {tau:.2f}, "
                f"{run.tokens_per_s / max(ar_runs[-1].tokens_per_s, 1e-12):.2f}x ar_step")

    def ratios(num: list[_Run], den: list[_Run], attr: str) -> list[float]:
        return [getattr(a, attr) / getattr(d, attr) if getattr(d, attr) > 0 else float("nan")
                for a, d in zip(num, den)]

    def method_summary(runs: list[_Run]) -> dict:
        return {"tokens_per_s": _median([x.tokens_per_s for x in runs]),
                "decode_tokens_per_s": _median([x.decode_tokens_per_s for x in runs]),
                "tokens_per_s_reps": [x.tokens_per_s for x in runs],
                "new_tokens": runs[0].tokens if runs else 0}

    rows = []
    for b in budgets:
        runs = spec_runs[b]
        rounds = sum(x.rounds for x in runs)
        committed = sum(x.committed for x in runs)
        decode_s = sum(x.decode_s for x in runs)
        row = {
            "budget": b,
            "source": "artifact" if b == base_budget else "sweep",
            "graphs": str(folder if b == base_budget else sweep[b].folder),
            **method_summary(runs),
            "tau": committed / rounds if rounds else 0.0,
            "rounds": rounds,
            "speedup_vs_ar": _median(ratios(runs, ar_runs, "tokens_per_s")),
            "speedup_vs_ar_reps": ratios(runs, ar_runs, "tokens_per_s"),
            "decode_speedup_vs_ar": _median(ratios(runs, ar_runs, "decode_tokens_per_s")),
            "speedup_vs_hf": _median(ratios(runs, hf_runs, "tokens_per_s")) if hf_runs else None,
            "speedup_vs_hf_reps": ratios(runs, hf_runs, "tokens_per_s") if hf_runs else None,
            "decode_speedup_vs_hf": _median(ratios(runs, hf_runs, "decode_tokens_per_s")) if hf_runs else None,
            "speedup_vs_hf_lookup": _median(ratios(runs, pld_runs, "tokens_per_s")) if pld_runs else None,
            "host_share": _median([x.host_share for x in runs]),
            "round_ms": 1e3 * decode_s / rounds if rounds else float("nan"),
            "stages_ms": {k: _stage_summary(stage_s[b][k]) for k in STAGES},
            "round_stages_ms": _stage_summary(round_total_s[b]),
            "lossless_prompts": match_ar[b],
            "compile_s": (round(sw.build_s, 3) if (sw := sweep.get(b)) else 0.0),
            "compile_cached": sweep[b].cached if b in sweep else None,
            "tree_note": sweep[b].note if b in sweep else None,
        }
        rows.append(row)

    best = max(rows, key=lambda x: x["tokens_per_s"])
    ar = method_summary(ar_runs)
    ar["ms_per_token"] = _stage_summary(ar_step_s)
    result = {
        "artifact": str(folder),
        "artifact_name": manifest.get("name", folder.name),
        "artifact_key": artifact_key(manifest),
        "backend": manifest["backend"],
        "device": str(dev),
        "dtype": manifest["dtype"],
        "shapes": manifest["shapes"],
        "tree": manifest["tree"]["policy"],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(dev),
        "settings": {"budgets": budgets, "reps": reps, "max_new_tokens": max_new_tokens, "prompts": len(ids),
                     "prompts_source": prompts_source, "prompt_tokens_mean": sum(map(len, ids)) / len(ids),
                     "threads": torch.get_num_threads(), "hf": hf_model is not None,
                     "tokens_per_s": "new tokens / generate wall time (prefill + decode), summed over prompts",
                     "decode_tokens_per_s": "new tokens / decode time (after prefill; HF: after the first new token)",
                     "host_share": "(decode time - time inside draft and verify graph calls) / decode time",
                     "stages": "per-round stage times; median and p90 over all rounds of all reps and prompts"},
        "baselines": {"ar_step": ar,
                      "hf_generate": ({**method_summary(hf_runs), "matches_ar_step_prompts": hf_match_ar}
                                      if hf_runs else None),
                      "hf_prompt_lookup": ({**method_summary(pld_runs), "num_tokens": HF_LOOKUP}
                                           if pld_runs else None)},
        "budgets": rows,
        "best": {"budget": best["budget"], "tokens_per_s": best["tokens_per_s"],
                 "speedup_vs_ar": best["speedup_vs_ar"]},
        "sweep": {"folder": str(sweep_root) if sweep else None,
                  "compiled": {str(b): {"capture_s": sw.capture_s, "compile_s": sw.compile_s, "cached": sw.cached,
                                        "build_s": round(sw.build_s, 3)} for b, sw in sweep.items()},
                  "build_s_this_run": round(sweep_build_s, 3),
                  "graphs_per_budget": list(SWEEP_GRAPHS)},
        "total_s": None,
    }
    if autotune:
        b = best["budget"]
        record = {"budget": b, "tokens_per_s": best["tokens_per_s"], "speedup_vs_ar": best["speedup_vs_ar"],
                  "tau": best["tau"], "compiled_budget": base_budget,
                  "graphs": "artifact" if b == base_budget else str(sweep[b].folder.resolve()),
                  "note": ("the artifact's compiled budget" if b == base_budget else
                           f"re-export with --budget {b} (this artifact's graphs are compiled for B={base_budget})"),
                  "measured_at": result["measured_at"], "machine": result["machine"],
                  "max_new_tokens": max_new_tokens, "prompts": len(ids), "budgets": budgets,
                  "profile": str((out / "profile.json").resolve())}
        update_manifest(folder, autotune=record)
        result["autotune"] = record
        log(f"autotune: best budget {b} ({best['tokens_per_s']:.1f} tok/s) recorded in {folder / 'manifest.json'}")
    result["total_s"] = round(time.perf_counter() - t_start, 3)
    result["outputs"] = write_outputs(result, out, plots=plots)
    (out / "profile.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    return result


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


CSV_COLUMNS = ["budget", "source", "tau", "tokens_per_s", "decode_tokens_per_s", "speedup_vs_ar",
               "decode_speedup_vs_ar", "speedup_vs_hf", "decode_speedup_vs_hf", "host_share", "round_ms",
               *[f"{k}_ms_{s}" for k in STAGES for s in ("median", "p90")], "rounds", "new_tokens",
               "lossless_prompts", "compile_s"]


def _csv_row(row: dict) -> dict:
    flat = dict(row)
    for k in STAGES:
        for s in ("median", "p90"):
            flat[f"{k}_ms_{s}"] = row["stages_ms"][k][s]
    out = {}
    for c in CSV_COLUMNS:
        v = flat.get(c)
        out[c] = "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
    return out


def write_outputs(result: dict, out: Path, plots: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "profile.json"), "csv": str(out / "profile.csv")}
    with open(out / "profile.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in result["budgets"]:
            w.writerow(_csv_row(row))
    if plots:
        paths.update(write_plots(result, out))
    return paths


def write_plots(result: dict, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["budgets"]
    B = [r["budget"] for r in rows]
    name = f"{result['artifact_name']} ({result['backend']}, {result['device']})"
    paths = {}

    def xaxis(ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(B)
        ax.set_xticklabels([str(b) for b in B])
        ax.set_xlabel("tree budget B (nodes verified per round)")
        ax.grid(True, alpha=0.3)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(B, [r["speedup_vs_ar"] for r in rows], "o-", label="vs ar_step (same artifact)")
    if result["baselines"].get("hf_generate"):
        ax.plot(B, [r["speedup_vs_hf"] for r in rows], "s-", label="vs HF generate()")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    xaxis(ax)
    ax.set_ylabel("speedup (tokens/s ratio)")
    ax.set_title(f"speedup vs budget\n{name}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "speedup.png", dpi=100)
    plt.close(fig)
    paths["speedup_png"] = str(out / "speedup.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(B, [r["tau"] for r in rows], "o-")
    xaxis(ax)
    ax.set_ylabel("tau (tokens committed per round)")
    ax.set_title(f"tau vs budget\n{name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "tau.png", dpi=100)
    plt.close(fig)
    paths["tau_png"] = str(out / "tau.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    x = list(range(len(B)))
    bottom = [0.0] * len(B)
    parts = [(k, [r["stages_ms"][k]["mean"] for r in rows]) for k in STAGES]
    parts.append(("loop (rest)", [max(0.0, r["round_ms"] - sum(r["stages_ms"][k]["mean"] for k in STAGES))
                                  for r in rows]))
    for label, vals in parts:
        ax.bar(x, vals, bottom=bottom, label=label)
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax.set_xticks(x)
    ax.set_xticklabels([str(b) for b in B])
    ax.set_xlabel("tree budget B")
    ax.set_ylabel("ms per round (mean)")
    ax.set_title(f"time per round by stage\n{name}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "stages.png", dpi=100)
    plt.close(fig)
    paths["stages_png"] = str(out / "stages.png")
    return paths


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
             f"{'commit':>13} {'host%':>6} {'compile':>8}",
             f"{'':>5} {'':>5} {'':>8} {'':>6} {'':>6} {'ms med/p90':>13} {'ms med/p90':>13} {'ms med/p90':>13} "
             f"{'ms med/p90':>13} {'':>6} {'s':>8}"]
    for r in result["budgets"]:
        st = r["stages_ms"]
        cell = lambda k: f"{st[k]['median']:.2f}/{st[k]['p90']:.2f}"  # noqa: E731
        xhf = f"{r['speedup_vs_hf']:.2f}" if r.get("speedup_vs_hf") is not None else "-"
        comp = ("cached" if r["compile_cached"] else f"{r['compile_s']:.1f}") if r["source"] == "sweep" else "-"
        lines.append(f"{r['budget']:>5} {r['tau']:>5.2f} {r['tokens_per_s']:>8.1f} {r['speedup_vs_ar']:>6.2f} "
                     f"{xhf:>6} {cell('draft'):>13} {cell('verify'):>13} {cell('host'):>13} {cell('commit'):>13} "
                     f"{100 * r['host_share']:>5.1f}% {comp:>8}")
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


if __name__ == "__main__":  # python -m jetspec_compile.runtime.profile ...
    ap = argparse.ArgumentParser(prog="jetspec-compile")
    register(ap.add_subparsers(dest="command"))
    a = ap.parse_args(["profile", *sys.argv[1:]])
    sys.exit(a.func(a))
