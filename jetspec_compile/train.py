"""Training a JetSpec draft head for a frozen Qwen3 target (the paper's recipe).

For each training sequence (token ids, optionally target-regenerated):

* the frozen target runs once over the sequence: its next-token logits are the teacher, its tapped
  hidden states are the head's context;
* up to ``anchors`` anchor positions p are sampled; each anchor opens a block ``[ids[p], MASK x D]``
  at positions p..p+D whose context is the taps of tokens 0..p-1;
* slot d (1..D) of a block predicts the token at p+d. Its loss is the forward KL
  ``KL(softmax(t/T) || softmax(s/T)) * T^2`` between the teacher's distribution at position p+d-1
  (the target's next-token distribution for position p+d) and the student's; the anchor slot is
  unsupervised, all supervised slots weigh the same and slots past the sequence end are inactive.
  The loss is the mean over the active slots of a batch. AdamW, linear warm-up, cosine decay.

All anchor blocks of one sequence run in ONE head forward. The queries are all blocks' slots; the
keys are the projected context rows of the sequence plus the blocks' own slot rows. Block b's slots
see context rows ``< p_b`` and their own block's slots (causally for a causal head), never another
block. That attention is :class:`BlockTrainingAttention`, handed to Hugging Face's decoder layers
through the ``jetspec_cache`` keyword exactly like the inference caches of :mod:`.attention`; it is
plain differentiable torch (the ``jetspec::tree_attention`` op has no autograd). It stores the
context and the block rows separately (scores ``[H, N, T]`` + ``[H, blocks, bs, bs]``), never a
dense ``N x (T + N)`` mask.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import JetSpecError
from .head import DraftHead, head_config
from .target import Target, default_tap_layers

__all__ = [
    "BlockTrainingAttention",
    "TrainSequence",
    "block_student_hidden",
    "block_student_logits",
    "build_head_for_target",
    "chain_walk_tau",
    "depth_weights",
    "evaluate_head",
    "init_head_from_target",
    "kd_loss",
    "load_documents",
    "make_sequences",
    "plot_training",
    "register_cli",
    "regenerate",
    "sample_anchors",
    "train_head",
    "warm_start_head",
]

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"


# ---- the batched block attention ---------------------------------------------------------------------

class BlockTrainingAttention:
    """Differentiable attention of many anchor blocks of one sequence in one call.

    ctx_k, ctx_v: [layers, Hkv, T, hd] projected context rows (context position t at row t);
    anchors: int64 [nb]; block b = rows b*bs .. b*bs+bs-1 of the queries, with context length anchors[b].
    ``attend`` gets q [1, Hq, nb*bs, hd] and the slots' own k, v [1, Hkv, nb*bs, hd] and returns
    [1, nb*bs, Hq, hd] (the layout Hugging Face reshapes before o_proj).
    """

    def __init__(self, ctx_k: Tensor, ctx_v: Tensor, anchors: Tensor, block_size: int, causal: bool):
        self.ctx_k, self.ctx_v = ctx_k, ctx_v
        self.block_size = int(block_size)
        t = ctx_k.shape[2]
        dev = ctx_k.device
        self.ctx_visible = torch.arange(t, device=dev)[None, :] < anchors.to(dev)[:, None]  # [nb, T]
        full = torch.ones(block_size, block_size, dtype=torch.bool, device=dev)
        self.block_visible = full.tril() if causal else full  # [bs, bs]

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        if q.shape[0] != 1:
            raise ValueError(f"block training attention runs batch 1, got a batch of {q.shape[0]}")
        _, hq, n, hd = q.shape
        hkv = k.shape[1]
        g, bs = hq // hkv, self.block_size
        nb = n // bs
        ck, cv = self.ctx_k[layer], self.ctx_v[layer]  # [Hkv, T, hd]
        t = ck.shape[1]
        qg = q[0].reshape(hkv, g * n, hd)  # query heads of one KV group share its keys (HF repeat_kv order)
        s_ctx = torch.matmul(qg, ck.transpose(1, 2)).reshape(hkv, g, nb, bs, t) * scale
        qb = q[0].reshape(hkv, g, nb, bs, hd)
        kb = k[0].reshape(hkv, 1, nb, bs, hd)
        vb = v[0].reshape(hkv, 1, nb, bs, hd)
        s_blk = torch.matmul(qb, kb.transpose(-1, -2)) * scale  # [Hkv, g, nb, bs, bs]
        neg = float("-inf")
        s_ctx = s_ctx.masked_fill(~self.ctx_visible[None, None, :, None, :], neg)
        s_blk = s_blk.masked_fill(~self.block_visible, neg)
        p = torch.softmax(torch.cat([s_ctx, s_blk], dim=-1).float(), dim=-1).to(q.dtype)
        out = torch.matmul(p[..., :t].reshape(hkv, g * n, t), cv).reshape(hkv, g, nb, bs, hd)
        out = out + torch.matmul(p[..., t:], vb)
        return out.reshape(hq, n, hd).transpose(0, 1).unsqueeze(0)


def block_student_hidden(head: DraftHead, target: Target, ids: Tensor, taps: Tensor, anchors: Tensor) -> Tensor:
    """Final-normed head states [nb, bs, d] of the blocks opened at ``anchors`` (one forward).

    ids: [T] the sequence; taps: [>= max(anchors), F] the target taps of its tokens (context rows);
    block b = [ids[p_b], MASK x D] at positions p_b..p_b+D over the context rows 0..p_b-1.
    """
    bs = head.block_size
    anchors = anchors.to(ids.device)
    nb = anchors.numel()
    t_ctx = int(anchors.max()) if nb else 0
    dev = ids.device
    ctx_k, ctx_v = head.project_context(taps[:t_ctx].to(head.dtype), torch.arange(t_ctx, device=dev))
    block = torch.full((nb, bs), head.mask_token_id, dtype=torch.long, device=dev)
    block[:, 0] = ids[anchors]
    positions = (anchors[:, None] + torch.arange(bs, device=dev)).reshape(1, -1)
    state = BlockTrainingAttention(ctx_k, ctx_v, anchors, bs, head.causal)
    h = target.embed(block.reshape(1, -1)).to(head.dtype)
    pe = head.rotary_emb(h, positions)
    for layer in head.layers:
        h = layer(h, attention_mask=None, position_ids=positions, position_embeddings=pe, jetspec_cache=state)
        h = h[0] if isinstance(h, tuple) else h
    return head.norm(h)[0].reshape(nb, bs, -1)


def block_student_logits(head: DraftHead, target: Target, ids: Tensor, taps: Tensor, anchors: Tensor) -> Tensor:
    """Per-depth student logits [nb, D, vocab] of the blocks at ``anchors`` (slot d -> depth d)."""
    h = block_student_hidden(head, target, ids, taps, anchors)[:, 1:]
    return target.lm_head(h.to(target.dtype)).float()


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-row forward KL(teacher || student) of temperature-scaled distributions, times T^2: [rows]."""
    t = float(temperature)
    log_s = F.log_softmax(student.float() / t, dim=-1)
    log_t = F.log_softmax(teacher.float() / t, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1) * (t * t)


