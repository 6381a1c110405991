"""Triton-interpreter checks of the tree-attention kernel against `tree_attention_reference`.

Run as a script (`TRITON_INTERPRET=1 python tests/tree_attention_interp.py`): the variable must be
set before the kernel module is imported, so tests/test_tree_attention_kernel.py runs this file in a
subprocess and reads the JSON it prints. Importing this module only defines CASES (no Triton).

Each case is small (the interpreter is ~100x slower than torch) and uses large key blocks, except
where a case deliberately takes small blocks or forces cache splits to exercise several full blocks,
the tail block, several new-row blocks and the split/combine path.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib


def _case(T, n, hkv, g, hd, dtype, mask="tree", **kw):
    c = dict(T=T, n=n, hkv=hkv, g=g, hd=hd, dtype=dtype, mask=mask)
    c.update(kw)
    parts = [f"T{T}", f"n{n}", f"kv{hkv}x{g}", f"d{hd}", dtype, mask]
    parts += [f"{k}{v}" for k, v in sorted(kw.items())]
    c["id"] = "-".join(parts)
    return c


# T (query rows) x committed length x GQA ratio x head_dim x dtype x mask kind x launch overrides.
CASES = [
    # plain decoding step and tiny trees
    _case(1, 0, 2, 1, 16, "fp32", "full"),
    _case(1, 7, 2, 2, 16, "fp16", "full"),
    _case(1, 70, 1, 4, 32, "fp32", "full"),
    _case(5, 0, 2, 2, 16, "fp32", "random"),  # rows that see nothing -> zeros
    _case(5, 7, 2, 1, 32, "fp16", "tree"),
    _case(5, 70, 2, 4, 64, "fp32", "tree"),
    _case(5, 7, 1, 4, 16, "fp32", "random", block_n=16),
    # verification-sized trees
    _case(16, 0, 2, 1, 32, "fp16", "causal"),
    _case(16, 7, 2, 2, 64, "fp16", "tree"),
    _case(16, 70, 1, 4, 16, "fp32", "random"),
    _case(16, 70, 2, 2, 32, "fp32", "tree", block_n=16),
    _case(16, 70, 2, 4, 64, "fp16", "random", block_m=32, block_n=32),
    # T not a multiple of any block
    _case(33, 0, 2, 2, 16, "fp32", "causal", block_n=16),
    _case(33, 7, 1, 1, 32, "fp16", "random"),
    _case(33, 70, 2, 1, 16, "fp32", "tree", block_m=32, block_n=16),
    _case(33, 70, 1, 4, 64, "fp16", "tree"),
    # split-KV (flash-decoding) path, including more splits than cache blocks
    _case(1, 70, 2, 4, 32, "fp32", "full", num_splits=4, block_n=16),
    _case(5, 70, 1, 2, 16, "fp16", "tree", num_splits=3, block_n=16),
    _case(16, 7, 2, 2, 16, "fp32", "random", num_splits=2, block_n=16),
    _case(5, 0, 2, 2, 16, "fp32", "random", num_splits=2, block_n=16),  # all splits empty
    _case(16, 70, 1, 4, 32, "fp16", "causal", num_splits=8, block_n=16),
    # layouts: more new keys than queries, NaN garbage past cache_len, strided views everywhere
    _case(5, 7, 2, 2, 16, "fp32", "random", tk=12),
    _case(16, 70, 2, 2, 32, "fp32", "tree", capacity=100, strided=True),
    _case(33, 7, 1, 4, 16, "fp16", "random", capacity=40, strided=True, num_splits=2, block_n=16),
    # a cache of capacity 0
    _case(5, 0, 2, 2, 16, "fp32", "causal", capacity=0),
    # head_dim not a power of two (padded to BLOCK_D)
    _case(5, 70, 2, 2, 24, "fp32", "tree"),
    _case(16, 7, 1, 2, 8, "fp16", "random", num_splits=2, block_n=16),
]
# plus the full grid T x committed length x GQA ratio, cycling head_dim, dtype and mask kind
_DIMS, _DTYPES, _MASKS = (16, 32, 64), ("fp32", "fp16"), ("tree", "random", "causal", "full")
for _i, (_T, _n, _g) in enumerate(
    (T, n, g) for T in (1, 5, 16, 33) for n in (0, 7, 70) for g in (1, 2, 4)
):
    CASES.append(_case(_T, _n, 2 if _g < 4 else 1, _g, _DIMS[_i % 3], _DTYPES[(_i // 3) % 2],
                       _MASKS[_i % 4], grid=1))


# --------------------------------------------------------------------------------------------------


def tree_mask(T, gen):
    """A random token tree in topological order: every node sees its ancestors and itself."""
    import torch

    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        m[i, i] = True
        if i > 0:
            parent = int(torch.randint(0, i, (1,), generator=gen))
            m[i] |= m[parent]
    return m


def make_inputs(c, device="cpu"):
    """Inputs of one case: q a transposed view of [T, Hq, hd]; `strided` makes k/v/cache/mask
    non-contiguous views; the cache capacity beyond cache_len is filled with NaN."""
    import torch

    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[c["dtype"]]
    gen = torch.Generator().manual_seed(zlib.crc32(c["id"].encode()))
    T, n, hkv, g, hd = c["T"], c["n"], c["hkv"], c["g"], c["hd"]
    tk = c.get("tk", T)
    hq = hkv * g
    cap = c.get("capacity", n + T)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(dt)

    q = rnd(T, hq, hd).transpose(0, 1)  # [Hq, T, hd] view, as attention produces it
    if c.get("strided"):
        k = rnd(tk, hkv, hd).transpose(0, 1)
        v = rnd(tk, 2 * hkv, hd).transpose(0, 1)[::2]
        kc = rnd(cap, hkv, 2 * hd)[..., :hd].transpose(0, 1)
        vc = rnd(hkv, cap + 5, hd)[:, 5:]
    else:
        k, v = rnd(hkv, tk, hd), rnd(hkv, tk, hd)
        kc, vc = rnd(hkv, cap, hd), rnd(hkv, cap, hd)
    kc[:, n:] = float("nan")  # never read: the kernel must stop at cache_len
    vc[:, n:] = float("nan")

    kind = c["mask"]
    if kind == "full":
        mask = torch.ones(T, tk, dtype=torch.bool)
    elif kind == "causal":
        mask = torch.ones(T, tk, dtype=torch.bool).tril(tk - T)
    elif kind == "tree":
        mask = torch.zeros(T, tk, dtype=torch.bool)
        mask[:, tk - T:] = tree_mask(T, gen)
        mask[:, : tk - T] = True
    else:  # random, with some all-False rows
        mask = torch.rand(T, tk, generator=gen) < 0.4
        mask[:: 3] = False
    if c.get("strided"):
        big = torch.zeros(tk + 3, T, dtype=torch.bool)
        big[:tk] = mask.t()
        mask = big[:tk].t()  # [T, tk] with strides (1, T)
    cache_len = torch.tensor([n], dtype=torch.int64)
    scale = hd**-0.5
    to = lambda x: x.to(device)  # noqa: E731
    return tuple(map(to, (q, k, v, kc, vc, cache_len, mask))) + (scale,)


# (atol, rtol) against the fp32 reference: |out - ref| <= atol + rtol * |ref|
TOL = {"fp32": (2e-5, 1e-5), "fp16": (2e-3, 4e-3), "bf16": (1e-2, 2e-2)}


def reference_fp32(args):
    """`tree_attention_reference` on fp32 copies of the inputs (no final rounding to fp16/bf16)."""
    from jetspec_compile.ops import tree_attention_reference

    up = tuple(a.float() if hasattr(a, "is_floating_point") and a.is_floating_point() else a
               for a in args)
    return tree_attention_reference(*up)


def compare(out, ref, dtype: str) -> dict:
    """Max abs error and the worst excess over the tolerance (<= 0 passes)."""
    atol, rtol = TOL[dtype]
    if out.numel() == 0:
        return dict(err=0.0, excess=0.0)
    d = (out.float() - ref).abs()
    return dict(err=d.max().item(), excess=(d - atol - rtol * ref.abs()).max().item())


def run_case(c, device="cpu"):
    import torch

    from jetspec_compile.kernels.tree_attention import triton_tree_attention

    args = make_inputs(c, device)
    overrides = {k: c[k] for k in ("block_m", "block_n", "num_splits") if k in c}
    t0 = time.perf_counter()
    out = triton_tree_attention(*args, **overrides)
    secs = time.perf_counter() - t0
    ref = reference_fp32(args)
    q, mask = args[0], args[6]
    dead = ~mask.any(1) if c["n"] == 0 else torch.zeros(mask.shape[0], dtype=torch.bool)
    return dict(
        id=c["id"], secs=secs, **compare(out, ref, c["dtype"]),
        shape=list(out.shape), contiguous=out.is_contiguous(), dtype_ok=out.dtype == q.dtype,
        finite=bool(torch.isfinite(out).all()), dead_rows=int(dead.sum()),
        dead_rows_zero=bool((out[dead] == 0).all()) if dead.any() else True,
    )


def main(argv=None):
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1 before running this script", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    ids = set(argv or [])
    results = [run_case(c) for c in CASES if not ids or c["id"] in ids]
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
