"""Stage 5: runtime loader, generate / stream, stopping, CLI generate and verify-lossless."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from jetspec_compile.errors import JetSpecError
from jetspec_compile.artifact import write_manifest
from jetspec_compile.runtime import load
from jetspec_compile.eager_oracle import autoregressive_generate, speculative_generate

SPEC = dict(budget=16, topk=3, max_seq_len=96, prefill_chunk=16)


def _prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 95, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.mark.parametrize("which", ["aoti", "onnx"])
def test_generate_equals_eager_oracle(which, tiny_models, aoti_artifact, onnx_artifact):
    target, head, _ = tiny_models
    engine = load(aoti_artifact if which == "aoti" else onnx_artifact)
    for ids in _prompts(4):
        ref, st = speculative_generate(target, head, ids, 30, **SPEC, eos_token_id=126)
        g = engine.generate(ids, 30)
        assert g.tokens == ref and g.stats.rounds == st.rounds and g.stats.accepted == st.accepted
        ar = engine.generate(ids, 30, speculative=False)
        assert ar.tokens == autoregressive_generate(target, head, ids, 30, max_seq_len=96, eos_token_id=126)[0]
        assert ar.tokens == ref


def test_sampling_compiled_equals_eager(onnx_artifact):
    engine = load(onnx_artifact)
    eager = load(onnx_artifact, mode="eager")
    for ids in _prompts(3, seed=1):
        a = engine.generate(ids, 20, temperature=0.9, top_p=0.9, seed=7).tokens
        b = eager.generate(ids, 20, temperature=0.9, top_p=0.9, seed=7).tokens
        assert a == b


def test_stream_equals_generate(aoti_artifact):
    engine = load(aoti_artifact)
    text = engine.generate("def f(x):", 40).text
    pieces = list(engine.stream("def f(x):", 40))
    assert "".join(pieces) == text and len(pieces) > 1
    tokens = [t for c in engine.stream_tokens("def f(x):", 40) for t in c]
    assert engine.decode(tokens) == text


def test_eos_and_stop_strings(aoti_artifact):
    engine = load(aoti_artifact)
    prompt = "hello world"
    full = engine.generate(prompt, 40)
    assert full.finish_reason == "length" and len(full.tokens) == 40
    eos = full.tokens[7]
    engine.eos_token_ids = [eos]
    g = engine.generate(prompt, 40)
    assert g.tokens == full.tokens[: full.tokens.index(eos) + 1] and g.finish_reason == "eos"
    engine.eos_token_ids = []
    stop = full.text[10:13]
    g = engine.generate(prompt, 40, stop=[stop, "\x00never"])
    assert g.finish_reason == "stop"
    assert g.text == full.text[: full.text.index(stop)] and stop not in g.text
    assert "".join(engine.stream(prompt, 40, stop=stop)) == g.text


def test_prompt_too_long_and_cache_overflow(aoti_artifact):
    engine = load(aoti_artifact)
    S, B = engine.max_seq_len, engine.budget
    with pytest.raises(JetSpecError, match=f"prompt has {S - B + 1} tokens; .* allows at most {S - B}"):
        engine.generate([5] * (S - B + 1), 10)
    g = engine.generate([5] * (S - B), 500)  # would overflow the cache: stops cleanly with a reason
    assert g.finish_reason == "cache_full" and 0 < len(g.tokens) < 500
    ar = engine.generate([5] * (S - B), 500, speculative=False)
    assert ar.finish_reason == "cache_full" and ar.tokens[: len(g.tokens)] == g.tokens
    with pytest.raises(JetSpecError, match="prompt is empty"):
        engine.generate([], 5)
    with pytest.raises(JetSpecError, match="temperature"):
        engine.generate([1, 2], 5, temperature=-1)


def test_sampling_needs_sampling_graph(aoti_artifact):
    engine = load(aoti_artifact)  # exported with sampling=False
    with pytest.raises(JetSpecError, match="verify_sample graph"):
        engine.generate([1, 2, 3], 5, temperature=0.7)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jetspec_compile.cli", *args], capture_output=True, text=True)


def test_cli_generate(aoti_artifact):
    engine = load(aoti_artifact)
    want = engine.generate("abc", 12).text
    r = _cli("generate", str(aoti_artifact), "abc", "--max-new-tokens", "12")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"
    assert "tau" in r.stderr and "finish: length" in r.stderr


def test_verify_lossless_cli(onnx_artifact, tmp_path, tiny_models):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["def f():", "import os", "x = 1"]) + "\n")
    r = _cli("verify-lossless", str(onnx_artifact), "--prompts", str(prompts), "--max-new-tokens", "24")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lossless: 3 prompts" in r.stdout
    # a verify graph swapped for a wrong one (compiled from another model), manifest re-hashed
    from jetspec_compile.backends import capture, get_backend
    from jetspec_compile.graphs import SpecConfig, build_graphs, example_inputs
    from jetspec_compile.tiny import tiny_head, tiny_target

    other = tiny_target(num_layers=4, seed=1)
    other_head = tiny_head(other, block_size=6, mask_token_id=127)
    spec = SpecConfig(**SPEC)
    args = example_inputs("verify", other, other_head, spec)
    ep = capture(build_graphs(other, other_head, spec, ("verify",))["verify"], args, "dense")
    bad = tmp_path / "bad"
    shutil.copytree(onnx_artifact, bad)
    for f in bad.glob("verify.onnx*"):
        f.unlink()
    get_backend("onnx").compile_graph(ep, args, bad / "verify.onnx", "cpu")
    m = json.loads((bad / "manifest.json").read_text())
    write_manifest(bad, {k: v for k, v in m.items() if k not in ("files", "schema_version")})
    r = _cli("verify-lossless", str(bad), "--prompts", str(prompts), "--max-new-tokens", "24")
    assert r.returncode == 1 and "MISMATCH prompt 0: first difference at generated position" in r.stdout
    bad_prompts = tmp_path / "bad.jsonl"
    bad_prompts.write_text('{"text": "x"}\n')
    r = _cli("verify-lossless", str(onnx_artifact), "--prompts", str(bad_prompts))
    assert r.returncode == 1 and "bad.jsonl:1: field 'prompt'" in r.stderr