def sample_anchors(length: int, anchors: int, generator: torch.Generator, first: int = 1) -> Tensor:
    """Up to ``anchors`` distinct anchor positions in [max(first, 0), length - 2] (sorted, int64).

    An anchor needs at least one supervised slot (the token after it), hence the ``length - 2`` bound.
    """
    lo, hi = max(0, int(first)), length - 2
    if hi < lo:
        return torch.zeros(0, dtype=torch.long)
    count = hi - lo + 1
    if anchors >= count:
        return torch.arange(lo, hi + 1)
    return (torch.randperm(count, generator=generator)[:anchors] + lo).sort().values


# ---- sequences and data ------------------------------------------------------------------------------

@dataclass
class TrainSequence:
    """Token ids of one training sequence; anchors are drawn from positions >= first_anchor."""

    ids: Tensor
    first_anchor: int = 1


def _as_sequence(s) -> TrainSequence:
    if isinstance(s, TrainSequence):
        return s
    if isinstance(s, tuple):
        return TrainSequence(torch.as_tensor(s[0], dtype=torch.long).reshape(-1), int(s[1]))
    return TrainSequence(torch.as_tensor(s, dtype=torch.long).reshape(-1), 1)


def load_documents(paths: Sequence[str | Path]) -> list[tuple[str, bool]]:
    """Read training documents: (text, is_prompt) pairs.

    A ``.jsonl`` file holds one JSON object per line with a ``"text"`` string (a document) or a
    ``"prompt"`` string (a prompt, for ``--regenerate``). Any other file is one text document. A folder
    contributes its ``*.py``, ``*.txt``, ``*.md`` and ``*.jsonl`` files (recursively, sorted).
    """
    docs: list[tuple[str, bool]] = []
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".py", ".txt", ".md", ".jsonl"))
            if not found:
                raise JetSpecError(f"{p}: data folder has no *.py, *.txt, *.md or *.jsonl files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise JetSpecError(f"{p}: data file not found")
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise JetSpecError(f"{f}: cannot read data file ({e})") from None
        if f.suffix != ".jsonl":
            if text:
                docs.append((text, False))
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise JetSpecError(f"{f}:{n}: invalid JSON ({e})") from None
            if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                docs.append((obj["text"], False))
            elif isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                docs.append((obj["prompt"], True))
            else:
                raise JetSpecError(f"{f}:{n}: expected an object with a string field 'text' (or 'prompt')")
    if not docs:
        raise JetSpecError(f"{', '.join(str(p) for p in paths)}: no training documents found (all empty)")
    return docs


def make_sequences(
    token_docs: Iterable[list[int]],
    seq_len: int,
    *,
    eos_token_id: int | None = None,
    min_len: int = 3,
) -> list[Tensor]:
    """Split each tokenised document (+ EOS) into pieces of at most ``seq_len`` tokens; short tails dropped."""
    out = []
    for ids in token_docs:
        ids = list(ids) + ([eos_token_id] if eos_token_id is not None else [])
        for i in range(0, len(ids), seq_len):
            piece = ids[i:i + seq_len]
            if len(piece) >= min_len:
                out.append(torch.tensor(piece, dtype=torch.long))
    return out


@torch.no_grad()
def regenerate(
    target: Target,
    prompts: Sequence[Tensor],
    max_new_tokens: int | None = None,
    *,
    total_len: int | None = None,
    eos_token_id: int | None = None,
    batch: int = 16,
    progress: bool = True,
) -> list[TrainSequence]:
    """Replace responses with the target's greedy continuation (the paper trains on regenerated data).

    Each prompt (1-D ids) is continued greedily for ``max_new_tokens`` tokens, or up to ``total_len``
    tokens in all (stopping after EOS), with
    Hugging Face ``generate(do_sample=False)``; prompts of equal length are batched (no padding). The
    result's anchors start at the last prompt token (``first_anchor = len(prompt) - 1``): that is the anchor
    of the first decoding round, whose block drafts the first generated tokens.
    """
    if (max_new_tokens is None) == (total_len is None):
        raise JetSpecError("regenerate: pass exactly one of max_new_tokens and total_len")
    model = target.model
    pad = eos_token_id if eos_token_id is not None else 0
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        if p.numel() < 1:
            raise JetSpecError(f"regenerate: prompt {i} is empty")
        by_len.setdefault(int(p.numel()), []).append(i)
    out: list[TrainSequence | None] = [None] * len(prompts)
    groups = [(n, idx[j:j + batch]) for n, idx in sorted(by_len.items()) for j in range(0, len(idx), batch)]
    with _progress(progress, "regenerate", len(prompts)) as bar:
        for n, idx in groups:
            ids = torch.stack([prompts[i].reshape(-1) for i in idx]).to(target.device)
            new_tokens = max_new_tokens if total_len is None else total_len - n
            if new_tokens < 1:
                raise JetSpecError(f"regenerate: a prompt of {n} tokens leaves no room within total_len {total_len}")
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=0, do_sample=False, eos_token_id=eos_token_id, pad_token_id=pad)
            for row, i in zip(gen, idx):
                new = row[n:].tolist()
                if eos_token_id is not None and eos_token_id in new:
                    new = new[: new.index(eos_token_id) + 1]
                out[i] = TrainSequence(torch.cat([row[:n].cpu(), torch.tensor(new, dtype=torch.long)]), n - 1)
            bar.advance(len(idx))
    return [s for s in out if s is not None]


