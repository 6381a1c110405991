"""`jetspec-compile export` and `jetspec-compile inspect`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from jetspec_compile.backends import backend_names, get_backend
from jetspec_compile.errors import JetSpecError
from jetspec_compile.validate import at_least, device, int_list, out_folder, utf8_text


def register(sub) -> None:
    p = sub.add_parser("export", help="capture and compile a target + head into an artifact folder",
                       description="Capture the prefill/draft/verify/ar_step graphs with torch.export and compile "
                                   "them with a backend into an artifact folder. Without --target/--head it "
                                   "exports the bundled demo.")
    p.add_argument("--target", type=utf8_text, help="Qwen3 target folder (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("--head", type=utf8_text, help="JetSpec head folder (config.json, model.safetensors)")
    p.add_argument("--synthetic", default=None, type=synthetic_name, metavar="NAME",
                   help="instead of --target/--head: a seeded random-weight target at published Qwen3 shapes "
                        "(qwen3-0.6b, qwen3-1.7b, qwen3-8b-2layers, qwen3-30b-a3b-e32-1layer) and a head of the "
                        "paper's proportions "
                        "(5 layers, 5 taps, block 16); measures cost and correctness at real shapes without a "
                        "checkpoint (tau is meaningless: the weights are random)")
    p.add_argument("--seed", type=at_least(0), default=0, help="with --synthetic: the weights' seed (default 0)")
    p.add_argument("--backend", default="aoti", choices=backend_names())
    p.add_argument("--budget", type=at_least(1), default=None,
                   help="B: tree nodes verified per round, root included (default 64; the demo: its fastest, "
                        "jetspec_compile/demo/fastest.json)")
    p.add_argument("--budgets", type=int_list(1, 4096), default=None,
                   help="more budgets to compile draft + verify for, e.g. 4,8,16,32 (one weights file); the "
                        "runtime then picks a budget or a plain step each round (adaptive; the default decode)")
    p.add_argument("--depth", type=at_least(1), default=None,
                   help="D: drafted depths (default: the head's block size - 1)")
    p.add_argument("--topk", type=at_least(1), default=None, help="K: candidates per depth (default 7; the demo: its fastest)")
    p.add_argument("--lookup", type=at_least(0, 64), default=None,
                   help="L: prompt-lookup chain tokens verified with the head's tree each round (0 = off)")
    p.add_argument("--max-seq-len", type=at_least(1), default=2048, help="S: KV cache rows")
    p.add_argument("--prefill-chunk", type=at_least(1), default=128, help="P: prompt tokens per prefill call")
    p.add_argument("--tree", default=None, choices=("dynamic", "static"),
                   help="tree policy (default dynamic; the demo: its fastest)")
    p.add_argument("--tree-stats", default=None, type=utf8_text,
                   help="with --tree static: per-(depth, rank) acceptance JSON to calibrate the topology")
    p.add_argument("--out", default=None, type=out_folder,
                   help="artifact folder (default artifacts/<name>-<backend>-b<B>)")
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--no-sampling", action="store_true", help="skip the verify_sample graph (greedy only)")
    p.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    p.set_defaults(func=run_export)

    q = sub.add_parser("inspect", help="print an artifact's manifest and verify every file hash")
    q.add_argument("artifact", type=utf8_text)
    q.add_argument("--json", action="store_true", help="print the raw manifest")
    q.set_defaults(func=run_inspect)


def synthetic_name(text: str) -> str:
    """One of jetspec_compile.synthetic.SYNTHETIC."""
    from jetspec_compile.synthetic import SYNTHETIC

    if text not in SYNTHETIC:
        raise argparse.ArgumentTypeError(f"unknown synthetic model {text!r}; expected one of {', '.join(SYNTHETIC)}")
    return text


GENERIC_DEFAULTS = {"budget": 64, "topk": 7, "tree": "dynamic", "lookup": 0}


def _demo_fastest(path: Path) -> dict:
    """The demo's export configuration that measured fastest here (and the command that measured it)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        return ({k: rec[k] for k in GENERIC_DEFAULTS} | ({"budgets": list(rec["budgets"])} if rec.get("budgets") else {})
                | ({"depth": int(rec["depth"])} if rec.get("depth") else {}))
    except (OSError, ValueError, KeyError, TypeError):
        return dict(GENERIC_DEFAULTS)


