#!/usr/bin/env python
"""Compare artifacts of one model by counted rounds, free of timing noise (one thread).

    python scripts/count_rounds.py artifacts/demo-l3 artifacts/demo-l5 artifacts/demo [--files 8:16]
        [--prompt-sets code,repeat] [--max-new-tokens 128] [--costs costs.json] [--json out.json]

The adaptive policy's choices depend only on the tokens and the round costs it is given, so with the costs
fixed, the rounds each arm runs are exact counts. This script measures every artifact's round costs once,
in one process and interleaved (the lower quartile of per-block medians, so that a busy machine moves them
less; the median of ``--cost-runs`` such measurements), gives every artifact the same plain-step and ``ar_step`` cost (the same graphs), decodes the held-out
prompts ``--files`` (indices into the demo's held-out files of at least 200 tokens; the benchmarks use 0:8, so
choose on 8:16) greedily with the policy on those costs, and prices the counted rounds: modelled decode time
and speedup over ``ar_step``. Every artifact must produce the same tokens (greedy decoding is lossless).
``--costs`` reuses a cost file written by an earlier run (``--json``), so the counts can be repeated exactly.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import replace

from bench_demo import heldout_prompts, repeat_prompts
from bench_timing import call_seconds, median, write_json


def measure_costs(engines: dict, blocks: int = 12, calls: int = 15) -> dict[str, dict[str, float]]:
    """Seconds per round of every arm (and per ``ar_step``) of every artifact, interleaved across artifacts
    (``Decoder.calibrate`` interleaves the arms of one artifact only)."""
    import torch

    from jetspec_compile.decode import CHAIN, _Lookup, arm_key

    prompt = torch.randint(3, 100, (256,), generator=torch.Generator().manual_seed(0)).tolist()
    fns = {}
    for name, eng in engines.items():
        dec = eng.decoder
        cl = dec._cache_len(dec.prefill(prompt))
        anchor = torch.tensor([prompt[-1]])
        lookup = _Lookup(prompt, dec.L, dec.device) if dec.L else None
        if lookup:
            lookup.propose()
        for b in ([CHAIN] if dec.has_chain_arm else []) + dec.budgets:
            def run(g=dec._arm_graphs(b), dec=dec, cl=cl, anchor=anchor, lookup=lookup):
                tree, _ = dec._draft(g, anchor, cl, lookup)
                int(g.verify(*tree, cl, dec.k_cache, dec.v_cache)[1].reshape(-1)[0])
            fns[(name, arm_key(b))] = run
        fns[(name, "ar_step")] = lambda dec=dec, cl=cl, a=anchor: dec.graphs["ar_step"](a, cl, dec.k_cache, dec.v_cache)
    times: dict = {k: [] for k in fns}
    gc.disable()
    for _ in range(blocks):
        for k, fn in fns.items():
            times[k].append(median(call_seconds(fn, calls)))
    gc.enable()
    costs: dict[str, dict[str, float]] = {n: {} for n in engines}
    for (name, key), xs in times.items():
        costs[name][key] = sorted(xs)[len(xs) // 4]
    for key in ("1", "ar_step"):  # the same graphs in every artifact: one shared cost
        shared = sorted(c[key] for c in costs.values())[len(costs) // 2]
        for c in costs.values():
            c[key] = shared
    return costs


def median_costs(engines: dict, runs: int) -> dict[str, dict[str, float]]:
    """Per-arm medians of ``runs`` cost measurements (a neighbour's burst moves one run, not the median)."""
    ms = [measure_costs(engines) for _ in range(runs)]
    return {n: {k: sorted(m[n][k] for m in ms)[runs // 2] for k in ms[0][n]} for n in engines}


def count(eng, cost: dict[str, float], prompts: list[list[int]], max_new: int) -> tuple[dict, list[list[int]]]:
    """Rounds per arm over ``prompts`` with the policy on ``cost``, and the tokens decoded."""
    from jetspec_compile.adaptive import Arm
    from jetspec_compile.decode import CHAIN, Stats, arm_key

    dec = eng.decoder
    arms = dict(dec.arms)
    if dec.has_chain_arm:
        arms.setdefault(CHAIN, Arm(CHAIN, dec.L, 0.0))
    dec.arms = {b: replace(a, cost_s=cost[arm_key(b)]) for b, a in arms.items()}
    rounds: dict[str, int] = {}
    outs = []
    for p in prompts:
        st = Stats()
        outs.append([t for chunk in dec.speculative(p, max_new, stats=st) for t in chunk])
        for k, v in st.budget_rounds.items():
            rounds[k] = rounds.get(k, 0) + v
    return rounds, outs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="+")
    p.add_argument("--files", default="8:16", help="held-out prompt indices lo:hi (the benchmarks use 0:8)")
    p.add_argument("--prompt-sets", default="code,repeat")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--costs", default=None, help="reuse the costs of an earlier --json")
    p.add_argument("--cost-runs", type=int, default=3, help="measure the costs this many times, keep per-arm medians")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from jetspec_compile.runtime import load

    lo, hi = (int(x) for x in args.files.split(":"))
    engines = {a: load(a) for a in args.artifacts}
    costs = json.load(open(args.costs))["costs"] if args.costs else median_costs(engines, args.cost_runs)
    for name, c in costs.items():
        print(name, " ".join(f"{k} {v * 1e3:.3f}" for k, v in c.items()), "ms")
    rows = []
    makers = {"code": heldout_prompts, "repeat": repeat_prompts}
    first = next(iter(engines.values()))
    for pset in args.prompt_sets.split(","):
        prompts = makers[pset](first, hi, 200)[0][lo:hi]
        ref = None
        for name, eng in engines.items():
            rounds, outs = count(eng, costs[name], prompts, args.max_new_tokens)
            if ref is not None and outs != ref:
                sys.exit(f"error: {name} decoded other tokens than {args.artifacts[0]} on {pset} prompts")
            ref = outs
            tokens = sum(len(o) for o in outs)
            t = sum(n * costs[name]["1" if k == "plain" else k] for k, n in rounds.items())
            ar = tokens * costs[name]["ar_step"]
            rows.append(dict(prompt_set=pset, artifact=name, rounds=rounds, tokens=tokens, modelled_ms=1e3 * t,
                             speedup=ar / t))
            print(f"{pset:7s} {name:24s} {tokens} tokens in {sum(rounds.values())} rounds {rounds}: "
                  f"modelled {1e3 * t:.1f} ms, {ar / t:.3f}x ar_step")
    write_json(args.json, {"costs": costs, "files": args.files, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
