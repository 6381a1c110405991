"""The training loop: AdamW, linear warm-up, cosine decay, checkpoints; and the training curves."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TrainOptions:
    """The training settings ``train_head`` takes as keyword arguments (see its docstring)."""

    steps: int
    lr: float = 3e-4
    anchors: int = 512
    kd_temperature: float = 1.0
    batch: int = 1
    seed: int = 0
    loss_decay_gamma: float = 0.0
    weight_decay: float = 0.01
    warmup: float = 0.04  # a fraction of the steps, or a step count if >= 1
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    anchor_chunk: int | None = None
    autocast_dtype: torch.dtype | None = None
    save_every: int | None = None
    eval_every: int | None = None
    max_minutes: float | None = None
    log_every: int = 10

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup) if self.warmup >= 1 else max(1, int(round(self.warmup * self.steps)))


def train_head(target: Target, head: DraftHead, sequences: Sequence, *, steps: int, out: str | Path | None = None,
               eval_sequences: Sequence | None = None, progress: bool = True, **options) -> dict:
    """Train ``head`` (in place) to match the frozen ``target`` on ``sequences``; return metrics and curves.

    ``options``: the fields of :class:`TrainOptions` (lr=3e-4, anchors=512, kd_temperature=1.0, batch=1,
    seed=0, loss_decay_gamma=0.0, weight_decay=0.01, warmup=0.04, min_lr_ratio=0.1, grad_clip=1.0,
    anchor_chunk, autocast_dtype, save_every, eval_every, max_minutes, log_every=10).
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
    opts = TrainOptions(steps=steps, **options)
    if steps < 1:
        raise JetSpecError(f"train_head: steps is {steps}; expected >= 1")
    if opts.kd_temperature <= 0:
        raise JetSpecError(f"train_head: kd_temperature is {opts.kd_temperature}; expected > 0")
    head.check_compatible(target)
    seqs = _usable_sequences(target, sequences)
    torch.manual_seed(opts.seed)
    grad_flags = {n: p.requires_grad for n, p in target.named_parameters()}
    target.requires_grad_(False)
    target.eval()
    head.train()
    run = _Training(target, head, seqs, opts, eval_sequences, Path(out) if out is not None else None)
    if eval_sequences and opts.eval_every:
        run.evaluate(0)
    step = 0
    try:
        with _progress(progress, "train-head", steps, opts.log_every) as bar:
            for step in range(steps):
                loss, cur_lr = run.step(step)
                bar.advance(1, info=run.record(step, loss, cur_lr))
                if run.after_step(step + 1):
                    break
        step += 1
        if eval_sequences:
            run.evaluate(step)
    finally:
        for n, p in target.named_parameters():
            p.requires_grad_(grad_flags[n])
        head.eval()
    return run.finish(step)


def _usable_sequences(target: Target, sequences: Sequence) -> list[TrainSequence]:
    """The sequences on the target's device, those too short for an anchor left out; ids checked."""
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
    return seqs


class _Window:
    """Per-depth top-1 agreement and accepted-length counts since the last logged step."""

    def __init__(self, depth: int):
        self.depth = depth
        self.reset()

    def reset(self) -> None:
        self.agree, self.count = torch.zeros(self.depth), torch.zeros(self.depth)
        self.lead = self.blocks = 0

    def add(self, st) -> None:
        self.agree += st.agree
        self.count += st.count
        self.lead += st.lead
        self.blocks += st.blocks

    def top1(self) -> list[float]:
        return (self.agree / self.count.clamp_min(1)).tolist()

    def tau(self) -> float:
        return 1 + self.lead / max(self.blocks, 1)