def _fill_defaults(args: argparse.Namespace, defaults: dict) -> None:
    chosen = {k: v for k, v in defaults.items() if getattr(args, k) is None}
    for k, v in chosen.items():
        setattr(args, k, v)
    if chosen:
        print("defaults: " + ", ".join(f"--{k} {v}" for k, v in chosen.items()), flush=True)


def run_export(args: argparse.Namespace) -> int:
    from jetspec_compile import load_draft_head, load_target
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.tree import calibrate_static_tree

    from .pipeline import export_model

    get_backend(args.backend).check_available(args.device)  # before loading any weights
    if args.synthetic is not None:
        if args.target is not None or args.head is not None:
            raise JetSpecError("--synthetic replaces --target/--head; pass one or the other")
        if args.tree == "static" and args.tree_stats is None:
            raise JetSpecError("--synthetic with --tree static needs --tree-stats FILE (a random head has no "
                               "acceptance statistics of its own)")
        return _export_synthetic(args)
    if (args.target is None) != (args.head is None):
        raise JetSpecError("pass both --target and --head, or neither (the bundled demo)")
    stats = args.tree_stats
    if args.target is None:
        from jetspec_compile.demo_paths import demo_head_path, demo_target_path

        target_dir, head_dir, name = demo_target_path(), demo_head_path(), "demo"
        _fill_defaults(args, _demo_fastest(head_dir.parent / "fastest.json"))
        demo_stats = head_dir.parent / "accept_stats.json"
        if args.tree == "static" and stats is None and demo_stats.is_file():
            stats = demo_stats
    else:
        target_dir, head_dir, name = Path(args.target), Path(args.head), Path(args.head).name
        _fill_defaults(args, GENERIC_DEFAULTS)
    dtype = getattr(torch, args.dtype)
    print(f"loading head {head_dir} and target {target_dir} ...", flush=True)
    head = load_draft_head(head_dir, dtype=dtype)
    if args.depth is not None:
        head.set_depth(args.depth)
    target = load_target(target_dir, tap_layers=head.target_layer_ids, dtype=dtype)
    static, extra_static = None, {}
    if args.tree == "static" and stats is not None:
        static = calibrate_static_tree(stats, args.budget, depth=head.depth, topk=args.topk).to_json()
        extra_static = {b: calibrate_static_tree(stats, b, depth=head.depth, topk=args.topk).to_json()
                        for b in args.budgets or () if b > 1 and b != args.budget}
        print(f"static tree calibrated from {stats}", flush=True)
    spec = SpecConfig(budget=args.budget, topk=args.topk, max_seq_len=args.max_seq_len,
                      prefill_chunk=args.prefill_chunk, tree=args.tree, static_tree=static, lookup=args.lookup)
    out = Path(args.out) if args.out else Path("artifacts") / f"{name}-{args.backend}-b{args.budget}"
    export_model(target, head, spec, out, backend=args.backend, device=args.device, sampling=not args.no_sampling,
                 force=args.force, tokenizer_dir=target_dir, budgets=args.budgets or (), static_trees=extra_static,
                 sources={"target": str(target_dir), "head": str(head_dir), "tree_stats": str(stats) if stats else None},
                 log=lambda s: print(s, flush=True))
    return 0


