"""Held-out evaluation: KD loss, per-depth top-1 agreement and chain tau."""

from __future__ import annotations

from typing import Sequence

import torch

from ..head import DraftHead
from ..target import Target
from .data import TrainSequence, _as_sequence
from .loss import _sequence_stats, _teacher

def chain_walk_tau(lead: Sequence[int]) -> tuple[int, int]:
    """(rounds, committed tokens) of greedy chain decoding over a target-greedy sequence.

    ``lead[i]`` = leading drafted depths that match the sequence for the block anchored i positions after
    the first anchor. Decoding commits 1 + lead tokens per round and re-anchors at the last one, so it
    visits only some anchors: long accepted runs count once per round, not once per position. The last
    round's tokens are cut at the sequence end (as ``max_new_tokens`` cuts decoding).
    """
    i = rounds = tokens = 0
    while i < len(lead):
        step = 1 + int(lead[i])
        rounds += 1
        tokens += min(step, len(lead) - i)
        i += step
    return rounds, tokens


@torch.no_grad()
def evaluate_head(
    target: Target,
    head: DraftHead,
    sequences: Sequence,
    *,
    anchors: int = 512,
    kd_temperature: float = 1.0,
) -> dict:
    """KD loss, per-depth top-1 agreement and greedy chain tau on ``sequences`` (every anchor position).

    Every position from a sequence's ``first_anchor`` on is an anchor (``anchors`` blocks per head forward).
    ``tau`` = committed tokens per round of greedy *chain* decoding (budget D+1, top-1 per depth) over
    the sequence, bonus token included: on target-greedy data this equals what
    ``speculative_generate(..., budget=D+1, topk=1)`` measures from the same prompt.
    ``tau_per_anchor`` = 1 + the mean leading agreement over all complete blocks: an upper-biased
    statistic (a long accepted run counts once per position inside it), kept for comparison.
    """
    was_training = head.training
    head.eval()
    tot, rows, lead, blocks, rounds, committed = 0.0, 0, 0, 0, 0, 0
    agree = torch.zeros(head.depth)
    count = torch.zeros(head.depth)
    chunk = max(1, int(anchors))
    for s in sequences:
        seq = _as_sequence(s)
        seq = TrainSequence(seq.ids.to(target.device), seq.first_anchor)
        n = seq.ids.numel()
        all_a = torch.arange(max(0, seq.first_anchor), n - 1, device=target.device)
        if all_a.numel() == 0:
            continue
        logits, taps = _teacher(target, head, seq.ids)
        leads = []
        for c in range(0, all_a.numel(), chunk):
            st = _sequence_stats(head, target, seq, all_a[c:c + chunk], kd_temperature, logits, taps)
            tot += st.loss_sum.item()
            rows += st.rows
            agree += st.agree
            count += st.count
            lead += st.lead
            blocks += st.blocks
            leads += st.lead_rows.tolist()
        r, t = chain_walk_tau(leads)
        rounds += r
        committed += t
    head.train(was_training)
    top1 = (agree / count.clamp_min(1)).tolist()
    return {"loss": tot / max(rows, 1), "top1": top1, "tau": committed / max(rounds, 1),
            "tau_per_anchor": 1 + lead / max(blocks, 1), "rows": rows, "blocks": blocks, "rounds": rounds}
