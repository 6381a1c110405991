"""`jetspec-compile generate` and `jetspec-compile verify-lossless`."""

from __future__ import annotations

import argparse
import sys

import torch

from jetspec_compile.validate import (INT32_MAX, SEED_MAX, THREADS_MAX, at_least, device, finite, nonempty_text,
                                      probability, utf8_text)


def register(sub) -> None:
    g = sub.add_parser("generate", help="generate text from an artifact (streams the text, prints stats)")
    g.add_argument("artifact", type=utf8_text)
    g.add_argument("prompt", type=utf8_text)
    g.add_argument("--max-new-tokens", type=at_least(1, INT32_MAX), default=128)
    g.add_argument("--temperature", type=finite(0.0), default=0.0, help="0 = greedy (a finite number >= 0)")
    g.add_argument("--top-k", type=at_least(0, INT32_MAX), default=None, help="0 = no top-k filter")
    g.add_argument("--top-p", type=probability, default=None, help="0 < p <= 1")
    g.add_argument("--seed", type=at_least(0, SEED_MAX), default=None)
    g.add_argument("--stop", action="append", type=nonempty_text, default=None, help="stop string (repeatable)")
    g.add_argument("--device", type=device, default=None, help="cpu, cuda or cuda:N (default: the artifact's)")
    g.add_argument("--threads", type=at_least(1, THREADS_MAX), default=1, help="torch CPU threads (default 1)")
    g.add_argument("--ar", action="store_true", help="plain decoding with the ar_step graph (the baseline)")
    g.add_argument("--compare", action="store_true",
                   help="after the speculative run, decode the same prompt with ar_step and print both tokens/s")
    g.add_argument("--eager", action="store_true", help="run the uncompiled graphs rebuilt from the artifact")
    g.set_defaults(func=run_generate)

    v = sub.add_parser("verify-lossless", help="greedy speculative output vs greedy ar_step output, token for token")
    v.add_argument("artifact", type=utf8_text)
    v.add_argument("--prompts", required=True, type=utf8_text, help="JSONL file with a 'prompt' string per line")
    v.add_argument("--max-new-tokens", type=at_least(1, INT32_MAX), default=64)
    v.add_argument("--limit", type=at_least(1, INT32_MAX), default=None, help="use the first N prompts")
    v.add_argument("--device", type=device, default=None, help="cpu, cuda or cuda:N (default: the artifact's)")
    v.add_argument("--threads", type=at_least(1, THREADS_MAX), default=1)
    v.set_defaults(func=run_verify_lossless)


def format_stats(st) -> str:
    per = lambda s: 1e3 * s / max(1, st.rounds)  # noqa: E731
    return (f"[{st.mode}] {st.new_tokens} tokens in {st.rounds} rounds, tau {st.tau:.2f}, "
            f"{st.tokens_per_s:.1f} tok/s, prefill {st.prefill_s * 1e3:.0f} ms; per round: draft {per(st.draft_s):.2f} "
            f"ms, verify {per(st.verify_s):.2f} ms, host {per(st.host_s):.2f} ms, commit {per(st.commit_s):.2f} ms; "
            f"finish: {st.finish_reason}" + (_acceptance(st) if st.mode != "autoregressive" and st.rounds else ""))


def _acceptance(st) -> str:
    hist = " ".join(f"{n}:{c}" for n, c in st.accept_histogram().items())
    depth = " ".join(f"{p:.2f}" for p in st.depth_acceptance())
    return (f"\n  committed per round (tokens:rounds) {hist}; acceptance per depth {depth or '-'}; "
            f"lookup-chain rounds {st.lookup_rounds}/{st.rounds}"
            + (f"; rounds per budget {st.budget_rounds}" if st.mode == "adaptive" else ""))


def run_generate(args: argparse.Namespace) -> int:
    from jetspec_compile.decode import arm_label

    from .engine import load

    torch.set_num_threads(args.threads)
    engine = load(args.artifact, args.device, mode="eager" if args.eager else "compiled")
    for piece in engine.stream(args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p, seed=args.seed, stop=args.stop, speculative=not args.ar):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(format_stats(engine.last_stats), file=sys.stderr)
    if args.compare and not args.ar:
        spec = engine.last_stats
        kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop)
        engine.generate(args.prompt, args.max_new_tokens, speculative=False, **kw)
        ar = engine.last_stats
        print(format_stats(ar), file=sys.stderr)
        print(f"compare: {spec.mode} {spec.tokens_per_s:.1f} tok/s vs ar_step {ar.tokens_per_s:.1f} tok/s: "
              f"{spec.tokens_per_s / max(ar.tokens_per_s, 1e-9):.2f}x (decode only, same prompt and artifact)",
              file=sys.stderr)
        if spec.mode == "adaptive":  # the adaptive rate next to each fixed budget's
            for b in engine.decoder.fixed_arms:
                engine.generate(args.prompt, args.max_new_tokens, budget=b, **kw)
                st = engine.last_stats
                print(f"compare: fixed budget {arm_label(b)}: {st.tokens_per_s:.1f} tok/s "
                      f"({st.tokens_per_s / max(ar.tokens_per_s, 1e-9):.2f}x ar_step, tau {st.tau:.2f})",
                      file=sys.stderr)
    return 0


def run_verify_lossless(args: argparse.Namespace) -> int:
    from .engine import load
    from .prompts import read_prompts

    torch.set_num_threads(args.threads)
    prompts = read_prompts(args.prompts, args.limit)
    engine = load(args.artifact, args.device)
    total = 0
    for i, p in enumerate(prompts):
        spec = engine.generate(p, args.max_new_tokens).tokens
        ar = engine.generate(p, args.max_new_tokens, speculative=False).tokens
        n = min(len(spec), len(ar))
        diff = next((j for j in range(n) if spec[j] != ar[j]), None)
        if diff is None and len(spec) != len(ar):
            diff = n
        if diff is not None:
            print(f"MISMATCH prompt {i}: first difference at generated position {diff} "
                  f"(speculative {spec[diff:diff + 5]}, ar_step {ar[diff:diff + 5]})")
            return 1
        total += n
        print(f"prompt {i}: {n} tokens identical", flush=True)
    print(f"lossless: {len(prompts)} prompts, {total} greedy tokens identical (speculative == ar_step)")
    return 0
