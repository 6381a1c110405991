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


def test_num_layers_override_keeps_shapes():
    cfg = synthetic_config("qwen3-0.6b", num_layers=2)
    assert cfg.num_hidden_layers == 2 and cfg.hidden_size == 1024 and cfg.vocab_size == 151936
    with pytest.raises(ValueError, match=">= 1"):
        synthetic_config("qwen3-0.6b", num_layers=0)


def _cli(capsys, *argv):
    from jetspec_compile.cli import main

    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, *capsys.readouterr()


@pytest.mark.parametrize("argv,needle", [
    (["--synthetic", "qwen3-9000b"], "unknown synthetic model 'qwen3-9000b'; expected one of qwen3-0.6b"),
    (["--synthetic", "qwen3-0.6b", "--target", "t", "--head", "h"], "--synthetic replaces --target/--head"),
    (["--synthetic", "qwen3-0.6b", "--tree", "static"], "needs --tree-stats"),
    (["--synthetic", "qwen3-0.6b", "--seed", "-1"], "--seed"),
])
def test_export_synthetic_bad_arguments(argv, needle, capsys, tmp_path):
    code, out, err = _cli(capsys, "export", *argv, "--out", str(tmp_path / "a"))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "a").exists()


@pytest.mark.slow
def test_real_shape_end_to_end(tmp_path, inductor_cache):
    """The smallest real-shape configuration end to end: Qwen3-0.6B's published shapes (hidden 1024, vocab
    151,936, GQA 16/8, head_dim 128) with 2 decoder layers, a 2-layer head (block 16), aoti export with an
    extra budget, load, and greedy speculative == ar_step == the eager target's greedy tokens."""
    import torch

    from jetspec_compile import SpecConfig, autoregressive_generate
    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.runtime import load
    from jetspec_compile.synthetic import synthetic_head, synthetic_target

    target = synthetic_target("qwen3-0.6b", num_layers=2)
    head = synthetic_head(target, num_layers=2)
    art = tmp_path / "art"
    export_model(target, head, SpecConfig(budget=8, topk=4, max_seq_len=256, prefill_chunk=64), art,
                 backend="aoti", sampling=False, budgets=[16], log=lambda s: None)
    eng = load(art)
    prompt = torch.randint(3, 1000, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    ref = eng.generate(prompt, 16, speculative=False).tokens
    assert len(ref) == 16
    for b in (8, 16, None):       # each fixed budget and adaptive
        assert eng.generate(prompt, 16, budget=b).tokens == ref, b
    eager = autoregressive_generate(target, head, torch.tensor(prompt), 16)[0]
    assert list(eager) == ref


def test_taps_in_range_for_shallow_targets():
    from jetspec_compile.synthetic import synthetic_taps

    assert synthetic_taps(28) == default_tap_layers(28, 5)
    assert synthetic_taps(36) == [1, 9, 17, 25, 33]
    for n in (1, 2, 3):
        taps = synthetic_taps(n)
        assert taps and all(0 <= t < n for t in taps) and len(set(taps)) == len(taps), (n, taps)


def test_moe_synthetic_keeps_expert_shapes():
    """qwen3-30b-a3b-e32-1layer: Qwen3-30B-A3B's published attention and expert shapes and top-8 routing, with
    32 experts and one layer (built on the meta device: no weights allocated)."""
    import torch
    from transformers import Qwen3MoeForCausalLM

    from jetspec_compile.synthetic import HEAD_LAYERS_OF

    cfg = synthetic_config("qwen3-30b-a3b-e32-1layer")
    pub = PUBLISHED["qwen3-30b-a3b"]
    assert cfg.model_type == "qwen3_moe" and cfg.num_hidden_layers == 1 and cfg.num_experts == 32
    for k in ("hidden_size", "moe_intermediate_size", "num_experts_per_tok", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size", "norm_topk_prob"):
        assert getattr(cfg, k) == pub[k], k
    with torch.device("meta"):
        m = Qwen3MoeForCausalLM(cfg)
    experts = m.model.layers[0].mlp.experts
    assert tuple(experts.gate_up_proj.shape) == (32, 2 * 768, 2048)
    assert tuple(experts.down_proj.shape) == (32, 2048, 768)
    assert HEAD_LAYERS_OF["qwen3-30b-a3b-e32-1layer"] == 2
