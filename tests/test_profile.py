"""`jetspec-compile profile`: a budget sweep on a tiny ONNX artifact writes JSON, CSV and PNG; --autotune."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from jetspec_compile.cli import main
from jetspec_compile.errors import JetSpecError

PNG = b"\x89PNG\r\n\x1a\n"
PROMPTS = ["def add(a, b):\n    return a + b\n", "import os\nimport sys\n", "class Point:\n    x = 0\n"]
BUDGET = 8  # the artifact's own budget; the sweep compiles budget 4


def _char_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models

    vocab = {chr(32 + i): i for i in range(95)}
    vocab["\n"] = 95
    for i in range(96, 128):
        vocab[f"<x{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.decoder = decoders.Fuse()
    tok.save(str(path / "tokenizer.json"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A tiny model exported with the onnx backend (greedy only), and a prompt file."""
    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.tiny import tiny_head, tiny_target

    root = tmp_path_factory.mktemp("profile")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
        torch.manual_seed(0)
        target = tiny_target(num_layers=2, num_taps=1)
        head = tiny_head(target, block_size=4, mask_token_id=127)
        _char_tokenizer(root)
        art = root / "tiny-onnx-b8"
        export_model(target, head, SpecConfig(budget=BUDGET, topk=3, max_seq_len=96, prefill_chunk=16), art,
                     backend="onnx", sampling=False, tokenizer_dir=root, log=lambda s: None)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return art, prompts, root


def _finite_pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _profile(art, prompts, out, *extra):
    return main(["profile", str(art), "--prompts", str(prompts), "--budgets", "4", "--max-new-tokens", "12",
                 "--reps", "2", "--out", str(out), *extra])


