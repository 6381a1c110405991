"""Stage 6: the bundled demo drafts losslessly on held-out files (and how well it drafts)."""

import pytest
import torch

from jetspec_compile import load_draft_head, load_target, speculative_generate
from jetspec_compile.errors import JetSpecError


@pytest.fixture(scope="module")
def demo():
    from tokenizers import Tokenizer

    from jetspec_compile import demo_paths

    try:
        head = load_draft_head(demo_paths.demo_head_path())
        target = load_target(demo_paths.demo_target_path(), tap_layers=head.target_layer_ids)
    except JetSpecError as e:
        pytest.skip(str(e))
    tok = Tokenizer.from_file(str(demo_paths.demo_target_path() / "tokenizer.json"))
    files = [f for f in demo_paths.demo_heldout_files() if len(f.read_text(errors="replace")) > 4000][:3]
    prompts = [tok.encode(f.read_text(errors="replace")).ids[200:328] for f in files]  # 128 tokens each
    assert len(prompts) == 3
    return target, head, prompts


def _hf_greedy(target, ids, n):
    with torch.no_grad():
        t = torch.tensor([ids])
        out = target.model.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n, do_sample=False,
                                    eos_token_id=target.config.eos_token_id, pad_token_id=target.config.pad_token_id)
    return out[0, len(ids):].tolist()


def _run(demo, budget=16, n=64):
    target, head, prompts = demo
    results = []
    for ids in prompts:
        out, st = speculative_generate(target, head, ids, n, budget=budget, eos_token_id=target.config.eos_token_id)
        results.append((out, st, _hf_greedy(target, ids, n)))
    return results


@pytest.fixture(scope="module")
def runs_b16(demo):
    return _run(demo, budget=16)


def test_demo_greedy_speculative_is_lossless(runs_b16):
    accepted = []
    for out, st, ref in runs_b16:
        assert out == ref
        accepted += st.accepted
    assert max(accepted) >= 2  # the head drafts tokens the target accepts


def test_demo_tau_at_budget_16(runs_b16):
    """tau at B = 16 (the default dynamic tree, K = 7: the 16 most probable nodes) on three held-out prompts, at
    the level the shipped head reaches: measured 2.413 with it (training stage 9; stages 8, 7 and 6 2.413, 2.487,
    2.42 with this tree builder). The tree built K children at a time gave 2.395 with stage 8 (and 2.27
    with stage 4, which this threshold fails). Three prompts do not order the recent stages (on the 15 prompts of
    scripts/demo_tau.py stage 9 leads stage 8 at every budget); the README's demo section has the full table."""
    accepted = [a for _, st, _ in runs_b16 for a in st.accepted]
    assert sum(accepted) / len(accepted) > 2.38


def test_demo_calibrated_static_tree_is_lossless_and_drafts_well(demo):
    """The best policy at B = 16: the static tree calibrated from the shipped accept_stats.json.
    Outputs equal greedy decoding; tau measured 2.571 on these prompts with stage 9's head and statistics (stage
    8's: 2.573; 2.44 with stage 7's, 2.46 with stage 6's, 2.44 with stage 5's, 2.28 with stage 4's, all of which this
    threshold fails; 2.98 on the 15 evaluation prompts of scripts/demo_tau.py)."""
    from jetspec_compile import demo_paths
    from jetspec_compile.tree import calibrate_static_tree

    target, head, prompts = demo
    tree = calibrate_static_tree(demo_paths.demo_dir() / "accept_stats.json", 16, depth=head.depth, topk=7)
    accepted = []
    for ids in prompts:
        out, st = speculative_generate(target, head, ids, 64, budget=16, tree=tree,
                                       eos_token_id=target.config.eos_token_id)
        assert out == _hf_greedy(target, ids, 64)
        accepted += st.accepted
    assert sum(accepted) / len(accepted) > 2.5
