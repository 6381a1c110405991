"""How our attention is plugged into Hugging Face Qwen3 modules, without copying modeling code.

An attention function is registered under the name ``"jetspec"`` with transformers'
``AttentionInterface`` (and the stock SDPA mask builder under the same name with
``AttentionMaskInterface``). A model whose ``config._attn_implementation`` is ``"jetspec"``:

* behaves exactly like the SDPA model when called normally (training, HF ``generate``);
* runs ``torch.ops.jetspec.tree_attention`` against explicit, functional caches when a
  :class:`CacheAttention` is passed as the ``jetspec_cache`` keyword of the forward call. The new
  rows' keys/values of every layer are collected (not written anywhere), so a graph that calls the
  model is functional: caches in, new rows out.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from . import ops  # registers torch.ops.jetspec.*

ATTN_IMPLEMENTATION = "jetspec"

# "op": torch.ops.jetspec.tree_attention (one opaque node per layer); "dense": the same math in plain
# torch ops (the decomposed form, for runtimes that cannot run the custom op, e.g. ONNX Runtime).
_ATTENTION_FORM = ["op"]


@contextlib.contextmanager
def attention_form(form: str):
    """Select how CacheAttention computes attention inside the block ("op" or "dense")."""
    if form not in ("op", "dense"):
        raise ValueError(f"attention form {form!r}; expected 'op' or 'dense'")
    old = _ATTENTION_FORM[0]
    _ATTENTION_FORM[0] = form
    try:
        yield
    finally:
        _ATTENTION_FORM[0] = old


@dataclass
class CacheAttention:
    """Functional attention state of one forward call over T new rows.

    k_cache, v_cache: [layers, Hkv, S, hd]; cache_len: int64 [1]; mask: bool [T, T] over the new rows.
    After the forward, ``new_k()`` / ``new_v()`` hold the new rows of every layer: [layers, Hkv, T, hd].
    """

    k_cache: Tensor
    v_cache: Tensor
    cache_len: Tensor
    mask: Tensor
    _k: list[Tensor] = field(default_factory=list)
    _v: list[Tensor] = field(default_factory=list)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        if q.shape[0] != 1:
            raise ValueError(f"jetspec attention runs batch 1, got a batch of {q.shape[0]}")
        self._k.append(k[0])
        self._v.append(v[0])
        fn = torch.ops.jetspec.tree_attention if _ATTENTION_FORM[0] == "op" else ops.tree_attention_dense
        out = fn(q[0], k[0], v[0], self.k_cache[layer], self.v_cache[layer], self.cache_len, self.mask, float(scale))
        return out.unsqueeze(0)  # [1, T, Hq, hd], the layout HF reshapes before o_proj

    def new_k(self) -> Tensor:
        return torch.stack(self._k)

    def new_v(self) -> Tensor:
        return torch.stack(self._v)


def jetspec_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, None]:
    state: CacheAttention | None = kwargs.pop("jetspec_cache", None)
    if state is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return state.attend(module.layer_idx, query, key, value, scale), None


AttentionInterface.register(ATTN_IMPLEMENTATION, jetspec_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def use_jetspec_attention(model: nn.Module) -> None:
    """Switch a Hugging Face model (and its sub-configs) to the ``jetspec`` attention implementation."""
    for cfg in {id(c): c for c in _configs(model)}.values():
        cfg._attn_implementation = ATTN_IMPLEMENTATION


def _configs(model: nn.Module):
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            yield cfg


def causal_mask(t: int, device: torch.device | None = None) -> Tensor:
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()
