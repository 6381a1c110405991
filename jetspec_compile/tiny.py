"""Tiny random Qwen3 targets and heads, built in-process (no downloads), for tests and examples."""

from __future__ import annotations

import torch

from .head import DraftHead, head_config
from .target import Target, default_tap_layers, load_target


def tiny_qwen3(
    *,
    vocab_size: int = 128,
    hidden_size: int = 64,
    num_layers: int = 6,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int = 128,
    moe: bool = False,
    num_experts: int = 4,
    experts_per_token: int = 2,
    eos_token_id: int | None = None,
    seed: int = 0,
    std: float = 0.2,
):
    """A random Hugging Face Qwen3ForCausalLM (or Qwen3MoeForCausalLM with ``moe=True``), fp32, eval mode.

    ``std`` is larger than the usual 0.02 so that greedy decoding of a random model is not degenerate.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=head_dim,
        intermediate_size=intermediate_size, max_position_embeddings=4096, rms_norm_eps=1e-6,
        tie_word_embeddings=False, initializer_range=std, eos_token_id=eos_token_id,
        bos_token_id=None, pad_token_id=None, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    if moe:
        cfg = Qwen3MoeConfig(**common, num_experts=num_experts, num_experts_per_tok=experts_per_token,
                             moe_intermediate_size=intermediate_size, decoder_sparse_step=1, norm_topk_prob=True)
        model = Qwen3MoeForCausalLM(cfg)
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**common))
    return model.eval()


def tiny_target(*, num_taps: int = 3, seed: int = 0, **kwargs) -> Target:
    model = tiny_qwen3(seed=seed, **kwargs)
    n = model.config.num_hidden_layers
    return load_target(model, tap_layers=default_tap_layers(n, num_taps))


def matching_head_config(target: Target, *, num_layers: int, block_size: int, causal: bool = True,
                         mask_token_id: int | None = None):
    """A head config matching ``target``: its tap layers, hidden size, heads, vocabulary, norm and rope."""
    cfg = target.config
    return head_config(
        hidden_size=target.hidden_size,
        intermediate_size=int(cfg.intermediate_size),
        num_hidden_layers=num_layers,
        num_attention_heads=int(cfg.num_attention_heads),
        num_key_value_heads=target.num_kv_heads,
        head_dim=target.head_dim,
        vocab_size=target.vocab_size,
        num_target_layers=target.num_layers,
        target_layer_ids=target.tap_layers,
        mask_token_id=target.vocab_size - 1 if mask_token_id is None else mask_token_id,
        block_size=block_size,
        causal=causal,
        rms_norm_eps=float(cfg.rms_norm_eps),
        rope_theta=float(cfg.rope_parameters["rope_theta"]) if getattr(cfg, "rope_parameters", None) else 1e6,
    )


def tiny_head(
    target: Target,
    *,
    num_layers: int = 1,
    block_size: int = 8,
    causal: bool = True,
    mask_token_id: int | None = None,
    seed: int = 0,
    std: float = 0.2,
) -> DraftHead:
    """A random head matching ``target`` (its tap layers, hidden size, heads and vocabulary)."""
    config = matching_head_config(target, num_layers=num_layers, block_size=block_size, causal=causal,
                                  mask_token_id=mask_token_id)
    return DraftHead(config).init_weights(seed=seed, std=std).to(target.dtype).eval()
