#!/usr/bin/env python
"""Build the bundled demo: a small Qwen3 trained from scratch on the Python standard library, plus a
JetSpec head for it.

Stages (each writes into jetspec_compile/demo/, logs and scratch files go to runs/demo/):

  python scripts/build_demo.py data         # split the stdlib *.py files into train / held-out BY FILE
  python scripts/build_demo.py tokenizer    # byte-level BPE, vocab 4096, <|endoftext|> <|mask|> <|pad|>
  python scripts/build_demo.py target --bench-seconds 60     # measure training throughput only
  python scripts/build_demo.py target --steps N              # train the target (one thread)
  python scripts/build_demo.py head --steps N [--regenerate] # train a JetSpec head with train_head
  python scripts/build_demo.py head --init DIR ...           # continue a head (a further stage)
  python scripts/build_demo.py head --init-from-target 4 5 ... # a new head from target layers 4, 5
  python scripts/build_demo.py head --regenerate ... --regen-only  # regenerate and cache the data only
  python scripts/build_demo.py head-curves --logs A B C --out PNG   # one figure for the stages

Everything runs on one CPU thread (``torch.set_num_threads(1)``) with fixed seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jetspec_compile" / "demo"
TARGET_DIR = DEMO / "target"
HEAD_DIR = DEMO / "head"
RUNS = ROOT / "runs" / "demo"
SKIP_DIRS = {"test", "tests", "idlelib", "turtledemo", "site-packages"}
EOS, MASK, PAD = "<|endoftext|>", "<|mask|>", "<|pad|>"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[str]:
    """Relative paths of the interpreter's stdlib *.py files outside test/idlelib/turtledemo/site-packages."""
    root = stdlib_root()
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if set(rel.parts[:-1]) & SKIP_DIRS:
            continue
        out.append(rel.as_posix())
    return sorted(out)


def read_text(rel: str) -> str:
    return (stdlib_root() / rel).read_text(encoding="utf-8", errors="replace")


# ---- stage: data -------------------------------------------------------------------------------------

def cmd_data(args) -> None:
    files = stdlib_files()
    rng = random.Random(args.seed)
    shuffled = files[:]
    rng.shuffle(shuffled)
    n_held = max(1, round(len(files) * args.heldout_fraction))
    held = sorted(shuffled[:n_held])
    train = sorted(shuffled[n_held:])
    DEMO.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    (DEMO / "heldout_files.txt").write_text("\n".join(held) + "\n")
    (RUNS / "train_files.txt").write_text("\n".join(train) + "\n")
    info = {
        "python": sys.version.split()[0], "stdlib": str(stdlib_root()), "seed": args.seed,
        "heldout_fraction": args.heldout_fraction, "files": len(files), "train_files": len(train),
        "heldout_files": len(held), "excluded_dirs": sorted(SKIP_DIRS),
        "train_bytes": sum((stdlib_root() / f).stat().st_size for f in train),
        "heldout_bytes": sum((stdlib_root() / f).stat().st_size for f in held),
    }
    (DEMO / "data.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


def train_files() -> list[str]:
    p = RUNS / "train_files.txt"
    if not p.is_file():
        sys.exit(f"{p}: missing; run `python scripts/build_demo.py data` first")
    return [l for l in p.read_text().splitlines() if l]


def heldout_files() -> list[str]:
    return [l for l in (DEMO / "heldout_files.txt").read_text().splitlines() if l]


# ---- stage: tokenizer --------------------------------------------------------------------------------

def cmd_tokenizer(args) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size, min_frequency=2, special_tokens=[EOS, MASK, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    texts = [read_text(f) for f in train_files()]
    t0 = time.time()
    tok.train_from_iterator(texts, trainer=trainer)
    TARGET_DIR.mkdir(parents=True, exist_ok=True)
    tok.save(str(TARGET_DIR / "tokenizer.json"))
    (TARGET_DIR / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": PAD,
        "mask_token": MASK, "model_max_length": 2048, "clean_up_tokenization_spaces": False,
    }, indent=2) + "\n")
    n_tok = sum(len(e.ids) for e in tok.encode_batch(texts))
    n_chars = sum(len(t) for t in texts)
    info = {"vocab_size": tok.get_vocab_size(), "train_seconds": round(time.time() - t0, 1),
            "train_tokens": n_tok, "train_chars": n_chars, "chars_per_token": round(n_chars / n_tok, 3),
            "eos_id": tok.token_to_id(EOS), "mask_id": tok.token_to_id(MASK), "pad_id": tok.token_to_id(PAD)}
    (RUNS / "tokenizer.json.info").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


