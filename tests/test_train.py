"""Stage 6: head training (batched anchor blocks, forward-KL recipe), the train-head CLI, the bundled demo."""

import json

import pytest
import torch
import torch.nn.functional as F

from jetspec_compile import JetSpecError, load_draft_head, load_target
from jetspec_compile.cli import main as train_main  # `python -m jetspec_compile.train` runs the same command
from jetspec_compile.tiny import tiny_head, tiny_qwen3, tiny_target
from jetspec_compile.train import (
    BlockTrainingAttention,
    block_student_hidden,
    build_head_for_target,
    chain_walk_tau,
    evaluate_head,
    init_head_from_target,
    kd_loss,
    load_documents,
    make_sequences,
    regenerate,
    sample_anchors,
    train_head,
    warm_start_head,
)


def block_student_logits(head, target, ids, taps, anchors):
    """Per-depth student logits [nb, D, vocab] of the blocks at ``anchors`` (slot d -> depth d)."""
    h = block_student_hidden(head, target, ids, taps, anchors)[:, 1:]
    return target.lm_head(h.to(target.dtype)).float()


# ---- the key property: one batched forward == per-anchor drafting ------------------------------------

@pytest.mark.parametrize("causal", [True, False])
def test_batched_blocks_equal_per_anchor_drafting(causal):
    """Student logits of every block in the one-forward training pass equal the inference path
    (project_context on the prefix + forward_block via block_logits, and draft_logits end to end)."""
    target = tiny_target(num_layers=6)  # GQA: 4 query heads over 2 KV heads
    head = tiny_head(target, num_layers=2, block_size=6, causal=causal)
    ids = torch.randint(0, 127, (24,))
    anchors = torch.tensor([0, 1, 4, 9, 15, 22])  # includes an empty-context block and a truncated one
    with torch.no_grad():
        taps = target(ids, tap_layers=head.target_layer_ids).taps
        got = block_student_logits(head, target, ids, taps, anchors)
        assert got.shape == (6, head.depth, 128)
        for b, p in enumerate(anchors.tolist()):
            ck, cv = head.project_context(taps[:p], torch.arange(p))
            ref = head.block_logits(target, ids[p:p + 1], ck, cv, torch.tensor([p]))
            torch.testing.assert_close(got[b], ref, rtol=0, atol=1e-4)
            torch.testing.assert_close(got[b], head.draft_logits(target, ids[:p + 1]), rtol=0, atol=1e-4)


def test_blocks_never_see_each_other():
    """Changing one block's anchor token changes no other block (context rows are taps, not blocks)."""
    target = tiny_target()
    head = tiny_head(target, block_size=5)
    ids = torch.randint(0, 127, (16,))
    anchors = torch.tensor([2, 5, 9])
    with torch.no_grad():
        taps = target(ids, tap_layers=head.target_layer_ids).taps
        base = block_student_logits(head, target, ids, taps, anchors)
        ids2 = ids.clone()
        ids2[5] = (ids[5] + 1) % 127  # block 1's anchor (taps kept: only the block input changes)
        alt = block_student_logits(head, target, ids2, taps, anchors)
    assert torch.equal(base[0], alt[0]) and torch.equal(base[2], alt[2])
    assert (base[1] - alt[1]).abs().max() > 1e-4


