import os
import shutil
import tempfile

import pytest
import torch

torch.set_num_threads(1)  # two OpenMP threads give random 5-10x latency spikes on the CI machines

# Compiling tests write the Inductor cache into a throwaway folder, removed at exit (the default cache folder
# under the temp dir would otherwise grow with every run).
_INDUCTOR_DIR = tempfile.mkdtemp(prefix="jetspec-inductor-")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _INDUCTOR_DIR)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def inductor_cache(tmp_path, monkeypatch):
    """A throwaway Inductor cache, so compiling tests do not grow the default cache folder in the temp dir."""
    d = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(d))
    return d


def has_cuda() -> bool:
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_INDUCTOR_DIR, ignore_errors=True)


# ---- exported tiny models shared by the export / runtime tests (built once per session) ------------------

TINY_SPEC = dict(budget=16, topk=3, max_seq_len=96, prefill_chunk=16)


@pytest.fixture(scope="session")
def tiny_models():
    """A tiny target (char tokenizer, <eos> = 126) and head, and the folder it is saved in."""
    from helpers import tiny_char_tokenizer
    from jetspec_compile.tiny import tiny_head, tiny_target

    torch.manual_seed(0)
    target = tiny_target(num_layers=4, eos_token_id=126)
    head = tiny_head(target, block_size=6, mask_token_id=127)
    folder = tempfile.mkdtemp(prefix="jetspec-tiny-")
    target.model.save_pretrained(folder, safe_serialization=True)
    tiny_char_tokenizer().save(os.path.join(folder, "tokenizer.json"))
    head.save(os.path.join(folder, "head"))
    yield target, head, folder
    shutil.rmtree(folder, ignore_errors=True)


def _export(tiny_models, backend, tmp_path_factory, **kw):
    from jetspec_compile.export.pipeline import export_model
    from jetspec_compile.graphs import SpecConfig

    target, head, folder = tiny_models
    out = tmp_path_factory.mktemp(f"art-{backend}") / "model"
    export_model(target, head, SpecConfig(**TINY_SPEC), out, backend=backend, tokenizer_dir=folder,
                 log=lambda s: None, **kw)
    return out


@pytest.fixture(scope="session")
def aoti_artifact(tiny_models, tmp_path_factory):
    return _export(tiny_models, "aoti", tmp_path_factory, sampling=False)  # sampling is checked on onnx


@pytest.fixture(scope="session")
def onnx_artifact(tiny_models, tmp_path_factory):
    return _export(tiny_models, "onnx", tmp_path_factory)
