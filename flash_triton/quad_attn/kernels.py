"""Gated relu²/laplace quadratic attention over a block-diagonal window: Triton kernels and typed launchers.

Scores, per window of W tokens (W = n for GAU, the group size for FLASH), i = query, j = key::

    s[i, j] = scale * q_i . k_j + t5_scale * t5[bucket(j - i)] + bias_scale * bias[i, j]
    A[i, j] = act(s) * dropout_keep[i, j] / (1 - p), zero where the key is masked, padded or (causal) j > i
    o_i = Σ_j A[i, j] v_j;   out_i = gate_i * o_i

No softmax, so no running statistics: the output is a plain sum over key tiles. Key tiles outside the window or
above the causal diagonal are never visited. These are the streaming kernels, for windows longer than
``SHORT_WINDOW``: the backward recomputes the scores tile by tile and nothing of size W x W is stored. Shorter
windows (FLASH's groups) go to :mod:`.short_window`, which stores each tile's weights and score gradients once.
Dropout uses Philox keyed by a seed tensor on (row, column-in-window), so the backward regenerates the forward's
mask. T5 buckets come from a (2 * max_distance + 1) lookup table that the reference bucket function fills on the
tensors' device, so kernel and reference agree on every boundary.
"""

import functools

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
    last_dim_contiguous,
    new_output,
    next_power_of_2,
    row_mask_u8,
    window_bounds,
)
from ..reference.t5_bias import t5_relative_position_bucket

# windows of at most this many tokens (FLASH's groups, GAU on short sequences) take the forward of
# :mod:`.short_window`: the weights computed once and stored, not recomputed for every value block
SHORT_WINDOW = 256

# laplace(s) = 0.5 * (1 + erf((s - mu) * c)), mu = sqrt(1/2), c = 1 / (sigma * sqrt 2) = sqrt(2 pi);
# d/ds = sqrt(2) * exp(-((s - mu) * c)^2)
_MU = tl.constexpr(0.7071067811865476)
_C = tl.constexpr(2.5066282746310002)
_SQRT2 = tl.constexpr(1.4142135623730951)

# not specialised: lengths and counts (they vary per call). The feature widths S and E are specialised: a width that
# is a multiple of 16 lets triton prove the feature masks 16-aligned, so half-precision operands load as 16-byte
# vectors and software-pipeline (cp.async); at the benchmark shape that also frees 17-51 registers per kernel
_NOSPEC = ["N", "W", "G"]


@triton.jit
def _act(s, LAPLACE: tl.constexpr):
    if LAPLACE:
        return 0.5 * (1.0 + tl.math.erf((s - _MU) * _C))
    else:
        r = tl.maximum(s, 0.0)
        return r * r


@triton.jit
def _act_grad(s, LAPLACE: tl.constexpr):
    if LAPLACE:
        z = (s - _MU) * _C
        return _SQRT2 * tl.exp(-z * z)
    else:
        return 2.0 * tl.maximum(s, 0.0)


@triton.jit
def _pair(rows, cols, TRANSPOSED: tl.constexpr):
    """``rows`` as a column and ``cols`` as a row of a (rows, cols) tile, or, TRANSPOSED, of its (cols, rows)
    transpose: two operands that broadcast to the tile (query and key positions of each score, say)."""
    if TRANSPOSED:
        return rows[None, :], cols[:, None]
    else:
        return rows[:, None], cols[None, :]


@triton.jit
def _scores(
    q_base,  # q of this batch row: (N, S), feature stride 1
    k_base,  # k of this batch row: (N, S), feature stride 1
    stride_qn,
    stride_kn,
    o_m,  # (BM,) query positions
    o_n,  # (BN,) key positions
    m_m,  # (BM,) valid queries
    m_n,  # (BN,) valid keys
    S,
    scale,
    t5_ptr,  # (2 * max_dist + 1,) float32 t5_scale * T5[bucket(r)] of each clamped relative position r
    max_dist,
    t5_far,  # float32 T5 term of every score of the tile (T5 == 2)
    bias_base,  # caller's bias of this batch row, addressed (i, j) through its strides
    stride_bm,
    stride_bn,
    bias_scale,
    T5: tl.constexpr,  # the T5 term: 0 (or False) none, 1 (or True) gathered per score from t5_ptr, 2 t5_far
    HAS_BIAS: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
    S_BLOCKS: tl.constexpr,
    DOT_PREC: tl.constexpr,
    TRANSPOSED: tl.constexpr = False,
):
    """(BM, BN) float32 scores s[i, j] (before the activation); TRANSPOSED: (BN, BM), sᵀ[j, i] = s[i, j], as k qᵀ
    (the key tile the product's M dimension)."""
    acc = tl.zeros((BN, BM) if TRANSPOSED else (BM, BN), dtype=tl.float32)
    for i_s in tl.static_range(S_BLOCKS):
        o_s = i_s * BS + tl.arange(0, BS)
        m_s = o_s < S
        if TRANSPOSED:  # k (BN, BS) first, then q
            b_k = tl.load(k_base + o_n[:, None] * stride_kn + o_s[None, :], mask=m_n[:, None] & m_s[None, :], other=0.0)
        b_q = tl.load(q_base + o_m[:, None] * stride_qn + o_s[None, :], mask=m_m[:, None] & m_s[None, :], other=0.0)
        if TRANSPOSED:
            acc = dot(b_k, tl.trans(b_q), acc, DOT_PREC)
        else:
            p_kt = k_base + o_s[:, None] + o_n[None, :] * stride_kn
            acc = dot(b_q, tl.load(p_kt, mask=m_s[:, None] & m_n[None, :], other=0.0), acc, DOT_PREC)
    s = acc * scale
    i, j = _pair(o_m, o_n, TRANSPOSED)
    if T5 == 1:
        rel = tl.minimum(tl.maximum(j - i, -max_dist), max_dist) + max_dist
        s += tl.load(t5_ptr + rel)  # one gather: the bucket and the scale are folded into the table (t5_relative)
    if T5 == 2:
        s += t5_far
    if HAS_BIAS:
        m_i, m_j = _pair(m_m, m_n, TRANSPOSED)
        p_bias = bias_base + i * stride_bm + j * stride_bn
        s += tl.load(p_bias, mask=m_i & m_j, other=0.0).to(tl.float32) * bias_scale
    return s


@triton.jit
def _keep(
    o_m,
    o_n,
    m_m,
    m_n,
    mask_base,  # key mask of this batch row: (N,) uint8, 1 = attend
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    TRANSPOSED: tl.constexpr = False,
):
    """(BM, BN) bool: the (query, key) pairs that contribute (in range, unmasked, not in the future); TRANSPOSED:
    (BN, BM), as (key, query)."""
    m_i, m_j = _pair(m_m, m_n, TRANSPOSED)
    # the tile's row operand first: in the other order sm_90's transposed dv took 5% more instructions in its hot loop
    keep = m_j & m_i if TRANSPOSED else m_i & m_j
    if CAUSAL:
        i, j = _pair(o_m, o_n, TRANSPOSED)
        keep = keep & (j <= i)
    if HAS_MASK:
        km = tl.load(mask_base + o_n, mask=m_n, other=0)
        _, k_j = _pair(m_m, km != 0, TRANSPOSED)
        keep = keep & k_j
    return keep


@triton.jit
def _dropout_scale(seed, row0, o_m, o_n, win_start, p, TRANSPOSED: tl.constexpr = False):
    """float32 tile of _scores' shape: 1 / (1 - p) where Philox(seed; column-in-window, global row) keeps the entry,
    else 0 (the same draw for each (row, column) in either orientation)."""
    i, j = _pair(row0 + o_m, o_n - win_start, TRANSPOSED)
    c1, c0 = tl.broadcast(i, j)
    c0 = c0.to(tl.uint32)
    c1 = c1.to(tl.uint32)
    zero = tl.zeros_like(c0)
    r, _, _, _ = tl.philox(seed, c0, c1, zero, zero)
    u = tl.uint_to_uniform_float(r)
    return tl.where(u >= p, 1.0 / (1.0 - p), 0.0)