def test_training_attention_matches_dense_masked_sdpa():
    """BlockTrainingAttention == SDPA over [context; all slots] with the dense block mask."""
    torch.manual_seed(0)
    hq, hkv, hd, t, bs = 4, 2, 8, 10, 3
    anchors = torch.tensor([1, 4, 10])
    n = anchors.numel() * bs
    q = torch.randn(1, hq, n, hd)
    k, v = torch.randn(1, hkv, n, hd), torch.randn(1, hkv, n, hd)
    ck, cv = torch.randn(1, hkv, t, hd), torch.randn(1, hkv, t, hd)
    got = BlockTrainingAttention(ck, cv, anchors, bs, causal=True).attend(0, q, k, v, 0.3)
    blk = torch.arange(n) // bs
    allowed_ctx = torch.arange(t)[None, :] < anchors[blk][:, None]
    allowed_blk = (blk[:, None] == blk[None, :]) & (torch.arange(n)[None, :] <= torch.arange(n)[:, None])
    mask = torch.cat([allowed_ctx, allowed_blk], dim=1)
    kk = torch.cat([ck, k], dim=2).repeat_interleave(hq // hkv, 1)
    vv = torch.cat([cv, v], dim=2).repeat_interleave(hq // hkv, 1)
    ref = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=0.3).transpose(1, 2)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


# ---- loss, anchors, data -----------------------------------------------------------------------------

def test_kd_loss_is_scaled_forward_kl():
    s, t = torch.randn(5, 11), torch.randn(5, 11)
    for temp in (1.0, 2.0):
        pt = F.softmax(t / temp, -1)
        want = (pt * (pt.log() - F.log_softmax(s / temp, -1))).sum(-1) * temp ** 2
        torch.testing.assert_close(kd_loss(s, t, temp), want)
    assert kd_loss(t, t).abs().max() < 1e-6


def test_depth_weights():
    from jetspec_compile.train import depth_weights

    assert torch.equal(depth_weights(4), torch.ones(4))  # JetSpec: uniform
    torch.testing.assert_close(depth_weights(3, 2.0), torch.exp(-torch.tensor([0.0, 0.5, 1.0])))


def test_sample_anchors_bounds():
    g = torch.Generator().manual_seed(0)
    a = sample_anchors(100, 512, g)
    assert a.tolist() == list(range(1, 99))  # every position with a supervised successor
    b = sample_anchors(100, 10, g, first=40)
    assert b.numel() == 10 and b.min() >= 40 and b.max() <= 98 and len(set(b.tolist())) == 10
    assert sample_anchors(2, 5, g).numel() == 0


def test_documents_and_sequences(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.jsonl").write_text('{"text": "hello"}\n\n{"prompt": "q?"}\n')
    docs = load_documents([tmp_path / "a.py", tmp_path / "b.jsonl"])
    assert docs == [("x = 1\n", False), ("hello", False), ("q?", True)]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(JetSpecError, match="bad.jsonl:2: expected an object with a string field 'text'"):
        load_documents([tmp_path / "bad.jsonl"])
    with pytest.raises(JetSpecError, match="nope.txt: data file not found"):
        load_documents([tmp_path / "nope.txt"])
    seqs = make_sequences([list(range(10)), [1]], 4, eos_token_id=99)
    assert [s.tolist() for s in seqs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 99]]


# ---- training ----------------------------------------------------------------------------------------

def test_train_smoke_loss_decreases_and_checkpoint_drafts(tmp_path):
    target = tiny_target(num_layers=4, num_taps=2)
    head = build_head_for_target(target, mask_token_id=127, num_layers=1, block_size=6, num_taps=2, seed=0)
    seqs = [torch.randint(0, 120, (40,)) for _ in range(6)]
    before = evaluate_head(target, head, seqs[:2], anchors=16)
    log = train_head(target, head, seqs, steps=30, lr=3e-3, anchors=16, batch=2, seed=0, out=tmp_path / "h",
                     eval_sequences=seqs[:2], eval_every=15, progress=False, log_every=5)
    after = log["final_eval"]
    assert after["loss"] < 0.8 * before["loss"], (before["loss"], after["loss"])
    assert log["loss"][-1] < log["loss"][0]
    assert len(log["top1"][-1]) == head.depth and 1.0 <= after["tau"] <= head.block_size
    assert [e["step"] for e in log["eval"]] == [0, 15, 30]
    assert (tmp_path / "h" / "train_log.json").is_file() and (tmp_path / "h" / "training_curve.png").is_file()
    loaded = load_draft_head(tmp_path / "h")
    loaded.check_compatible(target)
    assert loaded.target_layer_ids == head.target_layer_ids and loaded.causal
    for k, v in head.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with torch.no_grad():
        out = loaded.draft_logits(target, seqs[0][:9])
    assert out.shape == (head.depth, 128) and torch.isfinite(out).all()
    assert all(p.requires_grad for p in target.parameters())  # the target's flags are restored


def test_chain_walk_visits_only_the_anchors_decoding_visits():
    # anchor 0 commits 3 (2 drafted + bonus), then re-anchors at 3: 6 committed, the third round at 9 is cut
    # at the sequence end (1 of its 2 tokens)
    assert chain_walk_tau([2, 0, 0, 5, 0, 0, 0, 0, 0, 1]) == (3, 10)
    assert chain_walk_tau([0, 0, 0]) == (3, 3)
    assert chain_walk_tau([]) == (0, 0)


def test_warm_start_continues_a_saved_head(tmp_path):
    target = tiny_target(num_layers=6, num_taps=3)
    head = build_head_for_target(target, mask_token_id=127, num_layers=1, block_size=6, num_taps=3, seed=0)
    head.save(tmp_path / "h0")
    ws = warm_start_head(target, tmp_path / "h0")
    assert ws.target_layer_ids == head.target_layer_ids
    assert all(torch.equal(a, b) for a, b in zip(ws.state_dict().values(), head.state_dict().values()))
    moved = warm_start_head(target, tmp_path / "h0", tap_layers=[1, 3, 5])
    assert moved.target_layer_ids == [1, 3, 5] and torch.equal(moved.fc.weight, head.fc.weight)
    moved.save(tmp_path / "h1")
    assert load_draft_head(tmp_path / "h1").target_layer_ids == [1, 3, 5]
    with pytest.raises(JetSpecError, match="must name 3 layers"):
        warm_start_head(target, tmp_path / "h0", tap_layers=[1, 2])
    seqs = [torch.randint(0, 120, (30,)) for _ in range(2)]
    before = moved.fc.weight.clone()
    train_head(target, moved, seqs, steps=2, lr=1e-3, anchors=4, progress=False)
    assert not torch.equal(before, moved.fc.weight)


def test_init_from_target_copies_layers_and_starts_with_the_target_context():
    """--init-from-target: head layers = target layers, final norm = the target's, fc = identity on the
    deepest tap; the first head layer's context keys / values are then exactly the target layer's."""
    from transformers.models.qwen3.modeling_qwen3 import rotate_half

    target = tiny_target(num_layers=6)
    head = build_head_for_target(target, mask_token_id=127, num_layers=2, block_size=6, tap_layers=[1, 2, 3])
    init_head_from_target(head, target)  # default: the target's last layers [4, 5], fc tap 3
    for i, j in enumerate([4, 5]):
        for k, v in target.decoder_layers[j].state_dict().items():
            assert torch.equal(head.layers[i].state_dict()[k], v)
    assert torch.equal(head.norm.weight, target.model.model.norm.weight)
    ids = torch.randint(0, 127, (12,))
    with torch.no_grad():
        taps = target(ids, tap_layers=head.target_layer_ids).taps
        ck, cv = head.project_context(taps, torch.arange(12))
        layer = target.decoder_layers[4]
        x = layer.input_layernorm(taps[:, 2 * 64:])  # the output of target layer 3 = the input of layer 4
        attn = layer.self_attn
        hd = target.head_dim
        k = attn.k_norm(attn.k_proj(x).view(12, -1, hd)).transpose(0, 1)
        cos, sin = head.rotary_emb(x[None], torch.arange(12)[None])
        torch.testing.assert_close(ck[0], k * cos + rotate_half(k) * sin)
        torch.testing.assert_close(cv[0], attn.v_proj(x).view(12, -1, hd).transpose(0, 1))
    with pytest.raises(JetSpecError, match="2 head layers"):
        init_head_from_target(head, target, layers=[5])
    with pytest.raises(JetSpecError, match="not one of the head's tapped layers"):
        init_head_from_target(head, target, fc_tap=4)
    wide = build_head_for_target(target, mask_token_id=127, num_layers=1, tap_layers=[1], intermediate_size=40)
    with pytest.raises(JetSpecError, match="shapes"):
        init_head_from_target(wide, target)


def test_anchor_chunks_give_the_same_gradient():
    """Splitting a sequence's anchors into chunks (anchor_chunk) sums to the one-forward loss and gradient."""
    from jetspec_compile.train import TrainSequence
    from jetspec_compile.train.loss import _sequence_stats

    target = tiny_target(num_layers=4, num_taps=2)
    head = build_head_for_target(target, mask_token_id=127, block_size=5, num_taps=2, seed=3, std=0.2)
    seq = TrainSequence(torch.randint(0, 120, (30,)), 1)
    with torch.no_grad():
        out = target(seq.ids, tap_layers=head.target_layer_ids)
    anchors = torch.tensor([1, 3, 8, 12, 20, 27, 28])
    grads, losses = [], []
    for chunks in ([anchors], [anchors[:3], anchors[3:]]):
        head.zero_grad()
        total = 0.0
        for a in chunks:
            st = _sequence_stats(head, target, seq, a, 1.0, out.logits, out.taps)
            st.loss_sum.backward()
            total += st.loss_sum.item()
        losses.append(total)
        grads.append({k: p.grad.clone() for k, p in head.named_parameters()})
    assert abs(losses[0] - losses[1]) < 1e-4
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6, msg=k)


