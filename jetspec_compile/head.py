"""The JetSpec draft head, in the released JetSpec / DFlash checkpoint layout.

A few Qwen3 decoder layers (Hugging Face's own ``Qwen3DecoderLayer``, run through the ``jetspec``
attention) with no embedding or LM head of their own: the block ``[anchor, MASK x D]`` is embedded
with the target's ``embed_tokens`` and read out with the target's ``lm_head``.

Context: the concatenated target taps go through ``fc`` (bias-free Linear n_taps*d -> d) and
``hidden_norm`` (RMSNorm). In every layer that fused context is projected by the layer's own
``k_proj``/``v_proj`` (``k_norm`` and RoPE at the context positions applied to the keys); these
keys/values sit before the block's own keys. The context never queries. Inside the block attention
is causal (JetSpec, ``causal_head: true``) or bidirectional (released DFlash heads).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3DecoderLayer,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
    rotate_half,
)

from .attention import ATTN_IMPLEMENTATION, CacheAttention
from .errors import JetSpecError
from .jsonfiles import read_json
from .safetensors_io import load_safetensors, save_safetensors
from .target import default_tap_layers

if TYPE_CHECKING:
    from .target import Target

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_LAYER_KEYS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)
_REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "block_size", "num_target_layers")


def expected_keys(num_layers: int) -> list[str]:
    keys = ["fc.weight", "hidden_norm.weight", "norm.weight"]
    keys += [f"layers.{i}.{k}" for i in range(num_layers) for k in _LAYER_KEYS]
    return keys


def head_config(
    *,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    head_dim: int,
    vocab_size: int,
    num_target_layers: int,
    target_layer_ids: list[int],
    mask_token_id: int,
    block_size: int = 16,
    causal: bool = True,
    rms_norm_eps: float = 1e-6,
    rope_theta: float = 1_000_000.0,
    max_position_embeddings: int = 40960,
) -> Qwen3Config:
    """A head config in the released layout (Qwen3 fields + block_size, num_target_layers, dflash_config)."""
    return Qwen3Config(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        vocab_size=vocab_size,
        rms_norm_eps=rms_norm_eps,
        rope_theta=rope_theta,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        architectures=["DFlashDraftModel"],
        block_size=block_size,
        num_target_layers=num_target_layers,
        dflash_config={
            "causal_head": bool(causal),
            "target_layer_ids": [int(x) for x in target_layer_ids],
            "mask_token_id": int(mask_token_id),
            "target_hidden_size": hidden_size,
        },
    )


class DraftHead(nn.Module):
    """JetSpec / DFlash draft head. Parameters are named exactly as in released checkpoints."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        dflash = dict(getattr(config, "dflash_config", None) or {})
        config.dflash_config = dflash
        config.layer_types = ["full_attention"] * config.num_hidden_layers
        config._attn_implementation = ATTN_IMPLEMENTATION
        self.config = config
        self.target_layer_ids: list[int] = [int(x) for x in dflash.get("target_layer_ids") or
                                            default_tap_layers(config.num_target_layers, config.num_hidden_layers)]
        dflash["target_layer_ids"] = self.target_layer_ids
        if dflash.get("mask_token_id") is None:
            raise JetSpecError("head config: dflash_config.mask_token_id is missing (expected an int token id)")
        self.mask_token_id = int(dflash["mask_token_id"])
        self.causal = bool(dflash.get("causal_head", False))
        self.block_size = int(config.block_size)
        if self.block_size < 2:
            raise JetSpecError(f"head config: block_size is {self.block_size}; expected >= 2")
        d = config.hidden_size
        self.fc = nn.Linear(len(self.target_layer_ids) * d, d, bias=False)
        self.hidden_norm = Qwen3RMSNorm(d, eps=config.rms_norm_eps)
        self.layers = nn.ModuleList([Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = Qwen3RMSNorm(d, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config)
        self.head_dim = self.layers[0].self_attn.head_dim
        self.num_kv_heads = int(config.num_key_value_heads)
        self._depth: int | None = None

    @property
    def depth(self) -> int:
        """D: the number of drafted depths (block size - 1 unless set_depth chose fewer)."""
        return self._depth if self._depth is not None else self.block_size - 1

    def set_depth(self, depth: int) -> "DraftHead":
        """Draft only the first ``depth`` depths (a shorter block). A causal head's first depths do not
        depend on later slots, so its logits are unchanged; a bidirectional head's would change."""
        full = self.block_size - 1
        if not 1 <= depth <= full:
            raise JetSpecError(f"depth is {depth}; this head drafts 1..{full} depths (block_size {self.block_size})")
        if depth != full and not self.causal:
            raise JetSpecError(f"depth is {depth}; a bidirectional (DFlash) head only drafts its full block of {full}")
        self._depth = None if depth == full else depth
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    def init_weights(self, seed: int | None = None, std: float | None = None) -> "DraftHead":
        """Random initialisation as Hugging Face does for Qwen3 (normal linears, unit norms)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        std = std if std is not None else float(getattr(self.config, "initializer_range", 0.02))
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight") or "layernorm" in name:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        return self

    # ---- graph pieces -------------------------------------------------------------------------------
    def block_mask(self, device: torch.device | None = None) -> Tensor:
        """[D+1, D+1] bool: causal inside the block for a JetSpec head, full for a DFlash head."""
        n = self.depth + 1
        full = torch.ones(n, n, dtype=torch.bool, device=device)
        return full.tril() if self.causal else full

    def project_context(self, taps: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Fused context rows -> per-layer context keys/values [layers, Hkv, T, hd] (RoPE at positions)."""
        fused = self.hidden_norm(self.fc(taps))
        t = fused.shape[0]
        cos, sin = self.rotary_emb(fused.unsqueeze(0), positions.unsqueeze(0))  # [1, T, hd]
        ks, vs = [], []
        for layer in self.layers:
            attn = layer.self_attn
            k = attn.k_norm(attn.k_proj(fused).view(t, self.num_kv_heads, self.head_dim)).transpose(0, 1)
            ks.append(k * cos + rotate_half(k) * sin)
            vs.append(attn.v_proj(fused).view(t, self.num_kv_heads, self.head_dim).transpose(0, 1))
        return torch.stack(ks), torch.stack(vs)

    def forward_block(
        self,
        embeds: Tensor,
        positions: Tensor,
        ctx_k: Tensor,
        ctx_v: Tensor,
        ctx_len: Tensor,
        mask: Tensor,
    ) -> Tensor:
        """Run the block (embedded [Tb, d] at positions [Tb]) against the context cache; final-normed [Tb, d]."""
        state = CacheAttention(ctx_k, ctx_v, ctx_len, mask)
        h = embeds.unsqueeze(0)
        pos = positions.unsqueeze(0)
        pe = self.rotary_emb(h, pos)
        for layer in self.layers:
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe, jetspec_cache=state)
            h = h[0] if isinstance(h, tuple) else h
        return self.norm(h)[0]

    def block_logits(self, target: "Target", anchor: Tensor, ctx_k: Tensor, ctx_v: Tensor, ctx_len: Tensor) -> Tensor:
        """Per-depth draft logits [D, vocab] for the block after `anchor` (int64 [1]) at position ctx_len."""
        d = self.depth
        block = torch.cat([anchor.reshape(1), anchor.new_full((d,), self.mask_token_id)])
        positions = ctx_len.reshape(1) + torch.arange(d + 1, device=anchor.device)
        h = self.forward_block(target.embed(block), positions, ctx_k, ctx_v, ctx_len.reshape(1),
                               self.block_mask(anchor.device))
        return target.lm_head(h[1:])

    def draft_logits(self, target: "Target", input_ids: Tensor) -> Tensor:
        """Per-depth logits [D, vocab] of the block after a 1-D ``input_ids``.

        Context = taps of input_ids[:-1] at positions 0..n-2; anchor = input_ids[-1] at n-1; MASK slots
        at n..n+D-1. Slot d of the output predicts depth d+1 (the token d+1 places after the anchor).
        """
        self.check_compatible(target)
        ids = input_ids.reshape(-1).to(target.device)
        if ids.numel() < 1:
            raise JetSpecError("draft_logits: input_ids is empty (expected at least the anchor token)")
        n = ids.numel()
        ctx = ids[:-1]
        taps = target(ctx, tap_layers=self.target_layer_ids).taps if n > 1 else \
            torch.zeros(0, self.fc.in_features, dtype=self.dtype, device=ids.device)
        ctx_k, ctx_v = self.project_context(taps.to(self.dtype), torch.arange(n - 1, device=ids.device))
        return self.block_logits(target, ids[-1:], ctx_k, ctx_v, torch.tensor([n - 1], device=ids.device))

    # ---- compatibility --------------------------------------------------------------------------------
    def check_compatible(self, target: "Target", source: str | None = None) -> None:
        """Raise JetSpecError naming the field when this head cannot draft for ``target``."""
        where = f"{source}: " if source else "head config: "
        cfg = self.config
        if cfg.hidden_size != target.hidden_size:
            raise JetSpecError(f"{where}hidden_size is {cfg.hidden_size}; the target's is {target.hidden_size} "
                               "(the head shares the target's embedding and lm_head, so they must match)")
        ths = cfg.dflash_config.get("target_hidden_size")
        if ths is not None and int(ths) != target.hidden_size:
            raise JetSpecError(f"{where}dflash_config.target_hidden_size is {ths}; the target's hidden_size is "
                               f"{target.hidden_size}")
        if int(cfg.num_target_layers) != target.num_layers:
            raise JetSpecError(f"{where}num_target_layers is {cfg.num_target_layers}; the target has "
                               f"{target.num_layers} decoder layers")
        target.check_tap_layers(self.target_layer_ids, who=f"{where}dflash_config.target_layer_ids")
        vocab = getattr(cfg, "vocab_size", None)
        if vocab is not None and int(vocab) != target.vocab_size:
            raise JetSpecError(f"{where}vocab_size is {vocab}; the target's vocab_size is {target.vocab_size}")
        if not 0 <= self.mask_token_id < target.vocab_size:
            raise JetSpecError(f"{where}dflash_config.mask_token_id is {self.mask_token_id}; expected a token id "
                               f"in 0..{target.vocab_size - 1}")

    # ---- files --------------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        cfg = self.config.to_dict()
        keep = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps",
                "max_position_embeddings", "vocab_size", "attention_bias", "attention_dropout", "rope_parameters",
                "initializer_range", "tie_word_embeddings", "block_size", "num_target_layers", "dflash_config")
        out = {k: cfg[k] for k in keep if k in cfg}
        out["model_type"] = "qwen3"
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        return out

    def save(self, path: str | Path) -> Path:
        """Write config.json + model.safetensors (released layout). Each file is written atomically."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v for k, v in self.state_dict().items() if not k.startswith("rotary_emb.")}
        _atomic_write(folder / WEIGHTS_NAME, lambda p: save_safetensors(tensors, p))
        text = json.dumps(self.config_dict(), indent=2, sort_keys=True) + "\n"
        _atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(text))
        return folder


def _atomic_write(dest: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_draft_head(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> DraftHead:
    """Load a head folder (config.json + model.safetensors) in the released JetSpec/DFlash layout."""
    folder = Path(path)
    cfg_path = folder / CONFIG_NAME
    raw = read_json(cfg_path, "a head folder needs config.json and model.safetensors")
    for f in _REQUIRED_FIELDS:
        if f not in raw:
            raise JetSpecError(f"{cfg_path}: field {f!r} is missing")
    dflash = raw.get("dflash_config")
    if not isinstance(dflash, dict):
        raise JetSpecError(f"{cfg_path}: field 'dflash_config' is missing (expected an object with "
                           "causal_head, target_layer_ids, mask_token_id)")
    if not isinstance(dflash.get("mask_token_id"), int):
        raise JetSpecError(f"{cfg_path}: field dflash_config.mask_token_id is {dflash.get('mask_token_id')!r}; "
                           "expected an int token id")
    config = Qwen3Config(**{k: v for k, v in raw.items() if k not in ("model_type", "dtype", "torch_dtype")})
    try:
        head = DraftHead(config)
    except JetSpecError as e:
        raise JetSpecError(f"{cfg_path}: {e}") from None
    w_path = folder / WEIGHTS_NAME
    tensors = load_safetensors(w_path)
    want = expected_keys(config.num_hidden_layers)
    missing = [k for k in want if k not in tensors]
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise JetSpecError(f"{w_path}: keys do not match the head layout of {cfg_path.name} "
                           f"(missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                           f"unexpected {extra[:6]}{'...' if len(extra) > 6 else ''})")
    own = head.state_dict()
    for k in want:
        if tuple(tensors[k].shape) != tuple(own[k].shape):
            raise JetSpecError(f"{w_path}: tensor {k!r} has shape {tuple(tensors[k].shape)}; "
                               f"{cfg_path.name} implies {tuple(own[k].shape)}")
    file_dtype = tensors["fc.weight"].dtype
    head = head.to(dtype or file_dtype)
    head.load_state_dict(tensors, strict=True)
    return head.to(device).eval()
