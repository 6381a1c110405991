"""Trust: tampered manifests, paths out of the folder, bad arguments, exports that cannot destroy data.

Every bad case must end in exit status 1, one `error:` line naming the field, no traceback, and no change
to any file outside the test's temporary folder.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from jetspec_compile.cli import main
from jetspec_compile.errors import ArtifactError
from jetspec_compile.artifact import manifest_digest, read_manifest, sha256, update_manifest, write_manifest
from jetspec_compile.atomic import atomic_folder, clean_stale
from jetspec_compile.artifact.schema import BACKEND_EXT

# ---- helpers --------------------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in this process (no interpreter start-up per case); returns (code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, *needles: str, progress: bool = False) -> None:
    """Exit 1 and one `error:` line naming ``needles``; with ``progress``, other (progress) lines may
    precede it."""
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and (progress or len(lines) == 1), err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def snapshot(*roots: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns, p.is_symlink())
            for r in roots for p in sorted(Path(r).rglob("*")) if p.is_file()}


@pytest.fixture
def world(aoti_artifact, tmp_path, monkeypatch):
    """A copy of the artifact to tamper with, an `outside` folder next to it, another artifact; cwd = tmp."""
    art = tmp_path / "art"
    shutil.copytree(aoti_artifact, art)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(art / "weights.safetensors", outside / "w.safetensors")
    shutil.copy(art / "draft.pt2", outside / "draft.pt2")
    other = tmp_path / "other"
    shutil.copytree(aoti_artifact, other)
    monkeypatch.chdir(tmp_path)
    before = snapshot(aoti_artifact, outside, other)
    w = types.SimpleNamespace(art=art, outside=outside, other=other, tmp=tmp_path)
    yield w
    assert snapshot(aoti_artifact, outside, other) == before  # nothing outside the copy changed


def edit(art: Path, change, *, sign: bool = True) -> None:
    """Apply ``change(manifest, art)``; re-sign the manifest (as its author could) unless ``sign=False``."""
    m = json.loads((art / "manifest.json").read_text())
    change(m, art)
    if sign:
        m["manifest_sha256"] = manifest_digest(m)
    (art / "manifest.json").write_text(json.dumps(m, indent=1))


# ---- tampered manifests: (case id, change, expected text of the one error line) ---------------------------

def _outside_weights(m, art):
    out = art.parent / "outside" / "w.safetensors"
    m["weights"] = str(out)
    m["files"][str(out)] = sha256(out)


def _graph_at(path_of):
    def change(m, art):
        p = path_of(art)
        m["graphs"]["draft"]["file"] = str(p)
        if Path(p).is_absolute() and Path(p).is_file():
            m["files"][str(p)] = sha256(Path(p))
    return change


def _symlink_out(m, art):
    (art / "draft.pt2").unlink()
    (art / "draft.pt2").symlink_to(art.parent / "outside" / "draft.pt2")  # same bytes: the hash matches


def _set(path: str, value):
    def change(m, art):
        *keys, last = path.split(".")
        obj = m
        for k in keys:
            obj = obj[k]
        if value is _DELETE:
            del obj[last]
        else:
            obj[last] = value(obj[last]) if callable(value) else value
    return change


_DELETE = object()


def _raw(data: bytes):
    def change(m, art):
        pass
    change.raw = data
    return change


TAMPER = [
    ("weights-outside-abs", _outside_weights, "field weights is '/"),
    ("weights-dotdot", _set("weights", "../outside/w.safetensors"), "field weights is '../outside"),
    ("weights-unhashed", _set("files", lambda f: {k: v for k, v in f.items() if k != "weights.safetensors"}),
     "field weights is 'weights.safetensors', which is not listed in field 'files'"),
    ("graph-etc-passwd", _graph_at(lambda a: "/etc/passwd"), "field graphs.draft.file is '/etc/passwd'"),
    ("graph-dotdot", _graph_at(lambda a: "../../x.pt2"), "field graphs.draft.file is '../../x.pt2'"),
    ("graph-other-artifact", _graph_at(lambda a: a.parent / "other" / "draft.pt2"), "field graphs.draft.file is '/"),
    ("graph-symlink-out", _symlink_out, "field graphs.draft.file is 'draft.pt2', which resolves to"),
    ("tokenizer-outside", _set("tokenizer.file", "../outside/w.safetensors"), "field tokenizer.file"),
    ("files-key-outside", _set("files", lambda f: dict(f, **{"/etc/passwd": "0" * 64})), "field files['/etc/passwd']"),
    ("prefill-chunk", _set("shapes.prefill_chunk", 32), "field shapes.prefill_chunk is 32; expected 16"),
    ("max-seq-len", _set("shapes.max_seq_len", 200), "field shapes.max_seq_len is 200; expected 96"),
    ("budget", _set("shapes.budget", 8), "field shapes.budget is 8; expected 16"),
    ("head-depth", _set("head.depth", 4), "field head.depth is 4; expected shapes.depth (5)"),
    ("dtype", _set("dtype", "float16"), "field dtype is 'float16'; expected 'float32'"),
    ("kv-heads", _set("target.config.num_key_value_heads", 1), "field target.config.num_key_value_heads is 1"),
    ("tap-range", _set("target.tap_layers", [0, 9]), "field target.tap_layers[1] is 9"),
    ("topk-unsigned", _set("shapes.topk", 4), "field manifest_sha256"),
    ("not-an-object", _raw(b"[1, 2, 3]"), "JSON list; expected a JSON object"),
    ("not-json", _raw(b'{"a": NaN}'), "invalid JSON"),
    ("not-utf8", _raw(b'{"backend": "\xff\xfe"}'), "not UTF-8"),
    ("files-list", _set("files", lambda f: sorted(f)), "field files is ["),
    ("graph-without-file", _set("graphs.draft.file", _DELETE), "field graphs.draft.file is missing"),
    ("graph-missing", _set("graphs.verify", _DELETE), "field graphs.verify is missing"),
    ("missing-shape", _set("shapes.topk", _DELETE), "field shapes.topk is missing"),
    ("shape-type", _set("shapes.budget", "16"), "field shapes.budget is '16'; expected an integer >= 1"),
    ("shape-bool", _set("shapes.depth", True), "field shapes.depth is True"),
    ("shape-negative", _set("shapes.topk", -1), "field shapes.topk is -1"),
    ("draft-depth", _set("shapes.draft_depth", 9), "field shapes.draft_depth is 9; expected an integer >= 1 and <= 5"),
    ("wrong-backend-files", _set("backend", "onnx"),
     "field graphs.ar_step.file is 'ar_step.pt2'; expected a .onnx file"),
    ("unknown-backend", _set("backend", "tflite"), "field backend is 'tflite'; expected one of"),
    ("unknown-device", _set("device", "tpu"), "field device is 'tpu'"),
    ("bad-digest-format", _set("files", lambda f: dict(f, **{"weights.safetensors": "xyz"})),
     "field files['weights.safetensors'] is 'xyz'"),
    ("schema-missing", _set("schema_version", _DELETE), "field schema_version is None"),
    ("inputs-type", _set("graphs.prefill.inputs", "x"), "field graphs.prefill.inputs is 'x'"),
    ("sampling-type", _set("sampling", "no"), "field sampling is 'no'; expected true or false"),
]


@pytest.mark.parametrize("case,change,needle", TAMPER, ids=[c[0] for c in TAMPER])
def test_tampered_manifest(case, change, needle, world, capsys):
    art = world.art
    if hasattr(change, "raw"):
        (art / "manifest.json").write_bytes(change.raw)
    else:
        edit(art, change, sign=case != "topk-unsigned")
    for argv in (["inspect", art], ["generate", art, "abc", "--max-new-tokens", "2"]):
        code, out, err = run_cli(capsys, *argv)
        assert_one_error(code, err, needle)
        assert "manifest.json" in err or "weights" in err


def test_unlisted_file_and_swapped_file(world, capsys):
    (world.art / "extra.so").write_bytes(b"\x7fELF")
    code, _, err = run_cli(capsys, "inspect", world.art)
    assert_one_error(code, err, "extra.so: not listed in", "field 'files'")
    (world.art / "extra.so").unlink()
    shutil.copy(world.outside / "w.safetensors", world.art / "weights.safetensors")  # same bytes: passes
    assert run_cli(capsys, "inspect", world.art)[0] == 0


@pytest.mark.parametrize("name,needle", [("draft.pt2", "cannot load the aoti graph 'draft'"),
                                         ("tokenizer.json", "cannot read the tokenizer")])
def test_corrupt_file_hashed_by_its_author(name, needle, world, capsys):
    """A self-consistent artifact (re-hashed, re-signed) with a garbage file: still one error line."""
    (world.art / name).write_bytes(b"PK\x03\x04 garbage")
    m = json.loads((world.art / "manifest.json").read_text())
    write_manifest(world.art, m)
    code, _, err = run_cli(capsys, "generate", world.art, "abc", "--max-new-tokens", "2")
    assert_one_error(code, err, name, needle)


def test_manifest_symlink_out_and_empty_inputs(world, capsys):
    shutil.copy(world.art / "manifest.json", world.outside.parent / "m.json")
    (world.art / "manifest.json").unlink()
    (world.art / "manifest.json").symlink_to(world.outside.parent / "m.json")
    code, _, err = run_cli(capsys, "inspect", world.art)
    assert_one_error(code, err, "field manifest.json is 'manifest.json', which resolves to")
    (world.art / "manifest.json").unlink()
    shutil.copy(world.outside.parent / "m.json", world.art / "manifest.json")
    edit(world.art, _set("graphs.prefill.inputs", []))
    code, _, err = run_cli(capsys, "inspect", world.art)
    assert_one_error(code, err, "field graphs.prefill.inputs is []")


def test_every_backend_has_its_extension():
    from jetspec_compile.backends import BACKENDS, Backend

    assert BACKEND_EXT == {"aoti": "pt2", "onnx": "onnx", "tensorrt": "ep"}  # the file names on disk
    assert all(isinstance(b, Backend) and b.name == n for n, b in BACKENDS.items())


def test_update_manifest_resigns(world):
    update_manifest(world.art, autotune={"budget": 16})
    assert read_manifest(world.art)["autotune"] == {"budget": 16}
    edit(world.art, _set("shapes.topk", 4), sign=False)
    with pytest.raises(ArtifactError, match="manifest_sha256"):
        update_manifest(world.art, autotune={"budget": 8})


def test_inspect_unknown_backend_subprocess(world):
    edit(world.art, _set("backend", "tflite"))
    r = subprocess.run([sys.executable, "-m", "jetspec_compile.cli", "inspect", str(world.art)],
                       capture_output=True, text=True)
    assert_one_error(r.returncode, r.stderr, "field backend is 'tflite'")


# ---- bad arguments -------------------------------------------------------------------------------------

ARGS = [
    ("device", ["generate", "{art}", "x", "--device", "foo"], "--device"),
    ("threads", ["generate", "{art}", "x", "--threads", "0"], "--threads"),
    ("temperature-nan", ["generate", "{art}", "x", "--temperature", "nan"], "--temperature"),
    ("temperature-inf", ["generate", "{art}", "x", "--temperature", "inf"], "--temperature"),
    ("temperature-neg", ["generate", "{art}", "x", "--temperature", "-1"], "--temperature"),
    ("top-p-high", ["generate", "{art}", "x", "--top-p", "1.5"], "--top-p"),
    ("top-p-zero", ["generate", "{art}", "x", "--top-p", "0"], "--top-p"),
    ("top-k", ["generate", "{art}", "x", "--top-k", "-3"], "--top-k"),
    ("top-k-overflow", ["generate", "{art}", "x", "--top-k", str(2**40)], "--top-k"),
    ("seed-overflow", ["generate", "{art}", "x", "--seed", str(2**70)], "--seed"),
    ("threads-huge", ["generate", "{art}", "x", "--threads", "100000"], "--threads"),
    ("stop-empty", ["generate", "{art}", "x", "--stop", ""], "--stop"),
    ("max-new-tokens", ["generate", "{art}", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("prompt-not-utf8", ["generate", "{art}", "bad \udcff prompt"], "prompt: not valid UTF-8"),
    ("limit", ["verify-lossless", "{art}", "--prompts", "{prompts}", "--limit", "0"], "--limit"),
    ("prompts-not-utf8", ["verify-lossless", "{art}", "--prompts", "{bad_prompts}"], "bad.jsonl:2: not UTF-8"),
    ("verify-threads", ["verify-lossless", "{art}", "--prompts", "{prompts}", "--threads", "0"], "--threads"),
    ("export-out-proc", ["export", "--out", "/proc/jetspec-art"], "--out", "/proc"),
    ("export-out-under-file", ["export", "--out", "{file}/sub"], "--out", "is not a folder"),
    ("export-budget", ["export", "--budget", "0"], "--budget"),
    ("export-device", ["export", "--device", "foo"], "--device"),
    ("export-device-cuda-n", ["export", "--device", "cuda:x"], "--device"),
    ("train-out-proc", ["train-head", "--target", "t", "--data", "d", "--out", "/proc/h"], "--out"),
    ("train-steps", ["train-head", "--target", "t", "--data", "d", "--out", "h", "--steps", "0"], "--steps"),
    ("train-lr", ["train-head", "--target", "t", "--data", "d", "--out", "h", "--lr", "nan"], "--lr"),
    ("train-device", ["train-head", "--target", "t", "--data", "d", "--out", "h", "--device", "gpu"], "--device"),
    ("train-threads", ["train-head", "--target", "t", "--data", "d", "--out", "h", "--threads", "0"], "--threads"),
]


@pytest.mark.parametrize("case,argv,needles", [(c[0], c[1], c[2:]) for c in ARGS], ids=[c[0] for c in ARGS])
def test_bad_argument(case, argv, needles, world, capsys):
    prompts = world.tmp / "p.jsonl"
    prompts.write_text('{"prompt": "abc"}\n')
    bad = world.tmp / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "abc"}\n{"prompt": "\xff\xfe"}\n')
    file = world.tmp / "somefile"
    file.write_text("a regular file")
    fill = dict(art=world.art, prompts=prompts, bad_prompts=bad, file=file)
    before = snapshot(world.tmp)
    code, out, err = run_cli(capsys, *[a.format(**fill) for a in argv])
    assert_one_error(code, err, *needles)
    assert snapshot(world.tmp) == before
    assert not Path("/proc/jetspec-art").exists()


def test_interrupt_wrapped_in_native_error(monkeypatch, capsys, world):
    """Ctrl-C that reaches Python as another exception (a compiled graph's C++ frames): one line, 130."""
    from jetspec_compile.runtime import engine

    class Fake:
        last_stats = None

        def stream(self, *a, **k):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                raise RuntimeError("c10::Error ... 75 lines of C++ stack") from None
            yield "never"

    monkeypatch.setattr(engine, "load", lambda *a, **k: Fake())
    code, out, err = run_cli(capsys, "generate", world.art, "abc")
    assert code == 130 and err.strip() == "interrupted (SIGINT)" and "Traceback" not in err


# ---- exports that cannot destroy data ------------------------------------------------------------------

def _fake_backend(name="aoti"):
    """A backend that 'compiles' instantly (the graphs are still captured): export semantics, fast."""
    def compile_graph(ep, args, path, device, **kw):
        path.write_bytes(b"not a real graph " + path.name.encode())
        return {}

    return types.SimpleNamespace(name=name, ext=BACKEND_EXT[name], attention_form="op",
                                 check_available=lambda device: None, check_spec=lambda spec: None,
                                 native_linear=lambda device: False, compile_graph=compile_graph)


@pytest.fixture
def fast_export(monkeypatch, tiny_models, tmp_path):
    from jetspec_compile.backends import BACKENDS
    from jetspec_compile.export import pipeline
    from jetspec_compile.graphs import SpecConfig

    monkeypatch.setitem(BACKENDS, "aoti", _fake_backend())
    target, head, folder = tiny_models
    spec = SpecConfig(budget=16, topk=3, max_seq_len=96, prefill_chunk=16)

    def run(out, **kw):
        kw.setdefault("log", lambda s: None)
        return pipeline.export_model(target, head, spec, out, backend="aoti", sampling=False,
                                     tokenizer_dir=folder, **kw)

    return run


def test_concurrent_export_fails_and_first_is_intact(fast_export, tmp_path):
    out = tmp_path / "model"
    errors = []

    def log(line):
        if "[1/" in line and "compiled" in line and not errors:
            with pytest.raises(ArtifactError, match="another export .* is writing this folder") as e:
                fast_export(out)
            errors.append(str(e.value))

    fast_export(out, log=log)
    assert errors
    read_manifest(out)  # the first export's artifact: complete, every hash right
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_destination_created_meanwhile_is_never_replaced(fast_export, tmp_path):
    out = tmp_path / "model"

    def log(line):
        if "[2/" in line and "compiled" in line:
            out.mkdir()
            (out / "precious.txt").write_text("user data")

    with pytest.raises(ArtifactError, match="created by someone else while exporting; it was not replaced"):
        fast_export(out, log=log)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(ArtifactError, match="already exists"):
        fast_export(out)
    fast_export(out, force=True)
    read_manifest(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_full_disk_leaves_nothing(fast_export, tmp_path, monkeypatch, capsys):
    from jetspec_compile.export import pipeline

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(a[1]))

    monkeypatch.setattr(pipeline, "save_safetensors", full)
    with pytest.raises(ArtifactError, match="No space left on device"):
        fast_export(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_cli_one_line(monkeypatch, capsys, tmp_path, tiny_models):
    from jetspec_compile.backends import BACKENDS
    from jetspec_compile.export import pipeline

    monkeypatch.setitem(BACKENDS, "aoti", _fake_backend())

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(a[1]))

    monkeypatch.setattr(pipeline, "save_safetensors", full)
    _, _, folder = tiny_models
    out = tmp_path / "out" / "model"
    code, _, err = run_cli(capsys, "export", "--target", folder, "--head", Path(folder) / "head", "--budget", "16",
                           "--topk", "3", "--max-seq-len", "96", "--prefill-chunk", "16", "--no-sampling",
                           "--out", out)
    assert_one_error(code, err, "No space left on device", "nothing was left behind", progress=True)
    assert list((tmp_path / "out").iterdir()) == []


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_partial_folders_are_cleaned(tmp_path):
    dest = tmp_path / "model"
    dead = tmp_path / f".model.partial-export-pid{_dead_pid()}"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "x.pt2").write_bytes(b"half")
    alive = tmp_path / ".model.partial-export-pid1"  # pid 1 is alive: not ours to delete
    alive.mkdir()
    other = tmp_path / f".other.partial-export-pid{_dead_pid()}"  # another destination's
    other.mkdir()
    (tmp_path / ".model.export-lock").write_text("999999\n")  # left by a SIGKILLed export: not held
    with atomic_folder(dest) as tmp:
        (tmp / "f").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", alive.name, other.name])
    assert clean_stale(tmp_path / "other") == [other]


