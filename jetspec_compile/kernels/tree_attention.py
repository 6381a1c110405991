"""Triton kernel of `jetspec::tree_attention` (flash-attention style, fp32 online softmax).

Semantics (see `jetspec_compile.ops`): the queries of T new rows attend to the whole committed prefix
`k_cache[:, :cache_len]` plus the new rows' own keys `k` where `mask[i, j]` is True; a row that sees
no key returns zeros. Grouped-query attention reads every K/V tile once for all query heads of its
group: one program handles BLOCK_M rows of the flattened `(group head, t)` queries of one KV head.

Work split:
  * `cache_len` is read from its device tensor inside the kernel (no host sync); the cache loop only
    visits key blocks below it (full blocks unmasked, one masked tail block), so the unused capacity
    of a static cache costs nothing.
  * The new rows are a few extra key blocks; their boolean mask is loaded as bytes and a key block
    that no query row of the tile can see is skipped.
  * For short query tiles (decode-like verification) the committed prefix is split over NUM_SPLITS
    programs (flash-decoding); each writes a normalised partial output and its log-sum-exp, and a
    small combine kernel merges them. With NUM_SPLITS == 1 (large T, short caches, and the default
    when there are enough programs) the single kernel writes the final output directly.

Kernel arguments are ordered inputs, scalars (strides included), outputs, as TensorRT's
ahead-of-time plugin path requires.

`TRITON_INTERPRET=1` must be set before this module is imported to run the kernels on CPU tensors
(tests only; the interpreter mishandles bf16).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

__all__ = ["triton_tree_attention", "choose_config", "ast_sources"]

_LOG2E = 1.4426950408889634
_TL_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@triton.jit
def _online_softmax_update(
    q, k, v, visible, m_i, l_i, acc, qk_scale,
    MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One key block of the online softmax (base 2). Rows with no visible key so far stay at
    m = -inf, l = 0, acc = 0 without producing NaNs."""
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _tree_attn_fwd_kernel(
    # inputs
    Q, K, V, KC, VC, CACHE_LEN, MASK,
    # scalars
    qk_scale,
    stride_qh, stride_qt, stride_qd,
    stride_kh, stride_kt, stride_kd,
    stride_vh, stride_vt, stride_vd,
    stride_kch, stride_kcs, stride_kcd,
    stride_vch, stride_vcs, stride_vcd,
    stride_mt, stride_mj,
    stride_ot, stride_oh, stride_od,
    T, TK, S, GROUP, HQ,
    # outputs: OUT is [T, Hq, hd] (NUM_SPLITS == 1) or the fp32 partials [NUM_SPLITS, Hq, T, hd];
    # LSE is [NUM_SPLITS, Hq, T] fp32 (unused when NUM_SPLITS == 1)
    OUT, LSE,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    kvh = tl.program_id(1)
    pid_s = tl.program_id(2)
    kvh64 = kvh.to(tl.int64)

    # query rows of this tile: row r <-> (query head kvh * GROUP + r // T, position r % T)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < GROUP * T
    t_idx = rows % T
    head = kvh * GROUP + rows // T
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM
    offs_n = tl.arange(0, BLOCK_N)

    q_ptrs = (Q + head.to(tl.int64)[:, None] * stride_qh + t_idx[:, None] * stride_qt
              + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_valid[:, None] & d_valid[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # ---- committed prefix: keys [0, cache_len), this split's share of its blocks ----------------
    cache_len = tl.load(CACHE_LEN).to(tl.int32)
    cache_len = tl.minimum(tl.maximum(cache_len, 0), S)
    n_blocks = (cache_len + BLOCK_N - 1) // BLOCK_N
    n_full = cache_len // BLOCK_N
    blocks_per_split = (n_blocks + NUM_SPLITS - 1) // NUM_SPLITS
    blk_lo = pid_s * blocks_per_split
    blk_hi = tl.minimum(blk_lo + blocks_per_split, n_blocks)
    full_hi = tl.minimum(blk_hi, n_full)

    kc_base = KC + kvh64 * stride_kch
    vc_base = VC + kvh64 * stride_vch
    for blk in range(blk_lo, full_hi):
        offs = blk * BLOCK_N + offs_n
        k = tl.load(kc_base + offs[:, None] * stride_kcs + offs_d[None, :] * stride_kcd,
                    mask=d_valid[None, :], other=0.0)
        v = tl.load(vc_base + offs[:, None] * stride_vcs + offs_d[None, :] * stride_vcd,
                    mask=d_valid[None, :], other=0.0)
        m_i, l_i, acc = _online_softmax_update(
            q, k, v, None, m_i, l_i, acc, qk_scale, False, DOT_PRECISION)
    # the partial tail block (only when cache_len is not a multiple of BLOCK_N)
    if (n_full < blk_hi) & (n_full >= blk_lo):
        offs = n_full * BLOCK_N + offs_n
        key_valid = offs < cache_len
        ld_mask = key_valid[:, None] & d_valid[None, :]
        k = tl.load(kc_base + offs[:, None] * stride_kcs + offs_d[None, :] * stride_kcd,
                    mask=ld_mask, other=0.0)
        v = tl.load(vc_base + offs[:, None] * stride_vcs + offs_d[None, :] * stride_vcd,
                    mask=ld_mask, other=0.0)
        m_i, l_i, acc = _online_softmax_update(
            q, k, v, key_valid[None, :], m_i, l_i, acc, qk_scale, True, DOT_PRECISION)

    # ---- the new rows under the boolean mask (handled by the last split) -----------------------
    if pid_s == NUM_SPLITS - 1:
        k_base = K + kvh64 * stride_kh
        v_base = V + kvh64 * stride_vh
        for j0 in range(0, TK, BLOCK_N):
            offs = j0 + offs_n
            key_valid = offs < TK
            bits = tl.load(MASK + t_idx[:, None] * stride_mt + offs[None, :] * stride_mj,
                           mask=row_valid[:, None] & key_valid[None, :], other=0)
            visible = bits != 0
            n_visible = tl.sum(tl.sum(visible.to(tl.int32), 1), 0)
            if n_visible > 0:  # skip key blocks no row of this tile can see
                ld_mask = key_valid[:, None] & d_valid[None, :]
                k = tl.load(k_base + offs[:, None] * stride_kt + offs_d[None, :] * stride_kd,
                            mask=ld_mask, other=0.0)
                v = tl.load(v_base + offs[:, None] * stride_vt + offs_d[None, :] * stride_vd,
                            mask=ld_mask, other=0.0)
                m_i, l_i, acc = _online_softmax_update(
                    q, k, v, visible, m_i, l_i, acc, qk_scale, True, DOT_PRECISION)

    # ---- epilogue ------------------------------------------------------------------------------
    has_key = l_i > 0.0
    o = acc / tl.where(has_key, l_i, 1.0)[:, None]  # rows that saw no key: acc == 0 -> zeros
    st_mask = row_valid[:, None] & d_valid[None, :]
    if NUM_SPLITS == 1:
        o_ptrs = (OUT + t_idx[:, None] * stride_ot + head.to(tl.int64)[:, None] * stride_oh
                  + offs_d[None, :] * stride_od)
        tl.store(o_ptrs, o.to(OUT.dtype.element_ty), mask=st_mask)
    else:
        part_row = (pid_s * HQ + head).to(tl.int64) * T + t_idx  # [NUM_SPLITS, Hq, T] row index
        tl.store(OUT + part_row[:, None] * HEAD_DIM + offs_d[None, :], o, mask=st_mask)
        lse = tl.where(has_key, m_i + tl.log2(tl.where(has_key, l_i, 1.0)), float("-inf"))
        tl.store(LSE + part_row, lse, mask=row_valid)


@triton.jit
def _tree_attn_combine_kernel(
    # inputs
    OPART, LSE,
    # scalars
    T, HQ,
    stride_ot, stride_oh, stride_od,
    # outputs
    OUT,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
):
    """Merges the per-split partial outputs of one (t, query head) by their log-sum-exps."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_P2)
    offs_d = tl.arange(0, BLOCK_D)
    s_valid = offs_s < NUM_SPLITS
    d_valid = offs_d < HEAD_DIM
    part_row = (offs_s * HQ + h).to(tl.int64) * T + t
    lse = tl.load(LSE + part_row, mask=s_valid, other=float("-inf"))
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m_safe)  # 0 for empty splits
    denom = tl.sum(w, 0)
    part = tl.load(OPART + part_row[:, None] * HEAD_DIM + offs_d[None, :],
                   mask=s_valid[:, None] & d_valid[None, :], other=0.0)
    o = tl.sum(part * w[:, None], 0) / tl.where(denom > 0.0, denom, 1.0)
    o_ptrs = OUT + t.to(tl.int64) * stride_ot + h.to(tl.int64) * stride_oh + offs_d * stride_od
    tl.store(o_ptrs, o.to(OUT.dtype.element_ty), mask=d_valid)


# --------------------------------------------------------------------------------------------------
# launcher


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _pow2_floor(x: int) -> int:
    return 1 << (max(int(x), 1).bit_length() - 1)


def choose_config(
    *, rows: int, hkv: int, head_dim: int, cache_capacity: int, sm_count: int
) -> dict:
    """Block sizes, warps, stages and cache splits for a launch (heuristic, chosen on the host from
    shapes only: the real `cache_len` stays on the device).

    rows = GROUP * T query rows per KV head. Decode-like tiles (few rows) take a small BLOCK_M and
    split the committed prefix so that the grid fills the GPU; long query blocks take BLOCK_M = 128
    (64 for head_dim > 128) when that still gives at least one program per SM.
    """
    block_d = triton.next_power_of_2(max(head_dim, 16))
    if rows <= 64:
        block_m = max(16, triton.next_power_of_2(rows))
    elif block_d > 128 or triton.cdiv(rows, 128) * hkv < sm_count:
        block_m = 64
    else:
        block_m = 128
    block_n = 64 if block_d <= 128 else 32
    num_warps = 8 if block_m * block_d >= 128 * 128 else 4
    num_stages = 3 if block_d <= 128 else 2
    programs = triton.cdiv(rows, block_m) * hkv
    num_splits = 1
    cache_blocks = triton.cdiv(max(cache_capacity, 0), block_n)
    if 2 * programs <= sm_count and cache_blocks >= 4:
        want = triton.cdiv(2 * sm_count, programs)  # about two waves of programs
        num_splits = min(_pow2_floor(want), _pow2_floor(cache_blocks // 2), 64)  # >= 2 blocks each
    return dict(block_m=block_m, block_n=block_n, block_d=block_d, num_warps=num_warps,
                num_stages=num_stages, num_splits=max(num_splits, 1),
                combine_num_warps=4 if block_d >= 128 else 2)


def _check_inputs(q, k, v, k_cache, v_cache, mask) -> None:
    """ValueError unless the shapes and dtypes agree (see ``triton_tree_attention``)."""
    hq, t, _ = q.shape
    hkv, tk, _ = k.shape
    if hq % hkv != 0:
        raise ValueError(f"query heads {hq} not a multiple of KV heads {hkv}")
    if k.shape != v.shape or k_cache.shape != v_cache.shape or k_cache.shape[0] != hkv:
        raise ValueError("k/v and k_cache/v_cache shapes disagree")
    if tuple(mask.shape) != (t, tk):
        raise ValueError(f"mask shape {tuple(mask.shape)} != {(t, tk)}")
    if any(x.dtype != q.dtype for x in (k, v, k_cache, v_cache)):
        raise ValueError("q, k, v, k_cache and v_cache must share one dtype")
    if q.dtype not in _TL_NAMES:
        raise ValueError(f"unsupported dtype {q.dtype} (fp32, fp16, bf16)")


def _launch_config(q: torch.Tensor, *, rows: int, hkv: int, head_dim: int, cache_capacity: int,
                   overrides: dict) -> dict:
    """``choose_config`` for q's device (its SM count), with the caller's non-None overrides applied."""
    if q.is_cuda:
        idx = q.device.index
        sm_count = _sm_count(idx if idx is not None else torch.cuda.current_device())
    else:  # only under TRITON_INTERPRET=1 (tests)
        sm_count = 1
    cfg = choose_config(rows=rows, hkv=hkv, head_dim=head_dim, cache_capacity=cache_capacity, sm_count=sm_count)
    cfg.update({name: int(val) for name, val in overrides.items() if val is not None})
    return cfg


def triton_tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    num_splits: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Launches the tree-attention kernel(s); returns a fresh contiguous [T, Hq, hd] tensor.

    q [Hq, T, hd], k/v [Hkv, Tk, hd], k_cache/v_cache [Hkv, S, hd] (any strides), cache_len an integer
    tensor with one element on q's device, mask bool [T, Tk]. The keyword arguments override the
    heuristic of `choose_config` (tests, tuning).
    """
    _check_inputs(q, k, v, k_cache, v_cache, mask)
    hq, t, hd = q.shape
    hkv, tk, _ = k.shape
    s = k_cache.shape[1]
    group = hq // hkv
    out = torch.empty((t, hq, hd), dtype=q.dtype, device=q.device)
    if t == 0 or hq == 0:
        return out

    if cache_len.device != q.device:
        cache_len = cache_len.to(q.device)
    cache_len = cache_len.reshape(-1)
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)  # zero-copy; the kernel tests bytes != 0
    cfg = _launch_config(q, rows=group * t, hkv=hkv, head_dim=hd, cache_capacity=s,
                         overrides=dict(block_m=block_m, block_n=block_n, num_splits=num_splits,
                                        num_warps=num_warps, num_stages=num_stages))
    _launch(q, k, v, k_cache, v_cache, cache_len, mask, scale, out, cfg)
    return out


def _launch(q, k, v, k_cache, v_cache, cache_len, mask, scale: float, out: torch.Tensor, cfg: dict) -> None:
    """Run the forward kernel (and, split over the cache, the combine kernel) into ``out``."""
    hq, t, hd = q.shape
    hkv, tk, _ = k.shape
    s = k_cache.shape[1]
    group = hq // hkv
    splits = max(1, cfg["num_splits"])
    if splits == 1:
        dest, lse = out, out  # LSE unused
    else:
        dest = torch.empty((splits, hq, t, hd), dtype=torch.float32, device=q.device)
        lse = torch.empty((splits, hq, t), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(group * t, cfg["block_m"]), hkv, splits)
    dot_precision = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32: match the reference
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _tree_attn_fwd_kernel[grid](
            q, k, v, k_cache, v_cache, cache_len, mask,
            float(scale) * _LOG2E,
            *q.stride(), *k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride(),
            *mask.stride(), *out.stride(),
            t, tk, s, group, hq,
            dest, lse,
            HEAD_DIM=hd, BLOCK_D=cfg["block_d"], BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"],
            NUM_SPLITS=splits, DOT_PRECISION=dot_precision,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
        if splits > 1:
            _tree_attn_combine_kernel[(t, hq)](
                dest, lse, t, hq, *out.stride(), out,
                HEAD_DIM=hd, BLOCK_D=cfg["block_d"], NUM_SPLITS=splits,
                SPLITS_P2=triton.next_power_of_2(splits), num_warps=cfg["combine_num_warps"],
            )


# --------------------------------------------------------------------------------------------------
# ahead-of-time compilation (TensorRT AOT plugins; a CPU-only check that the kernels build for sm_90)

_UNIT_STRIDES = ("stride_qd", "stride_kd", "stride_vd", "stride_kcd", "stride_vcd", "stride_mj",
                 "stride_od")
_POINTERS = ("Q", "K", "V", "KC", "VC", "CACHE_LEN", "MASK", "OUT", "LSE")


def ast_sources(dtype: torch.dtype, head_dim: int, config: dict, *, unit_inner_strides: bool = True):
    """`triton.compiler.ASTSource`s of the kernels one launch with `config` (see `choose_config`) runs.

    Returns [("fwd", src)] or, with config["num_splits"] > 1, [("fwd", src), ("combine", src)]. Every
    pointer is assumed 16-byte aligned and every non-unit stride a multiple of 16 elements, as the
    JIT specialises them for contiguous Qwen3 shapes; with `unit_inner_strides` the innermost strides
    are the constant 1 (contiguous head_dim and mask rows), which the JIT also specialises and which
    keeps the pointer arithmetic out of registers. Compile with
    `triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=..., num_stages=...))`.
    """
    from triton.compiler import ASTSource

    tl_dtype = _TL_NAMES[dtype]
    splits = int(config["num_splits"])
    consts = dict(HEAD_DIM=head_dim, BLOCK_D=config["block_d"], BLOCK_M=config["block_m"],
                  BLOCK_N=config["block_n"], NUM_SPLITS=splits,
                  DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32")
    sig, attrs = _fwd_signature(tl_dtype, splits, consts, unit_inner_strides)
    out = [("fwd", ASTSource(_tree_attn_fwd_kernel, sig, constexprs=consts, attrs=attrs))]
    if splits > 1:
        out.append(("combine", _combine_source(tl_dtype, head_dim, config, unit_inner_strides)))
    return out


def _fwd_signature(tl_dtype: str, splits: int, consts: dict, unit_inner_strides: bool) -> tuple[dict, dict]:
    """The forward kernel's argument types and divisibility attributes (``consts`` gains the unit strides)."""
    sig, attrs = {}, {}
    div16 = [["tt.divisibility", 16]]
    for i, name in enumerate(_tree_attn_fwd_kernel.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in _POINTERS:
            if name == "CACHE_LEN":
                sig[name] = "*i64"
            elif name == "MASK":
                sig[name] = "*u8"
            elif name in ("OUT", "LSE") and splits > 1:
                sig[name] = "*fp32"
            else:
                sig[name] = "*" + tl_dtype
            attrs[(i,)] = div16
        elif name == "qk_scale":
            sig[name] = "fp32"
        elif unit_inner_strides and name in _UNIT_STRIDES:
            sig[name] = "constexpr"
            consts[name] = 1
        elif name.startswith("stride_"):
            sig[name] = "i32"
            attrs[(i,)] = div16
        else:
            sig[name] = "i32"
    return sig, attrs


def _combine_source(tl_dtype: str, head_dim: int, config: dict, unit_inner_strides: bool):
    """The split-combine kernel's ASTSource (launches with num_splits > 1)."""
    from triton.compiler import ASTSource

    splits = int(config["num_splits"])
    cconsts = dict(HEAD_DIM=head_dim, BLOCK_D=config["block_d"], NUM_SPLITS=splits,
                   SPLITS_P2=triton.next_power_of_2(splits))
    csig = {}
    for name in _tree_attn_combine_kernel.arg_names:
        if name in cconsts:
            csig[name] = "constexpr"
        elif name in ("OPART", "LSE"):
            csig[name] = "*fp32"
        elif name == "OUT":
            csig[name] = "*" + tl_dtype
        elif unit_inner_strides and name == "stride_od":
            csig[name] = "constexpr"
            cconsts[name] = 1
        else:
            csig[name] = "i32"
    return ASTSource(_tree_attn_combine_kernel, csig, constexprs=cconsts)