# ---- a new head for a target -------------------------------------------------------------------------

def build_head_for_target(
    target: Target,
    *,
    mask_token_id: int,
    num_layers: int = 1,
    block_size: int = 16,
    num_taps: int = 5,
    tap_layers: Sequence[int] | None = None,
    causal: bool = True,
    intermediate_size: int | None = None,
    seed: int = 0,
    std: float | None = None,
) -> DraftHead:
    """A randomly initialised head matching ``target``: hidden size, heads, head_dim, vocabulary.

    Taps: ``tap_layers`` or the reference rule with ``num_taps`` taps (duplicates removed, so a shallow
    target gets fewer distinct taps).
    """
    cfg = target.config
    if not 0 <= int(mask_token_id) < target.vocab_size:
        raise JetSpecError(f"mask_token_id is {mask_token_id}; expected a token id in 0..{target.vocab_size - 1}")
    layers = list(tap_layers) if tap_layers is not None else sorted(set(default_tap_layers(target.num_layers, num_taps)))
    target.check_tap_layers(layers, who="tap_layers")
    rope = getattr(cfg, "rope_parameters", None) or {}
    config = head_config(
        hidden_size=target.hidden_size,
        intermediate_size=int(intermediate_size or cfg.intermediate_size),
        num_hidden_layers=int(num_layers),
        num_attention_heads=int(cfg.num_attention_heads),
        num_key_value_heads=target.num_kv_heads,
        head_dim=target.head_dim,
        vocab_size=target.vocab_size,
        num_target_layers=target.num_layers,
        target_layer_ids=layers,
        mask_token_id=int(mask_token_id),
        block_size=int(block_size),
        causal=causal,
        rms_norm_eps=float(cfg.rms_norm_eps),
        rope_theta=float(rope.get("rope_theta", getattr(cfg, "rope_theta", 1e6))),
        max_position_embeddings=int(getattr(cfg, "max_position_embeddings", 40960)),
    )
    head = DraftHead(config).init_weights(seed=seed, std=std)
    return head.to(device=target.device, dtype=torch.float32)