_KILLED_EXPORT = """
import sys, time
from pathlib import Path
from jetspec_compile.atomic import atomic_folder
with atomic_folder(Path(sys.argv[1])) as tmp:
    (tmp / "weights.safetensors").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_killed_writer_leftovers_are_cleaned_next_time(tmp_path):
    dest = tmp_path / "model"
    p = subprocess.Popen([sys.executable, "-c", _KILLED_EXPORT, str(dest)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.kill()
    p.wait()
    left = sorted(x.name for x in tmp_path.iterdir())
    assert left == [".model.export-lock", f".model.partial-export-pid{p.pid}"]
    with atomic_folder(dest) as tmp:
        (tmp / "f").write_text("x")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model"]


_FLAGGED_INTERRUPT = """
import ctypes
from jetspec_compile import cli

def main(argv=None):
    ctypes.pythonapi.PyRun_SimpleString(b"raise KeyboardInterrupt")  # as when C++ code ran Python mid-signal
    return cli._interrupted(15)

cli.main = main
cli.entry()
"""


def test_interrupt_through_native_eval_keeps_its_status(tmp_path):
    """A KeyboardInterrupt seen by CPython's PyRun_* sets a global flag that, under `python -m`, makes the
    interpreter kill itself with SIGINT (-2) on exit; the entry keeps the command's own status (stop 28's CI)."""
    (tmp_path / "flagged.py").write_text(_FLAGGED_INTERRUPT)
    p = subprocess.run([sys.executable, "-m", "flagged"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 143, p.stderr
    assert p.stderr.strip().splitlines()[-1] == "interrupted (SIGTERM)"


def test_sigterm_during_export_leaves_nothing(tmp_path, tiny_models):
    """A real `jetspec-compile export` (aoti) terminated while compiling: one line, exit 143, nothing left."""
    _, _, folder = tiny_models
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "jetspec_compile.cli", "export", "--target", folder, "--head",
           str(Path(folder) / "head"), "--budget", "4", "--topk", "2", "--max-seq-len", "32", "--prefill-chunk",
           "4", "--depth", "2", "--no-sampling", "--out", str(out / "model")]
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stdout:
        if "compiling" in line:
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert err.strip().splitlines()[-1] == "interrupted (SIGTERM)" and "Traceback" not in err, err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_force_replaces_a_file_or_symlink_and_leaves_nothing(kind, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "data").write_text("kept")
    dest = tmp_path / "model"
    if kind == "file":
        dest.write_text("old")
    else:
        dest.symlink_to(keep)
    with pytest.raises(ArtifactError, match="already exists"):
        with atomic_folder(dest):
            pass
    with atomic_folder(dest, force=True) as tmp:
        (tmp / "f").write_text("new")
    assert (dest / "f").read_text() == "new" and not dest.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "model"]
    assert (keep / "data").read_text() == "kept"  # a symlink is replaced, never followed


def test_int_list_validator():
    import argparse

    from jetspec_compile.validate import int_list

    assert int_list(1)("8,16, 32") == [8, 16, 32]
    for bad in ("", "8,,16", "0,8", "x", "8,nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            int_list(1)(bad)
