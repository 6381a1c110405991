"""The native CPU kernel of jetspec::tree_attention equals the plain reference, the previous SDPA kernel and the
dense, traceable form."""

import pytest
import torch

from jetspec_compile.ops import tree_attention_cpu, tree_attention_dense, tree_attention_reference


@pytest.mark.parametrize("t,n,hq,hkv", [(1, 0, 4, 2), (1, 37, 4, 4), (7, 0, 8, 2), (16, 5, 4, 1), (33, 70, 8, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_equals_reference(t, n, hq, hkv, dtype):
    g = torch.Generator().manual_seed(t * 100 + n)
    hd, S = 16, 96
    q = torch.randn(hkv, t, hq // hkv, hd, generator=g).reshape(hq, t, hd).to(dtype)
    k, v = (torch.randn(hkv, t, hd, generator=g).to(dtype) for _ in range(2))
    kc, vc = (torch.randn(hkv, S, hd, generator=g).to(dtype) for _ in range(2))
    mask = torch.rand(t, t, generator=g) < 0.4
    mask[0] = False  # a row that sees only the prefix (nothing at all when n == 0)
    L = torch.tensor([n])
    ref = tree_attention_reference(q, k, v, kc, vc, L, mask, 0.25)
    out = torch.ops.jetspec.tree_attention(q, k, v, kc, vc, L, mask, 0.25)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert out.shape == (t, hq, hd) and out.is_contiguous() and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(tree_attention_cpu(q, k, v, kc, vc, L, mask, 0.25).float(), out.float(), rtol=tol,
                               atol=tol)  # the previous (SDPA) CPU kernel, kept as a baseline
    torch.testing.assert_close(tree_attention_dense(q, k, v, kc, vc, L, mask, 0.25).float(), ref.float(),
                               rtol=tol, atol=tol)
    if n == 0:
        assert (out[0] == 0).all()