def test_regenerate_is_greedy_target_output():
    target = tiny_target(num_layers=4)
    prompts = [torch.randint(0, 127, (5,)) for _ in range(3)] + [torch.randint(0, 127, (7,))]
    out = regenerate(target, prompts, total_len=16, batch=2, progress=False)
    assert [s.first_anchor for s in out] == [4, 4, 4, 6]  # the last prompt token: the first round's anchor
    ids = prompts[3]
    for _ in range(9):  # plain greedy decoding with full forwards
        with torch.no_grad():
            ids = torch.cat([ids, target(ids).logits[-1].argmax().reshape(1)])
    assert torch.equal(out[3].ids, ids)
    eos = int(out[0].ids[7])  # pretend the 3rd generated token of prompt 0 is EOS: generation stops there
    cut = regenerate(target, prompts[:1], total_len=16, eos_token_id=eos, progress=False)[0]
    assert cut.ids[-1] == eos and cut.ids.numel() <= 8


def test_train_head_rejects_bad_input():
    target = tiny_target()
    head = tiny_head(target)
    with pytest.raises(JetSpecError, match="no usable training sequence"):
        train_head(target, head, [torch.tensor([1, 2])], steps=1, progress=False)
    with pytest.raises(JetSpecError, match="token id 500 outside"):
        train_head(target, head, [torch.tensor([1, 2, 500, 3])], steps=1, progress=False)
    with pytest.raises(JetSpecError, match="mask_token_id is 999"):
        build_head_for_target(target, mask_token_id=999)


