"""Speed 2: the prompt-lookup branch inside the draft tree, end to end.

Lossless by construction (acceptance takes the deepest matching path; padding is never accepted), and
tested: greedy speculative with a lookup chain == greedy autoregressive decoding (eager, both tree
policies, several L; and a compiled aoti artifact), sampling stays reproducible and in range, and on text
that repeats the chain is the accepted path in most rounds and raises tau.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from jetspec_compile import autoregressive_generate, speculative_generate


@pytest.mark.parametrize("tree", ["dynamic", "static"])
@pytest.mark.parametrize("lookup", [1, 4, 10])
def test_greedy_lookup_is_lossless(tiny_models, tree, lookup):
    target, head, _ = tiny_models
    g = torch.Generator().manual_seed(lookup)
    for _ in range(3):
        ids = torch.randint(3, 30, (5,), generator=g).tolist() * 3  # a prompt that repeats
        ref = autoregressive_generate(target, head, ids, 40, eos_token_id=126)[0]
        out, st = speculative_generate(target, head, ids, 40, budget=8, topk=3, tree=tree, lookup=lookup,
                                       eos_token_id=126)
        assert out == ref
        assert sum(st.accept_histogram().values()) == st.rounds
        assert all(0.0 <= p <= 1.0 for p in st.depth_acceptance())


@contextlib.contextmanager
def _memoryless(target):
    """The target with attention and MLP outputs zeroed, so its next token depends only on the current one:
    greedy output walks a random map of the vocabulary into a cycle, text that repeats. Restored after."""
    ws = [w for layer in target.decoder_layers for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight)]
    saved = [w.detach().clone() for w in ws]
    with torch.no_grad():
        for w in ws:
            w.zero_()
    try:
        yield target
    finally:
        with torch.no_grad():
            for w, s in zip(ws, saved):
                w.copy_(s)


def test_lookup_pays_on_repeating_text(tiny_models):
    target, head, _ = tiny_models
    ids = list(range(3, 13)) * 2
    with _memoryless(target):
        ref = autoregressive_generate(target, head, ids, 120)[0]
        plain = speculative_generate(target, head, ids, 120, budget=4, topk=3)[1]
        out, st = speculative_generate(target, head, ids, 120, budget=4, topk=3, lookup=8)
    assert out == ref
    assert st.tau > 1.5 * plain.tau, (st.tau, plain.tau)
    assert st.lookup_rounds >= 0.5 * st.rounds, (st.lookup_rounds, st.rounds)


def test_sampling_with_lookup_is_seeded(tiny_models):
    target, head, _ = tiny_models
    ids = list(range(3, 9)) * 3
    a = speculative_generate(target, head, ids, 30, budget=8, topk=3, lookup=4, temperature=0.8, seed=3)[0]
    b = speculative_generate(target, head, ids, 30, budget=8, topk=3, lookup=4, temperature=0.8, seed=3)[0]
    assert a == b and len(a) == 30 and all(0 <= t < target.vocab_size for t in a)


def test_aoti_artifact_with_lookup_is_lossless(tiny_models, tmp_path, inductor_cache):
    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.runtime import load

    target, head, folder = tiny_models
    out = tmp_path / "lookup"
    m = export_model(target, head, SpecConfig(budget=8, topk=3, max_seq_len=128, prefill_chunk=16, lookup=6), out,
                     backend="aoti", sampling=False, tokenizer_dir=folder, log=lambda s: None)
    assert m["lookup"] == {"length": 6} and m["graphs"]["verify"]["inputs"][0].endswith("[14]")
    engine = load(out)
    for ids in (list(range(3, 13)) * 3, [5, 9, 5, 9, 5, 9, 7]):
        spec = engine.generate(ids, 60)
        assert spec.tokens == engine.generate(ids, 60, speculative=False).tokens
        assert spec.stats.lookup_rounds > 0


def test_onnx_artifact_with_lookup_is_lossless_and_takes_the_chain(tiny_models, tmp_path):
    """``export --backend onnx --lookup L``: verify has B + L rows, the ONNX runner binds the lookup draft's
    chain inputs, greedy speculative == ar_step, and on text that repeats the chain is accepted."""
    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.runtime import load

    target, head, folder = tiny_models
    out = tmp_path / "onnx-lookup"
    m = export_model(target, head, SpecConfig(budget=8, topk=3, max_seq_len=128, prefill_chunk=16, lookup=6), out,
                     backend="onnx", sampling=False, tokenizer_dir=folder, log=lambda s: None)
    assert m["lookup"] == {"length": 6}
    assert m["graphs"]["verify"]["inputs"][0] == "torch.int64[14]"  # B + L tree rows, as aoti's
    assert m["graphs"]["draft"]["inputs"][4:] == ["torch.int64[6]", "torch.int64[1]"]  # chain, chain_len
    engine = load(out)
    for ids in (list(range(3, 13)) * 3, [5, 9, 5, 9, 5, 9, 7]):
        spec = engine.generate(ids, 60)
        assert spec.tokens == engine.generate(ids, 60, speculative=False).tokens
        assert spec.stats.lookup_rounds > 0  # rounds whose accepted tokens all came from the chain
        assert spec.stats.tau > 1.0
