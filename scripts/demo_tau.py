"""Measure the bundled demo head: tau of greedy speculative decoding on held-out stdlib files at several
budgets, per-depth acceptance, per-(depth, rank) acceptance statistics (written for static-tree
calibration) and dynamic vs calibrated static trees.

    python scripts/demo_tau.py --out jetspec_compile/demo/tau.json --stats jetspec_compile/demo/accept_stats.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from jetspec_compile import load_draft_head, load_target, speculative_generate
from jetspec_compile.calibration import collect_accept_stats, save_accept_stats
from jetspec_compile.demo_paths import demo_head_path, demo_heldout_files, demo_target_path
from jetspec_compile.tree import calibrate_static_tree


def prompts_from(files, tokenizer, n_tokens: int, per_file: int) -> list[list[int]]:
    out = []
    for f in files:
        ids = tokenizer.encode(f.read_text(errors="replace")).ids
        step = max(n_tokens, (len(ids) - n_tokens) // max(1, per_file))
        for start in range(0, max(1, len(ids) - n_tokens), step)[:per_file]:
            chunk = ids[start:start + n_tokens]
            if len(chunk) == n_tokens:
                out.append(chunk)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budgets", default="8,16,32,64,128")
    ap.add_argument("--topk", type=int, default=7, help="K of the dynamic tree (the paper's 7) and of the statistics")
    ap.add_argument("--extra-topks", default="1,2,4",
                    help="also measure the dynamic tree with these K (a K=7 tree of B=16 nodes is at most 3 deep)")
    ap.add_argument("--depths", default="",
                    help="also measure the dynamic tree with its drafted depth capped at these D (export --depth D)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--per-file", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--calib-budget", type=int, default=64)
    ap.add_argument("--out", default="runs/demo_tau.json")
    ap.add_argument("--stats", default="runs/accept_stats.json")
    ap.add_argument("--calibration", default=None,
                    help="calibrate the static trees from this acceptance-statistics JSON instead of collecting new "
                         "ones (e.g. the shipped jetspec_compile/demo/accept_stats.json)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--head", default=None, help="head folder to measure (default: the bundled demo head)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer

    head = load_draft_head(args.head or demo_head_path())
    target = load_target(demo_target_path(), tap_layers=head.target_layer_ids)
    tok = Tokenizer.from_file(str(demo_target_path() / "tokenizer.json"))
    files = demo_heldout_files()
    calib_files, eval_files = files[0::2], files[1::2]  # calibrate and evaluate on disjoint held-out files
    calib = prompts_from(calib_files, tok, args.prompt_tokens, args.per_file)
    evalp = prompts_from(eval_files, tok, args.prompt_tokens, args.per_file)
    eos = [int(target.config.eos_token_id)] if target.config.eos_token_id is not None else []
    print(f"{len(calib)} calibration prompts, {len(evalp)} evaluation prompts", flush=True)
    t0 = time.time()
    if args.calibration:
        stats = json.loads(Path(args.calibration).read_text())
        print(f"acceptance statistics from {args.calibration}", flush=True)
    else:
        stats = collect_accept_stats(target, head, calib, args.max_new_tokens, budget=args.calib_budget,
                                     topk=args.topk, eos_token_ids=eos)
        save_accept_stats(stats, args.stats)
        print(f"acceptance statistics ({time.time() - t0:.0f}s) -> {args.stats}", flush=True)
    print("per-depth acceptance " + " ".join(f"{r:.2f}" for r in stats["depth_accept_rate"]), flush=True)
    rows = []
    for B in [int(b) for b in args.budgets.split(",")]:
        row = {"budget": B}
        static = calibrate_static_tree(stats["accept_rate"], B, depth=head.depth, topk=args.topk)
        extra = [int(k) for k in args.extra_topks.split(",") if k.strip()]
        runs = [("dynamic", "dynamic", args.topk, None), ("static", static, args.topk, None)]
        runs += [(f"dynamic_k{k}", "dynamic", k, None) for k in extra if k != args.topk]
        runs += [(f"dynamic_d{d}", "dynamic", args.topk, int(d)) for d in args.depths.split(",") if d.strip()]
        for name, tree, K, depth in runs:
            head.set_depth(depth or head.block_size - 1)
            acc, rounds, toks = [], 0, 0
            t1 = time.time()
            for ids in evalp:
                out, st = speculative_generate(target, head, ids, args.max_new_tokens, budget=B, topk=K,
                                               tree=tree, eos_token_id=eos)
                acc += st.accepted
                rounds += st.rounds
                toks += st.new_tokens
            row[f"tau_{name}"] = sum(acc) / len(acc)
            row[f"rounds_{name}"] = rounds
            row[f"seconds_{name}"] = round(time.time() - t1, 1)
        head.set_depth(head.block_size - 1)
        rows.append(row)
        print(f"B={B:4d}  " + "  ".join(f"{k[4:]} {v:.2f}" for k, v in row.items() if k.startswith("tau_")), flush=True)
    # losslessness on the evaluation prompts at one budget (greedy speculative == greedy target)
    mismatches = 0
    for ids in evalp[:4]:
        out, _ = speculative_generate(target, head, ids, args.max_new_tokens, budget=16, eos_token_id=eos)
        with torch.no_grad():
            ref = target.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=eos or None,
                                        pad_token_id=target.config.pad_token_id)[0, len(ids):].tolist()
        mismatches += out != ref
    result = {"prompts": {"calibration": len(calib), "evaluation": len(evalp), "prompt_tokens": args.prompt_tokens,
                          "max_new_tokens": args.max_new_tokens},
              "topk": args.topk, "depth": head.depth, "rows": rows,
              "depth_accept_rate": stats["depth_accept_rate"], "accept_rate": stats["accept_rate"],
              "lossless_checked": min(4, len(evalp)), "lossless_mismatches": mismatches,
              "command": "python scripts/demo_tau.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    cols = [k for k in rows[0] if k.startswith("tau_")]
    print("| B | " + " | ".join(c[4:] for c in cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
    for r in rows:
        print(f"| {r['budget']} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
    print(f"lossless check: {mismatches} mismatches in {result['lossless_checked']} prompts -> {args.out}")


if __name__ == "__main__":
    main()