@triton.jit
def t5_band(seg: tl.constexpr, HAS_T5: tl.constexpr, t0, BT: tl.constexpr, lo, hi, BO: tl.constexpr, max_dist):
    """[start, end) of segment ``seg`` of a program's loop over the BO-wide tiles starting at lo, lo + BO, ... below
    hi, the program's own tile being [t0, t0 + BT) on the other axis (queries or keys alike: only |j - i| matters).
    Segment 0: the tiles each of whose positions is at least max_dist before every position of the program's tile;
    1: the near band; 2: the tiles at least max_dist after. Outside the band every relative position clamps to one
    end of the T5 table, so the T5 term of a tile there is one scalar (and its gradient one sum), not a gather per
    score. Without T5 the whole range is segment 1. The bounds stay on the loop's own tile grid."""
    start = lo
    end = hi
    if HAS_T5:
        near = tl.minimum(lo + tl.maximum(t0 - max_dist + 1 - lo, 0) // BO * BO, hi)
        far = tl.maximum(tl.minimum(lo + tl.cdiv(tl.maximum(t0 + BT - 1 + max_dist - lo, 0), BO) * BO, hi), near)
        if seg == 0:
            end = near
        if seg == 1:
            start = near
            end = far
        if seg == 2:
            start = far
    return start, end


@triton.jit(do_not_specialize=_NOSPEC)
def _quad_attn_fwd_kernel(
    q_ptr,  # (B, N, S)
    k_ptr,  # (B, N, S)
    v_ptr,  # (B, N, E)
    gate_ptr,  # (B, N, E) or dummy
    o_ptr,  # (B, N, E) gated output
    opre_ptr,  # (B, N, E) output before the gate (saved for dgate) or dummy
    mask_ptr,  # (B, N) uint8 or dummy
    t5_ptr,  # (num_buckets,) T5 table or dummy. Not the folded per-position table of the other kernels: its one
    # gather was software-pipelined here and spilled the 16-warp sm_90 tiles inside the loop under triton 3.9
    lut_ptr,  # (2 * max_dist + 1,) int32 bucket of each clamped relative position, or dummy
    bias_ptr,  # (B, N, N) through strides (0 where broadcast) or dummy
    seed_ptr,  # (1,) int64 dropout seed or dummy
    lq_ptr,  # (B, N, S) FLASH's linear-attention queries, or dummy
    p_ptr,  # (B, G, S, E) state each window's queries read (FLASH's prefix; read in lin_q's precision), or dummy
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
    stride_gb,
    stride_gn,
    stride_ob,
    stride_on,
    stride_mb,
    stride_bb,
    stride_bm,
    stride_bn,
    stride_lqb,
    stride_lqn,
    stride_pb,
    stride_pg,
    stride_ps,
    scale,
    t5_scale,
    max_dist,
    bias_scale,
    dropout_p,
    CAUSAL: tl.constexpr,
    LAPLACE: tl.constexpr,
    VARLEN: tl.constexpr,
    HAS_LIN: tl.constexpr,
    HAS_GATE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_T5: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DROPOUT: tl.constexpr,
    STORE_PRE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
    S_BLOCKS: tl.constexpr,
    BE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    T5_BAND: tl.constexpr = True,  # split the loop at the T5 band (t5_band); launch_config says where not
):
    i_mt, i_e, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tiles = tl.cdiv(W, BM)
    i_w = i_mt // tiles
    win_start, win_end = window_bounds(i_w, W, N, win_ptr, VARLEN)
    q_start = win_start + (i_mt % tiles) * BM
    o_m = q_start + tl.arange(0, BM)
    m_m = o_m < win_end
    o_e = i_e * BE + tl.arange(0, BE)
    m_e = o_e < E
    i_b64 = i_b.to(tl.int64)
    q_base = q_ptr + i_b64 * stride_qb
    k_base = k_ptr + i_b64 * stride_kb
    v_base = v_ptr + i_b64 * stride_vb
    bias_base = bias_ptr + i_b64 * stride_bb
    mask_base = mask_ptr + i_b64 * stride_mb
    if DROPOUT:
        seed = tl.load(seed_ptr)
    hi = win_end
    if CAUSAL:
        hi = tl.minimum(win_end, q_start + BM)
    acc = tl.zeros((BM, BE), dtype=tl.float32)
    # key tiles before the band, in it, after it (t5_band); causal, none after
    BAND: tl.constexpr = HAS_T5 and T5_BAND
    for seg in tl.static_range(0 if BAND else 1, (2 if CAUSAL else 3) if BAND else 2):
        k_lo, k_hi = t5_band(seg, BAND, q_start, BM, win_start, hi, BN, max_dist)
        t5_far = 0.0  # outside the band, the table's end: keys before the queries index 0, after 2 max_dist
        if BAND and seg != 1:
            t5_far = tl.load(t5_ptr + tl.load(lut_ptr + (0 if seg == 0 else 2 * max_dist))).to(tl.float32) * t5_scale
        for k0 in range(k_lo, k_hi, BN):
            o_n = k0 + tl.arange(0, BN)
            m_n = o_n < hi
            s = _scores(
                q_base,
                k_base,
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
                t5_far,
                bias_base,
                stride_bm,
                stride_bn,
                bias_scale,
                0 if seg == 1 else 2,  # the near band's T5 term below
                HAS_BIAS,
                BM,
                BN,
                BS,
                S_BLOCKS,
                DOT_PREC,
            )
            if HAS_T5 and seg == 1:  # the bucket, then its weight: two dependent gathers (see the t5_ptr argument)
                rel = tl.minimum(tl.maximum(o_n[None, :] - o_m[:, None], -max_dist), max_dist) + max_dist
                s += tl.load(t5_ptr + tl.load(lut_ptr + rel)).to(tl.float32) * t5_scale
            a = _act(s, LAPLACE)
            if DROPOUT:
                a = a * _dropout_scale(seed, i_b * G * W, o_m, o_n, win_start, dropout_p)
            a = tl.where(_keep(o_m, o_n, m_m, m_n, mask_base, CAUSAL, HAS_MASK), a, 0.0)
            b_v = tl.load(v_base + o_n[:, None] * stride_vn + o_e[None, :], mask=m_n[:, None] & m_e[None, :], other=0.0)
            acc = dot(a.to(b_v.dtype), b_v, acc, DOT_PREC)
    if HAS_LIN:
        # FLASH's linear half in the same output tile: acc += lin_q P[window] (the window's state)
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


@triton.jit
def _dscores(
    q_base,
    k_base,
    v_base,
    dy_base,  # upstream gradient of o (before the gate) of this batch row: (N, E)
    mask_base,
    stride_qn,
    stride_kn,
    stride_vn,
    stride_dyn,
    o_m,
    o_n,
    m_m,
    m_n,
    win_start,
    row0,
    seed,
    S,
    E,
    scale,
    t5_ptr,
    max_dist,
    t5_far,
    bias_base,
    stride_bm,
    stride_bn,
    bias_scale,
    dropout_p,
    CAUSAL: tl.constexpr,
    LAPLACE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    T5: tl.constexpr,  # the scores' T5 term, as in _scores
    HAS_BIAS: tl.constexpr,
    DROPOUT: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
    S_BLOCKS: tl.constexpr,
    BE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """(BM, BN) float32 gradient of the loss with respect to the scores s[i, j]."""
    # dA = dy vᵀ first, so that the scores are not live across this loop (register pressure)
    da = tl.zeros((BM, BN), dtype=tl.float32)
    for e0 in range(0, E, BE):
        o_e = e0 + tl.arange(0, BE)
        m_e = o_e < E
        b_dy = tl.load(dy_base + o_m[:, None] * stride_dyn + o_e[None, :], mask=m_m[:, None] & m_e[None, :], other=0.0)
        b_vt = tl.load(v_base + o_e[:, None] + o_n[None, :] * stride_vn, mask=m_e[:, None] & m_n[None, :], other=0.0)
        da = dot(b_dy, b_vt, da, DOT_PREC)
    s = _scores(
        q_base,
        k_base,
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
        t5_far,
        bias_base,
        stride_bm,
        stride_bn,
        bias_scale,
        T5,
        HAS_BIAS,
        BM,
        BN,
        BS,
        S_BLOCKS,
        DOT_PREC,
    )
    ds = da * _act_grad(s, LAPLACE)
    if DROPOUT:
        ds = ds * _dropout_scale(seed, row0, o_m, o_n, win_start, dropout_p)
    return tl.where(_keep(o_m, o_n, m_m, m_n, mask_base, CAUSAL, HAS_MASK), ds, 0.0)


@triton.jit
def t5_bucket_sums(acc_t5, ds, o_m, o_n, lut_ptr, max_dist, NB: tl.constexpr):
    """``acc_t5`` (NB,) plus the sums of the (BM, BN) score gradients ``ds`` over each T5 bucket of the tile."""
    rel = tl.minimum(tl.maximum(o_n[None, :] - o_m[:, None], -max_dist), max_dist) + max_dist
    return bucket_sums(acc_t5, ds, tl.load(lut_ptr + rel), NB)


@triton.jit
def bucket_sums(acc_t5, ds, bucket, NB: tl.constexpr):
    """``acc_t5`` (NB,) plus the sums of the score gradients ``ds`` (a tile, either orientation) over each T5 bucket
    (``bucket``, the same shape)."""
    o_nb = tl.arange(0, NB)
    # a tile spans few buckets except near the diagonal: loop over its own range only
    for nb in range(tl.min(tl.min(bucket, axis=1), axis=0), tl.max(tl.max(bucket, axis=1), axis=0) + 1):
        part = tl.sum(tl.sum(tl.where(bucket == nb, ds, 0.0), axis=1), axis=0)
        acc_t5 += tl.where(o_nb == nb, part, 0.0)
    return acc_t5


@triton.jit
def store_rows(base, x, row0, row_end, stride_n, o_f, m_f, BR: tl.constexpr):
    """Stores the float32 (BR, BF) tile ``x``, rounded to ``base``'s dtype, at rows ``row0 + arange(BR)`` (those
    before ``row_end``) and columns ``o_f`` (``m_f``) of ``base``, addressing each row from the tile's first one. The
    transposed dk kernel's final store took the per-row positions its loops had used (the key rows of its masks and
    relative positions): kept live from the prologue to the end, three of them spilled 24 B on sm_90's dk with dq
    added (triton 3.6); from ``arange``, nothing spills there. ``_quad_attn_bwd_dqk_kernel`` keeps its own store (see
    there)."""
    r = tl.arange(0, BR)
    p = base + row0.to(tl.int64) * stride_n + r[:, None] * stride_n + o_f[None, :]
    tl.store(p, x.to(base.dtype.element_ty), mask=(r < row_end - row0)[:, None] & m_f[None, :])


@triton.jit(do_not_specialize=_NOSPEC)
def _quad_attn_bwd_dv_kernel(
    q_ptr,  # (B, N, S)
    k_ptr,  # (B, N, S)
    dy_ptr,  # (B, N, E) gradient of o before the gate
    dv_ptr,  # (B, N, E)
    mask_ptr,
    t5_ptr,  # (2 * max_dist + 1,) float32 T5 term per relative position (t5_relative) or dummy
    lut_ptr,  # (2 * max_dist + 1,) int32 buckets of the T5 gradient (key tiles with DT5); unused by dv and dq
    bias_ptr,
    seed_ptr,
    win_ptr,
    N,
    W,
    G,
    S,
    E,
    stride_qb,
    stride_qn,
    stride_kb,
    stride_kn,
    stride_dyb,
    stride_dyn,
    stride_dvb,
    stride_dvn,
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
    BE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    T5_BAND: tl.constexpr = True,  # split the loop at the T5 band (t5_band); launch_config says where not
    TRANSPOSED: tl.constexpr = False,  # the weights computed as (key, query) tiles, Aᵀ = act(k qᵀ)
):
    """dv[j] = Σ_i A[i, j] dy[i], one (key tile, value block) per program. TRANSPOSED computes Aᵀ directly (k qᵀ):
    both products then have the key tile as their M dimension, so on sm_90 a 128-row key tile runs both on wgmma,
    each warpgroup its own 64 keys (with A, each warpgroup needed the whole Aᵀ of the query step as its register
    operand, and computed it)."""
    i_nt, i_e, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tiles = tl.cdiv(W, BN)
    win_start, win_end = window_bounds(i_nt // tiles, W, N, win_ptr, VARLEN)
    k_start = win_start + (i_nt % tiles) * BN
    o_n = k_start + tl.arange(0, BN)
    m_n = o_n < win_end
    o_e = i_e * BE + tl.arange(0, BE)
    m_e = o_e < E
    i_b64 = i_b.to(tl.int64)
    q_base = q_ptr + i_b64 * stride_qb
    k_base = k_ptr + i_b64 * stride_kb
    dy_base = dy_ptr + i_b64 * stride_dyb
    bias_base = bias_ptr + i_b64 * stride_bb
    mask_base = mask_ptr + i_b64 * stride_mb
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    lo = win_start
    if CAUSAL:
        lo = k_start
    acc = tl.zeros((BN, BE), dtype=tl.float32)
    # query tiles before the band, in it, after it (t5_band); causal, none before
    BAND: tl.constexpr = HAS_T5 and T5_BAND
    for seg in tl.static_range((1 if CAUSAL else 0) if BAND else 1, 3 if BAND else 2):
        m_lo, m_hi = t5_band(seg, BAND, k_start, BN, lo, win_end, BM, max_dist)
        t5_far = 0.0  # outside the band, the table's end: queries before the keys index 2 max_dist, after 0
        if BAND and seg != 1:
            t5_far = tl.load(t5_ptr + (2 * max_dist if seg == 0 else 0))
        for m0 in range(m_lo, m_hi, BM):
            o_m = m0 + tl.arange(0, BM)
            m_m = o_m < win_end
            # A (BM, BN), or TRANSPOSED Aᵀ (BN, BM)
            # fmt: off
            s = _scores(
                q_base, k_base, stride_qn, stride_kn, o_m, o_n, m_m, m_n, S, scale, t5_ptr, max_dist, t5_far,
                bias_base, stride_bm, stride_bn, bias_scale, HAS_T5 if seg == 1 else 2, HAS_BIAS, BM, BN, BS,
                S_BLOCKS, DOT_PREC, TRANSPOSED,
            )  # fmt: on
            a = _act(s, LAPLACE)
            if DROPOUT:
                a = a * _dropout_scale(seed, i_b * G * W, o_m, o_n, win_start, dropout_p, TRANSPOSED)
            a = tl.where(_keep(o_m, o_n, m_m, m_n, mask_base, CAUSAL, HAS_MASK, TRANSPOSED), a, 0.0)
            b_dy = tl.load(
                dy_base + o_m[:, None] * stride_dyn + o_e[None, :], mask=m_m[:, None] & m_e[None, :], other=0.0
            )
            if TRANSPOSED:
                acc = dot(a.to(b_dy.dtype), b_dy, acc, DOT_PREC)
            else:
                acc = dot(tl.trans(a).to(b_dy.dtype), b_dy, acc, DOT_PREC)
    p_dv = dv_ptr + i_b64 * stride_dvb + o_n[:, None] * stride_dvn + o_e[None, :]
    tl.store(p_dv, acc.to(dv_ptr.dtype.element_ty), mask=m_n[:, None] & m_e[None, :])


@triton.jit(do_not_specialize=_NOSPEC)
def _quad_attn_bwd_dqk_kernel(
    q_ptr,  # (B, N, S)
    k_ptr,  # (B, N, S)
    v_ptr,  # (B, N, E)
    dy_ptr,  # (B, N, E)
    dx_ptr,  # (B, N, S): dq when KEY_TILES is False, dk when True
    dqa_ptr,  # (B, N, S) float32 zeros that dq is added into atomically (DQ_ATOMIC), or dummy
    dt5_ptr,  # (num programs, NB) float32 partial sums of the T5 table gradient, or dummy
    dbias_ptr,  # (B, N, N) float32 score gradient times bias_scale, or dummy
    mask_ptr,
    t5_ptr,  # (2 * max_dist + 1,) float32 T5 term per relative position (t5_relative) or dummy
    lut_ptr,  # (2 * max_dist + 1,) int32 buckets of the T5 gradient (key tiles with DT5); unused by dv and dq
    bias_ptr,
    seed_ptr,
    win_ptr,
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
    stride_dxb,
    stride_dxn,
    stride_mb,
    stride_bb,
    stride_bm,
    stride_bn,
    scale,
    t5_scale,
    max_dist,
    bias_scale,
    dropout_p,
    KEY_TILES: tl.constexpr,
    DQ_ATOMIC: tl.constexpr,
    CAUSAL: tl.constexpr,
    LAPLACE: tl.constexpr,
    VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_T5: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DT5: tl.constexpr,
    DBIAS: tl.constexpr,
    DROPOUT: tl.constexpr,
    NB: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
    S_BLOCKS: tl.constexpr,
    BE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    T5_BAND: tl.constexpr = True,  # split the loop at the T5 band (t5_band); launch_config says where not
):
    """dq[i] = scale Σ_j ds[i, j] k_j per query tile (KEY_TILES=False), or dk[j] = scale Σ_i ds[i, j] q_i per key
    tile (KEY_TILES=True; also the T5 partials). One feature block each. With DQ_ATOMIC (key tiles), each tile's
    score gradients also give its share of dq, added into the float32 ``dqa`` with atomics: dy vᵀ and the scores are
    computed once for dq and dk, not once each. DBIAS stores the score gradients (times bias_scale) of every tile
    the program visits."""
    i_t, i_s, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    BT: tl.constexpr = BN if KEY_TILES else BM  # this program's tile
    BO: tl.constexpr = BM if KEY_TILES else BN  # the tiles it loops over
    tiles = tl.cdiv(W, BT)
    win_start, win_end = window_bounds(i_t // tiles, W, N, win_ptr, VARLEN)
    t_start = win_start + (i_t % tiles) * BT
    o_t = t_start + tl.arange(0, BT)
    m_t = o_t < win_end
    o_f = i_s * BS + tl.arange(0, BS)
    m_f = o_f < S
    i_b64 = i_b.to(tl.int64)
    q_base = q_ptr + i_b64 * stride_qb
    k_base = k_ptr + i_b64 * stride_kb
    v_base = v_ptr + i_b64 * stride_vb
    dy_base = dy_ptr + i_b64 * stride_dyb
    bias_base = bias_ptr + i_b64 * stride_bb
    mask_base = mask_ptr + i_b64 * stride_mb
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    if KEY_TILES:
        lo = win_start
        if CAUSAL:
            lo = t_start
        hi = win_end
    else:
        lo = win_start
        hi = win_end
        if CAUSAL:
            hi = tl.minimum(win_end, t_start + BT)
    o_nb = tl.arange(0, NB)
    acc_t5 = tl.zeros((NB,), dtype=tl.float32)
    acc = tl.zeros((BT, BS), dtype=tl.float32)
    if DQ_ATOMIC:  # this key tile's k, for its share of dq: loaded once
        b_kt = tl.load(k_base + o_t[:, None] * stride_kn + o_f[None, :], mask=m_t[:, None] & m_f[None, :], other=0.0)
    sum_before, sum_after = 0.0, 0.0  # DT5: the score gradients outside the band, each side summed into one bucket
    # the tiles before the band, in it, after it (t5_band); causal, none before a key tile or after a query tile
    BAND: tl.constexpr = HAS_T5 and T5_BAND
    SEG_START: tl.constexpr = (1 if CAUSAL and KEY_TILES else 0) if BAND else 1
    SEG_END: tl.constexpr = (2 if CAUSAL and not KEY_TILES else 3) if BAND else 2
    for seg in tl.static_range(SEG_START, SEG_END):
        x_lo, x_hi = t5_band(seg, BAND, t_start, BT, lo, hi, BO, max_dist)
        # outside the band, the table's end: a key tile's queries before it are at relative position +max_dist or
        # more (index 2 max_dist), a query tile's keys before it at -max_dist or less (index 0)
        t5_far = 0.0
        if BAND and seg != 1:
            t5_far = tl.load(
                t5_ptr + ((2 * max_dist if KEY_TILES else 0) if seg == 0 else (0 if KEY_TILES else 2 * max_dist))
            )
        for x0 in range(x_lo, x_hi, BO):
            o_x = x0 + tl.arange(0, BO)
            m_x = o_x < hi
            if KEY_TILES:
                o_m, m_m, o_n, m_n = o_x, m_x, o_t, m_t
            else:
                o_m, m_m, o_n, m_n = o_t, m_t, o_x, m_x
            ds = _dscores(
                q_base,
                k_base,
                v_base,
                dy_base,
                mask_base,
                stride_qn,
                stride_kn,
                stride_vn,
                stride_dyn,
                o_m,
                o_n,
                m_m,
                m_n,
                win_start,
                i_b * G * W,
                seed,
                S,
                E,
                scale,
                t5_ptr,
                max_dist,
                t5_far,
                bias_base,
                stride_bm,
                stride_bn,
                bias_scale,
                dropout_p,
                CAUSAL,
                LAPLACE,
                HAS_MASK,
                HAS_T5 if seg == 1 else 2,
                HAS_BIAS,
                DROPOUT,
                BM,
                BN,
                BS,
                S_BLOCKS,
                BE,
                DOT_PREC,
            )
            if KEY_TILES:
                b_q = tl.load(
                    q_base + o_m[:, None] * stride_qn + o_f[None, :], mask=m_m[:, None] & m_f[None, :], other=0.0
                )
                acc = dot(tl.trans(ds).to(b_q.dtype), b_q, acc, DOT_PREC)
                if DQ_ATOMIC:
                    dq_part = dot(ds.to(b_kt.dtype), b_kt, tl.zeros((BO, BS), dtype=tl.float32), DOT_PREC)
                    p_dqa = dqa_ptr + i_b64 * N * S + o_m[:, None] * S + o_f[None, :]
                    tl.atomic_add(p_dqa, dq_part * scale, mask=m_m[:, None] & m_f[None, :], sem="relaxed")
                if DT5:
                    if i_s == 0:
                        if seg == 1:
                            acc_t5 = t5_bucket_sums(acc_t5, ds, o_m, o_n, lut_ptr, max_dist, NB)
                        if seg == 0:
                            sum_before += tl.sum(tl.sum(ds, axis=1), axis=0)
                        if seg == 2:
                            sum_after += tl.sum(tl.sum(ds, axis=1), axis=0)
            else:
                b_k = tl.load(
                    k_base + o_n[:, None] * stride_kn + o_f[None, :], mask=m_n[:, None] & m_f[None, :], other=0.0
                )
                acc = dot(ds.to(b_k.dtype), b_k, acc, DOT_PREC)
            if DBIAS:
                if i_s == 0:
                    p_db = dbias_ptr + i_b64 * N * N + o_m[:, None] * N + o_n[None, :]
                    tl.store(p_db, ds * bias_scale, mask=m_m[:, None] & m_n[None, :])
    # the rows the loops used: store_rows removed the 8-16 B this kernel spills outside its loops over two query/key
    # blocks, but spilled 16-28 B, once inside the loop, on sm_80's dq with dropout, a caller's bias and its gradient
    # and a key mask, not causal, under triton 3.9
    p_dx = dx_ptr + i_b64 * stride_dxb + o_t[:, None] * stride_dxn + o_f[None, :]
    tl.store(p_dx, (acc * scale).to(dx_ptr.dtype.element_ty), mask=m_t[:, None] & m_f[None, :])
    if DT5:
        if i_s == 0:
            acc_t5 += tl.where(o_nb == tl.load(lut_ptr + 2 * max_dist), sum_before, 0.0)
            acc_t5 += tl.where(o_nb == tl.load(lut_ptr), sum_after, 0.0)
            pid = i_b * tl.num_programs(0) + i_t
            tl.store(dt5_ptr + pid * NB + o_nb, acc_t5 * t5_scale)


# ---------------------------------------------------------------------------------------------------------------
# the key-tile backward, transposed: keys are the rows of every tile, so each product of a key tile has the key tile
# as its M dimension (wgmma takes M in 64-row warpgroup steps) and the query step, however short, as N or K


@triton.jit
def _dk_step(
    acc,  # (BN, BS) float32 dk of the key tile so far
    acc_t5,  # (NB,) float32 per-bucket sums of the score gradients so far (SUMS == 2)
    far_sum,  # float32 sum of the score gradients so far (SUMS == 1: queries past max_dist, one bucket)
    t5_far,  # float32 T5 term of every score of the step (SUMS == 1)
    b_kt,  # (BS, BN) kᵀ of the key tile (DQ_ATOMIC)
    m0,  # first query of this step
    hi,  # end of the query range this step belongs to
    first,  # this program has the first feature block: it adds the T5 sums and stores the bias gradient
    q_base,
    k_base,
    v_base,
    dy_base,
    dqa_base,
    dbias_base,
    mask_base,
    t5_ptr,
    lut_ptr,
    bias_base,
    o_n,
    m_n,
    o_f,
    m_f,
    win_start,
    row0,
    seed,
    N,
    S,
    E,
    stride_qn,
    stride_kn,
    stride_vn,
    stride_dyn,
    stride_bm,
    stride_bn,
    scale,
    max_dist,
    bias_scale,
    dropout_p,
    DQ_ATOMIC: tl.constexpr,
    CAUSAL: tl.constexpr,
    LAPLACE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_T5: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DBIAS: tl.constexpr,
    DROPOUT: tl.constexpr,
    SUMS: tl.constexpr,  # T5 gradient: 0 none, 1 the tile's sum into far_sum (T5 term t5_far), 2 per bucket
    NB: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
    S_BLOCKS: tl.constexpr,
    BE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """One query step of :func:`_quad_attn_bwd_dk_kernel` over the transposed (key, query) tile."""
    o_m = m0 + tl.arange(0, BM)
    m_m = o_m < hi
    # dAᵀ = v dyᵀ first, so that the scores are not live across this loop (register pressure)
    da = tl.zeros((BN, BM), dtype=tl.float32)
    for e0 in range(0, E, BE):
        o_e = e0 + tl.arange(0, BE)
        m_e = o_e < E
        b_v = tl.load(v_base + o_n[:, None] * stride_vn + o_e[None, :], mask=m_n[:, None] & m_e[None, :], other=0.0)
        b_dy = tl.load(dy_base + o_m[:, None] * stride_dyn + o_e[None, :], mask=m_m[:, None] & m_e[None, :], other=0.0)
        da = dot(b_v, tl.trans(b_dy), da, DOT_PREC)
    s = _scores(
        q_base,
        k_base,
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
        t5_far,
        bias_base,
        stride_bm,
        stride_bn,
        bias_scale,
        2 if SUMS == 1 else HAS_T5,
        HAS_BIAS,
        BM,
        BN,
        BS,
        S_BLOCKS,
        DOT_PREC,
        True,  # (BN, BM): sᵀ
    )
    ds = da * _act_grad(s, LAPLACE)
    if DROPOUT:
        ds = ds * _dropout_scale(seed, row0, o_m, o_n, win_start, dropout_p, True)
    ds = tl.where(_keep(o_m, o_n, m_m, m_n, mask_base, CAUSAL, HAS_MASK, True), ds, 0.0)
    b_q = tl.load(q_base + o_m[:, None] * stride_qn + o_f[None, :], mask=m_m[:, None] & m_f[None, :], other=0.0)
    acc = dot(ds.to(b_q.dtype), b_q, acc, DOT_PREC)
    if DQ_ATOMIC:  # dqᵀ = kᵀ dsᵀ: the feature block as M
        dqt = dot(b_kt, ds.to(b_kt.dtype), tl.zeros((BS, BM), dtype=tl.float32), DOT_PREC)
        p_dqa = dqa_base + o_m[None, :] * S + o_f[:, None]
        tl.atomic_add(p_dqa, dqt * scale, mask=m_f[:, None] & m_m[None, :], sem="relaxed")
    if SUMS == 2:
        if first:
            rel = tl.minimum(tl.maximum(o_n[:, None] - o_m[None, :], -max_dist), max_dist) + max_dist
            acc_t5 = bucket_sums(acc_t5, ds, tl.load(lut_ptr + rel), NB)
    if SUMS == 1:
        far_sum += tl.sum(tl.sum(ds, axis=1), axis=0)
    if DBIAS:
        if first:
            p_db = dbias_base + o_m[None, :] * N + o_n[:, None]
            tl.store(p_db, ds * bias_scale, mask=m_n[:, None] & m_m[None, :])
    return acc, acc_t5, far_sum


@triton.jit(do_not_specialize=_NOSPEC)
def _quad_attn_bwd_dk_kernel(
    q_ptr,  # (B, N, S)
    k_ptr,  # (B, N, S)
    v_ptr,  # (B, N, E)
    dy_ptr,  # (B, N, E)
    dk_ptr,  # (B, N, S)
    dqa_ptr,  # (B, N, S) float32 zeros that dq is added into atomically (DQ_ATOMIC), or dummy
    dt5_ptr,  # (num programs, NB) float32 partial sums of the T5 table gradient, or dummy
    dbias_ptr,  # (B, N, N) float32 score gradient times bias_scale, or dummy
    mask_ptr,
    t5_ptr,  # (2 * max_dist + 1,) float32 T5 term per relative position (t5_relative) or dummy
    lut_ptr,  # (2 * max_dist + 1,) int32 buckets of the T5 gradient (DT5)
    bias_ptr,
    seed_ptr,
    win_ptr,
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
    stride_dkb,
    stride_dkn,
    stride_mb,
    stride_bb,
    stride_bm,
    stride_bn,
    scale,
    t5_scale,
    max_dist,
    bias_scale,
    dropout_p,
    DQ_ATOMIC: tl.constexpr,
    CAUSAL: tl.constexpr,
    LAPLACE: tl.constexpr,
    VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_T5: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DT5: tl.constexpr,
    DBIAS: tl.constexpr,
    DROPOUT: tl.constexpr,
    NB: tl.constexpr,
    BM: tl.constexpr,
    BM_NEAR: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
    S_BLOCKS: tl.constexpr,
    BE: tl.constexpr,
    BE_NEAR: tl.constexpr,  # the near steps' value-width step
    DOT_PREC: tl.constexpr,
):
    """dk[j] = scale Σ_i ds[i, j] q_i, one (key tile, feature block) per program, over transposed (key, query)
    tiles: dsᵀ = (v dyᵀ) ⊙ act'(k qᵀ ...), dk += dsᵀ q, every product with the key tile as its M dimension (wgmma on
    sm_90 takes M in 64-row steps; the query step is N or K). With DQ_ATOMIC, each tile's share of dq, (kᵀ dsᵀ)ᵀ, is
    added into the float32 ``dqa`` with atomics: dy vᵀ and the scores computed once for dq and dk. DBIAS: the score
    gradients (times bias_scale) of every tile stored. DT5: the program's sums of the score gradients per T5 bucket.
    Queries more than max_dist from every key of the tile see one bucket (the clamped relative position), so there
    the tile's sum is all it takes; only the queries within max_dist of the tile, in BM_NEAR-row steps, sum per
    bucket (which, in every step, spilled registers outside the loop on sm_90)."""
    i_t, i_s, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tiles = tl.cdiv(W, BN)
    win_start, win_end = window_bounds(i_t // tiles, W, N, win_ptr, VARLEN)
    k_start = win_start + (i_t % tiles) * BN
    o_n = k_start + tl.arange(0, BN)
    m_n = o_n < win_end
    o_f = i_s * BS + tl.arange(0, BS)
    m_f = o_f < S
    first = i_s == 0
    i_b64 = i_b.to(tl.int64)
    q_base = q_ptr + i_b64 * stride_qb
    k_base = k_ptr + i_b64 * stride_kb
    v_base = v_ptr + i_b64 * stride_vb
    dy_base = dy_ptr + i_b64 * stride_dyb
    dqa_base = dqa_ptr + i_b64 * N * S
    dbias_base = dbias_ptr + i_b64 * N * N
    bias_base = bias_ptr + i_b64 * stride_bb
    mask_base = mask_ptr + i_b64 * stride_mb
    row0 = i_b * G * W
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    lo = win_start
    if CAUSAL:
        lo = k_start
    acc = tl.zeros((BN, BS), dtype=tl.float32)
    acc_t5 = tl.zeros((NB,), dtype=tl.float32)
    b_kt = tl.zeros((BS, BN), dtype=k_ptr.dtype.element_ty)
    if DQ_ATOMIC:  # this key tile's kᵀ, for its share of dq: loaded once
        b_kt = tl.load(k_base + o_n[None, :] * stride_kn + o_f[:, None], mask=m_n[None, :] & m_f[:, None], other=0.0)
    if DT5:
        # queries before `near` are more than max_dist before every key of the tile (relative position clamped to
        # +max_dist), those from `far` on more than max_dist after (clamped to -max_dist)
        near = tl.maximum(lo, k_start - max_dist)
        far = tl.minimum(win_end, k_start + BN + max_dist)
        # outside the band, one T5 term (the table's ends) and one gradient sum (one bucket) per side
        t5_before, t5_after = tl.load(t5_ptr + 2 * max_dist), tl.load(t5_ptr)
        sum_before = 0.0
        for m0 in range(lo, near, BM):
            acc, acc_t5, sum_before = _dk_step(
                acc, acc_t5, sum_before, t5_before, b_kt, m0, near, first, q_base, k_base, v_base, dy_base, dqa_base,
                dbias_base, mask_base, t5_ptr, lut_ptr, bias_base, o_n, m_n, o_f, m_f, win_start, row0, seed, N, S, E,
                stride_qn, stride_kn, stride_vn, stride_dyn, stride_bm, stride_bn, scale, max_dist, bias_scale,
                dropout_p, DQ_ATOMIC, CAUSAL, LAPLACE, HAS_MASK, HAS_T5, HAS_BIAS, DBIAS, DROPOUT, 1, NB, BM, BN, BS,
                S_BLOCKS, BE, DOT_PREC,
            )  # fmt: skip
        unused = 0.0
        for m0 in range(near, far, BM_NEAR):
            acc, acc_t5, unused = _dk_step(
                acc, acc_t5, unused, 0.0, b_kt, m0, far, first, q_base, k_base, v_base, dy_base, dqa_base,
                dbias_base, mask_base, t5_ptr, lut_ptr, bias_base, o_n, m_n, o_f, m_f, win_start, row0, seed, N, S, E,
                stride_qn, stride_kn, stride_vn, stride_dyn, stride_bm, stride_bn, scale, max_dist, bias_scale,
                dropout_p, DQ_ATOMIC, CAUSAL, LAPLACE, HAS_MASK, HAS_T5, HAS_BIAS, DBIAS, DROPOUT, 2, NB, BM_NEAR, BN,
                BS, S_BLOCKS, BE_NEAR, DOT_PREC,
            )  # fmt: skip
        sum_after = 0.0
        for m0 in range(far, win_end, BM):
            acc, acc_t5, sum_after = _dk_step(
                acc, acc_t5, sum_after, t5_after, b_kt, m0, win_end, first, q_base, k_base, v_base, dy_base, dqa_base,
                dbias_base, mask_base, t5_ptr, lut_ptr, bias_base, o_n, m_n, o_f, m_f, win_start, row0, seed, N, S, E,
                stride_qn, stride_kn, stride_vn, stride_dyn, stride_bm, stride_bn, scale, max_dist, bias_scale,
                dropout_p, DQ_ATOMIC, CAUSAL, LAPLACE, HAS_MASK, HAS_T5, HAS_BIAS, DBIAS, DROPOUT, 1, NB, BM, BN, BS,
                S_BLOCKS, BE, DOT_PREC,
            )  # fmt: skip
        if first:
            o_nb = tl.arange(0, NB)
            acc_t5 += tl.where(o_nb == tl.load(lut_ptr + 2 * max_dist), sum_before, 0.0)
            acc_t5 += tl.where(o_nb == tl.load(lut_ptr), sum_after, 0.0)
            pid = i_b * tl.num_programs(0) + i_t
            tl.store(dt5_ptr + pid * NB + o_nb, acc_t5 * t5_scale)
    else:
        for m0 in range(lo, win_end, BM):
            acc, acc_t5, _ = _dk_step(
                acc, acc_t5, 0.0, 0.0, b_kt, m0, win_end, first, q_base, k_base, v_base, dy_base, dqa_base, dbias_base,
                mask_base, t5_ptr, lut_ptr, bias_base, o_n, m_n, o_f, m_f, win_start, row0, seed, N, S, E, stride_qn,
                stride_kn, stride_vn, stride_dyn, stride_bm, stride_bn, scale, max_dist, bias_scale, dropout_p,
                DQ_ATOMIC, CAUSAL, LAPLACE, HAS_MASK, HAS_T5, HAS_BIAS, DBIAS, DROPOUT, 0, NB, BM, BN, BS, S_BLOCKS, BE,
                DOT_PREC,
            )  # fmt: skip
    store_rows(dk_ptr + i_b64 * stride_dkb, acc * scale, k_start, win_end, stride_dkn, o_f, m_f, BN)


@triton.jit(do_not_specialize=_NOSPEC)
def _dropout_keep_kernel(
    seed_ptr,  # (1,) int64
    out_ptr,  # (B, G, W, W) uint8: 1 where the kernels keep the attention weight
    W,
    G,
    dropout_p,
    BM: tl.constexpr,
    BN: tl.constexpr,
):
    i_m, i_n, i_bg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_w = i_bg // G, i_bg % G
    win_start = i_w * W
    o_m = win_start + i_m * BM + tl.arange(0, BM)
    o_n = win_start + i_n * BN + tl.arange(0, BN)
    keep = _dropout_scale(tl.load(seed_ptr), i_b * G * W, o_m, o_n, win_start, dropout_p) > 0
    m = ((o_m - win_start) < W)[:, None] & ((o_n - win_start) < W)[None, :]
    p_out = out_ptr + i_bg.to(tl.int64) * W * W + (o_m - win_start)[:, None] * W + (o_n - win_start)[None, :]
    tl.store(p_out, keep.to(tl.uint8), mask=m)


# ---------------------------------------------------------------------------------------------------------------
# launch configuration and typed launchers


# (kind, precision, dropout) -> (BM query tile, BN key tile, max BS, max BE, num_warps). Chosen so that every
# configuration, with every flag combination the layers launch, compiles without register spills on sm_80 and
# sm_90 under triton 3.6 and 3.9 (``python -m flash_triton.aot``). float32 keeps exact (non-TF32) products,
# which run on FMA units with operands held in registers: small tiles. Not yet tuned on a GPU.
# History: the half forward was 64 x 64 at 4 warps without dropout (spilled on sm_80) and 32 x 32 at 4 warps with
# dropout (mma.sync on sm_90); 64 x 32 at 8 warps spills in neither and multiplies on wgmma. The float32 forward was
# 16 x 16 with 16-wide query/key steps (spilled a saved predicate mask on sm_90); 32 x 16 with 32-wide steps does not.
# Issue 13 (feature widths specialised): BE sets how often the scores are recomputed (once per value block: E / BE
# times), so the forward and dv take the widest value block that stays spill-free: 256 in half precision, 128 in
# float32 (was 64 / 16). That takes GAU's forward at n 8192 from 2.7x to 1.34x the minimal FLOPs and its backward
# from 2.5x to 1.8x. With dropout the half forward takes 128 in 32-wide query/key steps (256, and 128 in 64-wide
# steps, spilled on sm_80 with every flag on at a query/key width of 200) and the float32 one 64. dv's query step
# is 32 rows (64 spilled in the loop on sm_90 with a mask and a caller's bias), so its q kᵀ stays on mma.sync there
# while Aᵀ dy (64 key rows) runs on wgmma. dk and dq stay 32 x 32: at 64 x 64 (wgmma) dk spilled 68-152 B in the
# loop (the T5 bucket sums) and dq spilled on sm_80; float32 dk/dq with one 128-wide feature block (dy vᵀ not
# recomputed per block) spilled 184-1,100 B. "dkq" is dk that also adds each tile's share of dq into float32 with
# atomics (dy vᵀ and the scores once for both: GAU's bf16 backward 1.79x -> 1.29x the minimal FLOPs, float32 8.4x ->
# 4.4x); its float32 key tile is 16 rows (32 spilled on sm_80), which leaves room for the whole query/key width in one
# block up to width 128 (one dy vᵀ per key tile; in two 128-wide blocks at width 200 it spilled 36 B with dropout on
# sm_90 under triton 3.6 and 56 B without under 3.9, so past 128 it takes 32-wide blocks). dk / dq / dkq specialise
# their widths too (16-byte operand loads) in one stage with every register allowed (see launch_config).
TILES = {
    ("fwd", "half", False): (64, 32, 64, 256, 8),
    ("fwd", "half", True): (64, 32, 32, 128, 8),
    **{("dv", "half", drop): (32, 64, 128, 256, 8) for drop in (False, True)},
    **{(kind, "half", drop): (32, 32, 128, 64, 8) for kind in ("dk", "dkq", "dq") for drop in (False, True)},
    ("fwd", "fp32", False): (32, 16, 32, 128, 8),
    ("fwd", "fp32", True): (32, 16, 32, 64, 8),  # 128 spilled in the loop on sm_90 at width 200 (triton 3.9)
    # 16-row query steps: 32 spilled 28 B, once inside the loop, on sm_90 under triton 3.9 with a key mask (causal)
    **{("dk", "fp32", drop): (16, 32, 32, 32, 8) for drop in (False, True)},
    ("dkq", "fp32", False): (32, 16, 128, 32, 8),  # the query/key width in one block: dy vᵀ once per key tile
    # one query/key block with dropout too (up to width 128; compiled on both stacks without a spill), 16-wide dy vᵀ
    # steps: 32-wide ones spilled 8 B in the loop on sm_80 (triton 3.6)
    ("dkq", "fp32", True): (32, 16, 128, 16, 8),
    # 128-wide value blocks: the scores recomputed E / 128 times (at 32: 32 times at e 1024, GAU's fp32 backward 4.35x
    # the minimal FLOPs; with dkq's single query/key block 1.51x); with a caller's bias see launch_config
    **{("dv", "fp32", drop): (32, 32, 32, 128, 8) for drop in (False, True)},
    ("dq", "fp32", False): (32, 16, 16, 32, 4),
    ("dq", "fp32", True): (32, 16, 16, 32, 8),  # at 4 warps it spilled inside the key loop on sm_80 (triton 3.9)
}
# Hopper only (sm_90: wgmma, 227 KiB of shared memory per block): the half-precision forward without dropout takes
# 128-row query tiles and 256-wide value blocks in 8 warps, each warpgroup 64 of the rows (the 128 x 256 float32
# accumulator is 128 registers a thread; 255 in all, no spill in any flag set on either stack), the query/key width in
# one 128-wide block. Until 2026-12-07 it took 64 x 512 in 16 warps: q kᵀ recomputed E / 512 times instead of E / 256
# (the model's 1.12x the minimal forward FLOPs against 1.35x), but the four warpgroups split the value block, each
# needing the whole 64 x 32 score tile as its register operand, so each computed it: 32 m64n8k16 wgmma a key step
# per warpgroup, 1.6x the tile's FLOPs, 636 FLOP per warp instruction (412 instructions, 16 warps) against 793 (496,
# 8 warps) now: a (128 query x 32 key) tile over all of E took 26,368 warp instructions, now 15,872. The T5 term is
# gathered in every tile: split at the band, the non-causal builds spilled 8-224 B under triton 3.9 (none on 3.6,
# where the causal one's hot loop is 312 instructions). On sm_80 the same tiles spill (mma.sync keeps more in
# registers), so other GPUs keep TILES. Not with the fused linear half (FLASH's groups past SHORT_WINDOW), nor with a
# caller's bias (its tile spilled 8-80 B in the loop under triton 3.9 at 64 x 512), nor past one 128-wide query/key
# block (two spilled 24-116 B in the loop at 64 x 512).
# dv without dropout computes its weights transposed on sm_90 (TRANSPOSED: Aᵀ = act(k qᵀ)), 128 key rows in 32-row
# query steps: both products have the key tile as M, so both run on wgmma, each warpgroup its own 64 keys. Until
# 2026-12-08 it took 64 x 64 tiles of A (q kᵀ): its two warpgroups split the 256-wide value block and each needed
# the whole Aᵀ as its register operand, so each computed it (1.33x the tile's FLOPs): a 64 x 64 tile over the value
# block took 4,784 warp instructions (598 a warp); a 32 x 128 one now 2,304 (288; 1,365 FLOP per instruction against
# 877, triton 3.6; 250 registers, no spill on either stack). 64-row query steps (1,582 FLOP per instruction) spilled
# 24-88 B under triton 3.9. With a caller's bias the transposed tile spilled 8-40 B (3.9): it keeps 64 x 64 of A
# (launch_config). With dropout dv spilled 80-1,108 B in the loop on sm_90 (64 x 64), and on sm_80 48-56 B with a
# key mask and a caller's bias: both keep 32 x 64; with dropout the transposed tiles spilled 16-2,936 B under 3.9.
# The deterministic pass's dq (a query tile over the keys) runs 64 x 64 on wgmma there too (hot-loop FLOP per
# instruction 413 -> 625), except with a caller's bias (44-140 B spilled) or dropout. Its two warpgroups each compute
# the 64 x 64 scores (1.10x the tile's FLOPs); 128-row query tiles compute them once (1.63x fewer warp instructions
# per tile on triton 3.6) and spilled nowhere on 3.6 and 3.9 without a key mask, but 80 B under triton 3.7.1 (torch
# 2.13's), so it keeps 64 (2026-12-08; 128 x 32 is spill-free there but only 1.08x fewer instructions). dk and
# dk-with-dq-added at 64 x 64 spilled 24-420 B (the T5 bucket sums); they take the transposed kernel below instead.
TILES_SM90 = {
    ("fwd", "half", False): (128, 32, 128, 256, 8),
    ("dv", "half", False): (32, 128, 128, 256, 8),  # TRANSPOSED (see above); with a caller's bias 64 x 64 of A
    ("dq", "half", False): (64, 64, 128, 64, 8),  # the deterministic pass's dq; not with a caller's bias (see above)
    # dk (and dk with dq added) over transposed tiles (_quad_attn_bwd_dk_kernel): 128 key rows, 32-row query steps
    ("dk", "half", False): (32, 128, 128, 64, 8),
    ("dkq", "half", False): (32, 128, 128, 64, 8),  # near steps 32-wide (NEAR_BE)
}
# dk and dkq on sm_90 run the transposed kernel: there every product of a key tile has the 128 key rows as its M
# dimension, so all of them run on wgmma in 32-row query steps (on the 32 x 32 tiles of the other kernel they ran
# on mma.sync: 64 x 64 spilled 24-420 B). Queries within max_dist of the key tile go in 16-row steps (BM_NEAR), the
# only ones that sum the score gradients per T5 bucket; per bucket in every 32-row step spilled 56-60 B outside the
# loop. Not with dropout (150-370 B spilled) or a caller's bias (72-124 B): those, and sm_80 (mma.sync keeps the
# operands in registers: 16-124 B spilled at 32 x 32), keep _quad_attn_bwd_dqk_kernel.
# The loop over the value width takes BE-wide steps in the 32-row query steps, BE_NEAR-wide ones in the 16-row
# near steps: a 32 x 64 dy tile is 16 bytes a thread. dk alone steps its near rows 128 wide (dy tiles no smaller
# than the far ones'); dk with dq added spilled at that (80 B, 8 inside the loop, triton 3.6) and at 64 (8 B), so
# its near steps stay 32 wide (NEAR_BE; 16 x 32 dy tiles, two elements a thread). Its far steps went 16 wide until
# 2026-12-07 (32 x 16 dy tiles, 4-byte copies; with 64-wide near steps, 32-wide far ones spilled 20 B with a key
# mask): at the benchmark shape (triton 3.6) a 32-row query step issued 3907 warp instructions, 369 FLOP per
# instruction (the loop over E 64 times, 53 instructions for one wgmma); in 64-wide steps 1835, 786 (16 times, 81
# for four). sm_80's 32 x 32 mma.sync kernel: 385.
# Two stages (launch_config) spill nowhere, with the final store of store_rows. Under triton 3.8 (torch 2.14's) dk
# with dq added spills 16-28 B, one spill instruction inside a loop, in 10 of its 16 flag sets (3.6, 3.7.1 and 3.9:
# none). Kept: the one tile that spills nowhere there, 32-wide far steps, executes 1.48x the warp instructions
# (2,857 against 1,928 a 32-row query step, the spill included); 128-wide far steps (1,667) spilled in the non-causal
# flag sets under 3.8 and 3.6, 64-wide near steps in 8 flag sets under 3.8 (2026-12-08).
TRANSPOSED_KEY_TILES = ("dk", "dkq")
NEAR_BE = {"dk": 128, "dkq": 32}  # the widest near step of each (BE_NEAR: at most BE * BM / BM_NEAR)


def launch_config(
    kind: str,
    window: int,
    qk_dim: int,
    v_dim: int,
    dtype: torch.dtype,
    dropout: bool,
    arch: int | None = None,
    lin: bool = False,
    bias: bool = False,
    mask: bool = False,
    causal: bool = False,
) -> dict:
    """Tile sizes (powers of two, >= 16 for tl.dot, no larger than needed) and warps of kernel ``kind``
    ("fwd", "dv", "dk", "dq"; "dkq": dk with dq added in atomically) for a window, query/key width, value width,
    dtype and dropout on/off, on a GPU of compute capability ``arch`` (:func:`..common.jit.device_arch`; None: the
    configs that compile for every supported GPU); ``lin``: the forward adds FLASH's linear half; ``bias``: a caller's
    bias is added to the scores; ``mask``: a key mask, ``causal``: causal attention (these two decide ``T5_BAND``
    only). A dk / dkq config with ``BM_NEAR`` is for the transposed key-tile kernel
    (``_quad_attn_bwd_dk_kernel``), one without for ``_quad_attn_bwd_dqk_kernel``; a dv config with ``TRANSPOSED``
    computes its weights as (key, query) tiles."""
    precision = "fp32" if dtype == torch.float32 else "half"
    key = (kind, precision, dropout)
    # TILES_SM90 where its conditions hold; the forward's only at value widths past the default block (where the
    # 16-warp tiles it took until 2026-12-07 spilled 8 B; the 128 x 256 ones are not compiled below it)
    hopper = arch == 90 and key in TILES_SM90 and not (lin and kind == "fwd")
    hopper = hopper and not (bias and kind in ("fwd", "dq", *TRANSPOSED_KEY_TILES))
    hopper = hopper and qk_dim <= TILES_SM90[key][2] and (kind != "fwd" or v_dim > TILES[key][3])
    bm, bn, bs, be, warps = TILES_SM90[key] if hopper else TILES[key]
    dv_transposed = hopper and kind == "dv" and not bias  # sm_90's dv over (key, query) tiles of Aᵀ
    if hopper and kind == "dv" and bias:  # the transposed tiles spilled 8-40 B with a caller's bias (triton 3.9)
        bm, bn = 64, 64
    fit = max(16, next_power_of_2(window))
    bs = min(bs, max(16, next_power_of_2(qk_dim)))
    be = min(be, max(16, next_power_of_2(v_dim)))
    # 16 x 16 score tiles (windows of <= 16 tokens): 4 warps where 8 spilled inside the loop (float32 dk on sm_90,
    # half-precision dk with dropout on sm_80; a half dk without dropout spills at 4 instead, and so does dk when it
    # adds dq in, in either precision, with dropout or not)
    if fit <= 16 and ((precision == "fp32" and kind != "dkq") or (kind == "dk" and dropout)):
        warps = min(warps, 4)
    if kind == "dq" and precision == "half" and qk_dim <= 64:  # 8 warps spilled in the key loop on sm_80 (triton
        warps = 4  # 3.6) at query/key width 64; 4 spill nowhere there, but do at width 128 on sm_90
    # two 128-wide query/key blocks spilled: dq with dropout inside the loop on sm_90 (triton 3.6), without it 72 B
    # inside the loop on sm_80 (3.8); dk with dropout 24-68 B on sm_90 under 3.7.1 and 16-132 B, inside the loop, on
    # sm_80 and sm_90 under 3.8 (width 200). 64-wide blocks spill nowhere, on 3.6, 3.7.1, 3.8 and 3.9, and execute
    # 2-4% fewer warp instructions (width 200, causal: dq 1013 -> 970 a key step on sm_80, dk with dropout 1449 ->
    # 1406 on sm_80 and 3263 -> 3199 on sm_90, triton 3.6). Not fixed: under 3.8 sm_80's dq with a caller's bias and
    # dropout spills 32 B (two spill instructions inside the loop); 32-wide value steps spill nowhere on any release
    # but execute 1.26x the warp instructions on sm_80 and 1.44x on sm_90 (triton 3.6)
    if kind in ("dk", "dq") and precision == "half" and qk_dim > bs and (dropout or kind == "dq"):
        bs = 64
    if kind == "dkq" and precision == "fp32" and qk_dim > bs:  # two 128-wide blocks spilled 56 B on sm_90 (3.9)
        bs = 32
    if kind == "dv" and precision == "fp32" and bias:  # 128-wide value blocks spilled 40 B with a caller's bias on
        be, warps = min(be, 32), 4  # sm_80 and sm_90 (outside the loop; triton 3.6)
    # the half forward with dropout (64 x 32 tiles) in 4 warps: at 8 its two warpgroups each computed the whole score
    # tile, 1.5x the tile's FLOPs (sm_80 and sm_90); at 4 it is computed once, at 164-244 registers (2-3 blocks of 4
    # warps resident against one of 8), a tile over E in 4,580 warp instructions instead of 8,904 on sm_90 and 5,260
    # instead of 9,504 on sm_80 (triton 3.6). Past one 128-wide query/key block it spilled 20-204 B on sm_90, on
    # 16 x 16 tiles (windows of <= 16 tokens, which the short-window kernels take) 12 B under 3.9
    if kind == "fwd" and precision == "half" and dropout and qk_dim <= 128 and fit > 16:
        warps = 4
    cfg = dict(BM=min(bm, fit), BN=min(bn, fit), BS=bs, S_BLOCKS=cdiv(qk_dim, bs), BE=be, num_warps=warps, num_stages=2)
    if kind in ("dk", "dq", "dkq"):
        # ptxas, left to itself, holds some of these builds to 128 registers (two blocks per SM) and spills inside
        # the loop (sm_80, 16-wide tiles with dropout; width 64; specialised widths): allow it every register. Two
        # stages in half precision: the loop over the value width then copies each step's v and dy tiles with
        # cp.async a step ahead; in one stage it loaded them with LDG, stored them to shared memory and waited out the
        # global latency every step, which one block of 8 warps per SM does not hide. One stage in float32 (its
        # two-stage builds were not compiled) and for dk with dq added over two query/key blocks (two stages spilled
        # inside the loop on sm_80, triton 3.9)
        pipelined = precision == "half" and not (kind == "dkq" and qk_dim > bs)
        cfg.update(maxnreg=255, num_stages=2 if pipelined else 1)
        # 4 warps on the 32 x 32 tiles of _quad_attn_bwd_dqk_kernel where they spill nowhere: at 8, sm_90 computed
        # each tile product of dk and dq with dropout 3.65 times over (mma.sync; sm_80: 1.10, and dk with dq added
        # 3.41 / 1.09), at 4 once, with as many warps resident (two blocks of 4 at 220-255 registers against one of
        # 8): per tile over E, sm_90's dk with dropout 24,280 warp instructions -> 6,700 and dq 23,808 -> 6,504;
        # sm_80's dk 6,952 -> 5,036, dq 6,424 -> 4,632 and with dropout dk with dq added 12,336 -> 8,504 (triton
        # 3.6). Not with a caller's bias (spilled 16-320 B on sm_80 under 3.9), over two query/key blocks (16-216
        # B), on sm_90's dk with dq added (56-180 B), nor sm_80's without dropout (up to 336 B under 3.9) or at
        # query/key width 64 (24 B under 3.9)
        four = kind in ("dk", "dq") or (dropout and arch not in (None, 90) and qk_dim > 64)
        if precision == "half" and four and not hopper and not bias and cfg["S_BLOCKS"] == 1 and fit > 16:
            cfg["num_warps"] = 4
    if dv_transposed:
        cfg["TRANSPOSED"] = True
    if hopper and kind in TRANSPOSED_KEY_TILES:  # the transposed kernel: its steps near the key tile
        cfg["BM_NEAR"] = min(16, fit)
        cfg["BE_NEAR"] = min(NEAR_BE[kind], be * cfg["BM"] // cfg["BM_NEAR"], max(16, next_power_of_2(v_dim)))
    band_spills = (
        precision == "fp32"
        or (kind == "fwd" and ((hopper and not (causal and not mask)) or (dropout and arch != 90)))
        or (kind == "dkq" and dropout)
        or (kind == "dv" and hopper and bias)
        or (kind == "dq" and hopper)
    )
    if band_spills:
        # one loop, the T5 term gathered for every tile. Split at the T5 band, these spilled outside the loops, past
        # the check's 32 B: float32 forward and dv 36 B on sm_80 (triton 3.6; their FMA products cost ~S
        # multiply-adds a score, the gather next to nothing), the 16-warp sm_90 forward 56-100 B (3.9) and the
        # 8-warp one 8-224 B unless causal without a key mask (16 B with one; all under 3.9), the forward
        # with dropout on sm_80 52-56 B (3.6; two 32-wide query/key blocks), dk with dq added under dropout 8-16 B on
        # sm_80 (3.9), sm_90's 64 x 64 dv with a caller's bias 36-296 B at 255 registers (3.6; with a key mask too,
        # which now takes the transposed tiles: split, they spill nowhere), and
        # sm_90's 64 x 64 dq in two stages 44 B (3.6, not causal)
        cfg["T5_BAND"] = False
    # a tuned entry (flash_triton.tuning) for this GPU and shape, where there is one; lin changes the forward's kernel
    # only, a caller's bias the forward's, dq's and dv's tiles, causality and a key mask the forward's band split, so
    # only their entries are keyed by them (a tuned entry is compiled for its own flags)
    key = dict(window=fit, qk=qk_dim, v=v_dim, dropout=dropout)
    if kind == "fwd":
        key.update(lin=lin, bias=bias, causal=causal, mask=mask)
    elif kind in ("dq", "dv"):
        key.update(bias=bias)
    return tuning.tuned(f"quad_attn_{kind}", arch, dtype, key, cfg)


def streaming_dqk_kernel(cfg: dict, key_tiles: bool) -> tuple:
    """The streaming backward's kernel for a dk / dkq / dq ``cfg`` of :func:`launch_config`, and the flag it adds:
    the transposed key-tile kernel where the config has ``BM_NEAR`` (sm_90's dk and dkq), else
    ``_quad_attn_bwd_dqk_kernel`` with ``KEY_TILES``. The launcher and the GPU-compile check both pick through it."""
    if "BM_NEAR" in cfg:
        return _quad_attn_bwd_dk_kernel, {}
    return _quad_attn_bwd_dqk_kernel, dict(KEY_TILES=key_tiles)


def t5_relative(t5_weight: Tensor, lut: Tensor, t5_scale: float) -> Tensor:
    """(2 max_distance + 1,) float32 ``t5_scale * t5_weight[bucket(r)]`` of each clamped relative position r: the
    scores' T5 term, which the kernels read with one gather (j - i), the bucket and the scale folded in."""
    return torch.index_select(t5_weight.float(), 0, lut) * t5_scale


@functools.lru_cache(maxsize=32)
def bucket_lut(causal: bool, num_buckets: int, max_distance: int, device: torch.device) -> Tensor:
    """int32 bucket of every relative position clamped to [-max_distance, max_distance], from the reference
    (cached per device: built once, not on every call)."""
    rel = torch.arange(-max_distance, max_distance + 1, device=device)
    bucket = t5_relative_position_bucket(rel, causal=causal, num_buckets=num_buckets, max_distance=max_distance)
    return bucket.to(torch.int32)


def _bias_strides(bias: Tensor | None, b: int, n: int) -> tuple[int, int, int]:
    return (0, 0, 0) if bias is None else bias.expand(b, n, n).stride()


def quad_attn_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate: Tensor | None,
    key_mask: Tensor | None,
    t5_weight: Tensor | None,
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
    lin_q: Tensor | None = None,
    state: Tensor | None = None,
    windows: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Gated output (B, N, E) and, when ``store_pre``, the output before the gate (saved for the gate's gradient).

    q, k (B, N, S) and v, gate (B, N, E) with unit feature stride; key_mask (B, N) bool; t5_weight (num_buckets,);
    bias broadcastable to (B, N, N); seed (1,) int64 when dropout_p > 0. With ``lin_q`` (B, N, S) and ``state``
    (B, G, S, E) (any float dtype, read in lin_q's precision; any strides), each window's queries also add
    ``lin_q @ state[window]`` before the gate.
    ``windows`` (G, 2) int32 [start, end) rows replace the uniform windows (packed variable-length batches, B = 1).
    """
    q, k, v, gate, lin_q, t5_weight = last_dim_contiguous(q, k, v, gate, lin_q, t5_weight)  # the T5 table and the
    # key mask (below) are read as contiguous vectors
    if state is not None and state.stride(-1) != 1:
        state = state.contiguous()
    b, n, s = q.shape
    check_row_offsets(q=q, k=k, v=v, gate=gate, lin_q=lin_q, bias=bias.expand(b, n, n) if bias is not None else None)
    e = v.shape[-1]
    w = window
    g = windows.shape[0] if windows is not None else cdiv(n, w)
    mask_u8 = row_mask_u8(key_mask)
    lut = bucket_lut(causal, t5_weight.numel(), t5_max_distance, q.device) if t5_weight is not None else None
    if w <= SHORT_WINDOW:  # weights computed once and stored, then one pass over the value width
        from .short_window import short_window_fwd  # imports this module's jit helpers: imported on first use

        return short_window_fwd(
            q,
            k,
            v,
            gate,
            mask_u8,
            t5_relative(t5_weight, lut, t5_scale) if t5_weight is not None else None,  # the streaming kernel below
            # reads the bucket table and the weights instead
            lut,
            bias,
            seed,
            scale=scale,
            t5_scale=t5_scale,
            t5_max_distance=t5_max_distance,
            bias_scale=bias_scale,
            window=w,
            causal=causal,
            laplace=laplace,
            dropout_p=dropout_p,
            store_pre=store_pre,
            lin_q=lin_q,
            state=state,
            windows=windows,
        )
    arch = device_arch(q.device)
    lin, has_bias, masked = lin_q is not None, bias is not None, mask_u8 is not None
    cfg = launch_config("fwd", w, s, e, q.dtype, dropout_p > 0, arch, lin, has_bias, masked, causal)
    out = new_output(v, v.shape)  # contiguous whatever v's strides
    o_pre = new_output(v, v.shape) if store_pre else None
    dummy = q.new_empty(0)
    grid = (g * cdiv(w, cfg["BM"]), cdiv(e, cfg["BE"]), b)
    _quad_attn_fwd_kernel[grid](
        q,
        k,
        v,
        gate if gate is not None else dummy,
        out,
        o_pre if store_pre else dummy,
        mask_u8 if mask_u8 is not None else dummy,
        t5_weight if t5_weight is not None else dummy,
        lut if lut is not None else dummy,
        bias if bias is not None else dummy,
        seed if seed is not None else dummy,
        lin_q if lin_q is not None else dummy,
        state if state is not None else dummy,
        windows if windows is not None else dummy,
        n,
        w,
        g,
        s,
        e,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        gate.stride(0) if gate is not None else 0,
        gate.stride(1) if gate is not None else 0,
        out.stride(0),
        out.stride(1),
        mask_u8.stride(0) if mask_u8 is not None else 0,
        *_bias_strides(bias, b, n),
        *(lin_q.stride()[:2] if lin_q is not None else (0, 0)),
        *(state.stride()[:3] if state is not None else (0, 0, 0)),
        scale,
        t5_scale,
        t5_max_distance,
        bias_scale,
        dropout_p,
        CAUSAL=causal,
        LAPLACE=laplace,
        VARLEN=windows is not None,
        HAS_LIN=state is not None,
        HAS_GATE=gate is not None,
        HAS_MASK=key_mask is not None,
        HAS_T5=t5_weight is not None,
        HAS_BIAS=bias is not None,
        DROPOUT=dropout_p > 0,
        STORE_PRE=store_pre,
        DOT_PREC=dot_precision(q.dtype),
        enable_fp_fusion=FP_FUSION,
        **cfg,
    )
    return out, o_pre


def quad_attn_bwd(
    dy: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    t5_weight: Tensor | None,
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
    windows: Tensor | None = None,
    lin: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """(dq, dk, dv, dt5, dbias) from ``dy``, the gradient of the output before the gate.

    dt5 is (num_buckets,) float32 summed from per-program partials (deterministic); dbias is the float32 gradient
    of a (B, N, N) bias, for the caller to reduce to the bias's own shape. ``lin`` (windows of at most
    ``SHORT_WINDOW`` tokens only): FLASH's (lin_k (B, N, S), gradient of the state each window reads (B, G, S, E)),
    whose ``lin_k dP`` (keys the mask drops adding nothing) dv takes in its own pass.
    """
    if lin is not None and window > SHORT_WINDOW:
        raise ValueError(f"lin (the linear half in dv's pass) needs a window of at most {SHORT_WINDOW}, got {window}")
    if lin is not None:
        lin = tuple(last_dim_contiguous(*lin))
    dy, q, k, v, t5_weight = last_dim_contiguous(dy, q, k, v, t5_weight)
    b, n, s = q.shape
    dbias_like = torch.empty(b, n, n, device="meta") if need_dbias and bias is not None else None
    check_row_offsets(dy=dy, q=q, k=k, v=v, bias=bias.expand(b, n, n) if bias is not None else None, dbias=dbias_like)
    e = v.shape[-1]
    w = window
    g = windows.shape[0] if windows is not None else cdiv(n, w)
    mask_u8 = row_mask_u8(key_mask)
    lut = bucket_lut(causal, t5_weight.numel(), t5_max_distance, q.device) if t5_weight is not None else None
    t5_rel = t5_relative(t5_weight, lut, t5_scale) if t5_weight is not None else None
    if w <= SHORT_WINDOW:  # weights and score gradients computed once and stored, then three products
        from .short_window import short_window_bwd  # imports this module's jit helpers: imported on first use

        return short_window_bwd(
            dy,
            q,
            k,
            v,
            mask_u8,
            t5_weight,
            t5_rel,
            lut,
            bias,
            seed,
            scale=scale,
            t5_scale=t5_scale,
            t5_max_distance=t5_max_distance,
            bias_scale=bias_scale,
            window=w,
            causal=causal,
            laplace=laplace,
            dropout_p=dropout_p,
            need_dt5=need_dt5 and t5_weight is not None,
            need_dbias=need_dbias and bias is not None,
            windows=windows,
            lin=lin,
        )
    # dq from the key tiles' score gradients with float32 atomics (dy vᵀ and the scores once for dq and dk), unless
    # torch is asked for deterministic algorithms: then a query-tile pass recomputes them and sums in a fixed order
    atomic_dq = not torch.are_deterministic_algorithms_enabled()
    key_kind = "dkq" if atomic_dq else "dk"
    kinds = ("dv", key_kind) if atomic_dq else ("dv", key_kind, "dq")
    arch = device_arch(q.device)
    masked = mask_u8 is not None
    has_bias, drop = bias is not None, dropout_p > 0
    cfgs = {
        kind: launch_config(kind, w, s, e, q.dtype, drop, arch, bias=has_bias, mask=masked, causal=causal)
        for kind in kinds
    }
    dk, dv = new_output(k, k.shape), new_output(v, v.shape)
    dqa = q.new_zeros(q.shape, dtype=torch.float32) if atomic_dq else None
    dq = new_output(q, q.shape) if not atomic_dq else None
    dummy = q.new_empty(0)
    nb = next_power_of_2(t5_weight.numel()) if t5_weight is not None else 1
    key_tiles = g * cdiv(w, cfgs[key_kind]["BN"])
    need_dt5 = need_dt5 and t5_weight is not None
    need_dbias = need_dbias and bias is not None
    dt5_part = new_output(q, (b * key_tiles, nb), torch.float32) if need_dt5 else None
    dbias = q.new_zeros(b, n, n, dtype=torch.float32) if need_dbias else None
    common = dict(
        CAUSAL=causal,
        LAPLACE=laplace,
        VARLEN=windows is not None,
        HAS_MASK=key_mask is not None,
        HAS_T5=t5_weight is not None,
        HAS_BIAS=bias is not None,
        DROPOUT=dropout_p > 0,
        DOT_PREC=dot_precision(q.dtype),
    )
    tables = (
        mask_u8 if mask_u8 is not None else dummy,
        t5_rel if t5_rel is not None else dummy,
        lut if lut is not None else dummy,
        bias if bias is not None else dummy,
        seed if seed is not None else dummy,
        windows if windows is not None else dummy,
    )
    tail = (
        mask_u8.stride(0) if mask_u8 is not None else 0,
        *_bias_strides(bias, b, n),
        scale,
        t5_scale,
        t5_max_distance,
        bias_scale,
        dropout_p,
    )
    cfg = cfgs["dv"]
    _quad_attn_bwd_dv_kernel[(g * cdiv(w, cfg["BN"]), cdiv(e, cfg["BE"]), b)](
        q,
        k,
        dy,
        dv,
        *tables,
        n,
        w,
        g,
        s,
        e,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        dy.stride(0),
        dy.stride(1),
        dv.stride(0),
        dv.stride(1),
        *tail,
        enable_fp_fusion=FP_FUSION,
        **common,
        **cfg,
    )
    passes = [(key_kind, True, key_tiles, dk)]
    if not atomic_dq:
        passes.append(("dq", False, g * cdiv(w, cfgs["dq"]["BM"]), dq))
    for kind, key, tiles, dx in passes:
        cfg = cfgs[kind]
        kernel, flags = streaming_dqk_kernel(cfg, key)
        kernel[(tiles, cfg["S_BLOCKS"], b)](
            q,
            k,
            v,
            dy,
            dx,
            dqa if dqa is not None else dummy,
            dt5_part if dt5_part is not None else dummy,
            dbias if dbias is not None else dummy,
            *tables,
            n,
            w,
            g,
            s,
            e,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            v.stride(0),
            v.stride(1),
            dy.stride(0),
            dy.stride(1),
            dx.stride(0),
            dx.stride(1),
            *tail,
            **flags,
            DQ_ATOMIC=atomic_dq,
            DT5=need_dt5 and key,
            DBIAS=need_dbias and key == atomic_dq,
            NB=nb,
            enable_fp_fusion=FP_FUSION,
            **common,
            **cfg,
        )
    if atomic_dq:
        dq = dqa.to(q.dtype)
    dt5 = dt5_part.sum(0)[: t5_weight.numel()] if dt5_part is not None else None
    return dq, dk, dv, dt5, dbias


def dropout_keep_mask(seed: Tensor, batch: int, n: int, window: int, dropout_p: float) -> Tensor:
    """(batch, G, W, W) bool: the dropout keep-mask the kernels draw for this seed (for tests and debugging)."""
    w = window
    g = cdiv(n, w)
    out = new_output(seed, (batch, g, w, w), torch.uint8)
    blk = min(64, max(16, next_power_of_2(w)))
    grid = (cdiv(w, blk), cdiv(w, blk), batch * g)
    _dropout_keep_kernel[grid](seed, out, w, g, dropout_p, BM=blk, BN=blk, enable_fp_fusion=FP_FUSION)
    return out.bool()