def test_profile_two_budgets_writes_json_csv_png(artifact, inductor_cache, capsys):
    art, prompts, root = artifact
    out = root / "out"
    assert _profile(art, prompts, out) == 0
    log = capsys.readouterr().out
    assert "[budget 4] [1/2] draft: captured in" in log and "compiling (onnx)" in log and "best budget" in log

    res = json.loads((out / "profile.json").read_text())
    assert res["settings"]["budgets"] == [4, BUDGET] and res["settings"]["reps"] == 2
    assert res["settings"]["prompts"] == len(PROMPTS) and res["settings"]["hf"] is True
    for name in ("ar_step", "hf_generate"):
        base = res["baselines"][name]
        assert _finite_pos(base["tokens_per_s"]) and len(base["tokens_per_s_reps"]) == 2
    assert res["baselines"]["hf_generate"]["matches_ar_step_prompts"] == len(PROMPTS)
    rows = {r["budget"]: r for r in res["budgets"]}
    assert set(rows) == {4, BUDGET}
    assert rows[BUDGET]["source"] == "artifact" and rows[4]["source"] == "sweep"
    for r in rows.values():
        for key in ("tau", "tokens_per_s", "decode_tokens_per_s", "speedup_vs_ar", "speedup_vs_hf", "round_ms"):
            assert _finite_pos(r[key]), (key, r[key])
        assert r["tau"] >= 1.0 and r["rounds"] > 0
        assert 0.0 <= r["host_share"] < 1.0
        for stage in ("draft", "verify", "host", "commit"):
            s = r["stages_ms"][stage]
            assert _finite_pos(s["median"]) and _finite_pos(s["p90"]) and s["p90"] >= s["median"]
        assert r["lossless_prompts"] == len(PROMPTS)  # greedy speculative == ar_step, token for token
        # one compiled budget per decoder here: every round ran at it (adaptive artifacts add "plain" etc.)
        assert r["budget_rounds"] == {str(r["budget"]): r["rounds"]} and r["budget_share"] == {str(r["budget"]): 1.0}
    assert "rounds by budget" in log and f" {BUDGET}:100%" in log
    assert rows[4]["compile_cached"] is False and _finite_pos(rows[4]["compile_s"])
    sweep = res["sweep"]["compiled"]["4"]
    assert set(sweep["compile_s"]) == {"draft", "verify"} and _finite_pos(res["sweep"]["build_s_this_run"])
    assert {p.name for p in (out / "sweep" / "b4").iterdir()} >= {"draft.onnx", "verify.onnx", "sweep.json"}

    with open(out / "profile.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert sorted(int(r["budget"]) for r in table) == [4, BUDGET]
    for r in table:
        for key in ("tau", "tokens_per_s", "speedup_vs_ar", "speedup_vs_hf", "draft_ms_median", "verify_ms_p90",
                    "host_ms_median", "commit_ms_p90"):
            assert _finite_pos(float(r[key])), (key, r[key])
        assert 0.0 <= float(r["host_share"]) < 1.0
        assert r["budget_share"] == f"{r['budget']}:1"

    for name in ("speedup.png", "tau.png", "stages.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG), name


def test_autotune_records_budget_and_reuses_sweep(artifact, inductor_cache, capsys):
    from jetspec_compile.artifact import read_manifest
    from jetspec_compile.runtime import load

    art, prompts, root = artifact
    out = root / "out"
    if not (out / "sweep" / "b4" / "sweep.json").is_file():  # this test run alone: compile the sweep first
        assert _profile(art, prompts, out, "--no-hf", "--reps", "1") == 0
    capsys.readouterr()
    assert _profile(art, prompts, out, "--autotune", "--no-hf") == 0
    log = capsys.readouterr().out
    assert "[budget 4] reusing compiled draft + verify" in log and "compiling" not in log
    res = json.loads((out / "profile.json").read_text())
    assert res["baselines"]["hf_generate"] is None
    assert all(r["speedup_vs_hf"] is None for r in res["budgets"])
    assert res["budgets"][0]["compile_cached"] is True and res["sweep"]["build_s_this_run"] == 0

    manifest = read_manifest(art, verify_hashes=True)  # the hashed files are untouched
    tune = manifest["autotune"]
    assert tune["budget"] in (4, BUDGET) and tune["budget"] == res["best"]["budget"]
    assert _finite_pos(tune["tokens_per_s"]) and tune["compiled_budget"] == BUDGET
    assert tune["measured_at"] and tune["machine"]["cpu_count"]
    assert tune["graphs"] == ("artifact" if tune["budget"] == BUDGET else str((out / "sweep" / "b4").resolve()))
    engine = load(art)  # still loads and generates
    assert len(engine.generate(PROMPTS[0], 4).tokens) == 4
    assert main(["inspect", str(art)]) == 0
    assert "autotune" in capsys.readouterr().out


def test_budget_that_does_not_fit_is_rejected(artifact, tmp_path):
    from jetspec_compile.runtime.profile import parse_budgets, profile_artifact

    art, prompts, root = artifact
    with pytest.raises(JetSpecError, match="do not fit this artifact's max_seq_len 96"):
        profile_artifact(art, PROMPTS, [200], max_new_tokens=4, reps=1, out=tmp_path, log=lambda s: None)
    with pytest.raises(JetSpecError, match="expected comma-separated integers"):
        parse_budgets("8,x")
    assert parse_budgets("64, 8,16,8") == [8, 16, 64]


def test_bench_demo_script_on_tiny_artifact(artifact, inductor_cache, capsys):
    """scripts/bench_demo.py with --artifact / --prompts: bench.json (goals) and bench.md."""
    import importlib.util
    from pathlib import Path

    art, prompts, root = artifact
    spec = importlib.util.spec_from_file_location("bench_demo", Path(__file__).parents[1] / "scripts" / "bench_demo.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = root / "bench"
    assert bench.main(["--artifact", str(art), "--prompts", str(prompts), "--max-new-tokens", "8", "--reps", "1",
                       "--out", str(out)]) == 0
    res = json.loads((out / "bench.json").read_text())
    assert set(res["goals"]) == {"speedup_vs_ar", "speedup_vs_hf", "host_share"}
    assert all(isinstance(g["met"], bool) and _finite_pos(g["value"]) for g in res["goals"].values())
    md = (out / "bench.md").read_text()
    assert "| speculative (B=8) |" in md and "| HF generate() |" in md and "| goal |" in md


LOOKUP = 4
REPEATING = ["abcabcabcabcabcabc", "x = 1\nx = 1\nx = 1\nx = 1\n"]


@pytest.fixture(scope="module")
def lookup_artifact(artifact):
    """The same tiny models exported with a lookup chain (onnx, B=8, L=4), and prompts that repeat."""
    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.graphs import SpecConfig
    from jetspec_compile.tiny import tiny_head, tiny_target

    _, _, root = artifact
    torch.manual_seed(0)
    target = tiny_target(num_layers=2, num_taps=1)
    head = tiny_head(target, block_size=4, mask_token_id=127)
    art = root / "tiny-onnx-b8-lookup"
    export_model(target, head, SpecConfig(budget=BUDGET, topk=3, max_seq_len=96, prefill_chunk=16, lookup=LOOKUP),
                 art, backend="onnx", sampling=False, tokenizer_dir=root, log=lambda s: None)
    prompts = root / "repeating.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in REPEATING))
    return art, prompts, root


def test_profile_reports_the_lookup_branch_on_and_off(lookup_artifact, inductor_cache, capsys):
    art, prompts, root = lookup_artifact
    out = root / "out-lookup"
    assert _profile(art, prompts, out) == 0
    log = capsys.readouterr().out
    assert "budget 8 (lookup off):" in log and f"lookup branch L={LOOKUP} on / off" in log

    res = json.loads((out / "profile.json").read_text())
    on = {r["budget"]: r for r in res["budgets"]}
    off = {r["budget"]: r for r in res["lookup"]["off"]}
    assert res["lookup"]["length"] == LOOKUP and set(on) == set(off) == {4, BUDGET}
    assert res["baselines"]["hf_prompt_lookup"]["num_tokens"] == 10
    for b in (4, BUDGET):
        assert on[b]["lookup"] == LOOKUP and off[b]["lookup"] == 0 and off[b]["lookup_rows"] == LOOKUP
        for r in (on[b], off[b]):
            assert r["lossless_prompts"] == len(REPEATING)  # both outputs == ar_step's, token for token
            assert r["tau"] >= 1.0 and r["rounds"] > 0
            for key in ("tokens_per_s", "speedup_vs_ar", "speedup_vs_hf_lookup"):
                assert _finite_pos(r[key]), (b, key, r[key])
        assert 0 <= on[b]["lookup_rounds"] <= on[b]["rounds"] and off[b]["lookup_rounds"] is None
    with open(out / "profile.csv", newline="") as f:
        table = [(int(r["budget"]), int(r["lookup"])) for r in csv.DictReader(f)]
    assert sorted(table) == [(4, 0), (4, LOOKUP), (BUDGET, 0), (BUDGET, LOOKUP)]


def test_profile_of_an_artifact_without_lookup_has_no_off_rows(artifact, tmp_path):
    from jetspec_compile.runtime.profile import profile_artifact

    art, prompts, root = artifact
    res = profile_artifact(art, PROMPTS[:1], [BUDGET], max_new_tokens=4, reps=1, out=tmp_path, hf=False,
                           plots=False, log=lambda s: None)
    assert res["lookup"] == {"length": 0, "off": None, "note": None}
    assert [r["lookup"] for r in res["budgets"]] == [0] and res["budgets"][0]["lookup_rounds"] is None