def init_head_from_target(
    head: DraftHead,
    target: Target,
    *,
    layers: Sequence[int] | None = None,
    fc_tap: int | None = None,
) -> DraftHead:
    """Initialise ``head`` (in place) from the target's own weights, so it starts near the target.

    * head layer i <- target decoder layer ``layers[i]`` (default: the target's last ``len(head.layers)``
      layers; the head's layers must have the target's shapes);
    * ``norm`` <- the target's final norm;
    * ``fc`` <- identity on the tap of target layer ``fc_tap`` (default: the deepest tapped layer), zero on
      the other taps, and ``hidden_norm`` <- the input norm of target layer ``layers[0]``: when
      ``layers[0] == fc_tap + 1`` the first head layer's context keys / values are exactly what that
      target layer computes for the context tokens.

    Raises JetSpecError when shapes differ (e.g. a head of another width or MLP size).
    """
    n = len(head.layers)
    L = target.num_layers
    layers = [int(x) for x in layers] if layers is not None else list(range(L - n, L))
    if len(layers) != n:
        raise JetSpecError(f"init from target: {n} head layers, but {len(layers)} target layers named ({layers})")
    target.check_tap_layers(layers, who="init layers")
    taps = head.target_layer_ids
    fc_tap = max(taps) if fc_tap is None else int(fc_tap)
    if fc_tap not in taps:
        raise JetSpecError(f"init from target: fc_tap {fc_tap} is not one of the head's tapped layers {taps}")
    src_layers = target.decoder_layers
    with torch.no_grad():
        for i, j in enumerate(layers):
            src = src_layers[j].state_dict()
            dst = head.layers[i].state_dict()
            bad = [k for k in dst if k not in src or src[k].shape != dst[k].shape]
            if bad:
                raise JetSpecError(f"init from target: head layer {i} and target layer {j} differ in {bad[:3]} "
                                   "(the head's layers must have the target's shapes)")
            head.layers[i].load_state_dict({k: src[k].to(head.dtype) for k in dst})
        head.norm.weight.copy_(target.model.model.norm.weight.to(head.dtype))
        d = target.hidden_size
        w = torch.zeros_like(head.fc.weight)
        k = taps.index(fc_tap)
        w[:, k * d:(k + 1) * d] = torch.eye(d, dtype=w.dtype, device=w.device)
        head.fc.weight.copy_(w)
        head.hidden_norm.weight.copy_(src_layers[layers[0]].input_layernorm.weight.to(head.dtype))
    return head


def warm_start_head(
    target: Target,
    init: str | Path,
    *,
    tap_layers: Sequence[int] | None = None,
) -> DraftHead:
    """Load the head at ``init`` to continue training it (fp32, on the target's device).

    ``tap_layers`` re-points the fusion layer at other target layers (same count: the fc weight is kept and
    retrained). Raises JetSpecError naming the folder when the head cannot draft for ``target``.
    """
    from .head import load_draft_head

    head = load_draft_head(init, dtype=torch.float32, device=target.device)
    if tap_layers is not None and list(tap_layers) != head.target_layer_ids:
        layers = [int(x) for x in tap_layers]
        if len(layers) != len(head.target_layer_ids):
            raise JetSpecError(f"{init}: the head fuses {len(head.target_layer_ids)} tapped layers "
                               f"{head.target_layer_ids}; --tap-layers must name {len(head.target_layer_ids)} "
                               f"layers to warm-start from it, got {layers}")
        target.check_tap_layers(layers, who="tap_layers")
        head.target_layer_ids[:] = layers  # the same list is the config's dflash_config.target_layer_ids
    head.check_compatible(target, source=str(init))
    return head


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