def load_tok():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TARGET_DIR / "tokenizer.json"))


def encode_files(files: list[str], tok) -> list[list[int]]:
    """The token ids of each file."""
    return [e.ids for e in tok.encode_batch([read_text(f) for f in files])]


def token_stream(files: list[str], tok, encoded: list[list[int]] | None = None) -> np.ndarray:
    """All files tokenised (or their ``encoded`` ids), each followed by <|endoftext|>, concatenated (int32)."""
    eos = tok.token_to_id(EOS)
    parts = []
    for ids in encoded if encoded is not None else encode_files(files, tok):
        parts.append(np.asarray(ids, dtype=np.int32))
        parts.append(np.asarray([eos], dtype=np.int32))
    return np.concatenate(parts)


# ---- stage: target -----------------------------------------------------------------------------------

def target_config(args):
    from transformers import Qwen3Config

    tok = load_tok()
    return Qwen3Config(
        vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
        intermediate_size=args.intermediate, max_position_embeddings=args.max_positions, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=args.tie, initializer_range=0.02,
        bos_token_id=None, eos_token_id=tok.token_to_id(EOS), pad_token_id=tok.token_to_id(PAD),
        attn_implementation="sdpa", use_cache=True,
    )


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def eval_loss(model, windows: torch.Tensor, batch: int, autocast: bool) -> float:
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch].long()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(w[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                                                 reduction="sum")
        tot += float(loss)
        n += w[:, 1:].numel()
    model.train()
    return tot / n


def cmd_target(args) -> None:
    from transformers import GenerationConfig, Qwen3ForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = load_tok()
    t0 = time.time()
    stream = torch.from_numpy(token_stream(train_files(), tok))
    held = torch.from_numpy(token_stream(heldout_files(), tok))
    L = args.seq_len + 1
    n_win = len(stream) // L
    windows = stream[: n_win * L].view(n_win, L)
    h_win = held[: (len(held) // L) * L].view(-1, L)
    h_idx = torch.linspace(0, len(h_win) - 1, min(args.eval_windows, len(h_win))).long()
    h_eval = h_win[h_idx]
    print(f"tokenised in {time.time() - t0:.1f}s: train {len(stream)} tokens ({n_win} windows of {L}), "
          f"held-out {len(held)} tokens ({len(h_win)} windows, eval on {len(h_eval)})", flush=True)

    cfg = target_config(args)
    model = Qwen3ForCausalLM(cfg)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    n_nonemb = n_params - model.model.embed_tokens.weight.numel()
    print(f"params {n_params} ({n_nonemb} without the embedding)", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(n_win, generator=g)
    cursor = 0
    steps = args.steps if not args.bench_seconds else 10**9
    log = {"config": cfg.to_dict(), "args": {k: v for k, v in vars(args).items() if k != "func"}, "params": n_params, "params_without_embedding": n_nonemb,
           "train_tokens_available": int(len(stream)), "heldout_tokens": int(len(held)),
           "steps": [], "loss": [], "lr": [], "tokens": [], "elapsed": [], "eval": []}
    start = time.time()
    seen = 0
    ema = None
    for step in range(steps):
        if cursor + args.batch > n_win:
            order = torch.randperm(n_win, generator=g)
            cursor = 0
        w = windows[order[cursor:cursor + args.batch]].long()
        cursor += args.batch
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for grp in opt.param_groups:
            grp["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(w[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += w[:, 1:].numel()
        lv = loss.item()
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        el = time.time() - start
        if args.bench_seconds:
            if step == 2:
                bench_t0, bench_seen = el, seen
            if el >= args.bench_seconds and step > 3:
                tps = (seen - bench_seen) / (el - bench_t0)
                print(f"BENCH params={n_params} batch={args.batch}x{args.seq_len} bf16={args.bf16} "
                      f"threads={args.threads}: {tps:.0f} tokens/s, {(el - bench_t0) / (step - 2):.3f} s/step, "
                      f"loss {lv:.3f} after {step + 1} steps", flush=True)
                return
            continue
        if step % args.log_every == 0 or step == steps - 1:
            log["steps"].append(step)
            log["loss"].append(lv)
            log["lr"].append(lr)
            log["tokens"].append(seen)
            log["elapsed"].append(el)
            print(f"step {step:5d}/{steps} loss {lv:.4f} (ema {ema:.4f}) lr {lr:.2e} tok/s {seen / el:.0f} "
                  f"elapsed {el / 60:.1f} min", flush=True)
        if (step + 1) % args.eval_every == 0 or step == steps - 1:
            hl = eval_loss(model, h_eval, 16, args.bf16)
            log["eval"].append({"step": step, "heldout_loss": hl, "train_loss_ema": ema, "elapsed": time.time() - start})
            print(f"  eval step {step}: held-out loss {hl:.4f} (ppl {math.exp(hl):.2f})", flush=True)
            save_target(model, cfg, log, args)
        if args.max_minutes and el > args.max_minutes * 60:
            print(f"stopping at step {step}: time budget of {args.max_minutes} min reached", flush=True)
            hl = eval_loss(model, h_eval, 16, args.bf16)
            log["eval"].append({"step": step, "heldout_loss": hl, "train_loss_ema": ema, "elapsed": time.time() - start})
            break
    log["wall_seconds"] = time.time() - start
    log["tokens_per_second"] = seen / log["wall_seconds"]
    log["final_train_loss_ema"] = ema
    log["final_heldout_loss"] = log["eval"][-1]["heldout_loss"]
    model.generation_config = GenerationConfig(eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                                               do_sample=False, max_new_tokens=256)
    save_target(model, cfg, log, args)
    sample = greedy_sample(model, tok, h_win[0, :64].long(), 96)
    log["sample"] = sample
    (DEMO / "target_training.json").write_text(json.dumps(log, indent=1) + "\n")
    print("greedy sample from a held-out prompt:\n" + sample, flush=True)
    plot_target(log)


def greedy_sample(model, tok, prompt: torch.Tensor, n: int) -> str:
    model.eval()
    with torch.no_grad():
        out = model.generate(prompt[None], max_new_tokens=n, do_sample=False)
    return tok.decode(prompt.tolist()) + "<<<|>>>" + tok.decode(out[0, len(prompt):].tolist())


def save_target(model, cfg, log, args) -> None:
    TARGET_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(TARGET_DIR), safe_serialization=True)
    (DEMO / "target_training.json").write_text(json.dumps(log, indent=1) + "\n")


def plot_target(log) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([t / 1e6 for t in log["tokens"]], log["loss"], lw=0.8, label="train (batch)")
    per_step = log["args"]["batch"] * log["args"]["seq_len"]
    ev = log["eval"]
    ax.plot([(e["step"] + 1) * per_step / 1e6 for e in ev], [e["heldout_loss"] for e in ev], "o-",
            label="held-out (33 files never trained on)")
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"demo target ({log['params'] / 1e6:.1f} M params) on the Python stdlib")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(DEMO / "target_training.png", dpi=110)


def save_regen(path: Path, train, held) -> None:
    seqs = list(train) + list(held)
    np.savez(path, ids=np.concatenate([s.ids.numpy() for s in seqs]), lens=np.array([s.ids.numel() for s in seqs]),
             first=np.array([s.first_anchor for s in seqs]), n_train=np.array(len(train)))


def load_regen(path: Path):
    from jetspec_compile.train import TrainSequence

    z = np.load(path)
    ends = np.cumsum(z["lens"])
    seqs = [TrainSequence(torch.from_numpy(z["ids"][e - n:e].astype(np.int64)), int(f))
            for e, n, f in zip(ends, z["lens"], z["first"])]
    n = int(z["n_train"])
    return seqs[:n], seqs[n:]


def cmd_plot_target(args) -> None:
    plot_target(json.loads((DEMO / "target_training.json").read_text()))


# ---- stage: head -------------------------------------------------------------------------------------

def cmd_head(args) -> None:
    from jetspec_compile.train import (build_head_for_target, evaluate_head, init_head_from_target, regenerate,
                                       train_head, warm_start_head)
    from jetspec_compile.target import load_target

    if args.init and args.init_from_target is not None:
        sys.exit("--init continues a saved head and --init-from-target starts a new one: give one of them")
    torch.set_num_threads(args.threads)
    tok = load_tok()
    target = load_target(args.target_dir)
    out_dir = Path(args.out)
    eos = tok.token_to_id(EOS)
    L = args.seq_len
    rng = random.Random(args.seed)

    def windows(files, limit, encoded=None):
        stream = torch.from_numpy(token_stream(files, tok, encoded)).long()
        n = len(stream) // L
        idx = list(range(n))
        rng.shuffle(idx)
        return [stream[i * L:(i + 1) * L] for i in idx[:limit]]

    t0 = time.time()
    encoded = encode_files(train_files(), tok)
    train_seqs = windows(train_files(), args.sequences, encoded)
    if args.file_starts:  # prompts a user gives most: the start of a file (docstring, imports)
        starts = [torch.tensor(ids[:L], dtype=torch.long) for ids in encoded if len(ids) > args.prompt_len]
        train_seqs = (starts + train_seqs)[:args.sequences]
    eval_seqs = windows(heldout_files(), args.eval_sequences)
    print(f"{len(train_seqs)} train / {len(eval_seqs)} held-out windows of {L} tokens "
          f"({time.time() - t0:.1f}s)", flush=True)
    info = {"regenerate": bool(args.regenerate)}
    if args.regenerate:
        tag = "_fs" if args.file_starts else ""
        cache = RUNS / f"regen_{len(train_seqs)}_{len(eval_seqs)}_{L}_{args.prompt_len}_{args.seed}{tag}.npz"
        t0 = time.time()
        if cache.is_file():  # the target's greedy continuations are deterministic: reuse them
            train_seqs, eval_seqs = load_regen(cache)
            info["regenerate_cache"] = str(cache)
        else:
            train_seqs = regenerate(target, [s[:args.prompt_len] for s in train_seqs], total_len=L,
                                    eos_token_id=eos, batch=args.regen_batch, progress=True)
            eval_seqs = regenerate(target, [s[:args.prompt_len] for s in eval_seqs], total_len=L,
                                   eos_token_id=eos, batch=args.regen_batch, progress=True)
            save_regen(cache, train_seqs, eval_seqs)
        info["regenerate_seconds"] = time.time() - t0
        info["regenerated_tokens"] = sum(s.ids.numel() - args.prompt_len for s in train_seqs + eval_seqs)
        print(f"regenerated {len(train_seqs) + len(eval_seqs)} continuations in {info['regenerate_seconds']:.0f}s",
              flush=True)
    if args.regen_only:
        return
    if args.init:
        head = warm_start_head(target, args.init, tap_layers=args.tap_layers)
        info["init"] = str(args.init)
    else:
        head = build_head_for_target(target, num_layers=args.layers, block_size=args.depth + 1,
                                     mask_token_id=tok.token_to_id(MASK), num_taps=args.taps,
                                     tap_layers=args.tap_layers, seed=args.seed)
        if args.init_from_target is not None:  # copy target layers, final norm, fc = identity on a tap
            init_head_from_target(head, target, layers=args.init_from_target or None, fc_tap=args.fc_tap)
            info["init_from_target"] = {"layers": args.init_from_target or "last", "fc_tap": args.fc_tap}
    raw_eval = windows(heldout_files(), args.eval_sequences)  # natural held-out text, not regenerated
    t0 = time.time()
    result = train_head(target, head, train_seqs, steps=args.steps, lr=args.lr, anchors=args.anchors,
                        kd_temperature=args.kd_temperature, loss_decay_gamma=args.loss_decay_gamma,
                        batch=args.batch, seed=args.seed, out=out_dir, warmup=args.warmup,
                        eval_sequences=eval_seqs, eval_every=args.eval_every, max_minutes=args.max_minutes,
                        autocast_dtype=torch.bfloat16 if args.bf16 else None, progress=True, log_every=5)
    info["train_seconds"] = time.time() - t0
    info["eval_raw_heldout_text"] = evaluate_head(target, head, raw_eval, anchors=args.anchors)
    info["head_params"] = sum(p.numel() for p in head.parameters())
    info["train_sequences"] = len(train_seqs)
    info["eval_sequences"] = len(eval_seqs)
    result.update(info)
    result["command"] = " ".join(sys.argv)
    (out_dir / "train_log.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1, default=str))


def cmd_head_curves(args) -> None:
    """One figure for a head trained in stages (--init chains): loss and held-out top-1 on one step axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [json.loads(Path(f).read_text()) for f in args.logs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    offset = 0
    for i, log in enumerate(logs, 1):
        steps = [offset + s for s in log["steps"]]
        a1.plot(steps, log["loss"], lw=0.5, alpha=0.6, label=f"stage {i} train")
        ev = log.get("eval") or []
        a1.plot([offset + e["step"] for e in ev], [e["loss"] for e in ev], "o-", ms=3, label=f"stage {i} held-out")
        for d, style in ((0, "o-"), (1, "s--"), (len(ev[0]["top1"]) - 1 if ev else 0, "^:")):
            a2.plot([offset + e["step"] for e in ev], [e["top1"][d] for e in ev], style, ms=3,
                    label=f"stage {i}, depth {d + 1}")
        offset += log["steps_done"]
        for ax in (a1, a2):
            ax.axvline(offset, color="gray", lw=0.5)
    a1.set_yscale("log")
    a1.set_xlabel("step (cumulative over stages)")
    a1.set_ylabel("forward KL x T^2 (nats/slot)")
    a1.set_title("demo head KD loss")
    a2.set_xlabel("step (cumulative over stages)")
    a2.set_ylabel("held-out top-1 agreement")
    a2.set_ylim(0, 1)
    a2.set_title("held-out per-depth top-1 (each stage's own held-out set)")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


# ---- main --------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    d = sub.add_parser("data")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--heldout-fraction", type=float, default=0.05)
    d.set_defaults(func=cmd_data)
    t = sub.add_parser("tokenizer")
    t.add_argument("--vocab-size", type=int, default=4096)
    t.set_defaults(func=cmd_tokenizer)
    m = sub.add_parser("target")
    m.add_argument("--hidden", type=int, default=256)
    m.add_argument("--layers", type=int, default=6)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--kv-heads", type=int, default=2)
    m.add_argument("--head-dim", type=int, default=64)
    m.add_argument("--intermediate", type=int, default=768)
    m.add_argument("--max-positions", type=int, default=2048)
    m.add_argument("--tie", action=argparse.BooleanOptionalAction, default=True)
    m.add_argument("--seq-len", type=int, default=256)
    m.add_argument("--batch", type=int, default=16)
    m.add_argument("--steps", type=int, default=1000)
    m.add_argument("--lr", type=float, default=2e-3)
    m.add_argument("--warmup", type=int, default=60)
    m.add_argument("--weight-decay", type=float, default=0.1)
    m.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--log-every", type=int, default=10)
    m.add_argument("--eval-every", type=int, default=200)
    m.add_argument("--eval-windows", type=int, default=96)
    m.add_argument("--max-minutes", type=float, default=0)
    m.add_argument("--bench-seconds", type=float, default=0, help="measure throughput only; saves nothing")
    m.set_defaults(func=cmd_target)
    pt = sub.add_parser("plot-target", help="redraw target_training.png from target_training.json")
    pt.set_defaults(func=cmd_plot_target)
    h = sub.add_parser("head")
    h.add_argument("--target-dir", default=str(TARGET_DIR))
    h.add_argument("--out", default=str(HEAD_DIR))
    h.add_argument("--layers", type=int, default=1)
    h.add_argument("--depth", type=int, default=15)
    h.add_argument("--taps", type=int, default=5)
    h.add_argument("--tap-layers", type=int, nargs="+", default=None, help="explicit tapped target layers")
    h.add_argument("--init", default=None, help="continue training this head folder")
    h.add_argument("--init-from-target", type=int, nargs="*", default=None, metavar="LAYER",
                   help="initialise a new head from these target layers (none named: the last ones), "
                        "its final norm from the target's and fc as identity on --fc-tap")
    h.add_argument("--fc-tap", type=int, default=None, help="with --init-from-target: the tap fc passes on "
                                                            "(default: the deepest)")
    h.add_argument("--file-starts", action="store_true",
                   help="also prompt with the first --prompt-len tokens of every training file")
    h.add_argument("--warmup", type=float, default=0.04, help="warm-up steps (fraction of --steps if < 1)")
    h.add_argument("--seq-len", type=int, default=256)
    h.add_argument("--sequences", type=int, default=4000)
    h.add_argument("--eval-sequences", type=int, default=24)
    h.add_argument("--anchors", type=int, default=64)
    h.add_argument("--steps", type=int, default=500)
    h.add_argument("--batch", type=int, default=4)
    h.add_argument("--lr", type=float, default=3e-4)
    h.add_argument("--loss-decay-gamma", type=float, default=0.0,
                   help="0: uniform depth weights (JetSpec); > 0: weight depth d by exp(-(d-1)/gamma) (DFlash)")
    h.add_argument("--kd-temperature", type=float, default=1.0)
    h.add_argument("--regenerate", action="store_true")
    h.add_argument("--prompt-len", type=int, default=64)
    h.add_argument("--regen-batch", type=int, default=64)
    h.add_argument("--regen-only", action="store_true", help="only regenerate (and cache) the sequences")
    h.add_argument("--eval-every", type=int, default=50)
    h.add_argument("--max-minutes", type=float, default=0)
    h.add_argument("--bf16", action="store_true", help="bf16 autocast for the head forward")
    h.add_argument("--threads", type=int, default=1)
    h.add_argument("--seed", type=int, default=0)
    h.set_defaults(func=cmd_head)
    hc = sub.add_parser("head-curves", help="one training-curve figure for a head trained in --init stages")
    hc.add_argument("--logs", nargs="+", required=True, help="train_log.json of each stage, in order")
    hc.add_argument("--out", required=True, help="PNG path")
    hc.set_defaults(func=cmd_head_curves)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