class _Training:
    """One training run: optimizer, batch order, the log, evaluations and checkpoints."""

    def __init__(self, target: Target, head: DraftHead, seqs: list[TrainSequence], opts: TrainOptions,
                 eval_sequences: Sequence | None, out_path: Path | None):
        self.target, self.head, self.seqs, self.o = target, head, seqs, opts
        self.eval_sequences, self.out_path = eval_sequences, out_path
        self.g = torch.Generator().manual_seed(opts.seed)
        self.rng = random.Random(opts.seed)
        self.params = [p for p in head.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.95))
        self.order: list[int] = []
        self.window = _Window(head.depth)
        self.rows_total = 0
        self.t0 = time.time()
        self.log: dict = {
            "steps": [], "loss": [], "lr": [], "top1": [], "tau_per_anchor": [], "elapsed": [], "eval": [],
            "config": {"steps": opts.steps, "lr": opts.lr, "anchors": opts.anchors,
                       "kd_temperature": opts.kd_temperature, "batch": opts.batch, "seed": opts.seed,
                       "loss_decay_gamma": opts.loss_decay_gamma, "weight_decay": opts.weight_decay,
                       "warmup_steps": opts.warmup_steps, "min_lr_ratio": opts.min_lr_ratio,
                       "grad_clip": opts.grad_clip, "block_size": head.block_size,
                       "autocast_dtype": str(opts.autocast_dtype) if opts.autocast_dtype else None,
                       "causal": head.causal, "head_layers": int(head.config.num_hidden_layers),
                       "target_layer_ids": head.target_layer_ids, "sequences": len(seqs)}}

    def _pick_batch(self) -> list[tuple[TrainSequence, torch.Tensor]]:
        """``batch`` sequences (each once per shuffled pass) with their sampled anchors."""
        picks = []
        for _ in range(self.o.batch):
            if not self.order:
                self.order = list(range(len(self.seqs)))
                self.rng.shuffle(self.order)
            picks.append(self.seqs[self.order.pop()])
        return [(s, sample_anchors(s.ids.numel(), self.o.anchors, self.g, s.first_anchor).to(self.target.device))
                for s in picks]

    def step(self, step: int) -> tuple[float, float]:
        """One optimizer step; returns (loss, learning rate)."""
        o, D = self.o, self.head.depth
        cur_lr = _lr_at(step, o.steps, o.lr, o.warmup_steps, o.min_lr_ratio)
        for grp in self.opt.param_groups:
            grp["lr"] = cur_lr
        plan = self._pick_batch()
        n_rows = sum(int(_active_weight(s, a.cpu(), D)) for s, a in plan)
        norm = sum(_active_weight(s, a.cpu(), D, o.loss_decay_gamma) for s, a in plan)
        self.opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for s, a in plan:
            logits, taps = _teacher(self.target, self.head, s.ids)
            chunk = o.anchor_chunk or max(1, a.numel())
            for c in range(0, a.numel(), chunk):
                st = _sequence_stats(self.head, self.target, s, a[c:c + chunk], o.kd_temperature, logits, taps,
                                     o.autocast_dtype, o.loss_decay_gamma)
                (st.loss_sum / norm).backward()
                step_loss += st.loss_sum.item() / norm
                self.window.add(st)
        self.rows_total += n_rows
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, o.grad_clip)
        self.opt.step()
        return step_loss, cur_lr

    def record(self, step: int, loss: float, cur_lr: float) -> str:
        """Log the step every ``log_every`` steps (and the last); returns the progress bar's info text."""
        top1, tau = self.window.top1(), self.window.tau()
        if step % self.o.log_every == 0 or step == self.o.steps - 1:
            log = self.log
            log["steps"].append(step)
            log["loss"].append(loss)
            log["lr"].append(cur_lr)
            log["top1"].append(top1)
            log["tau_per_anchor"].append(tau)
            log["elapsed"].append(time.time() - self.t0)
            self.window.reset()
        return f"loss {loss:.3f} tau/anchor~{tau:.2f} top1% d1..{self.head.depth}: {_fmt_top1(top1)}"

    def after_step(self, done: int) -> bool:
        """Evaluate / checkpoint when due; True when the time budget is used up."""
        o = self.o
        if self.eval_sequences and o.eval_every and done % o.eval_every == 0 and done < o.steps:
            self.evaluate(done)
            self.checkpoint()
        elif o.save_every and done % o.save_every == 0:
            self.checkpoint()
        if o.max_minutes and time.time() - self.t0 > o.max_minutes * 60:
            self.log["stopped_early"] = f"time budget of {o.max_minutes} min reached after {done} steps"
            return True
        return False

    def evaluate(self, step: int) -> None:
        if not self.eval_sequences:
            return
        ev = evaluate_head(self.target, self.head, self.eval_sequences, anchors=self.o.anchors,
                           kd_temperature=self.o.kd_temperature)
        ev["step"] = step
        ev["elapsed"] = time.time() - self.t0
        self.log["eval"].append(ev)

    def checkpoint(self) -> None:
        if self.out_path is None:
            return
        self.head.eval()
        self.head.save(self.out_path)
        self.head.train()
        (self.out_path / "train_log.json").write_text(json.dumps(self.log, indent=1) + "\n")
        try:
            plot_training(self.log, self.out_path / "training_curve.png")
        except Exception:  # plotting never stops a training run
            pass

    def finish(self, steps_done: int) -> dict:
        log = self.log
        wall = time.time() - self.t0
        log["steps_done"] = steps_done
        log["wall_seconds"] = wall
        log["supervised_slots"] = self.rows_total
        log["slots_per_second"] = self.rows_total / wall
        log["final_loss"] = log["loss"][-1] if log["loss"] else None
        if log["eval"]:
            log["final_eval"] = log["eval"][-1]
        self.checkpoint()
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