def _export_synthetic(args: argparse.Namespace) -> int:
    """export --synthetic NAME: build the seeded random target + head in memory and export them."""
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.synthetic import synthetic_head, synthetic_target, weight_bytes
    from jetspec_compile.tree import calibrate_static_tree

    from .pipeline import export_model

    _fill_defaults(args, GENERIC_DEFAULTS)
    dtype = getattr(torch, args.dtype)
    print(f"building synthetic {args.synthetic} (seed {args.seed}, {args.dtype}) ...", flush=True)
    target = synthetic_target(args.synthetic, seed=args.seed, dtype=dtype)
    head = synthetic_head(target, seed=args.seed)
    if args.depth is not None:
        head.set_depth(args.depth)
    wb = weight_bytes(target.model) + weight_bytes(head)
    print(f"  {wb / 1e9:.2f} GB of weights ({wb} bytes)", flush=True)
    static, extra_static = None, {}
    if args.tree == "static":
        stats = args.tree_stats
        static = calibrate_static_tree(stats, args.budget, depth=head.depth, topk=args.topk).to_json()
        extra_static = {b: calibrate_static_tree(stats, b, depth=head.depth, topk=args.topk).to_json()
                        for b in args.budgets or () if b > 1 and b != args.budget}
    spec = SpecConfig(budget=args.budget, topk=args.topk, max_seq_len=args.max_seq_len,
                      prefill_chunk=args.prefill_chunk, tree=args.tree, static_tree=static, lookup=args.lookup)
    out = Path(args.out) if args.out else Path("artifacts") / f"{args.synthetic}-{args.backend}-b{args.budget}"
    export_model(target, head, spec, out, backend=args.backend, device=args.device, sampling=not args.no_sampling,
                 force=args.force, budgets=args.budgets or (), static_trees=extra_static,
                 sources={"synthetic": args.synthetic, "seed": args.seed,
                          "tree_stats": str(args.tree_stats) if args.tree_stats else None},
                 log=lambda s: print(s, flush=True))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from jetspec_compile.artifact import load_manifest

    m = load_manifest(args.artifact, verify_hashes=True)
    if args.json:
        print(json.dumps(m.to_json(), indent=2, sort_keys=True))
        return 0
    s = m.shapes
    print(f"artifact   {args.artifact}")
    print(f"backend    {m.backend} on {m.device}, dtype {m.dtype}, schema v{m.schema_version}")
    print(f"shapes     B={s.budget} D={s.depth} K={s.topk} S={s.max_seq_len} P={s.prefill_chunk}"
          f"{f' + lookup chain L={m.lookup}' if m.lookup else ''}")
    extra = f" ({m.static_tree_nodes} nodes)" if m.static_tree_nodes else ""
    print(f"tree       {m.tree_policy}{extra}; sampling graph: {'yes' if m.sampling else 'no'}")
    t, h = m.target, m.head
    print(f"target     {t.model_type}, {t.num_layers} layers, hidden {t.hidden_size}, "
          f"vocab {t.vocab_size}, taps {list(t.tap_layers)}")
    print(f"head       {h.num_hidden_layers} layers, drafts depth {h.depth} of its block's "
          f"{h.block_depth} (the deepest the tree reaches), causal {h.causal_head}")
    eos = None if m.eos_token_ids is None else list(m.eos_token_ids)
    print(f"tokenizer  {m.tokenizer_file or 'none'}; eos {eos}")
    print("graphs")
    for name, g in m.graphs.items():
        print(f"  {name:14s} {g.file:22s} {g.bytes / 2**20:7.1f} MiB  capture {g.capture_s:6.1f}s  "
              f"compile {g.compile_s:6.1f}s  jetspec ops {'?' if g.jetspec_ops is None else g.jetspec_ops}")
    if m.budgets:
        bud = m.budgets
        rows = ", ".join(f"{'plain' if b == 1 else f'B={b}'} {bud.cost(b):.2f} ms (depth {bud.depth[b]})"
                         for b in bud.compiled)
        chain = bud.cost_ms.get("chain")  # the lookup chain alone (verify.chain)
        print(f"budgets    adaptive by default; calibrated round cost: {rows}"
              + (f", chain alone {chain:.2f} ms" if chain is not None else "")
              + (f"; ar_step {bud.ar_step_ms:.2f} ms" if bud.ar_step_ms is not None else ""))
    if m.autotune:
        print(f"autotune   {m.autotune}")
    vers = ", ".join(f"{k} {v}" for k, v in m.versions.items() if v)
    print(f"versions   {vers}")
    print(f"files      {len(m.files)} files, every sha256 verified")
    return 0