# ---- the train-head command --------------------------------------------------------------------------

def _tiny_target_folder(folder, with_mask=True):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    model = tiny_qwen3(num_layers=4, eos_token_id=0)
    model.save_pretrained(folder, safe_serialization=True)
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<|endoftext|>", "<|unk|>"] + (["<|mask|>"] if with_mask else [])
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=specials, show_progress=False)
    text = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i * i)\n"] * 20
    tok.train_from_iterator(text, trainer=trainer)
    assert tok.get_vocab_size() <= 128
    tok.save(str(folder / "tokenizer.json"))
    return text


def test_cli_train_head_end_to_end(tmp_path, capsys):
    text = _tiny_target_folder(tmp_path / "t")
    (tmp_path / "d.py").write_text("".join(text))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in text[:6]) + "\n")
    rc = train_main(["train-head", "--target", str(tmp_path / "t"), "--data", str(tmp_path / "d.py"),
                     str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "h"), "--steps", "3", "--depth", "4",
                     "--seq-len", "32", "--taps", "2", "--anchors", "8", "--no-progress", "--eval-fraction", "0.2"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and len(summary["heldout_top1"]) == 4
    head = load_draft_head(tmp_path / "h")
    target = load_target(tmp_path / "t")
    head.check_compatible(target)
    assert head.block_size == 5 and head.causal and head.target_layer_ids == [1]
    from tokenizers import Tokenizer

    assert head.mask_token_id == Tokenizer.from_file(str(tmp_path / "t" / "tokenizer.json")).token_to_id("<|mask|>")
    rc = train_main(["train-head", "--target", str(tmp_path / "t"), "--data", str(tmp_path / "d.py"),
                     "--out", str(tmp_path / "h2"), "--steps", "2", "--depth", "3", "--seq-len", "24",
                     "--regenerate", "--prompt-len", "8", "--max-sequences", "3", "--no-progress"])
    assert rc == 0 and (tmp_path / "h2" / "model.safetensors").is_file()
    # --init continues a saved head: its depth and taps are kept, its weights move
    rc = train_main(["train-head", "--target", str(tmp_path / "t"), "--data", str(tmp_path / "d.py"),
                     "--out", str(tmp_path / "h3"), "--init", str(tmp_path / "h"), "--steps", "2",
                     "--seq-len", "32", "--anchors", "8", "--lr", "1e-2", "--no-progress"])
    cont = load_draft_head(tmp_path / "h3")
    assert rc == 0 and cont.block_size == 5 and cont.target_layer_ids == [1]
    assert not torch.equal(cont.fc.weight, head.fc.weight)
    # --init-from-target starts a new head from target layers (here the last 2 of 4, 0 steps of drift)
    rc = train_main(["train-head", "--target", str(tmp_path / "t"), "--data", str(tmp_path / "d.py"),
                     "--out", str(tmp_path / "h4"), "--init-from-target", "--layers", "2", "--taps", "2",
                     "--steps", "1", "--lr", "1e-9", "--seq-len", "32", "--anchors", "8", "--no-progress"])
    new = load_draft_head(tmp_path / "h4")
    torch.testing.assert_close(new.layers[1].mlp.up_proj.weight, target.decoder_layers[3].mlp.up_proj.weight,
                               rtol=0, atol=1e-6)
    assert rc == 0
    rc = train_main(["train-head", "--target", str(tmp_path / "t"), "--data", str(tmp_path / "d.py"),
                     "--out", str(tmp_path / "h5"), "--init", str(tmp_path / "h"), "--init-from-target"])
    assert rc == 1 and "give one of them" in capsys.readouterr().err


def test_cli_errors_name_the_problem(tmp_path, capsys):
    def run(*extra):
        rc = train_main(["train-head", "--data", str(tmp_path / "d.py"), "--out", str(tmp_path / "h"), *extra])
        return rc, capsys.readouterr().err

    (tmp_path / "d.py").write_text("x = 1\n" * 50)
    rc, err = run("--target", str(tmp_path / "missing"))
    assert rc == 1 and "missing: target folder not found" in err
    (tmp_path / "t").mkdir()
    tiny_qwen3().save_pretrained(tmp_path / "t", safe_serialization=True)
    rc, err = run("--target", str(tmp_path / "t"))
    assert rc == 1 and "tokenizer.json: not found" in err
    _tiny_target_folder(tmp_path / "nomask", with_mask=False)
    rc, err = run("--target", str(tmp_path / "nomask"), "--steps", "1")
    assert rc == 1 and "has no <|mask|> token; pass --mask-token-id" in err
    rc, err = run("--target", str(tmp_path / "nomask"), "--data", str(tmp_path / "nothing.txt"))
    assert rc == 1 and "nothing.txt: data file not found" in err


def test_module_entry_is_the_same_command(tmp_path):
    """`python -m jetspec_compile.train` is `jetspec-compile`: one error line, exit 1, no traceback."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "jetspec_compile.train", "train-head", "--target", str(tmp_path / "no"),
                        "--data", str(tmp_path / "d.py"), "--out", str(tmp_path / "h")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [f"error: {tmp_path / 'no'}: target folder not found"]


def test_register_cli_adds_train_head():
    import argparse

    from jetspec_compile.train import register_cli

    p = argparse.ArgumentParser()
    register_cli(p.add_subparsers(dest="command"))
    args = p.parse_args(["train-head", "--target", "t", "--data", "a.py", "b.jsonl", "--out", "o"])
    assert args.command == "train-head" and args.data == ["a.py", "b.jsonl"] and args.depth == 15
    assert args.anchors == 512 and args.lr == 3e-4 and args.kd_temperature == 1.0 and callable(args.func)


# ---- the bundled demo --------------------------------------------------------------------------------

def _demo_or_skip():
    from jetspec_compile import demo_paths

    try:
        return demo_paths.demo_target_path(), demo_paths.demo_head_path()
    except JetSpecError as e:
        pytest.skip(str(e))


def test_demo_target_and_head_load_and_agree():
    from jetspec_compile.demo_paths import demo_heldout_files

    tpath, hpath = _demo_or_skip()
    head = load_draft_head(hpath)
    target = load_target(tpath, tap_layers=head.target_layer_ids)
    head.check_compatible(target)
    assert head.causal and head.block_size == 16
    assert target.tokenizer_path is not None and target.tokenizer_path.is_file()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(target.tokenizer_path))
    assert head.mask_token_id == tok.token_to_id("<|mask|>")
    assert target.config.eos_token_id == tok.token_to_id("<|endoftext|>")
    files = demo_heldout_files()
    assert files, "no held-out stdlib file found in this interpreter"
    losses = []
    for f in files[:4]:  # 256 tokens from the middle of held-out files
        ids = torch.tensor(tok.encode(f.read_text()).ids)
        ids = ids[max(0, ids.numel() // 2 - 128): ids.numel() // 2 + 128]
        with torch.no_grad():
            losses.append(F.cross_entropy(target(ids).logits[:-1], ids[1:]).item())
    # the target has learned Python: held-out next-token loss far below uniform (ln 4096 = 8.3)
    assert sum(losses) / len(losses) < 4.5, losses
    with torch.no_grad():
        drafts = head.draft_logits(target, ids[:100])
    assert drafts.shape == (15, target.vocab_size) and torch.isfinite(drafts).all()


def test_evaluate_head_tau_is_the_chain_decoding_tau():
    """evaluate_head's tau over a target-greedy sequence == tau of greedy chain speculative decoding
    (budget D+1, top-1 per depth) from the same prompt: same rounds, same committed tokens."""
    from tokenizers import Tokenizer

    from jetspec_compile import speculative_generate
    from jetspec_compile.demo_paths import demo_heldout_files
    from jetspec_compile.train import TrainSequence

    tpath, hpath = _demo_or_skip()
    torch.set_num_threads(1)
    head = load_draft_head(hpath)
    target = load_target(tpath, tap_layers=head.target_layer_ids)
    tok = Tokenizer.from_file(str(tpath / "tokenizer.json"))
    prompt = tok.encode(demo_heldout_files()[1].read_text()).ids[:96]
    out, st = speculative_generate(target, head, prompt, 80, budget=head.depth + 1, topk=1)
    assert len(out) == 80 and st.finish_reason == "length"
    ev = evaluate_head(target, head, [TrainSequence(torch.tensor(prompt + out), len(prompt) - 1)], anchors=32)
    assert ev["rounds"] == st.rounds and ev["tau"] == pytest.approx(st.new_tokens / st.rounds)
    assert st.rounds < 80  # something was accepted: the check is not the trivial tau = 1
    assert ev["tau_per_anchor"] >= 1.0


def test_demo_tokenizer_round_trips():
    tpath, _ = _demo_or_skip()
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    text = "def f(x):\n    return {'a': x ** 2}  # ünïcödé ✓\n\tpass\n"
    tok = Tokenizer.from_file(str(tpath / "tokenizer.json"))
    assert tok.get_vocab_size() == 4096
    assert tok.decode(tok.encode(text).ids) == text
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tpath / "tokenizer.json"))
    assert hf.decode(hf(text)["input_ids"]) == text
    assert hf.convert_tokens_to_ids("<|mask|>") == tok.token_to_id("<|mask|>")
