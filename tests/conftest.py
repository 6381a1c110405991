import os

import pytest
import torch

torch.set_num_threads(1)  # two OpenMP threads give random 5-10x latency spikes on the CI machines


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def inductor_cache(tmp_path, monkeypatch):
    """A throwaway Inductor cache, so compiling tests do not grow the default temp folder (PITFALLS #10)."""
    d = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(d))
    return d


def has_cuda() -> bool:
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
