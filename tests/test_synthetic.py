"""Synthetic real-shape builders: configs equal the published Qwen3 numbers (fast; no weights built)."""

import pytest

from jetspec_compile.synthetic import PUBLISHED, SYNTHETIC, synthetic_config
from jetspec_compile.target import default_tap_layers


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_config_matches_published(name):
    base, layers = SYNTHETIC[name]
    cfg = synthetic_config(name)
    pub = PUBLISHED[base]
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "head_dim", "rms_norm_eps", "max_position_embeddings"):
        assert getattr(cfg, k) == pub[k], k
    assert cfg.num_hidden_layers == layers
    assert cfg.rope_parameters["rope_theta"] == pub["rope_theta"]


def test_published_numbers():
    assert PUBLISHED["qwen3-0.6b"]["num_hidden_layers"] == 28
    assert PUBLISHED["qwen3-0.6b"]["hidden_size"] == 1024
    assert PUBLISHED["qwen3-0.6b"]["vocab_size"] == 151936
    assert PUBLISHED["qwen3-8b"]["num_hidden_layers"] == 36
    assert default_tap_layers(36, 5) == [1, 9, 17, 25, 33]


def test_unknown_name():
    with pytest.raises(ValueError, match="qwen3-0.6b"):
        synthetic_config("qwen3-9000b")
