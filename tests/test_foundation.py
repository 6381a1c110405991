"""Stage 1: target taps, the draft head (reference semantics, released layout), clear errors."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from jetspec_compile import JetSpecError, default_tap_layers, load_draft_head, load_target
from jetspec_compile.attention import CacheAttention, causal_mask
from jetspec_compile.head import expected_keys
from jetspec_compile.tiny import tiny_head, tiny_qwen3, tiny_target

from helpers import empty_cache


def test_default_tap_layers_reference_rule():
    assert default_tap_layers(36, 5) == [1, 9, 17, 25, 33]
    assert default_tap_layers(48, 5) == [1, 12, 24, 34, 45] or default_tap_layers(48, 5) == [
        int(round(1 + i * 44 / 4)) for i in range(5)
    ]
    assert default_tap_layers(10, 1) == [5]
    assert default_tap_layers(8, 3) == [1, 3, 5]


@pytest.mark.parametrize("moe", [False, True])
def test_taps_equal_hf_hidden_states(moe):
    model = tiny_qwen3(moe=moe, num_layers=6)
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True)
        target = load_target(model, tap_layers=[0, 2, 4])
        out = target(ids)
    hs = ref.hidden_states
    want = torch.cat([hs[1], hs[3], hs[5]], dim=-1)
    assert out.taps.shape == (1, 12, 3 * 64)
    torch.testing.assert_close(out.taps, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)


def test_functional_step_equals_plain_forward():
    target = tiny_target(num_layers=4)
    ids = torch.randint(0, 128, (20,))
    with torch.no_grad():
        full = target(ids)
        kc, vc = empty_cache(target, 32)
        # first 13 rows through the cache path, then the last 7 against the cached prefix
        st = CacheAttention(kc, vc, torch.tensor([0]), causal_mask(13))
        h1, t1 = target.step(ids[:13], torch.arange(13), st)
        kc[:, :, :13], vc[:, :, :13] = st.new_k(), st.new_v()
        st2 = CacheAttention(kc, vc, torch.tensor([13]), causal_mask(7))
        h2, t2 = target.step(ids[13:], torch.arange(13, 20), st2)
    logits = target.lm_head(torch.cat([h1, h2]))
    torch.testing.assert_close(logits, full.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.cat([t1, t2]), full.taps, rtol=0, atol=1e-4)


# ---- an independent implementation of the reference head (DFlashDraftModel semantics) -------------------

def _rms(x, w, eps):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(x, pos, theta, hd):
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
    f = pos[:, None].float() * inv[None]
    emb = torch.cat([f, f], -1)
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def reference_draft_logits(head, target, ids):
    """Per the reference: K = [k_proj(ctx); k_proj(x)] -> k_norm -> RoPE over ctx+block positions,
    Q from block slots only, additive mask key_idx <= ctx_len + q_idx (causal head) or none."""
    sd = {k: v.float() for k, v in head.state_dict().items()}
    cfg = head.config
    eps, hd = cfg.rms_norm_eps, head.head_dim
    theta = cfg.rope_parameters["rope_theta"]
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    n, D = ids.numel(), head.depth
    taps = target(ids[:-1], tap_layers=head.target_layer_ids).taps
    ctx = _rms(taps @ sd["fc.weight"].T, sd["hidden_norm.weight"], eps)
    block = torch.cat([ids[-1:], torch.full((D,), head.mask_token_id)])
    x = target.embed(block).float()
    pos = torch.arange(n - 1 + D + 1)
    qpos = pos[n - 1:]
    c = n - 1
    if head.causal:
        allowed = torch.arange(c + D + 1)[None, :] <= (c + torch.arange(D + 1))[:, None]
        amask = torch.zeros(D + 1, c + D + 1).masked_fill(~allowed, torch.finfo(torch.float32).min)
    else:
        amask = torch.zeros(D + 1, c + D + 1)
    for i in range(cfg.num_hidden_layers):
        p = lambda k: sd[f"layers.{i}.{k}"]
        r = x
        h = _rms(x, p("input_layernorm.weight"), eps)
        q = (h @ p("self_attn.q_proj.weight").T).view(D + 1, hq, hd)
        q = _rms(q, p("self_attn.q_norm.weight"), eps).transpose(0, 1)
        kin = torch.cat([ctx, h])
        k = (kin @ p("self_attn.k_proj.weight").T).view(-1, hkv, hd)
        k = _rms(k, p("self_attn.k_norm.weight"), eps).transpose(0, 1)
        v = (kin @ p("self_attn.v_proj.weight").T).view(-1, hkv, hd).transpose(0, 1)
        q, k = _rope(q, qpos, theta, hd), _rope(k, pos, theta, hd)
        k = k.repeat_interleave(hq // hkv, 0)
        v = v.repeat_interleave(hq // hkv, 0)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + amask, -1) @ v
        x = r + a.transpose(0, 1).reshape(D + 1, -1) @ p("self_attn.o_proj.weight").T
        r = x
        h = _rms(x, p("post_attention_layernorm.weight"), eps)
        x = r + (F.silu(h @ p("mlp.gate_proj.weight").T) * (h @ p("mlp.up_proj.weight").T)) @ p("mlp.down_proj.weight").T
    x = _rms(x, sd["norm.weight"], eps)
    return target.lm_head(x[1:])


@pytest.mark.parametrize("causal", [True, False])
def test_head_matches_reference(causal):
    target = tiny_target(num_layers=6)
    head = tiny_head(target, num_layers=2, block_size=6, causal=causal)
    ids = torch.randint(0, 127, (11,))
    with torch.no_grad():
        got = head.draft_logits(target, ids)
        ref = reference_draft_logits(head, target, ids)
    assert got.shape == (5, 128)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)


def test_head_short_context():
    target = tiny_target()
    head = tiny_head(target)
    with torch.no_grad():
        out = head.draft_logits(target, torch.tensor([5]))  # anchor only, empty context
    assert out.shape == (head.depth, 128) and torch.isfinite(out).all()


@pytest.mark.parametrize("causal", [True, False])
def test_causality_of_block(causal):
    """A causal head's depth-d logits ignore later slots; a bidirectional head's do not."""
    target = tiny_target()
    head = tiny_head(target, block_size=6, causal=causal)
    ids = torch.randint(0, 127, (9,))
    n, D = ids.numel(), head.depth
    with torch.no_grad():
        taps = target(ids[:-1], tap_layers=head.target_layer_ids).taps
        ck, cv = head.project_context(taps, torch.arange(n - 1))
        block = torch.cat([ids[-1:], torch.full((D,), head.mask_token_id)])
        emb = target.embed(block)
        pos = torch.arange(n - 1, n + D)
        base = head.forward_block(emb, pos, ck, cv, torch.tensor([n - 1]), head.block_mask())
        emb2 = emb.clone()
        emb2[4] += 1.0  # change slot 4 only
        alt = head.forward_block(emb2, pos, ck, cv, torch.tensor([n - 1]), head.block_mask())
    early = (base[:4] - alt[:4]).abs().max().item()
    if causal:
        assert early == 0.0
    else:
        assert early > 1e-4
    assert (base[4:] - alt[4:]).abs().max().item() > 1e-4


def test_head_save_load_bit_exact(tmp_path):
    target = tiny_target()
    head = tiny_head(target, num_layers=2)
    head.save(tmp_path / "h")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "h" / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(expected_keys(2))
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert cfg["dflash_config"]["causal_head"] is True
    assert cfg["dflash_config"]["target_layer_ids"] == target.tap_layers
    assert cfg["block_size"] == 8 and cfg["num_target_layers"] == target.num_layers
    loaded = load_draft_head(tmp_path / "h")
    for k, v in head.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    ids = torch.randint(0, 127, (7,))
    with torch.no_grad():
        assert torch.equal(head.draft_logits(target, ids), loaded.draft_logits(target, ids))


def _save_target(model, folder):
    model.save_pretrained(folder, safe_serialization=True)


def test_load_target_from_folder(tmp_path):
    model = tiny_qwen3()
    _save_target(model, tmp_path / "t")
    target = load_target(tmp_path / "t", tap_layers=[1, 3])
    ids = torch.randint(0, 128, (6,))
    with torch.no_grad():
        torch.testing.assert_close(target(ids).logits, model(ids[None]).logits[0], rtol=0, atol=1e-5)


def test_non_qwen3_model_type_is_rejected(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(JetSpecError, match="model_type is 'llama'"):
        load_target(tmp_path / "t")
    from transformers import LlamaConfig, LlamaForCausalLM

    m = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))
    with pytest.raises(JetSpecError, match="llama"):
        load_target(m)


def test_target_without_safetensors_rejected(tmp_path):
    model = tiny_qwen3()
    model.config.save_pretrained(tmp_path / "t")
    torch.save(model.state_dict(), tmp_path / "t" / "pytorch_model.bin")
    with pytest.raises(JetSpecError, match="no \\*.safetensors"):
        load_target(tmp_path / "t")


@pytest.mark.parametrize("cut", [4, 200, -10])
def test_truncated_safetensors_rejected(tmp_path, cut):
    target = tiny_target()
    head = tiny_head(target)
    head.save(tmp_path / "h")
    w = tmp_path / "h" / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[:cut])
    with pytest.raises(JetSpecError, match="model.safetensors: (truncated|not a safetensors)"):
        load_draft_head(tmp_path / "h")


def test_missing_files_rejected(tmp_path):
    target = tiny_target()
    tiny_head(target).save(tmp_path / "h")
    (tmp_path / "h" / "model.safetensors").unlink()
    with pytest.raises(JetSpecError, match="model.safetensors: file not found"):
        load_draft_head(tmp_path / "h")
    with pytest.raises(JetSpecError, match="config.json: not found"):
        load_draft_head(tmp_path / "nothing")


def _saved_head_weights(tmp_path):
    """A tiny head saved under tmp_path/h: (its model.safetensors path, its tensors)."""
    from safetensors.torch import load_file

    tiny_head(tiny_target()).save(tmp_path / "h")
    w = tmp_path / "h" / "model.safetensors"
    return w, load_file(str(w))


def test_wrong_keys_rejected(tmp_path):
    from safetensors.torch import save_file

    w, t = _saved_head_weights(tmp_path)
    t["embed_tokens.weight"] = torch.zeros(2, 2)
    del t["norm.weight"]
    save_file(t, str(w))
    with pytest.raises(JetSpecError, match="missing \\['norm.weight'\\].*unexpected \\['embed_tokens.weight'\\]"):
        load_draft_head(tmp_path / "h")


def test_wrong_shape_rejected(tmp_path):
    from safetensors.torch import save_file

    w, t = _saved_head_weights(tmp_path)
    t["fc.weight"] = t["fc.weight"][:, :10].contiguous()
    save_file(t, str(w))
    with pytest.raises(JetSpecError, match="'fc.weight' has shape"):
        load_draft_head(tmp_path / "h")


def test_head_target_mismatch_errors():
    target = tiny_target(num_layers=6)
    head = tiny_head(target)
    head.target_layer_ids = [1, 9]
    with pytest.raises(JetSpecError, match="target_layer_ids .*out of range"):
        head.draft_logits(target, torch.tensor([1, 2, 3]))
    other = tiny_target(hidden_size=32, num_heads=2, num_kv_heads=1)
    with pytest.raises(JetSpecError, match="hidden_size is 64; the target's is 32"):
        tiny_head(target).check_compatible(other)
    small_vocab = tiny_target(vocab_size=100)
    with pytest.raises(JetSpecError, match="vocab_size is 128; the target's vocab_size is 100"):
        tiny_head(target).check_compatible(small_vocab)
    fewer = tiny_target(num_layers=4)
    with pytest.raises(JetSpecError, match="num_target_layers is 6; the target has 4"):
        tiny_head(target).check_compatible(fewer)


def test_missing_mask_token_rejected(tmp_path):
    target = tiny_target()
    tiny_head(target).save(tmp_path / "h")
    p = tmp_path / "h" / "config.json"
    cfg = json.loads(p.read_text())
    del cfg["dflash_config"]["mask_token_id"]
    p.write_text(json.dumps(cfg))
    with pytest.raises(JetSpecError, match="dflash_config.mask_token_id"):
        load_draft_head(tmp_path / "h")


def test_no_pickle_anywhere():
    """No module of the package may call torch.load / pickle (weights load only through safetensors)."""
    import pathlib

    import jetspec_compile

    roots = [pathlib.Path(jetspec_compile.__file__).parent]
    import jetspec_compile.export as ex
    import jetspec_compile.runtime as rt

    roots += [pathlib.Path(ex.__file__).parent, pathlib.Path(rt.__file__).parent]
    for root in roots:
        for f in root.rglob("*.py"):
            text = f.read_text()
            for bad in ("torch.load(", "import pickle", "pickle.load"):
                assert bad not in text, f"{f} uses {bad}"
