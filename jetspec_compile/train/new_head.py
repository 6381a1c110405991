"""A new head for a target: a fresh head, one initialised from the target's layers, a warm start."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..errors import JetSpecError
from ..head import DraftHead, head_config
from ..target import Target, default_tap_layers

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
    from ..head import load_draft_head

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
