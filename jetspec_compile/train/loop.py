"""The training loop: AdamW, linear warm-up, cosine decay, checkpoints; and the training curves."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Sequence

import torch

from ..errors import JetSpecError
from ..head import DraftHead
from ..target import Target
from .data import TrainSequence, _as_sequence, sample_anchors
from .evaluation import evaluate_head
from .loss import _active_weight, _sequence_stats, _teacher
from .progress import _fmt_top1, _progress

def _lr_at(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train_head(
    target: Target,
    head: DraftHead,
    sequences: Sequence,
    *,
    steps: int,
    lr: float = 3e-4,
    anchors: int = 512,
    kd_temperature: float = 1.0,
    batch: int = 1,
    seed: int = 0,
    loss_decay_gamma: float = 0.0,
    weight_decay: float = 0.01,
    warmup: float = 0.04,
    min_lr_ratio: float = 0.1,
    grad_clip: float = 1.0,
    anchor_chunk: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    out: str | Path | None = None,
    save_every: int | None = None,
    eval_sequences: Sequence | None = None,
    eval_every: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    log_every: int = 10,
) -> dict:
    """Train ``head`` (in place) to match the frozen ``target`` on ``sequences``; return metrics and curves.

    sequences: 1-D token-id tensors, ``(ids, first_anchor)`` tuples or :class:`TrainSequence`s.
    One optimizer step = ``batch`` sequences (the loss is the mean over all their active slots).
    ``loss_decay_gamma`` = 0 weighs every depth the same (the JetSpec recipe); gamma > 0 weighs depth d
    by exp(-(d-1)/gamma) (DFlash's decay, the paper's Table 7 ablation), a weighted mean.
    Anchors: up to ``anchors`` distinct positions per sequence; all of them run in one head forward
    (or chunks of ``anchor_chunk`` blocks with gradient accumulation, to bound memory on long sequences).
    LR: linear warm-up over ``warmup`` (fraction of steps, or a step count if >= 1), cosine to
    ``min_lr_ratio * lr``. With ``out``, the head is saved there (released layout, plus ``train_log.json``
    and ``training_curve.png``) every ``save_every`` steps, at every evaluation and at the end.
    ``max_minutes`` stops early (the schedule is not stretched). ``autocast_dtype`` (e.g. torch.bfloat16)
    runs the head's forward under autocast (fp32 master weights, fp32 softmax and KL); the teacher always
    runs in the target's own dtype.
    """
    if steps < 1:
        raise JetSpecError(f"train_head: steps is {steps}; expected >= 1")
    if kd_temperature <= 0:
        raise JetSpecError(f"train_head: kd_temperature is {kd_temperature}; expected > 0")
    head.check_compatible(target)
    seqs = [_as_sequence(s) for s in sequences]
    seqs = [TrainSequence(s.ids.to(target.device), s.first_anchor) for s in seqs
            if s.ids.numel() - 2 >= max(0, s.first_anchor)]
    if not seqs:
        raise JetSpecError("train_head: no usable training sequence (each needs >= 3 tokens and an anchor position)")
    for i, s in enumerate(seqs):
        bad = s.ids[(s.ids < 0) | (s.ids >= target.vocab_size)]
        if bad.numel():
            raise JetSpecError(f"train_head: sequence {i} has token id {int(bad[0])} outside the target's "
                               f"vocabulary 0..{target.vocab_size - 1}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    D = head.depth
    grad_flags = {n: p.requires_grad for n, p in target.named_parameters()}
    target.requires_grad_(False)
    target.eval()
    head.train()
    params = [p for p in head.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    warm = int(warmup) if warmup >= 1 else max(1, int(round(warmup * steps)))
    order: list[int] = []
    log: dict = {"steps": [], "loss": [], "lr": [], "top1": [], "tau_per_anchor": [], "elapsed": [], "eval": [],
                 "config": {"steps": steps, "lr": lr, "anchors": anchors, "kd_temperature": kd_temperature,
                            "batch": batch, "seed": seed, "loss_decay_gamma": loss_decay_gamma,
                            "weight_decay": weight_decay, "warmup_steps": warm,
                            "min_lr_ratio": min_lr_ratio, "grad_clip": grad_clip, "block_size": head.block_size,
                            "autocast_dtype": str(autocast_dtype) if autocast_dtype else None,
                            "causal": head.causal, "head_layers": int(head.config.num_hidden_layers),
                            "target_layer_ids": head.target_layer_ids, "sequences": len(seqs)}}
    win_agree, win_count = torch.zeros(D), torch.zeros(D)
    win_lead = win_blocks = 0
    rows_total = 0
    t0 = time.time()
    out_path = Path(out) if out is not None else None

    def do_eval(step: int) -> None:
        if not eval_sequences:
            return
        ev = evaluate_head(target, head, eval_sequences, anchors=anchors, kd_temperature=kd_temperature)
        ev["step"] = step
        ev["elapsed"] = time.time() - t0
        log["eval"].append(ev)

    def checkpoint() -> None:
        if out_path is None:
            return
        head.eval()
        head.save(out_path)
        head.train()
        (out_path / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
        try:
            plot_training(log, out_path / "training_curve.png")
        except Exception:  # plotting never stops a training run
            pass

    if eval_sequences and eval_every:
        do_eval(0)
    step = 0
    try:
        with _progress(progress, "train-head", steps, log_every) as bar:
            for step in range(steps):
                cur_lr = _lr_at(step, steps, lr, warm, min_lr_ratio)
                for grp in opt.param_groups:
                    grp["lr"] = cur_lr
                picks = []
                for _ in range(batch):
                    if not order:
                        order = list(range(len(seqs)))
                        rng.shuffle(order)
                    picks.append(seqs[order.pop()])
                plan = [(s, sample_anchors(s.ids.numel(), anchors, g, s.first_anchor).to(target.device))
                        for s in picks]
                n_rows = sum(int(_active_weight(s, a.cpu(), D)) for s, a in plan)
                norm = sum(_active_weight(s, a.cpu(), D, loss_decay_gamma) for s, a in plan)
                opt.zero_grad(set_to_none=True)
                step_loss = 0.0
                for s, a in plan:
                    logits, taps = _teacher(target, head, s.ids)
                    chunk = anchor_chunk or max(1, a.numel())
                    for c in range(0, a.numel(), chunk):
                        st = _sequence_stats(head, target, s, a[c:c + chunk], kd_temperature, logits, taps,
                                             autocast_dtype, loss_decay_gamma)
                        (st.loss_sum / norm).backward()
                        step_loss += st.loss_sum.item() / norm
                        win_agree += st.agree
                        win_count += st.count
                        win_lead += st.lead
                        win_blocks += st.blocks
                rows_total += n_rows
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                top1 = (win_agree / win_count.clamp_min(1)).tolist()
                tau = 1 + win_lead / max(win_blocks, 1)
                if step % log_every == 0 or step == steps - 1:
                    log["steps"].append(step)
                    log["loss"].append(step_loss)
                    log["lr"].append(cur_lr)
                    log["top1"].append(top1)
                    log["tau_per_anchor"].append(tau)
                    log["elapsed"].append(time.time() - t0)
                    win_agree, win_count = torch.zeros(D), torch.zeros(D)
                    win_lead = win_blocks = 0
                bar.advance(1, info=f"loss {step_loss:.3f} tau/anchor~{tau:.2f} top1% d1..{D}: {_fmt_top1(top1)}")
                done = step + 1
                if eval_sequences and eval_every and done % eval_every == 0 and done < steps:
                    do_eval(done)
                    checkpoint()
                elif save_every and done % save_every == 0:
                    checkpoint()
                if max_minutes and time.time() - t0 > max_minutes * 60:
                    log["stopped_early"] = f"time budget of {max_minutes} min reached after {done} steps"
                    break
        step += 1
        if eval_sequences:
            do_eval(step)
    finally:
        for n, p in target.named_parameters():
            p.requires_grad_(grad_flags[n])
        head.eval()
    wall = time.time() - t0
    log["steps_done"] = step
    log["wall_seconds"] = wall
    log["supervised_slots"] = rows_total
    log["slots_per_second"] = rows_total / wall
    log["final_loss"] = log["loss"][-1] if log["loss"] else None
    if log["eval"]:
        log["final_eval"] = log["eval"][-1]
    checkpoint()
    return log


# ---- training curves ------------------------------------------------------------------------------------------

def plot_training(log: dict, path: str | Path) -> Path:
    """Loss and per-depth top-1 agreement curves of a train_head log, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(log["steps"], log["loss"], lw=0.8, label="train (windowed batch)")
    if log.get("eval"):
        a1.plot([e["step"] for e in log["eval"]], [e["loss"] for e in log["eval"]], "o-", label="held-out")
    a1.set_xlabel("step")
    a1.set_ylabel("forward KL x T^2 (nats/slot)")
    a1.set_yscale("log")
    a1.set_title("head KD loss")
    a1.grid(alpha=0.3)
    a1.legend()
    src = log["eval"][-1]["top1"] if log.get("eval") else (log["top1"][-1] if log["top1"] else [])
    if log["top1"]:
        import numpy as np

        arr = np.array(log["top1"])
        for d in sorted({0, 1, 3, 7, arr.shape[1] - 1}):
            if d < arr.shape[1]:
                a2.plot(log["steps"], arr[:, d], lw=0.8, label=f"depth {d + 1} (train)")
    if src:
        a2.plot(range(1, len(src) + 1), src, alpha=0)  # keep the axis when there is no curve
    a2.set_xlabel("step")
    a2.set_ylabel("top-1 agreement with the target")
    a2.set_ylim(0, 1)
    title = "per-depth top-1 agreement"
    if log.get("eval"):
        title += f" (final held-out chain tau {log['eval'][-1]['tau']:.2f})"
    a2.set_title(title)
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
