"""Microbenchmark: host cost per decode round of the prompt-lookup index (jetspec_compile.lookup).

A ~2,000-token sequence from real Python source (this repository's own files) tokenised as raw bytes
or as words; the first --prompt tokens are the prompt, then each round commits 1-4 tokens (random)
and the round's cost is ``extend(committed)`` + ``propose(L)``. Prints per-round microseconds
(median, p90, max over all rounds of all repetitions) for each tokenisation and L, plus how often
the proposal was non-empty and how many of its tokens the real continuation matched (the chain's
greedy acceptance length on this text, a rough usefulness figure), and the cost of turning a
proposal into graph inputs (``chain_tensors``).

    python scripts/bench_lookup.py [--tokens 2000] [--prompt 256] [--reps 5] [--lengths 4,8,10] [--periodic]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from pathlib import Path

from jetspec_compile.lookup import NgramIndex, chain_tensors

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["jetspec_compile/tree.py", "jetspec_compile/accept.py", "jetspec_compile/graphs.py",
           "jetspec_compile/decode.py", "jetspec_compile/lookup.py"]


def source_text() -> str:
    return "\n".join((ROOT / p).read_text() for p in SOURCES if (ROOT / p).exists())


def tokenise(text: str, kind: str, n: int) -> list[int]:
    if kind == "bytes":
        return list(text.encode())[:n]
    vocab: dict[str, int] = {}
    words = re.findall(r"\w+|[^\w\s]|\s+", text)
    return [vocab.setdefault(w, len(vocab)) for w in words][:n]


def run_once(seq: list[int], prompt: int, length: int, rng: random.Random, n_max: int, n_min: int,
             periodic: bool = False):
    idx = NgramIndex(n_max=n_max, n_min=n_min)
    idx.extend(seq[:prompt])
    times, hits, matched = [], 0, []
    pos = prompt
    clock = time.perf_counter_ns
    while pos < len(seq):
        k = rng.randint(1, 4)
        committed = seq[pos:pos + k]
        t0 = clock()
        idx.extend(committed)
        prop = idx.propose(length, periodic=periodic)
        times.append(clock() - t0)
        pos += len(committed)
        if prop:
            hits += 1
            a = 0
            while a < len(prop) and pos + a < len(seq) and prop[a] == seq[pos + a]:
                a += 1
            matched.append(a)
    return times, hits, matched


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--lengths", default="4,8,10")
    ap.add_argument("--n-max", type=int, default=4)
    ap.add_argument("--n-min", type=int, default=1)
    ap.add_argument("--periodic", action="store_true", help="propose(L, periodic=True)")
    args = ap.parse_args()
    text = source_text()
    print(f"n-gram index n={args.n_max}..{args.n_min}; {args.tokens} tokens, prompt {args.prompt}, "
          f"rounds commit 1-4 tokens, {args.reps} reps, periodic={args.periodic}; per-round cost = extend + propose(L)")
    print(f"{'tokens':6} {'L':>3} {'rounds':>7} {'median us':>10} {'p90 us':>8} {'max us':>8} "
          f"{'proposed':>9} {'mean match':>11}")
    for kind in ("bytes", "words"):
        seq = tokenise(text, kind, args.tokens)
        for length in (int(x) for x in args.lengths.split(",")):
            all_t: list[float] = []
            hits = rounds = 0
            matched: list[int] = []
            for r in range(args.reps):
                t, h, m = run_once(seq, args.prompt, length, random.Random(r), args.n_max, args.n_min,
                                   args.periodic)
                all_t += [x / 1000 for x in t]
                hits += h
                rounds += len(t)
                matched += m
            print(f"{kind:6} {length:3d} {rounds // args.reps:7d} {statistics.median(all_t):10.2f} "
                  f"{pct(all_t, 0.9):8.2f} {max(all_t):8.1f} {hits / rounds:9.0%} "
                  f"{statistics.mean(matched) if matched else 0:11.2f}")
    # the host-to-graph conversion of a proposal (torch tensor creation), for reference
    ts = []
    for _ in range(2000):
        t0 = time.perf_counter_ns()
        chain_tensors([1, 2, 3, 4, 5, 6], 10)
        ts.append((time.perf_counter_ns() - t0) / 1000)
    print(f"chain_tensors(6 of 10 tokens): median {statistics.median(ts):.2f} us, p90 {pct(ts, 0.9):.2f} us")


if __name__ == "__main__":
    main()
