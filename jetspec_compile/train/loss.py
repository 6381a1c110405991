"""The distillation loss and one sequence's loss and agreement statistics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..head import DraftHead
from ..target import Target
from .attention import block_student_hidden
from .data import TrainSequence

def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-row forward KL(teacher || student) of temperature-scaled distributions, times T^2: [rows]."""
    t = float(temperature)
    log_s = F.log_softmax(student.float() / t, dim=-1)
    log_t = F.log_softmax(teacher.float() / t, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1) * (t * t)


# ---- one sequence: loss and agreement ----------------------------------------------------------------

@dataclass
class _SeqStats:
    loss_sum: Tensor  # scalar, differentiable
    rows: int
    agree: Tensor  # [D] counts of student argmax == teacher argmax
    count: Tensor  # [D] active slots
    lead: int  # sum over complete blocks of the leading agreeing depths
    blocks: int  # complete blocks
    lead_rows: Tensor  # [nb] leading agreeing depths of every block (a partial block stops at the sequence end)


def depth_weights(depth: int, gamma: float = 0.0) -> Tensor:
    """Loss weight of slots 1..D: uniform for ``gamma == 0`` (JetSpec), else DFlash's exp(-(d-1)/gamma)."""
    d = torch.arange(depth, dtype=torch.float32)
    return torch.ones(depth) if not gamma else torch.exp(-d / float(gamma))


def _sequence_stats(head, target, seq: TrainSequence, anchors: Tensor, temperature: float,
                    logits: Tensor, taps: Tensor, autocast_dtype: torch.dtype | None = None,
                    gamma: float = 0.0) -> _SeqStats:
    D = head.depth
    ids = seq.ids
    T = ids.numel()
    dev = ids.device
    depth = torch.arange(1, D + 1, device=dev)
    pos = anchors[:, None] + depth[None, :]  # token predicted by slot d
    active = pos < T
    with torch.autocast(dev.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        h = block_student_hidden(head, target, ids, taps, anchors)[:, 1:]  # [nb, D, d]
        student = target.lm_head(h[active].to(target.dtype)).float()  # [rows, V]
    teacher = logits[(pos - 1)[active]].float()
    loss_rows = kd_loss(student, teacher, temperature)
    if gamma:
        loss_rows = loss_rows * depth_weights(D, gamma).to(dev)[depth.expand_as(pos)[active] - 1]
    with torch.no_grad():
        hit = student.argmax(-1) == teacher.argmax(-1)
        d_idx = depth.expand_as(pos)[active] - 1
        agree = torch.zeros(D, device=dev).index_add_(0, d_idx, hit.float())
        count = torch.zeros(D, device=dev).index_add_(0, d_idx, torch.ones_like(hit, dtype=torch.float))
        full = active.all(dim=1)
        grid = torch.zeros_like(active)
        grid[active] = hit
        lead_rows = grid.int().cumprod(dim=1).sum(dim=1)
        lead = int(lead_rows[full].sum())
    return _SeqStats(loss_rows.sum(), int(active.sum()), agree.cpu(), count.cpu(), lead, int(full.sum()),
                     lead_rows.cpu())


def _teacher(target: Target, head: DraftHead, ids: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        out = target(ids, tap_layers=head.target_layer_ids)
    return out.logits, out.taps


def _active_weight(seq: TrainSequence, anchors: Tensor, depth: int, gamma: float = 0.0) -> float:
    pos = anchors[:, None] + torch.arange(1, depth + 1)[None, :]
    return float(((pos < seq.ids.numel()).float() * depth_weights(depth, gamma)[None, :]).sum())
