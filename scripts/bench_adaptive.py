"""Adaptive budgets vs each fixed arm (every budget, plain steps, the lookup chain alone) vs ar_step of one
artifact, on three prompt sets (Speed 4).

    python scripts/bench_adaptive.py --artifact artifacts/demo-adaptive --reps 3

Prompt sets: held-out code (the demo's domain), 'repeat' (code followed by a request to rewrite it and its
start again) and prose (English text the code-trained demo model handles badly), plus 'mixed' (all of
them). Per repetition every method decodes every prompt; the ratio to ar_step is taken within a repetition
and the median over repetitions is reported. One torch thread. Writes JSON + a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo import heldout_prompts, repeat_prompts  # noqa: E402

PROSE = [
    "The history of the city begins with a small settlement on the river, where farmers traded grain and "
    "wool with travellers from the coast. Over the centuries the market grew into a town",
    "She opened the letter slowly, afraid of what it might say. Her brother had not written in years, and "
    "the last time they spoke they had argued about the house their parents left them",
    "Photosynthesis is the process by which green plants use sunlight to make food from carbon dioxide and "
    "water. It takes place mostly in the leaves, inside small structures called chloroplasts",
    "Dear committee, I am writing to apply for the position of assistant librarian. For the past four years "
    "I have worked in a public library, where I organised reading groups for children",
]


class PolicyClock:
    """Host seconds spent in the adaptive policy (choose + observe) and the rounds it chose."""

    def __init__(self):
        from jetspec_compile.adaptive import BudgetPolicy

        self.seconds, self.choices = 0.0, 0
        for name in ("choose", "observe"):
            setattr(BudgetPolicy, name, self._timed(getattr(BudgetPolicy, name), name == "choose"))

    def _timed(self, fn, counts: bool):
        def wrapper(policy, *args, **kwargs):
            t0 = time.perf_counter()
            out = fn(policy, *args, **kwargs)
            self.seconds += time.perf_counter() - t0
            self.choices += counts
            return out
        return wrapper

    @property
    def us_per_round(self) -> float:
        return 1e6 * self.seconds / max(self.choices, 1)


def run(engine, prompts, budget, speculative, max_new) -> float:
    toks = secs = 0.0
    for ids in prompts:
        engine.generate(ids, max_new, speculative=speculative, budget=budget)
        st = engine.last_stats
        toks += st.new_tokens
        secs += st.decode_s
    return toks / secs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n", type=int, default=4, help="prompts per set")
    p.add_argument("--offset", type=int, default=0, help="skip the first held-out files (another prompt set)")
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--out", default="runs/bench-adaptive")
    p.add_argument("--sets", default="code,repeat,prose,mixed", help="prompt sets to run (comma-separated)")
    p.add_argument("--recalibrate", action="store_true", help="re-measure each budget's round cost at load")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from jetspec_compile.runtime import load

    engine = load(args.artifact)
    clock = PolicyClock()
    if args.recalibrate:
        print("round costs measured here (ms):", engine.calibrate(), flush=True)
    code = heldout_prompts(engine, args.offset + args.n, args.prompt_tokens)[0][args.offset:]
    sets = {"code": code, "repeat": repeat_prompts(engine, args.offset + args.n, args.prompt_tokens)[0][args.offset:],
            "prose": [engine.encode(t) for t in PROSE[: args.n]]}
    sets["mixed"] = [q for s in ("code", "repeat", "prose") for q in sets[s]]
    sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    label = {0: "chain", 1: "plain"}  # 0: the lookup chain alone (plain prompt-lookup decoding)
    methods = {"adaptive": None, **{label.get(b, f"B={b}"): b for b in engine.decoder.fixed_arms}}
    res: dict = {}
    for name, prompts in sets.items():
        ratios: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.reps):
            ar = run(engine, prompts, None, False, args.max_new_tokens)
            for m, b in methods.items():
                ratios[m].append(run(engine, prompts, b, True, args.max_new_tokens) / ar)
        res[name] = {m: statistics.median(v) for m, v in ratios.items()}
        print(name, {m: round(v, 3) for m, v in res[name].items()}, flush=True)
    res["policy_us_per_round"] = round(clock.us_per_round, 1)
    print(f"adaptive policy: {clock.us_per_round:.1f} us per round (choose + observe, {clock.choices} rounds)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_adaptive.json").write_text(json.dumps(res, indent=2))
    cols = list(methods)
    lines = ["| prompt set | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{r[c]:.2f}x" for c in cols) + " |" for s, r in res.items()
              if isinstance(r, dict)]
    (out / "bench_adaptive.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