# ---- the training loop -------------------------------------------------------------------------------

def _lr_at(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class _NullBar:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def advance(self, n=1, **fields):
        pass

    def update(self, **fields):
        pass


class _RichBar:
    """A rich progress bar on a terminal; plain log lines (every ``log_every`` steps) otherwise."""

    def __init__(self, description: str, total: int, log_every: int = 10):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total, self.done, self.printed, self.log_every = total, 0, 0, max(1, log_every)
        self.description = description
        self.fields = ""
        self.t0 = time.time()
        self.progress = None
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                     console=self.console)

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
            self.task = self.progress.add_task(self.description, total=self.total, info="")
        return self

    def __exit__(self, *a):
        if self.progress is not None:
            self.progress.__exit__(*a)
        return False

    def advance(self, n: int = 1, info: str | None = None) -> None:
        self.done += n
        if info is not None:
            self.fields = info
        if self.progress is not None:
            self.progress.update(self.task, advance=n, info=self.fields)
        elif self.done - self.printed >= self.log_every or self.done == self.total:
            self.printed = self.done
            el = time.time() - self.t0
            self.console.print(f"{self.description} {self.done}/{self.total} [{el / 60:.1f} min] {self.fields}",
                               highlight=False, soft_wrap=True)


def _progress(enabled: bool, description: str, total: int, log_every: int = 10):
    return _RichBar(description, total, log_every) if enabled else _NullBar()


def _fmt_top1(top1: Sequence[float]) -> str:
    return " ".join(f"{100 * x:.0f}" for x in top1)


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


# ---- curves ------------------------------------------------------------------------------------------

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


# ---- command line ------------------------------------------------------------------------------------

def register_cli(subparsers) -> None:
    """Add ``train-head`` to the ``jetspec-compile`` command line."""
    from .validate import at_least, device, finite, out_folder, utf8_text

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


def _cmd_train_head(args) -> int:
    from tokenizers import Tokenizer

    from .target import load_target

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
    print(f"train-head: {len(pool)} {'prompts' if args.regenerate else 'sequences'} from {len(docs)} documents; "
          f"target {folder} ({target.num_layers} layers, hidden {target.hidden_size}, vocab {target.vocab_size}) "
          f"on {device}", file=sys.stderr)
    if args.regenerate:
        t0 = time.time()
        pool = regenerate(target, pool, total_len=L, eos_token_id=eos, batch=args.regen_batch,
                          progress=not args.no_progress)
        print(f"train-head: regenerated {len(pool)} sequences in {time.time() - t0:.0f}s", file=sys.stderr)
    n_eval = int(round(len(pool) * args.eval_fraction))
    eval_seqs, train_seqs = pool[:n_eval], pool[n_eval:]
    if not train_seqs:
        raise JetSpecError("--eval-fraction leaves no training sequence")
    if args.init:
        head = warm_start_head(target, args.init, tap_layers=args.tap_layers)
    else:
        head = build_head_for_target(target, mask_token_id=mask_id, num_layers=args.layers,
                                     block_size=args.depth + 1, num_taps=args.taps, tap_layers=args.tap_layers,
                                     causal=not args.bidirectional, seed=args.seed)
        if getattr(args, "init_from_target", None) is not None:
            init_head_from_target(head, target, layers=args.init_from_target or None)
    log = train_head(target, head, train_seqs, steps=args.steps, lr=args.lr, anchors=args.anchors,
                     kd_temperature=args.kd_temperature, batch=args.batch, seed=args.seed,
                     loss_decay_gamma=args.loss_decay_gamma, out=out,
                     save_every=args.save_every, eval_sequences=eval_seqs or None,
                     eval_every=args.eval_every if eval_seqs else None, max_minutes=args.max_minutes,
                     progress=not args.no_progress)
    summary = {"out": str(out), "steps": log["steps_done"], "final_loss": log["final_loss"],
               "wall_seconds": round(log["wall_seconds"], 1)}
    if log.get("final_eval"):
        summary["heldout_loss"] = log["final_eval"]["loss"]
        summary["heldout_tau"] = log["final_eval"]["tau"]
        summary["heldout_top1"] = [round(x, 4) for x in log["final_eval"]["top1"]]
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m jetspec_compile.train train-head ...`` (the same command as ``jetspec-compile train-head``)."""
    parser = argparse.ArgumentParser(prog="python -m jetspec_compile.train")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except JetSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
