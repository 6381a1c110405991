"""The `jetspec` custom ops.

`jetspec::tree_attention` is the one attention primitive of every graph: the queries of T new rows
attend to the committed KV-cache prefix `[0, cache_len)` (always fully visible) plus the new rows'
own keys under an explicit boolean mask. Verification passes the tree mask, prefill a causal mask,
the draft head its context-plus-causal-block mask and a plain decoding step a 1x1 mask.

Layouts (batch 1, heads first so GQA needs no repeated K/V):
  q        [Hq, T, hd]       k, v        [Hkv, Tk, hd]     (the new rows; their RoPE already applied)
  k_cache  [Hkv, S, hd]      v_cache     [Hkv, S, hd]
  cache_len int64 [1]        mask bool   [T, Tk]            scale float
  out      [T, Hq, hd] contiguous (the layout attention output has before o_proj)
A query row that can see no key at all (cache_len 0 and an all-False mask row) returns zeros.

`tree_attention_reference` is the reference (plain torch, fp32 softmax, written for clarity). The op
itself is defined in C++ (`csrc/tree_attention.cpp`): its CPU kernel is a native flash-attention loop
(tested equal to the reference) that compiled graphs call without the Python interpreter; its CUDA
kernel launches the Triton kernel of `jetspec_compile.kernels.tree_attention`. `tree_attention_cpu`
(torch's fused SDPA over a copied prefix) is the previous CPU kernel, kept as a benchmark baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .native import load_native

__all__ = ["tree_attention", "tree_attention_cpu", "tree_attention_dense", "tree_attention_reference"]


def tree_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    cache_len: Tensor | int,
    mask: Tensor,
    scale: float,
) -> Tensor:
    """Plain-torch attention over `cache[:cache_len]` plus masked new rows; returns [T, Hq, hd]."""
    hq, t, hd = q.shape
    hkv = k.shape[0]
    g = hq // hkv
    n = int(cache_len.reshape(-1)[0]) if isinstance(cache_len, Tensor) else int(cache_len)
    qf = q.float().reshape(hkv, g * t, hd) * scale  # query heads of one KV group share its keys
    s_new = torch.matmul(qf, k.float().transpose(1, 2)).reshape(hkv, g, t, -1)
    s_new = s_new.masked_fill(~mask.bool(), float("-inf"))
    if n > 0:
        kc, vc = k_cache[:, :n].float(), v_cache[:, :n].float()
        s_old = torch.matmul(qf, kc.transpose(1, 2)).reshape(hkv, g, t, n)
        scores = torch.cat([s_old, s_new], dim=-1)
    else:
        scores = s_new
    m = scores.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).min)
    p = torch.exp(scores - m)
    denom = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
    p = p.reshape(hkv, g * t, -1)
    out = torch.matmul(p[..., n:], v.float())
    if n > 0:
        out = out + torch.matmul(p[..., :n], vc)
    return out.reshape(hq, t, hd).transpose(0, 1).contiguous().to(q.dtype)


def tree_attention_dense(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    cache_len: Tensor,
    mask: Tensor,
    scale: float,
) -> Tensor:
    """The same attention in plain traceable torch (all S cache rows, masked by cache_len; no host read).

    This is the "decomposed" form: graphs captured with it contain only standard ops (ONNX Runtime runs them).
    """
    hq, t, hd = q.shape
    hkv, S = k_cache.shape[0], k_cache.shape[1]
    g = hq // hkv
    qf = q.float().reshape(hkv, g * t, hd) * scale
    visible = (torch.arange(S, device=q.device) < cache_len.reshape(1)).reshape(1, 1, 1, S)
    s_old = torch.matmul(qf, k_cache.float().transpose(1, 2)).reshape(hkv, g, t, S)
    s_new = torch.matmul(qf, k.float().transpose(1, 2)).reshape(hkv, g, t, -1)
    neg = torch.tensor(float("-inf"), device=q.device)
    scores = torch.cat([torch.where(visible, s_old, neg), torch.where(mask.bool(), s_new, neg)], dim=-1)
    m = scores.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).min)
    p = torch.exp(scores - m)
    denom = p.sum(dim=-1, keepdim=True)
    p = (p / torch.where(denom > 0, denom, torch.ones_like(denom))).reshape(hkv, g * t, -1)
    out = torch.matmul(p[..., :S], v_cache.float()) + torch.matmul(p[..., S:], v.float())
    return out.reshape(hq, t, hd).transpose(0, 1).contiguous().to(q.dtype)


def tree_attention_cpu(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    cache_len: Tensor,
    mask: Tensor,
    scale: float,
) -> Tensor:
    """The CPU kernel: torch's fused SDPA over cache[:cache_len] + the new rows (GQA without repeated K/V).

    Same result as the reference up to float rounding (tested); about 25 % faster at decode shapes.
    """
    t = q.shape[1]
    n = int(cache_len.reshape(-1)[0])
    allowed = mask.bool()
    if n > 0:
        k, v = torch.cat([k_cache[:, :n], k], dim=1), torch.cat([v_cache[:, :n], v], dim=1)
        allowed = torch.cat([allowed.new_ones(t, n), allowed], dim=1)
    out = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=allowed,
                                         scale=scale, enable_gqa=True)[0]
    if n == 0:  # rows that see no key at all are defined as zeros (SDPA would give NaN)
        out = out.masked_fill(~allowed.any(dim=-1).reshape(1, t, 1), 0.0)
    return out.transpose(0, 1).contiguous()


# The schema and the CPU kernel are defined in C++ (csrc/tree_attention.cpp, built once per machine), so
# compiled graphs call the kernel without the Python interpreter; CUDA runs the Triton kernel.
load_native()
tree_attention = torch.ops.jetspec.tree_attention


@torch.library.register_kernel("jetspec::tree_attention", "cuda")
def _(q, k, v, k_cache, v_cache, cache_len, mask, scale):
    from .kernels.tree_attention import triton_tree_attention  # imports Triton only when CUDA runs

    return triton_tree_attention(q, k, v, k_cache, v_cache, cache_len, mask, scale)


@torch.library.register_fake("jetspec::tree_attention")
def _(q, k, v, k_cache, v_cache, cache_len, mask, scale):
    hq, t, hd = q.shape
    # Exactly what both kernels return: a fresh contiguous [T, Hq, hd] tensor. Compilers plan buffers from
    # the fake, so a different shape, stride or aliasing here would break compiled graphs, not eager ones.
    return q.new_empty((t, hq, hd))


@torch.library.register_fake("jetspec::linear")
def _(x, w, b=None):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def prepack_linear_weights(weights: dict[str, Tensor]) -> int:
    """Register every 2-D CPU weight with the native `jetspec::linear` (packed once for its GEMM,
    shared by every graph that reads it). Returns how many were packed."""
    return sum(int(torch.ops.jetspec.prepack_linear(w)) for w in weights.values()
               if w.dim() == 2 and w.device.type == "cpu")
