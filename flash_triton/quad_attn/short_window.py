"""Short windows (FLASH's groups; GAU on short sequences): each window's attention weights and, in the backward,
score gradients computed once and stored, then multiplied into the feature widths in GEMM passes. Triton kernels and
the typed launchers that :func:`.kernels.quad_attn_fwd` / :func:`.kernels.quad_attn_bwd` call for such windows.

The streaming kernels of :mod:`.kernels` split the value width E over programs, and each program recomputes the
scores ``q·kᵀ`` of its tiles: E / BE times in all (16 at FLASH's s = 128, e = 1024); their backward recomputes
``dy·vᵀ`` in dk and in dq. For windows of at most ``kernels.SHORT_WINDOW`` tokens the weights of a window are small
(``N · W`` per batch row, stored in the dtype the streaming kernels round them to before their products), so each
tile is computed once instead. Tiles are BM x BN, the same in every kernel here (each reads exactly the tiles
another stored), laid out at ``M[b, i, j - window start]`` in rows padded to whole tiles; key tiles past the
window's end or above the causal diagonal are neither computed, stored nor read.

Forward:
1. ``_quad_weights_kernel``, one program per (query tile, key tile): ``A = act(s) · dropout · keep`` (the scores
   and masks of :mod:`.kernels`, the same Philox draw), stored with zeros past the window's end.
2. ``_quad_out_kernel``, one program per (value block, query tile): ``Σ_j A[i, j] v_j`` over the stored tiles, plus
   FLASH's linear half ``lin_q · P[window]``; the pre-gate output stored when asked, the gate applied. Value blocks
   of one query tile are neighbours in the grid, so the weights they share come from L2.

Backward (``dy``: the gradient before the gate):
1. ``_quad_dscores_kernel``, per (query tile, key tile): ``dA = dy·vᵀ`` over the whole value width, the scores,
   then A and ``ds = dA · act'(s) · dropout · keep`` stored; the T5 table's per-bucket partials and the caller's
   bias gradient from ds.
2. ``_quad_tile_product_kernel`` three times: ``dv = Aᵀ dy``, ``dq = scale · ds k``, ``dk = scale · dsᵀ q``. For
   FLASH, dv's pass also adds the linear half's share ``lin_k dS[window]`` (``dS``: the gradient of the state the
   window reads) before its one rounding, with the rows of masked keys zero, so dv is written once.

Executed FLOPs: every tile's scores once per pass, A·v and dy·vᵀ once. Extra HBM traffic: the stored tiles, written
once and read once per product, about ``7 · W / 2 · itemsize`` bytes per token causal (~1.8 KiB at W = 256 in bf16,
against ~31 KiB the FLASH core moves at e = 1024).
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import tuning
from ..common.jit import (
    FP_FUSION,
    cdiv,
    check_row_offsets,
    device_arch,
    dot,
    dot_precision,
    new_output,
    next_power_of_2,
    window_bounds,
)
from .kernels import _NOSPEC, _act, _act_grad, _bias_strides, _dropout_scale, _keep, _scores, t5_bucket_sums


@triton.jit(do_not_specialize=_NOSPEC)
def _quad_weights_kernel(
    q_ptr,  # (B, N, S)
    k_ptr,  # (B, N, S)
    a_ptr,  # (B, N, >= min(W, N)) weights out, v's dtype: A[b, i, j - start of i's window]
    mask_ptr,  # (B, N) uint8 key mask, or dummy
    t5_ptr,  # (2 * max_dist + 1,) float32 T5 term per relative position (kernels.t5_relative), or dummy
    lut_ptr,  # (2 * max_dist + 1,) int32 buckets: the T5 gradient's (the score-gradient kernel); unused here
    bias_ptr,  # (B, N, N) caller's bias through strides (0 where broadcast), or dummy
    seed_ptr,  # (1,) int64 dropout seed, or dummy
    win_ptr,  # (G, 2) int32 window bounds of a packed variable-length batch, or dummy
    N,
    W,
    G,
    S,
    stride_ab,
    stride_an,  # row stride of the weights, padded to a multiple of 16 (aligned vector loads and stores)
    stride_qb,
    stride_qn,
    stride_kb,
    stride_kn,
    stride_mb,
    stride_bb,
    stride_bm,
    stride_bn,
    scale,
    t5_scale,
    max_dist,
    bias_scale,
    dropout_p,
    CAUSAL: tl.constexpr,
    LAPLACE: tl.constexpr,
    VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_T5: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DROPOUT: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
    S_BLOCKS: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_mt, i_nt, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tiles = tl.cdiv(W, BM)
    win_start, win_end = window_bounds(i_mt // tiles, W, N, win_ptr, VARLEN)
    q_start = win_start + (i_mt % tiles) * BM
    c_start = i_nt * BN  # first column (key position in the window) of this tile
    k_start = win_start + c_start
    # a tile past the window's end or above the causal diagonal is never read by the output pass
    if (q_start >= win_end) | (k_start >= win_end):
        return
    if CAUSAL:
        if k_start >= q_start + BM:
            return
    o_m = q_start + tl.arange(0, BM)
    o_n = k_start + tl.arange(0, BN)
    m_m, m_n = o_m < win_end, o_n < win_end
    i_b64 = i_b.to(tl.int64)
    s = _scores(
        q_ptr + i_b64 * stride_qb,
        k_ptr + i_b64 * stride_kb,
        stride_qn,
        stride_kn,
        o_m,
        o_n,
        m_m,
        m_n,
        S,
        scale,
        t5_ptr,
        max_dist,
        0.0,
        bias_ptr + i_b64 * stride_bb,
        stride_bm,
        stride_bn,
        bias_scale,
        HAS_T5,  # gathered per score (True is 1)
        HAS_BIAS,
        BM,
        BN,
        BS,
        S_BLOCKS,
        DOT_PREC,
    )
    a = _act(s, LAPLACE)
    if DROPOUT:
        a = a * _dropout_scale(tl.load(seed_ptr), i_b * G * W, o_m, o_n, win_start, dropout_p)
    a = tl.where(_keep(o_m, o_n, m_m, m_n, mask_ptr + i_b64 * stride_mb, CAUSAL, HAS_MASK), a, 0.0)
    # whole tiles, zeros past the window's end: the output pass reads them with a row mask only (vector loads)
    p_a = a_ptr + i_b64 * stride_ab + o_m[:, None] * stride_an + (c_start + tl.arange(0, BN))[None, :]
    tl.store(p_a, a.to(a_ptr.dtype.element_ty), mask=m_m[:, None])


@triton.jit(do_not_specialize=_NOSPEC)
def _quad_out_kernel(
    a_ptr,  # (B, N, >= min(W, N)) weights from _quad_weights_kernel
    v_ptr,  # (B, N, E)
    gate_ptr,  # (B, N, E), or dummy
    o_ptr,  # (B, N, E) gated output
    opre_ptr,  # (B, N, E) output before the gate (saved for dgate), or dummy
    lq_ptr,  # (B, N, S) FLASH's linear-attention queries, or dummy
    p_ptr,  # (B, G, S, E) state each window's queries read (FLASH's prefix; read in lin_q's precision), or dummy
    win_ptr,  # (G, 2) int32 window bounds of a packed variable-length batch, or dummy
    N,
    W,
    G,
    S,
    E,
    stride_ab,
    stride_an,
    stride_vb,
    stride_vn,
    stride_gb,
    stride_gn,
    stride_ob,
    stride_on,
    stride_lqb,
    stride_lqn,
    stride_pb,
    stride_pg,
    stride_ps,
    CAUSAL: tl.constexpr,
    VARLEN: tl.constexpr,
    HAS_LIN: tl.constexpr,
    HAS_GATE: tl.constexpr,
    STORE_PRE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
    BE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_e, i_mt, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tiles = tl.cdiv(W, BM)
    i_w = i_mt // tiles
    win_start, win_end = window_bounds(i_w, W, N, win_ptr, VARLEN)
    q_start = win_start + (i_mt % tiles) * BM
    if q_start >= win_end:  # a packed batch's short window: no queries in this tile
        return
    o_m = q_start + tl.arange(0, BM)
    m_m = o_m < win_end
    o_e = i_e * BE + tl.arange(0, BE)
    m_e = o_e < E
    i_b64 = i_b.to(tl.int64)
    a_base = a_ptr + i_b64 * stride_ab
    v_base = v_ptr + i_b64 * stride_vb
    hi = win_end
    if CAUSAL:  # keys past the tile's last query were not stored (within the diagonal tile they are zeros)
        hi = tl.minimum(win_end, q_start + BM)
    acc = tl.zeros((BM, BE), dtype=tl.float32)
    # the column tiles the weights kernel stored (same BM and BN): whole tiles, zeros past the window's end and,
    # causal, above the diagonal; masked by row only, so the loads stay 16-byte vectors
    for c0 in range(0, hi - win_start, BN):
        o_c = tl.multiple_of(c0, BN) + tl.arange(0, BN)
        o_n = win_start + o_c
        m_n = o_n < hi
        b_a = tl.load(a_base + o_m[:, None] * stride_an + o_c[None, :], mask=m_m[:, None], other=0.0)
        b_v = tl.load(v_base + o_n[:, None] * stride_vn + o_e[None, :], mask=m_n[:, None] & m_e[None, :], other=0.0)
        acc = dot(b_a, b_v, acc, DOT_PREC)
    if HAS_LIN:  # FLASH's linear half in the same output tile: acc += lin_q P[window] (the window's state)
        lq_base = lq_ptr + i_b64 * stride_lqb
        p_base = p_ptr + i_b64 * stride_pb + i_w.to(tl.int64) * stride_pg
        for s0 in range(0, S, BS):
            o_s = s0 + tl.arange(0, BS)
            m_s = o_s < S
            b_lq = tl.load(
                lq_base + o_m[:, None] * stride_lqn + o_s[None, :], mask=m_m[:, None] & m_s[None, :], other=0.0
            )
            b_p = tl.load(p_base + o_s[:, None] * stride_ps + o_e[None, :], mask=m_s[:, None] & m_e[None, :], other=0.0)
            acc = dot(b_lq, b_p.to(b_lq.dtype), acc, DOT_PREC)
    m_out = m_m[:, None] & m_e[None, :]
    o_off = i_b64 * stride_ob + o_m[:, None] * stride_on + o_e[None, :]
    if STORE_PRE:
        tl.store(opre_ptr + o_off, acc.to(opre_ptr.dtype.element_ty), mask=m_out)
    if HAS_GATE:
        p_g = gate_ptr + i_b64 * stride_gb + o_m[:, None] * stride_gn + o_e[None, :]
        acc = acc * tl.load(p_g, mask=m_out, other=0.0).to(tl.float32)
    tl.store(o_ptr + o_off, acc.to(o_ptr.dtype.element_ty), mask=m_out)


@triton.jit(do_not_specialize=_NOSPEC)
def _quad_dscores_kernel(
    q_ptr,  # (B, N, S)
    k_ptr,  # (B, N, S)
    v_ptr,  # (B, N, E)
    dy_ptr,  # (B, N, E) gradient of the output before the gate
    a_ptr,  # (B, N, >= min(W, N)) weights out (for dv), v's dtype, laid out as in _quad_weights_kernel
    ds_ptr,  # (B, N, >= min(W, N)) score gradients out (for dq and dk), q's dtype, the same layout
    dt5_ptr,  # (B * programs, NB) float32 partial sums of the T5 table's gradient (zeros), or dummy
    dbias_ptr,  # (B, N, N) float32 score gradient times bias_scale (zeros), or dummy
    mask_ptr,  # (B, N) uint8 key mask, or dummy
    t5_ptr,  # (2 * max_dist + 1,) float32 T5 term per relative position (kernels.t5_relative), or dummy
    lut_ptr,  # (2 * max_dist + 1,) int32 bucket of each clamped relative position (the T5 gradient), or dummy
    bias_ptr,  # (B, N, N) caller's bias through strides, or dummy
    seed_ptr,  # (1,) int64 dropout seed, or dummy
    win_ptr,  # (G, 2) int32 window bounds of a packed variable-length batch, or dummy
    N,
    W,
    G,
    S,
    E,
    stride_qb,
    stride_qn,
    stride_kb,
    stride_kn,
    stride_vb,
    stride_vn,
    stride_dyb,
    stride_dyn,
    stride_ab,
    stride_an,
    stride_mb,
    stride_bb,
    stride_bm,
    stride_bn,
    scale,
    t5_scale,
    max_dist,
    bias_scale,
    dropout_p,
    CAUSAL: tl.constexpr,
    LAPLACE: tl.constexpr,
    VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_T5: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DROPOUT: tl.constexpr,
    DT5: tl.constexpr,
    DBIAS: tl.constexpr,
    NB: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
    S_BLOCKS: tl.constexpr,
    BE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Per visited (query tile, key tile): dA = dy vᵀ over the whole value width (once), the scores (once), then
    the weights A and the score gradients ds = dA act'(s) (dropout and masks applied) stored as whole tiles."""
    i_mt, i_nt, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tiles = tl.cdiv(W, BM)
    win_start, win_end = window_bounds(i_mt // tiles, W, N, win_ptr, VARLEN)
    q_start = win_start + (i_mt % tiles) * BM
    c_start = i_nt * BN
    k_start = win_start + c_start
    if (q_start >= win_end) | (k_start >= win_end):
        return
    if CAUSAL:
        if k_start >= q_start + BM:
            return
    o_m = q_start + tl.arange(0, BM)
    o_n = k_start + tl.arange(0, BN)
    m_m, m_n = o_m < win_end, o_n < win_end
    i_b64 = i_b.to(tl.int64)
    dy_base = dy_ptr + i_b64 * stride_dyb
    v_base = v_ptr + i_b64 * stride_vb
    # dA first, so that the scores are not live across this loop (register pressure)
    da = tl.zeros((BM, BN), dtype=tl.float32)
    for e0 in range(0, E, BE):
        o_e = e0 + tl.arange(0, BE)
        m_e = o_e < E
        b_dy = tl.load(dy_base + o_m[:, None] * stride_dyn + o_e[None, :], mask=m_m[:, None] & m_e[None, :], other=0.0)
        b_vt = tl.load(v_base + o_e[:, None] + o_n[None, :] * stride_vn, mask=m_e[:, None] & m_n[None, :], other=0.0)
        da = dot(b_dy, b_vt, da, DOT_PREC)
    s = _scores(
        q_ptr + i_b64 * stride_qb,
        k_ptr + i_b64 * stride_kb,
        stride_qn,
        stride_kn,
        o_m,
        o_n,
        m_m,
        m_n,
        S,
        scale,
        t5_ptr,
        max_dist,
        0.0,
        bias_ptr + i_b64 * stride_bb,
        stride_bm,
        stride_bn,
        bias_scale,
        HAS_T5,  # gathered per score (True is 1)
        HAS_BIAS,
        BM,
        BN,
        BS,
        S_BLOCKS,
        DOT_PREC,
    )
    keep = _keep(o_m, o_n, m_m, m_n, mask_ptr + i_b64 * stride_mb, CAUSAL, HAS_MASK)
    a = _act(s, LAPLACE)
    ds = da * _act_grad(s, LAPLACE)
    if DROPOUT:
        drop = _dropout_scale(tl.load(seed_ptr), i_b * G * W, o_m, o_n, win_start, dropout_p)
        a = a * drop
        ds = ds * drop
    a = tl.where(keep, a, 0.0)
    ds = tl.where(keep, ds, 0.0)
    o_tile = i_b64 * stride_ab + o_m[:, None] * stride_an + (c_start + tl.arange(0, BN))[None, :]
    tl.store(a_ptr + o_tile, a.to(a_ptr.dtype.element_ty), mask=m_m[:, None])
    tl.store(ds_ptr + o_tile, ds.to(ds_ptr.dtype.element_ty), mask=m_m[:, None])
    if DT5:
        acc_t5 = t5_bucket_sums(tl.zeros((NB,), dtype=tl.float32), ds, o_m, o_n, lut_ptr, max_dist, NB)
        pid = (i_b64 * tl.num_programs(0) + i_mt) * tl.num_programs(1) + i_nt
        tl.store(dt5_ptr + pid * NB + tl.arange(0, NB), acc_t5 * t5_scale)
    if DBIAS:
        p_db = dbias_ptr + i_b64 * N * N + o_m[:, None] * N + o_n[None, :]
        tl.store(p_db, ds * bias_scale, mask=m_m[:, None] & m_n[None, :])


@triton.jit(do_not_specialize=_NOSPEC)
def _quad_tile_product_kernel(
    m_ptr,  # (B, N, >= min(W, N)) stored tiles (weights or score gradients), laid out as in _quad_weights_kernel
    x_ptr,  # (B, N, D)
    y_ptr,  # (B, N, D) out
    win_ptr,  # (G, 2) int32 window bounds of a packed variable-length batch, or dummy
    lin_ptr,  # (B, N, S) FLASH's lin_k (HAS_LIN), or dummy
    st_ptr,  # (B, G, S, D) gradient of the state each window's linear queries read (HAS_LIN), or dummy
    mask_ptr,  # (B, N) uint8 key mask of the linear half (HAS_LIN and HAS_MASK), or dummy
    N,
    W,
    G,
    D,
    S,
    stride_mb,
    stride_mn,
    stride_xb,
    stride_xn,
    stride_yb,
    stride_yn,
    stride_lb,
    stride_ln,
    stride_sb,
    stride_sg,
    stride_ss,
    stride_kb,
    scale,
    COLUMNS: tl.constexpr,
    CAUSAL: tl.constexpr,
    VARLEN: tl.constexpr,
    HAS_LIN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Over the stored tiles of each window, one (tile, feature block) per program: ``y_i = scale Σ_j M[i, j] x_j``
    (rows: dq = scale ds k) or, with COLUMNS, ``y_j = scale Σ_i M[i, j] x_i`` (dk = scale dsᵀ q, dv = Aᵀ dy).
    HAS_LIN (FLASH's dv): the linear half's share ``lin_k_j dP[window]`` is added before the one rounding, and with
    HAS_MASK the rows of the keys the mask drops are zero (as the linear half's gradient is there, and Aᵀ dy)."""
    i_d, i_t, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    BT: tl.constexpr = BN if COLUMNS else BM  # this program's tile
    tiles = tl.cdiv(W, BT)
    win_start, win_end = window_bounds(i_t // tiles, W, N, win_ptr, VARLEN)
    c_start = (i_t % tiles) * BT  # the tile's first position in the window
    t_start = win_start + c_start
    if t_start >= win_end:
        return
    o_t = t_start + tl.arange(0, BT)
    m_t = o_t < win_end
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    i_b64 = i_b.to(tl.int64)
    m_base = m_ptr + i_b64 * stride_mb
    x_base = x_ptr + i_b64 * stride_xb
    acc = tl.zeros((BT, BD), dtype=tl.float32)
    if COLUMNS:
        lo = win_start
        if CAUSAL:  # the stored query tiles of this key tile: from the one holding its first key
            lo = win_start + (c_start // BM) * BM
        for r0 in range(lo, win_end, BM):
            o_r = r0 + tl.arange(0, BM)
            m_r = o_r < win_end
            p_mt = m_base + (c_start + tl.arange(0, BN))[:, None] + o_r[None, :] * stride_mn
            b_mt = tl.load(p_mt, mask=m_r[None, :], other=0.0)
            b_x = tl.load(x_base + o_r[:, None] * stride_xn + o_d[None, :], mask=m_r[:, None] & m_d[None, :], other=0.0)
            acc = dot(b_mt, b_x, acc, DOT_PREC)
    else:
        hi = win_end
        if CAUSAL:
            hi = tl.minimum(win_end, t_start + BM)
        for c0 in range(0, hi - win_start, BN):
            o_c = tl.multiple_of(c0, BN) + tl.arange(0, BN)
            o_n = win_start + o_c
            b_m = tl.load(m_base + o_t[:, None] * stride_mn + o_c[None, :], mask=m_t[:, None], other=0.0)
            m_x = (o_n < hi)[:, None] & m_d[None, :]
            b_x = tl.load(x_base + o_n[:, None] * stride_xn + o_d[None, :], mask=m_x, other=0.0)
            acc = dot(b_m, b_x, acc, DOT_PREC)
    acc = acc * scale
    if HAS_LIN:  # acc += lin_k[tile] dP[window] (masked keys: zero rows of lin_k), over the query/key width
        lin_base = lin_ptr + i_b64 * stride_lb
        st_base = st_ptr + i_b64 * stride_sb + (i_t // tiles).to(tl.int64) * stride_sg  # 64-bit: G * S * D
        for s0 in range(0, S, BD):  # in steps of the feature block: a square BD x BD state tile
            o_s = s0 + tl.arange(0, BD)
            m_s = o_s < S
            m_l = m_t[:, None] & m_s[None, :]
            b_l = tl.load(lin_base + o_t[:, None] * stride_ln + o_s[None, :], mask=m_l, other=0.0)
            m_p = m_s[:, None] & m_d[None, :]
            b_p = tl.load(st_base + o_s[:, None] * stride_ss + o_d[None, :], mask=m_p, other=0.0)
            acc = dot(b_l, b_p.to(b_l.dtype), acc, DOT_PREC)
        if HAS_MASK:  # a key the mask drops has a zero column in the stored weights (so Aᵀ dy is exactly 0 there)
            # and no linear share: its whole row is 0. Zeroed here, after the products (masking lin_k's rows spilled
            # the mask on sm_80)
            keep = tl.load(mask_ptr + i_b64 * stride_kb + o_t, mask=m_t, other=0) != 0
            acc = tl.where(keep[:, None], acc, 0.0)
    p_y = y_ptr + i_b64 * stride_yb + o_t[:, None] * stride_yn + o_d[None, :]
    tl.store(p_y, acc.to(y_ptr.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


# precision -> BM x BN tiles of the stored weights and score gradients, shared by every kernel here (each reads exactly
# the tiles another stored); per kernel, the caps of its other blocks and its warps: weights (BS, warps), out (BS, BE,
# warps), dscores (BS, BE, warps, stages: half precision unpipelined, 2 stages spilled 8 B at 255 registers on sm_80
# in the default FLASH training launch), product (BD, warps). Not yet tuned on a GPU; spill-free on sm_80 and sm_90
# (python -m flash_triton.aot).
SHORT_TILES = {
    "half": dict(BM=64, BN=64, weights=(128, 8), out=(64, 128, 8), dscores=(128, 64, 8, 2), product=(128, 8)),
    "fp32": dict(BM=32, BN=32, weights=(32, 4), out=(32, 32, 4), dscores=(32, 32, 4, 2), product=(32, 4)),
}


def short_config(
    kind: str,
    window: int,
    qk_dim: int,
    v_dim: int,
    dtype: torch.dtype,
    arch: int | None = None,
    bias: bool = False,
    masked_lin: bool = False,
) -> dict:
    """Tiles and warps of the short-window kernel ``kind``: "weights", "out", "dscores", or "product" (for a
    product over the value width: ``v_dim``; over the query/key width: pass it as ``v_dim`` too), on a GPU of
    compute capability ``arch`` (a tuned entry of :mod:`flash_triton.tuning` where there is one; never BM x BN);
    ``bias``: a caller's bias is added to the scores; ``masked_lin``: FLASH's dv product with a key mask."""
    fit = max(16, next_power_of_2(window))
    cfg = _short_default(kind, fit, qk_dim, v_dim, dtype)
    if kind == "product" and masked_lin and dtype != torch.float32 and cfg["num_warps"] == 8:
        # ptxas held FLASH's dv (the linear half added, masked keys' rows zeroed) at 8 warps to 128 registers and
        # spilled 24 B on sm_80 (triton 3.6); at 168 it spills nowhere (one block of 8 warps per SM; 80-91 on sm_90)
        cfg["maxnreg"] = 168
    if kind == "dscores" and bias and dtype != torch.float32:
        # ptxas held the half-precision score gradients with a caller's bias (and its gradient, laplace) to 128
        # registers and spilled 16 B inside the loop on sm_80 (triton 3.6): every register allowed (~210, one block)
        cfg["maxnreg"] = 255
    return tuning.tuned(f"quad_attn_{kind}", arch, dtype, dict(window=fit, qk=qk_dim, v=v_dim), cfg)


def _short_default(kind: str, fit: int, qk_dim: int, v_dim: int, dtype: torch.dtype) -> dict:
    t = SHORT_TILES["fp32" if dtype == torch.float32 else "half"]
    s_fit = max(16, next_power_of_2(qk_dim))
    e_fit = max(16, next_power_of_2(v_dim))
    cfg = dict(BM=min(t["BM"], fit), BN=min(t["BN"], fit), num_stages=2)
    if kind == "weights":
        bs, cfg["num_warps"] = t["weights"]
        return dict(cfg, BS=min(bs, s_fit), S_BLOCKS=cdiv(qk_dim, min(bs, s_fit)))
    if kind == "dscores":
        bs, be, cfg["num_warps"], cfg["num_stages"] = t["dscores"]
        return dict(cfg, BS=min(bs, s_fit), S_BLOCKS=cdiv(qk_dim, min(bs, s_fit)), BE=min(be, e_fit))
    if kind == "product":
        bd, cfg["num_warps"] = t["product"]
        return dict(cfg, BD=min(bd, e_fit))
    bs, be, cfg["num_warps"] = t["out"]
    return dict(cfg, BS=min(bs, s_fit), BE=min(be, e_fit))


def _tile_store(like: Tensor, window: int, cfg: dict, dtype: torch.dtype) -> Tensor:
    """(B, N, C) buffer of the stored tiles (weights or score gradients) for ``like`` (B, N, ...): each row holds the
    whole BN-wide column tiles covering min(window, N) keys (16-byte aligned rows, the layout every kernel here
    reads); the tiles no kernel reads are never written."""
    b, n = like.shape[:2]
    return like.new_empty(b, n, cdiv(min(window, n), cfg["BN"]) * cfg["BN"], dtype=dtype)


def _score_args(
    q: Tensor,
    k: Tensor,
    mask_u8: Tensor | None,
    t5_rel: Tensor | None,
    lut: Tensor | None,
    bias: Tensor | None,
    seed: Tensor | None,
    windows: Tensor | None,
    g: int,
    *,
    scale: float,
    t5_scale: float,
    t5_max_distance: int,
    bias_scale: float,
    window: int,
    causal: bool,
    laplace: bool,
    dropout_p: float,
) -> dict:
    """The launch arguments ``_quad_weights_kernel`` and ``_quad_dscores_kernel`` share: what the scores, their masks
    and the dropout draw read, the scalars and the flags (each launch adds its own outputs and blocks)."""
    b, n, s = q.shape
    dummy = q.new_empty(0)
    bias_strides = _bias_strides(bias, b, n)
    return dict(
        q_ptr=q,
        k_ptr=k,
        mask_ptr=mask_u8 if mask_u8 is not None else dummy,
        t5_ptr=t5_rel if t5_rel is not None else dummy,
        lut_ptr=lut if lut is not None else dummy,
        bias_ptr=bias if bias is not None else dummy,
        seed_ptr=seed if seed is not None else dummy,
        win_ptr=windows if windows is not None else dummy,
        N=n,
        W=window,
        G=g,
        S=s,
        stride_qb=q.stride(0),
        stride_qn=q.stride(1),
        stride_kb=k.stride(0),
        stride_kn=k.stride(1),
        stride_mb=mask_u8.stride(0) if mask_u8 is not None else 0,
        stride_bb=bias_strides[0],
        stride_bm=bias_strides[1],
        stride_bn=bias_strides[2],
        scale=scale,
        t5_scale=t5_scale,
        max_dist=t5_max_distance,
        bias_scale=bias_scale,
        dropout_p=dropout_p,
        CAUSAL=causal,
        LAPLACE=laplace,
        VARLEN=windows is not None,
        HAS_MASK=mask_u8 is not None,
        HAS_T5=t5_rel is not None,
        HAS_BIAS=bias is not None,
        DROPOUT=dropout_p > 0,
        DOT_PREC=dot_precision(q.dtype),
        enable_fp_fusion=FP_FUSION,
    )


def short_window_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate: Tensor | None,
    mask_u8: Tensor | None,
    t5_rel: Tensor | None,
    lut: Tensor | None,
    bias: Tensor | None,
    seed: Tensor | None,
    *,
    scale: float,
    t5_scale: float,
    t5_max_distance: int,
    bias_scale: float,
    window: int,
    causal: bool,
    laplace: bool,
    dropout_p: float,
    store_pre: bool,
    lin_q: Tensor | None,
    state: Tensor | None,
    windows: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`.kernels.quad_attn_fwd` for windows of at most :data:`.kernels.SHORT_WINDOW` tokens, which prepares its
    arguments (unit feature strides, the uint8 mask, the bucket table, offsets checked) and calls this."""
    b, n, s = q.shape
    e = v.shape[-1]
    w = window
    g = windows.shape[0] if windows is not None else cdiv(n, w)
    dummy = q.new_empty(0)
    arch = device_arch(q.device)
    cw = short_config("weights", w, s, e, q.dtype, arch)
    co = short_config("out", w, s, e, q.dtype, arch)
    weights = _tile_store(q, w, cw, v.dtype)
    check_row_offsets(weights=weights)
    scalars = dict(
        scale=scale,
        t5_scale=t5_scale,
        t5_max_distance=t5_max_distance,
        bias_scale=bias_scale,
        window=window,
        causal=causal,
        laplace=laplace,
        dropout_p=dropout_p,
    )
    scores = _score_args(q, k, mask_u8, t5_rel, lut, bias, seed, windows, g, **scalars)
    _quad_weights_kernel[(g * cdiv(w, cw["BM"]), weights.shape[-1] // cw["BN"], b)](
        a_ptr=weights, stride_ab=weights.stride(0), stride_an=weights.stride(1), **scores, **cw
    )
    out = new_output(v, v.shape)
    o_pre = new_output(v, v.shape) if store_pre else None
    lin_strides = lin_q.stride()[:2] if lin_q is not None else (0, 0)
    state_strides = state.stride()[:3] if state is not None else (0, 0, 0)
    _quad_out_kernel[(cdiv(e, co["BE"]), g * cdiv(w, co["BM"]), b)](
        a_ptr=weights,
        v_ptr=v,
        gate_ptr=gate if gate is not None else dummy,
        o_ptr=out,
        opre_ptr=o_pre if o_pre is not None else dummy,
        lq_ptr=lin_q if lin_q is not None else dummy,
        p_ptr=state if state is not None else dummy,
        win_ptr=windows if windows is not None else dummy,
        N=n,
        W=w,
        G=g,
        S=s,
        E=e,
        stride_ab=weights.stride(0),
        stride_an=weights.stride(1),
        stride_vb=v.stride(0),
        stride_vn=v.stride(1),
        stride_gb=gate.stride(0) if gate is not None else 0,
        stride_gn=gate.stride(1) if gate is not None else 0,
        stride_ob=out.stride(0),
        stride_on=out.stride(1),
        stride_lqb=lin_strides[0],
        stride_lqn=lin_strides[1],
        stride_pb=state_strides[0],
        stride_pg=state_strides[1],
        stride_ps=state_strides[2],
        CAUSAL=causal,
        VARLEN=windows is not None,
        HAS_LIN=state is not None,
        HAS_GATE=gate is not None,
        STORE_PRE=store_pre,
        DOT_PREC=dot_precision(q.dtype),
        enable_fp_fusion=FP_FUSION,
        **co,
    )
    return out, o_pre


def _tile_product(
    m: Tensor,
    x: Tensor,
    like: Tensor,
    scale: float,
    columns: bool,
    causal: bool,
    window: int,
    windows,
    g: int,
    lin: tuple[Tensor, Tensor, Tensor | None] | None = None,
) -> Tensor:
    """``_quad_tile_product_kernel`` over the stored tiles ``m``: (B, N, D), the gradient of ``like``. ``lin``:
    (lin_k (B, N, S), the state gradients (B, G, S, D), the uint8 key mask or None): FLASH's ``lin_k dP`` added
    (columns only)."""
    b, n, d = x.shape
    masked_lin = lin is not None and lin[2] is not None
    cfg = short_config("product", window, d, d, x.dtype, device_arch(x.device), masked_lin=masked_lin)
    y = new_output(like, like.shape)
    grid = (cdiv(d, cfg["BD"]), g * cdiv(window, cfg["BN"] if columns else cfg["BM"]), b)
    dummy = x.new_empty(0)
    lin_k, d_state, mask = lin if lin is not None else (dummy, dummy, None)
    s = lin_k.shape[-1] if lin is not None else 1
    if lin is not None:
        if not columns or d_state.shape[-2:] != (s, d) or d_state.stride(-1) != 1 or lin_k.stride(-1) != 1:
            raise ValueError(
                f"the linear half's dv needs column tiles, lin_k with unit last stride and a (B, G, {s}, {d}) state "
                f"gradient with unit last stride: got lin_k {tuple(lin_k.shape)} strides {lin_k.stride()}, state "
                f"{tuple(d_state.shape)} strides {d_state.stride()}"
            )
        check_row_offsets(lin_k=lin_k)
    _quad_tile_product_kernel[grid](
        m_ptr=m,
        x_ptr=x,
        y_ptr=y,
        win_ptr=windows if windows is not None else dummy,
        lin_ptr=lin_k,
        st_ptr=d_state,
        mask_ptr=mask if mask is not None else dummy,
        N=n,
        W=window,
        G=g,
        D=d,
        S=s,
        stride_mb=m.stride(0),
        stride_mn=m.stride(1),
        stride_xb=x.stride(0),
        stride_xn=x.stride(1),
        stride_yb=y.stride(0),
        stride_yn=y.stride(1),
        stride_lb=lin_k.stride(0) if lin is not None else 0,
        stride_ln=lin_k.stride(1) if lin is not None else 0,
        stride_sb=d_state.stride(0) if lin is not None else 0,
        stride_sg=d_state.stride(1) if lin is not None else 0,
        stride_ss=d_state.stride(2) if lin is not None else 0,
        stride_kb=mask.stride(0) if mask is not None else 0,
        scale=scale,
        COLUMNS=columns,
        CAUSAL=causal,
        VARLEN=windows is not None,
        HAS_LIN=lin is not None,
        HAS_MASK=mask is not None,
        DOT_PREC=dot_precision(x.dtype),
        enable_fp_fusion=FP_FUSION,
        **cfg,
    )
    return y


def short_window_bwd(
    dy: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask_u8: Tensor | None,
    t5_weight: Tensor | None,
    t5_rel: Tensor | None,
    lut: Tensor | None,
    bias: Tensor | None,
    seed: Tensor | None,
    *,
    scale: float,
    t5_scale: float,
    t5_max_distance: int,
    bias_scale: float,
    window: int,
    causal: bool,
    laplace: bool,
    dropout_p: float,
    need_dt5: bool,
    need_dbias: bool,
    windows: Tensor | None,
    lin: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """:func:`.kernels.quad_attn_bwd` for windows of at most :data:`.kernels.SHORT_WINDOW` tokens (which prepares
    its arguments and calls this): the weights and score gradients of every visited tile computed once and stored,
    then dv = Aᵀ dy, dq = scale ds k and dk = scale dsᵀ q over the stored tiles. ``lin``: (lin_k, state gradients)
    of FLASH's linear half, whose ``lin_k dP`` dv takes in the same pass (keys the mask drops adding nothing)."""
    b, n, s = q.shape
    e = v.shape[-1]
    w = window
    g = windows.shape[0] if windows is not None else cdiv(n, w)
    cfg = short_config("dscores", w, s, e, q.dtype, device_arch(q.device), bias=bias is not None)
    weights, dscores = _tile_store(q, w, cfg, v.dtype), _tile_store(q, w, cfg, q.dtype)
    check_row_offsets(weights=weights, dbias=torch.empty(b, n, n, device="meta") if need_dbias else None)
    grid = (g * cdiv(w, cfg["BM"]), weights.shape[-1] // cfg["BN"], b)
    nb = next_power_of_2(t5_weight.numel()) if t5_weight is not None else 1
    # programs that visit no tile leave their partial rows at zero
    dt5_part = q.new_zeros(b * grid[0] * grid[1], nb, dtype=torch.float32) if need_dt5 else None
    dbias = q.new_zeros(b, n, n, dtype=torch.float32) if need_dbias else None
    scalars = dict(
        scale=scale,
        t5_scale=t5_scale,
        t5_max_distance=t5_max_distance,
        bias_scale=bias_scale,
        window=window,
        causal=causal,
        laplace=laplace,
        dropout_p=dropout_p,
    )
    dummy = q.new_empty(0)
    _quad_dscores_kernel[grid](
        v_ptr=v,
        dy_ptr=dy,
        a_ptr=weights,
        ds_ptr=dscores,
        dt5_ptr=dt5_part if dt5_part is not None else dummy,
        dbias_ptr=dbias if dbias is not None else dummy,
        E=e,
        stride_vb=v.stride(0),
        stride_vn=v.stride(1),
        stride_dyb=dy.stride(0),
        stride_dyn=dy.stride(1),
        stride_ab=weights.stride(0),
        stride_an=weights.stride(1),
        DT5=need_dt5,
        DBIAS=need_dbias,
        NB=nb,
        **_score_args(q, k, mask_u8, t5_rel, lut, bias, seed, windows, g, **scalars),
        **cfg,
    )
    tiles = dict(causal=causal, window=w, windows=windows, g=g)
    dv = _tile_product(weights, dy, v, 1.0, columns=True, **tiles, lin=(*lin, mask_u8) if lin is not None else None)
    dq = _tile_product(dscores, k, q, scale, columns=False, **tiles)
    dk = _tile_product(dscores, q, k, scale, columns=True, **tiles)
    dt5 = dt5_part.sum(0)[: t5_weight.numel()] if dt5_part is not None else None
    return dq, dk, dv, dt5, dbias
