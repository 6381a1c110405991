"""Linear layers that run the native `jetspec::linear`: a prepacked GEMM on the CPU (the panel GEMM of
`csrc/panel_gemm.cpp` for fp32 weights, oneDNN for bf16).

`native_linears(module)` temporarily turns every `nn.Linear` under ``module`` into a `NativeLinear`
(the same parameters under the same names; only `forward` differs), so a graph captured inside the
context calls `jetspec::linear` instead of `aten.linear`. The compiled graph then reads each weight
through the runtime's registry of prepacked weights (`jetspec_compile.ops.prepack_linear_weights`):
packed once at load time, shared by every graph. No modeling code is copied: Hugging Face's modules
keep their structure and call `self.q_proj(x)` as usual.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from . import ops  # noqa: F401  (loads the native library: torch.ops.jetspec.linear)


class NativeLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.jetspec.linear(x, self.weight, self.bias)


@contextlib.contextmanager
def native_linears(*modules: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Swap every exact `nn.Linear` under ``modules`` to `NativeLinear` for the duration; yields the count."""
    swapped = []
    if enabled:
        for root in modules:
            for m in root.modules():
                if type(m) is nn.Linear:
                    m.__class__ = NativeLinear
                    swapped.append(m)
    try:
        yield len(swapped)
    finally:
        for m in swapped:
            m.__class__ = nn.Linear
