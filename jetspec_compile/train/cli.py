"""The ``train-head`` command line."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from ..errors import JetSpecError
from ..target import Target
from .data import load_documents, make_sequences, regenerate
from .loop import train_head
from .new_head import build_head_for_target, init_head_from_target, warm_start_head

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"


def register_cli(subparsers) -> None:
    """Add ``train-head`` to the ``jetspec-compile`` command line."""
    from ..validate import at_least, device, finite, out_folder, utf8_text

    p = subparsers.add_parser(
        "train-head",
        help="train a JetSpec draft head for a Qwen3 target",
        description="Train a JetSpec draft head (forward-KL distillation at random anchor blocks) for a "
                    "Hugging Face Qwen3 target folder; writes the head in the released layout.",
    )
    p.add_argument("--target", required=True, type=utf8_text,
                   help="target folder (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("--data", required=True, nargs="+", type=utf8_text,
                   help="text / .py files, folders, or .jsonl files with a 'text' (or 'prompt') string per line")
    p.add_argument("--out", required=True, type=out_folder, help="output head folder (config.json + model.safetensors)")
    p.add_argument("--steps", type=at_least(1), default=1000)
    p.add_argument("--lr", type=finite(0.0, strict=True), default=3e-4)
    p.add_argument("--anchors", type=at_least(1), default=512, help="anchor blocks per sequence (at most)")
    p.add_argument("--depth", type=at_least(1), default=15, help="drafted depths D (block size D+1)")
    p.add_argument("--kd-temperature", type=finite(0.0, strict=True), default=1.0)
    p.add_argument("--loss-decay-gamma", type=finite(0.0), default=0.0,
                   help="0: uniform depth weights (JetSpec); >0: weight exp(-(d-1)/gamma) (DFlash)")
    p.add_argument("--batch", type=at_least(1), default=1, help="sequences per optimizer step")
    p.add_argument("--seq-len", type=at_least(2), default=512, help="training sequence length in tokens")
    p.add_argument("--regenerate", action="store_true",
                   help="replace each sample's continuation by the target's greedy output first")
    p.add_argument("--prompt-len", type=at_least(1), default=None,
                   help="with --regenerate: prompt tokens kept from each text sample (default seq-len/4)")
    p.add_argument("--regen-batch", type=at_least(1), default=16)
    p.add_argument("--layers", type=at_least(1), default=1, help="head decoder layers")
    p.add_argument("--taps", type=at_least(1), default=5, help="number of tapped target layers (reference rule)")
    p.add_argument("--tap-layers", type=at_least(0), nargs="+", default=None, help="explicit tapped target layers")
    p.add_argument("--bidirectional", action="store_true", help="a DFlash-style head (no causal block mask)")
    p.add_argument("--init", default=None, type=utf8_text,
                   help="continue training this head folder (its layers, depth and mask token are kept; "
                        "--tap-layers may re-point its taps)")
    p.add_argument("--init-from-target", type=at_least(0), nargs="*", default=None, metavar="LAYER",
                   help="start a new head from these target layers (none named: the last ones), the target's "
                        "final norm, and fc = identity on the deepest tap")
    p.add_argument("--mask-token-id", type=at_least(0), default=None,
                   help=f"mask token id when the tokenizer has no {MASK_TOKEN} token")
    p.add_argument("--max-sequences", type=at_least(1), default=None, help="use at most this many sequences")
    p.add_argument("--eval-fraction", type=finite(0.0, hi=1.0), default=0.0,
                   help="hold out this fraction of the sequences for evaluation")
    p.add_argument("--eval-every", type=at_least(1), default=None)
    p.add_argument("--save-every", type=at_least(1), default=None)
    p.add_argument("--max-minutes", type=finite(0.0, strict=True), default=None)
    p.add_argument("--device", default=None, type=device, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--target-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train_head)


def _mask_token(tok, args) -> int:
    if args.mask_token_id is not None:
        return int(args.mask_token_id)
    mid = tok.token_to_id(MASK_TOKEN)
    if mid is None:
        raise JetSpecError(f"{args.target}/tokenizer.json: has no {MASK_TOKEN} token; pass --mask-token-id "
                           "(the head's MASK slot token)")
    return int(mid)


def _eos_id(target: Target, tok) -> int | None:
    eos = getattr(target.config, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if eos is None:
        eos = tok.token_to_id(EOS_TOKEN)
    return None if eos is None else int(eos)


def _check_args(args) -> tuple[Path, Path, Path]:
    """(target folder, its tokenizer.json, --out) after the checks that need no model."""
    folder = Path(args.target)
    if not folder.is_dir():
        raise JetSpecError(f"{folder}: target folder not found")
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise JetSpecError(f"{tok_path}: not found (train-head tokenises --data with the target's tokenizer.json)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise JetSpecError(f"{out}: --out exists and is not a folder")
    for name, v, lo in (("--steps", args.steps, 1), ("--anchors", args.anchors, 1), ("--depth", args.depth, 1),
                        ("--batch", args.batch, 1), ("--seq-len", args.seq_len, 3), ("--layers", args.layers, 1)):
        if v < lo:
            raise JetSpecError(f"{name} is {v}; expected >= {lo}")
    if args.init and getattr(args, "init_from_target", None) is not None:
        raise JetSpecError("--init continues a saved head and --init-from-target starts a new one: give one of them")
    return folder, tok_path, out


def _training_pool(args, tok, docs, eos: int | None) -> list:
    """Training sequences (or, with --regenerate, the prompts to regenerate from), shuffled and capped."""
    L = args.seq_len
    encs = tok.encode_batch([text for text, _ in docs], add_special_tokens=False)
    prompt_len = args.prompt_len or max(1, L // 4)
    seqs: list = []
    prompts: list[Tensor] = []
    for (text, is_prompt), enc in zip(docs, encs):
        ids = enc.ids
        if args.regenerate and is_prompt:
            if ids:
                prompts.append(torch.tensor(ids[-(L - 1):], dtype=torch.long))
        elif args.regenerate:
            for piece in make_sequences([ids], L, eos_token_id=eos):
                if piece.numel() > prompt_len:
                    prompts.append(piece[:prompt_len])
        else:
            seqs += make_sequences([ids], L, eos_token_id=eos)
    rng = random.Random(args.seed)
    pool = prompts if args.regenerate else seqs
    rng.shuffle(pool)
    if args.max_sequences:
        del pool[args.max_sequences:]
    if not pool:
        raise JetSpecError(f"{', '.join(args.data)}: no training sequence of >= 3 tokens after tokenisation")
    return pool


def _new_head(args, target: Target, mask_id: int):
    if args.init:
        return warm_start_head(target, args.init, tap_layers=args.tap_layers)
    head = build_head_for_target(target, mask_token_id=mask_id, num_layers=args.layers,
                                 block_size=args.depth + 1, num_taps=args.taps, tap_layers=args.tap_layers,
                                 causal=not args.bidirectional, seed=args.seed)
    if getattr(args, "init_from_target", None) is not None:
        init_head_from_target(head, target, layers=args.init_from_target or None)
    return head


def _summary(log: dict, out: Path) -> dict:
    summary = {"out": str(out), "steps": log["steps_done"], "final_loss": log["final_loss"],
               "wall_seconds": round(log["wall_seconds"], 1)}
    if log.get("final_eval"):
        summary["heldout_loss"] = log["final_eval"]["loss"]
        summary["heldout_tau"] = log["final_eval"]["tau"]
        summary["heldout_top1"] = [round(x, 4) for x in log["final_eval"]["top1"]]
    return summary


def _cmd_train_head(args) -> int:
    from tokenizers import Tokenizer

    from ..target import load_target

    folder, tok_path, out = _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        tok = Tokenizer.from_file(str(tok_path))
    except Exception as e:
        raise JetSpecError(f"{tok_path}: cannot load the tokenizer ({e})") from None
    docs = load_documents(args.data)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    target = load_target(folder, dtype=getattr(torch, args.target_dtype), device=device)
    mask_id = _mask_token(tok, args)
    eos = _eos_id(target, tok)
    pool = _training_pool(args, tok, docs, eos)
    print(f"train-head: {len(pool)} {'prompts' if args.regenerate else 'sequences'} from {len(docs)} documents; "
          f"target {folder} ({target.num_layers} layers, hidden {target.hidden_size}, vocab {target.vocab_size}) "
          f"on {device}", file=sys.stderr)
    if args.regenerate:
        t0 = time.time()
        pool = regenerate(target, pool, total_len=args.seq_len, eos_token_id=eos, batch=args.regen_batch,
                          progress=not args.no_progress)
        print(f"train-head: regenerated {len(pool)} sequences in {time.time() - t0:.0f}s", file=sys.stderr)
    n_eval = int(round(len(pool) * args.eval_fraction))
    eval_seqs, train_seqs = pool[:n_eval], pool[n_eval:]
    if not train_seqs:
        raise JetSpecError("--eval-fraction leaves no training sequence")
    head = _new_head(args, target, mask_id)
    log = train_head(target, head, train_seqs, steps=args.steps, lr=args.lr, anchors=args.anchors,
                     kd_temperature=args.kd_temperature, batch=args.batch, seed=args.seed,
                     loss_decay_gamma=args.loss_decay_gamma, out=out,
                     save_every=args.save_every, eval_sequences=eval_seqs or None,
                     eval_every=args.eval_every if eval_seqs else None, max_minutes=args.max_minutes,
                     progress=not args.no_progress)
    print(json.dumps(_summary(log, out)))
    return 0
