"""The batched block attention: all anchor blocks of one sequence in one head forward."""

from __future__ import annotations

import torch
from torch import Tensor

from ..head import DraftHead
from ..target import Target

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
