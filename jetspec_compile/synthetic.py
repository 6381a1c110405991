"""Seeded random-weight Qwen3 targets and JetSpec heads at the exact published Qwen3 shapes (no downloads).

Cost and correctness at real shapes can be measured with these; tau cannot (the weights are random).

    from jetspec_compile.synthetic import synthetic_target, synthetic_head
    target = synthetic_target("qwen3-0.6b")          # 28 layers, hidden 1024, vocab 151,936, GQA 16/8, hd 128
    head = synthetic_head(target)                    # paper proportions: 5 layers, 5 taps (reference rule), block 16

The shape numbers are those of the published ``config.json`` of each Qwen3 checkpoint. One difference:
the published 0.6B/1.7B configs tie the LM head to the embedding; these builders keep them untied by
default (``tie_word_embeddings=False``, one more [vocab, hidden] tensor), because the export pipeline
stores each parameter name once and has not been tested with tied parameters.
"""

from __future__ import annotations

import torch

from .head import DraftHead
from .tiny import matching_head_config
from .target import Target, default_tap_layers, load_target

# Published Qwen3 configs (config.json of Qwen/Qwen3-0.6B, Qwen/Qwen3-1.7B, Qwen/Qwen3-8B).
PUBLISHED: dict[str, dict] = {
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=True),
    "qwen3-1.7b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=True),
    "qwen3-8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=1000000.0,
                     rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=False),
    # Qwen/Qwen3-30B-A3B: every decoder layer is a sparse MoE block (decoder_sparse_step 1, no mlp_only_layers)
    "qwen3-30b-a3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                          num_attention_heads=32, num_key_value_heads=4, head_dim=128, rope_theta=1000000.0,
                          rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=False,
                          moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
                          decoder_sparse_step=1),
}
MOE = ("qwen3-30b-a3b",)

# name -> (published config, number of decoder layers actually built)
SYNTHETIC: dict[str, tuple[str, int]] = {
    "qwen3-0.6b": ("qwen3-0.6b", 28),
    "qwen3-1.7b": ("qwen3-1.7b", 28),
    "qwen3-8b-2layers": ("qwen3-8b", 2),
    "qwen3-30b-a3b-e32-1layer": ("qwen3-30b-a3b", 1),
}
# name -> published fields replaced (beyond the layer count), and the head's layers where not HEAD_LAYERS.
# qwen3-30b-a3b-e32-1layer: Qwen3-30B-A3B's attention and expert shapes (experts [1536, 2048] gate/up and
# [2048, 768] down, top-8 routing, normalised) with 32 of its 128 experts and a 2-layer head, so that the
# weights (3.6 GB in fp32) fit an export, the compiled engine and the eager oracle in one 14 GiB process;
# the 128-expert layer alone is 2.4 GB. A round's expert work depends on the tokens x top-8 pairs, not on
# how many experts exist, so the graphs' per-token cost is the real one; only the router is 4x smaller.
OVERRIDES: dict[str, dict] = {
    "qwen3-30b-a3b-e32-1layer": dict(num_experts=32),
}
HEAD_LAYERS_OF: dict[str, int] = {
    "qwen3-30b-a3b-e32-1layer": 2,
}

HEAD_LAYERS = 5      # the paper's head: 5 decoder layers
HEAD_TAPS = 5        # 5 taps by the reference rule
HEAD_BLOCK = 16      # block 16 (15 drafted depths)


def synthetic_config(name: str, *, tie_word_embeddings: bool = False, num_layers: int | None = None):
    """The Qwen3Config for ``name`` (one of ``SYNTHETIC``): published shapes, layers as built (or
    ``num_layers`` decoder layers: every other shape stays the published one; the slow test uses 2)."""
    from transformers import Qwen3Config, Qwen3MoeConfig

    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic model {name!r}; expected one of {', '.join(SYNTHETIC)}")
    base, layers = SYNTHETIC[name]
    if num_layers is not None:
        if int(num_layers) < 1:
            raise ValueError(f"num_layers {num_layers}: expected an integer >= 1")
        layers = int(num_layers)
    p = dict(PUBLISHED[base])
    p.update(OVERRIDES.get(name, {}))
    p["num_hidden_layers"] = layers
    p["tie_word_embeddings"] = tie_word_embeddings
    rope_theta = p.pop("rope_theta")
    config_class = Qwen3MoeConfig if base in MOE else Qwen3Config
    cfg = config_class(**p, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                      bos_token_id=None, pad_token_id=None, eos_token_id=None, attn_implementation="sdpa")
    return cfg


def synthetic_qwen3(name: str, *, seed: int = 0, std: float = 0.02, dtype: torch.dtype = torch.float32,
                    num_layers: int | None = None):
    """A seeded random Qwen3ForCausalLM (Qwen3MoeForCausalLM for an MoE name) at the shapes of ``name``, in
    eval mode."""
    from transformers import Qwen3ForCausalLM, Qwen3MoeForCausalLM

    cfg = synthetic_config(name, num_layers=num_layers)
    cfg.initializer_range = std
    torch.manual_seed(seed)
    model = (Qwen3MoeForCausalLM if cfg.model_type == "qwen3_moe" else Qwen3ForCausalLM)(cfg)
    return model.to(dtype).eval()


def synthetic_target(name: str, *, seed: int = 0, std: float = 0.02, num_taps: int = HEAD_TAPS,
                     dtype: torch.dtype = torch.float32, num_layers: int | None = None) -> Target:
    """A seeded random target at the shapes of ``name`` with min(num_taps, layers) taps by the reference rule."""
    model = synthetic_qwen3(name, seed=seed, std=std, dtype=dtype, num_layers=num_layers)
    target = load_target(model, tap_layers=synthetic_taps(int(model.config.num_hidden_layers), num_taps))
    target.synthetic_name = name  # synthetic_head reads the head's default layer count from it
    return target


def synthetic_taps(num_layers: int, num_taps: int = HEAD_TAPS) -> list[int]:
    """The reference rule's taps; for very shallow targets (fewer than 4 layers, where the rule gives negative
    layers, e.g. [1, -1] for 2 layers) clamped into range, without duplicates."""
    taps = default_tap_layers(num_layers, min(num_taps, num_layers))
    return sorted({min(max(int(t), 0), num_layers - 1) for t in taps})


def synthetic_head_config(target: Target, *, num_layers: int = HEAD_LAYERS, block_size: int = HEAD_BLOCK):
    return matching_head_config(target, num_layers=num_layers, block_size=block_size)


def synthetic_head(target: Target, *, num_layers: int | None = None, block_size: int = HEAD_BLOCK,
                   seed: int = 0, std: float = 0.02) -> DraftHead:
    """A seeded random JetSpec head of the paper's proportions for ``target`` (``num_layers`` default: 5, or
    HEAD_LAYERS_OF the synthetic target's name)."""
    if num_layers is None:
        num_layers = HEAD_LAYERS_OF.get(getattr(target, "synthetic_name", None), HEAD_LAYERS)
    config = synthetic_head_config(target, num_layers=num_layers, block_size=block_size)
    return DraftHead(config).init_weights(seed=seed, std=std).to(target.dtype).eval()


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (64-bit Python int)."""
    return sum(int(t.numel()) * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
