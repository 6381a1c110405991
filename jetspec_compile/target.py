"""The target model: a Hugging Face Qwen3 (dense or MoE) causal LM with layer taps.

A *tap* of layer L is the output of decoder layer L (Hugging Face ``hidden_states[L + 1]``). The
draft head conditions on the concatenation of the tapped layers' outputs on the channel axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from .attention import CacheAttention, use_jetspec_attention
from .errors import JetSpecError
from .jsonfiles import read_json
from .safetensors_io import check_safetensors

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen3_moe")


def default_tap_layers(num_layers: int, num_taps: int = 5) -> list[int]:
    """The reference rule: one tap -> N//2; else evenly spaced from layer 1 to layer N-3."""
    if num_taps < 1:
        raise JetSpecError(f"num_taps must be >= 1, got {num_taps}")
    if num_taps == 1:
        return [num_layers // 2]
    start, end = 1, num_layers - 3
    return [int(round(start + i * (end - start) / (num_taps - 1))) for i in range(num_taps)]


@dataclass
class TargetOutput:
    logits: Tensor  # [..., T, vocab]
    taps: Tensor  # [..., T, n_taps * hidden]


class Target(nn.Module):
    """A Qwen3 target with layer taps. Wraps (does not copy) the Hugging Face model."""

    def __init__(self, model: nn.Module, tap_layers: Sequence[int] | None = None, source: str | None = None):
        super().__init__()
        model_type = getattr(model.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise JetSpecError(
                f"{source or 'model'}: config.model_type is {model_type!r}; expected one of {SUPPORTED_MODEL_TYPES}"
            )
        self.model = model
        self.source = source
        self.tokenizer_path: Path | None = None
        cfg = model.config
        self.num_layers = int(cfg.num_hidden_layers)
        self.tap_layers = list(tap_layers) if tap_layers is not None else default_tap_layers(self.num_layers)
        self.check_tap_layers(self.tap_layers)
        self._tap_request: tuple[list[int], dict[int, Tensor]] | None = None
        for i, layer in enumerate(self.decoder_layers):
            layer.register_forward_hook(self._make_hook(i))
        use_jetspec_attention(model)

    # ---- shapes -------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def num_kv_heads(self) -> int:
        return int(self.config.num_key_value_heads)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.hidden_size // self.config.num_attention_heads)

    @property
    def is_moe(self) -> bool:
        return self.config.model_type == "qwen3_moe"

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    def check_tap_layers(self, layers: Sequence[int], who: str = "tap_layers") -> None:
        bad = [l for l in layers if not 0 <= int(l) < self.num_layers]
        if bad or not layers:
            raise JetSpecError(
                f"{who} {list(layers)}: layers {bad} out of range for a target with {self.num_layers} "
                f"decoder layers (expected non-empty, each in 0..{self.num_layers - 1})"
            )

    # ---- taps ---------------------------------------------------------------------------------------
    def _make_hook(self, index: int):
        def hook(module, args, output):
            req = self._tap_request
            if req is not None and index in req[0]:
                req[1][index] = output[0] if isinstance(output, tuple) else output

        return hook

    def _run(self, tap_layers: Sequence[int] | None, **kwargs) -> tuple[Tensor, Tensor]:
        wanted = list(tap_layers) if tap_layers is not None else self.tap_layers
        store: dict[int, Tensor] = {}
        self._tap_request = (wanted, store)
        try:
            out = self.model.model(use_cache=False, **kwargs)
        finally:
            self._tap_request = None
        return out.last_hidden_state, torch.cat([store[l] for l in wanted], dim=-1)

    # ---- forwards -----------------------------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.model.embed_tokens(input_ids)

    def lm_head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    def forward(self, input_ids: Tensor, tap_layers: Sequence[int] | None = None) -> TargetOutput:
        """Plain causal forward of a [T] or [batch, T] sequence: logits and concatenated taps."""
        squeeze = input_ids.dim() == 1
        ids = input_ids.unsqueeze(0) if squeeze else input_ids
        hidden, taps = self._run(tap_layers, input_ids=ids)
        logits = self.lm_head(hidden)
        if squeeze:
            return TargetOutput(logits[0], taps[0])
        return TargetOutput(logits, taps)

    def step(
        self,
        input_ids: Tensor,
        positions: Tensor,
        cache: CacheAttention,
        tap_layers: Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Functional forward of T new rows over an explicit KV cache.

        input_ids, positions: [T]. The rows attend to ``cache`` (prefix + ``cache.mask`` among the new
        rows). Returns the final-norm hidden states [T, d] and the taps [T, F]; the new K/V rows of
        every layer are left in ``cache.new_k()`` / ``cache.new_v()``.
        """
        hidden, taps = self._run(
            tap_layers,
            input_ids=input_ids.unsqueeze(0),
            position_ids=positions.unsqueeze(0),
            jetspec_cache=cache,  # HF's own causal mask is built but unused (dead code in exported graphs)
        )
        return hidden[0], taps[0]


def _read_config(folder: Path) -> dict:
    cfg_path = folder / "config.json"
    cfg = read_json(cfg_path, "a target folder needs config.json, *.safetensors, tokenizer.json")
    if cfg.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise JetSpecError(
            f"{cfg_path}: field model_type is {cfg.get('model_type')!r}; expected one of {SUPPORTED_MODEL_TYPES}"
        )
    return cfg


def load_target(
    path_or_model: str | Path | nn.Module,
    *,
    tap_layers: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Target:
    """Load a Qwen3 / Qwen3-MoE causal LM from a local folder or wrap an in-memory model."""
    if isinstance(path_or_model, Target):
        return path_or_model
    if isinstance(path_or_model, nn.Module):
        model = path_or_model.to(device=device, dtype=dtype).eval()
        return Target(model, tap_layers, source=type(path_or_model).__name__)
    folder = Path(path_or_model)
    if not folder.is_dir():
        raise JetSpecError(f"{folder}: target folder not found")
    _read_config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise JetSpecError(f"{folder}: no *.safetensors weights (pickle checkpoints are never loaded)")
    for f in files:
        check_safetensors(f)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, use_safetensors=True, attn_implementation="sdpa", local_files_only=True
        )
    except Exception as e:
        raise JetSpecError(f"{folder}: cannot load the target weights: {e}") from e
    target = Target(model.to(device).eval(), tap_layers, source=str(folder))
    tok = folder / "tokenizer.json"
    target.tokenizer_path = tok if tok.is_file() else None
    return target
