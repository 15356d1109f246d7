"""Per-group linear-attention states of FLASH: Triton kernels and typed launchers.

Two small tiled matmul kernels over groups of ``group`` consecutive tokens (the last group may be partial; tokens
past n are never read, so nothing is padded or copied):

- ``group_state(a, b)``: ``out[b, j] = Σ_{t in group j} a_tᵀ b_t`` (float32), e.g. the states ``lin_kᵀ v`` of the
  forward and ``lin_qᵀ dY`` of the backward. An optional row mask drops tokens of ``a`` (masked keys).
- ``group_apply(x, m)``: ``y_t = scale * x_t m[b, group(t)]``, e.g. ``lin_q P`` and the backward's
  ``dY Pᵀ``, ``v dSᵀ``, ``lin_k dS``; ``m`` is read through strides, so a transposed state costs no copy. An
  optional row mask zeroes rows of ``y``; with ``accumulate`` the product is added to an existing ``y`` in place
  (the backward's ``dv += lin_k dS``).

And ``state_scan``: the causal prefix of those states (and, in reverse, its adjoint) in one pass over the groups;
``group_scan``: ``group_state`` and ``state_scan`` in one kernel for uniform groups (each group's sum kept in
registers; the default where the launch holds enough programs or few groups), the states stored in the inputs' dtype.
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
    last_dim_contiguous,
    new_output,
    next_power_of_2,
    row_mask_u8,
    window_bounds,
)

# lengths vary per call; the feature widths DA, DB, DX, DY are specialised (16-byte loads where they are multiples
# of 16; each such width compiles its own variant)
_NOSPEC = ["N", "GS"]


@triton.jit(do_not_specialize=_NOSPEC)
def _group_state_kernel(
    a_ptr,  # (B, N, DA)
    b_ptr,  # (B, N, DB)
    out_ptr,  # (B, G, DA, DB) float32
    mask_ptr,  # (B, N) uint8 row mask of a, or dummy
    win_ptr,  # (G, 2) int32 group bounds of a packed variable-length batch, or dummy
    N,
    GS,  # tokens per group
    DA,
    DB,
    stride_ab,
    stride_an,
    stride_bb,
    stride_bn,
    stride_ob,
    stride_og,
    stride_oa,
    stride_mb,
    HAS_MASK: tl.constexpr,
    VARLEN: tl.constexpr,
    BT: tl.constexpr,
    BA: tl.constexpr,
    BB: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_ga, i_db, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    a_blocks = tl.cdiv(DA, BA)
    i_g, i_da = i_ga // a_blocks, i_ga % a_blocks
    o_a = i_da * BA + tl.arange(0, BA)
    o_b = i_db * BB + tl.arange(0, BB)
    m_a, m_b = o_a < DA, o_b < DB
    i_b64 = i_b.to(tl.int64)
    start, end = window_bounds(i_g, GS, N, win_ptr, VARLEN)
    acc = tl.zeros((BA, BB), dtype=tl.float32)
    for t0 in range(start, end, BT):
        o_t = t0 + tl.arange(0, BT)
        m_t = o_t < end
        if HAS_MASK:
            m_t = m_t & (tl.load(mask_ptr + i_b64 * stride_mb + o_t, mask=m_t, other=0) != 0)
        p_at = a_ptr + i_b64 * stride_ab + o_a[:, None] + o_t[None, :] * stride_an
        b_at = tl.load(p_at, mask=m_a[:, None] & m_t[None, :], other=0.0)  # (BA, BT): a transposed
        p_b = b_ptr + i_b64 * stride_bb + o_t[:, None] * stride_bn + o_b[None, :]
        b_b = tl.load(p_b, mask=m_t[:, None] & m_b[None, :], other=0.0)
        acc = dot(b_at, b_b, acc, DOT_PREC)
    # the group's offset in 64 bits: a batch row's states pass 2**31 elements at 1M tokens in groups of 64
    p_out = out_ptr + i_b64 * stride_ob + i_g.to(tl.int64) * stride_og + o_a[:, None] * stride_oa + o_b[None, :]
    tl.store(p_out, acc, mask=m_a[:, None] & m_b[None, :])


@triton.jit(do_not_specialize=_NOSPEC)
def _group_apply_kernel(
    x_ptr,  # (B, N, DX)
    m_ptr,  # (B, G, DX, DY) states (read in x's precision), addressed through strides (a transposed view is fine)
    y_ptr,  # (B, N, DY)
    mask_ptr,  # (B, N) uint8 row mask of y, or dummy
    win_ptr,  # (G, 2) int32 group bounds of a packed variable-length batch, or dummy
    N,
    GS,
    DX,
    DY,
    stride_xb,
    stride_xn,
    stride_mb,
    stride_mg,
    stride_mx,
    stride_my,
    stride_yb,
    stride_yn,
    stride_kb,
    scale,
    HAS_MASK: tl.constexpr,
    VARLEN: tl.constexpr,
    ACCUMULATE: tl.constexpr,  # y += (instead of y =): y holds a partial result (dv of the quadratic half)
    BT: tl.constexpr,
    BX: tl.constexpr,
    BY: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_gt, i_dy, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tiles = tl.cdiv(GS, BT)
    i_g = i_gt // tiles
    win_start, end = window_bounds(i_g, GS, N, win_ptr, VARLEN)
    start = win_start + (i_gt % tiles) * BT
    o_t = start + tl.arange(0, BT)
    m_t = o_t < end
    o_y = i_dy * BY + tl.arange(0, BY)
    m_y = o_y < DY
    i_b64 = i_b.to(tl.int64)
    m_base = m_ptr + i_b64 * stride_mb + i_g.to(tl.int64) * stride_mg  # 64-bit, as in _group_state_kernel
    acc = tl.zeros((BT, BY), dtype=tl.float32)
    for x0 in range(0, DX, BX):
        o_x = x0 + tl.arange(0, BX)
        m_x = o_x < DX
        b_x = tl.load(
            x_ptr + i_b64 * stride_xb + o_t[:, None] * stride_xn + o_x[None, :],
            mask=m_t[:, None] & m_x[None, :],
            other=0.0,
        )
        p_m = m_base + o_x[:, None] * stride_mx + o_y[None, :] * stride_my
        b_m = tl.load(p_m, mask=m_x[:, None] & m_y[None, :], other=0.0)
        acc = dot(b_x, b_m.to(b_x.dtype), acc, DOT_PREC)  # the states (any float dtype) meet x's precision
    acc = acc * scale
    if HAS_MASK:
        keep = tl.load(mask_ptr + i_b64 * stride_kb + o_t, mask=m_t, other=0) != 0
        acc = tl.where(keep[:, None], acc, 0.0)
    p_y = y_ptr + i_b64 * stride_yb + o_t[:, None] * stride_yn + o_y[None, :]
    m_out = m_t[:, None] & m_y[None, :]
    if ACCUMULATE:  # one rounding of the sum, in y's dtype
        acc += tl.load(p_y, mask=m_out, other=0.0).to(tl.float32)
    tl.store(p_y, acc.to(y_ptr.dtype.element_ty), mask=m_out)


@triton.jit(do_not_specialize=["G"])  # F = S * E is a model width (a multiple of 16: 16-byte vectors), G varies
def _state_scan_kernel(
    x_ptr,  # (B, G, F) float32 per-group sums, F = S * E contiguous
    y_ptr,  # (B, G, F) float32 out: the state each group reads (forward) or the adjoint per group (REVERSE)
    init_ptr,  # (B, F) float32: the initial state (forward) or the final state's gradient (REVERSE), or dummy
    last_ptr,  # (B, F) float32 out: the final state (forward) or the initial state's gradient (REVERSE), or dummy
    G,
    F,
    inv_group,
    REVERSE: tl.constexpr,
    HAS_INIT: tl.constexpr,
    HAS_LAST: tl.constexpr,
    BF: tl.constexpr,
):
    """FLASH's causal state algebra in one pass over the groups, the running sum in fp32 registers. Forward:
    ``y_j = init + Σ_{i<j} x_i / g`` (the exclusive prefix), ``last = init + Σ_i x_i / g``. REVERSE (its adjoint):
    ``y_j = (init + Σ_{i>j} x_i) / g``, ``last = init + Σ_i x_i``."""
    i_f, i_b = tl.program_id(0), tl.program_id(1)
    o_f = i_f * BF + tl.arange(0, BF)
    m_f = o_f < F
    F64 = F.to(tl.int64)
    base = i_b.to(tl.int64) * G * F64
    run = tl.zeros((BF,), dtype=tl.float32)
    if HAS_INIT:
        run += tl.load(init_ptr + i_b.to(tl.int64) * F64 + o_f, mask=m_f, other=0.0)
    for step in range(G):
        j = step
        if REVERSE:
            j = G - 1 - step
        off = base + j * F64 + o_f
        x = tl.load(x_ptr + off, mask=m_f, other=0.0)
        if REVERSE:
            tl.store(y_ptr + off, run * inv_group, mask=m_f)
            run += x
        else:
            tl.store(y_ptr + off, run, mask=m_f)
            run += x * inv_group
    if HAS_LAST:
        tl.store(last_ptr + i_b.to(tl.int64) * F64 + o_f, run, mask=m_f)


@triton.jit(do_not_specialize=["N", "GS", "G", "STEPS"])
def _group_scan_kernel(
    a_ptr,  # (B, N, DA)
    b_ptr,  # (B, N, DB)
    y_ptr,  # (B, G, DA, DB) out, the states' dtype: the state each group reads, or the adjoint per group (REVERSE)
    mask_ptr,  # (B, N) uint8 row mask of a, or dummy
    init_ptr,  # (B, DA, DB) float32: the initial state (forward) or the final state's gradient (REVERSE), or dummy
    last_ptr,  # (B, DA, DB) float32 out: the final state (forward) or the initial state's gradient (REVERSE), or dummy
    N,
    GS,  # tokens per group, a multiple of BT
    G,  # groups: ceil(N / GS)
    STEPS,  # GS // BT token steps per group
    DA,
    DB,
    stride_ab,
    stride_an,
    stride_bb,
    stride_bn,
    stride_mb,
    inv_group,
    REVERSE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_INIT: tl.constexpr,
    HAS_LAST: tl.constexpr,
    BT: tl.constexpr,
    BA: tl.constexpr,
    BB: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``group_state`` and ``state_scan`` in one pass: each program owns one (BA, BB) tile of the state and walks
    the groups in order (REVERSE: last to first) in one flat loop of token steps (pipelined across group
    boundaries), so a group's sum ``S_j = Σ_{t in j} a_tᵀ b_t`` lives only in registers. Forward: stores
    ``y_j = init + Σ_{i<j} S_i / g`` before adding S_j, ``last = init + Σ_i S_i / g``. REVERSE (the adjoint):
    ``y_j = (init + Σ_{i>j} S_i) / g``, ``last = init + Σ_i S_i``. The per-group sums never reach memory."""
    i_ab, i_b = tl.program_id(0), tl.program_id(1)
    b_blocks = tl.cdiv(DB, BB)
    o_a = (i_ab // b_blocks) * BA + tl.arange(0, BA)
    o_b = (i_ab % b_blocks) * BB + tl.arange(0, BB)
    m_a, m_b = o_a < DA, o_b < DB
    m_ab = m_a[:, None] & m_b[None, :]
    i_b64 = i_b.to(tl.int64)
    state_elems = DA * DB
    o_ab = o_a[:, None] * DB + o_b[None, :]  # offsets in one contiguous (DA, DB) state
    run = tl.zeros((BA, BB), dtype=tl.float32)
    if HAS_INIT:
        run += tl.load(init_ptr + i_b64 * state_elems + o_ab, mask=m_ab, other=0.0)
    acc = tl.zeros((BA, BB), dtype=tl.float32)
    for r in range(G * STEPS):
        j = r // STEPS
        if REVERSE:
            j = G - 1 - j
        o_t = j * GS + (r % STEPS) * BT + tl.arange(0, BT)
        m_t = o_t < N
        if HAS_MASK:
            m_t = m_t & (tl.load(mask_ptr + i_b64 * stride_mb + o_t, mask=m_t, other=0) != 0)
        b_at = tl.load(
            a_ptr + i_b64 * stride_ab + o_a[:, None] + o_t[None, :] * stride_an,
            mask=m_a[:, None] & m_t[None, :],
            other=0.0,
        )  # (BA, BT): a transposed
        b_b = tl.load(
            b_ptr + i_b64 * stride_bb + o_t[:, None] * stride_bn + o_b[None, :],
            mask=m_t[:, None] & m_b[None, :],
            other=0.0,
        )
        acc = dot(b_at, b_b, acc, DOT_PREC)
        if r % STEPS == STEPS - 1:  # the group's last step: its sum is complete
            # 64-bit group offset: a batch row's states pass 2**31 elements at 1M tokens in groups of 64
            p_y = y_ptr + (i_b64 * G + j) * state_elems + o_ab
            if REVERSE:
                tl.store(p_y, (run * inv_group).to(y_ptr.dtype.element_ty), mask=m_ab)
                run += acc
            else:
                tl.store(p_y, run.to(y_ptr.dtype.element_ty), mask=m_ab)
                run += acc * inv_group
            acc = tl.zeros((BA, BB), dtype=tl.float32)
    if HAS_LAST:
        tl.store(last_ptr + i_b64 * state_elems + o_ab, run, mask=m_ab)


def _block(d: int, cap: int) -> int:
    return min(cap, max(16, next_power_of_2(d)))


def state_config(group: int, da: int, db: int, dtype: torch.dtype, arch: int | None = None) -> dict:
    """Blocks and warps of ``group_state`` (spill-free on sm_80/sm_90: ``python -m flash_triton.aot``) on a GPU of
    compute capability ``arch`` (a tuned entry of :mod:`flash_triton.tuning` where there is one)."""
    if dtype == torch.float32:  # the exact FMA dot holds its operands in registers: 8 warps, 16-token steps
        # (32-token steps spilled 96-128 B on sm_80 under triton 3.9)
        cfg = dict(BT=_block(group, 16), BA=_block(da, 64), BB=_block(db, 64), num_warps=8, num_stages=2)
    else:
        cfg = dict(BT=_block(group, 32), BA=_block(da, 64), BB=_block(db, 64), num_warps=4, num_stages=2)
    return tuning.tuned("group_state", arch, dtype, dict(group=group, da=da, db=db), cfg)


def apply_config(group: int, dx: int, dy: int, dtype: torch.dtype, arch: int | None = None) -> dict:
    """Blocks and warps of ``group_apply``. Half precision: 64-row tiles, the smallest that wgmma takes on sm_90
    (32-row tiles compiled to mma.sync there), 64-wide steps; float32 (exact FMA products, operands in registers)
    keeps 32 x 32 steps (64 x 64 spilled on sm_90). ``arch``: as in :func:`state_config`."""
    if dtype == torch.float32:
        cfg = dict(BT=_block(group, 32), BX=_block(dx, 32), BY=_block(dy, 64), num_warps=4, num_stages=2)
    else:
        cfg = dict(BT=_block(group, 64), BX=_block(dx, 64), BY=_block(dy, 64), num_warps=4, num_stages=2)
    return tuning.tuned("group_apply", arch, dtype, dict(group=group, dx=dx, dy=dy), cfg)


def group_state(
    a: Tensor, b: Tensor, group: int, row_mask: Tensor | None = None, windows: Tensor | None = None
) -> Tensor:
    """(B, G, DA, DB) float32 ``Σ_{t in group j} a_tᵀ b_t`` for a (B, N, DA), b (B, N, DB); G = ceil(N / group),
    or the rows of ``windows`` ((G, 2) int32 [start, end) of a packed variable-length batch)."""
    a, b = last_dim_contiguous(a, b)
    check_row_offsets(a=a, b=b)
    bsz, n, da = a.shape
    db = b.shape[-1]
    g = windows.shape[0] if windows is not None else cdiv(n, group)
    out = new_output(a, (bsz, g, da, db), torch.float32)
    mask = row_mask_u8(row_mask)
    cfg = state_config(group, da, db, a.dtype, device_arch(a.device))
    grid = (g * cdiv(da, cfg["BA"]), cdiv(db, cfg["BB"]), bsz)
    _group_state_kernel[grid](
        a,
        b,
        out,
        mask if mask is not None else a.new_empty(0),
        windows if windows is not None else a.new_empty(0),
        n,
        group,
        da,
        db,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        mask.stride(0) if mask is not None else 0,
        HAS_MASK=mask is not None,
        VARLEN=windows is not None,
        DOT_PREC=dot_precision(a.dtype),
        enable_fp_fusion=FP_FUSION,
        **cfg,
    )
    return out


def group_apply(
    x: Tensor,
    m: Tensor,
    group: int,
    scale: float,
    row_mask: Tensor | None = None,
    out_dtype=None,
    windows: Tensor | None = None,
    accumulate: Tensor | None = None,
) -> Tensor:
    """(B, N, DY) ``scale * x_t m[b, group(t)]`` for x (B, N, DX) and m (B, G, DX, DY) (any float dtype and strides);
    ``windows`` as in :func:`group_state`. With ``accumulate`` (a contiguous (B, N, DY) tensor), the product is
    added to it in place (the sum rounded once) and it is returned; rows the mask drops keep their value."""
    (x,) = last_dim_contiguous(x)
    check_row_offsets(x=x, y=torch.empty(x.shape[0], x.shape[1], m.shape[-1], device="meta"))
    bsz, n, dx = x.shape
    dy = m.shape[-1]
    if accumulate is not None:
        if accumulate.shape != (bsz, n, dy) or not accumulate.is_contiguous():
            raise ValueError(
                f"accumulate must be a contiguous tensor of shape {(bsz, n, dy)}, got {tuple(accumulate.shape)} "
                f"with strides {accumulate.stride()}"
            )
        y = accumulate
    else:
        y = new_output(x, (bsz, n, dy), out_dtype or x.dtype)
    mask = row_mask_u8(row_mask)
    cfg = apply_config(group, dx, dy, x.dtype, device_arch(x.device))
    g = windows.shape[0] if windows is not None else cdiv(n, group)
    grid = (g * cdiv(group, cfg["BT"]), cdiv(dy, cfg["BY"]), bsz)
    _group_apply_kernel[grid](
        x,
        m,
        y,
        mask if mask is not None else x.new_empty(0),
        windows if windows is not None else x.new_empty(0),
        n,
        group,
        dx,
        dy,
        x.stride(0),
        x.stride(1),
        m.stride(0),
        m.stride(1),
        m.stride(2),
        m.stride(3),
        y.stride(0),
        y.stride(1),
        mask.stride(0) if mask is not None else 0,
        scale,
        HAS_MASK=mask is not None,
        VARLEN=windows is not None,
        ACCUMULATE=accumulate is not None,
        DOT_PREC=dot_precision(x.dtype),
        enable_fp_fusion=FP_FUSION,
        **cfg,
    )
    return y


SCAN_CONFIG = dict(BF=1024, num_warps=4, num_stages=2)  # 8 fp32 per thread: two 16-byte vectors per group


def state_scan(
    states: Tensor,
    group: int,
    init: Tensor | None,
    want_last: bool,
    reverse: bool,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor | None]:
    """The causal state algebra of :mod:`.state` for uniform groups, in one kernel (fp32).

    Forward (``reverse=False``): from the raw per-group sums ``states`` (B, G, S, E), the state each group reads,
    ``init + Σ_{i<j} S_i / group`` (:func:`.state.window_state`, causal), and with ``want_last`` the final state
    ``init + Σ_i S_i / group`` (:func:`.state.final_state`). Reverse: from the gradients of the states the groups
    read, the gradients of the raw sums ``(init + Σ_{i>j} dP_i) / group`` and, with ``want_last``, of the initial
    state ``init + Σ_i dP_i`` (:func:`.state.window_state_backward`, causal; ``init`` = the final state's gradient).
    The per-group result is stored in ``out_dtype`` (the running sums are float32; ``last`` is float32).
    """
    states = states.contiguous()
    b, g, s, e = states.shape
    f = s * e
    y = new_output(states, states.shape, out_dtype)
    last = new_output(states, (b, s, e), torch.float32) if want_last else None
    dummy = states.new_empty(0)
    _state_scan_kernel[(cdiv(f, SCAN_CONFIG["BF"]), b)](
        x_ptr=states,
        y_ptr=y,
        init_ptr=init.float().contiguous() if init is not None else dummy,
        last_ptr=last if last is not None else dummy,
        G=g,
        F=f,
        inv_group=1.0 / group,
        REVERSE=reverse,
        HAS_INIT=init is not None,
        HAS_LAST=want_last,
        enable_fp_fusion=FP_FUSION,
        **SCAN_CONFIG,
    )
    return y, last


def scan_config(group: int, da: int, db: int, dtype: torch.dtype, arch: int | None = None) -> dict:
    """Blocks and warps of the fused ``group_scan`` (``group`` a multiple of 16): token steps that divide the group
    (the loop walks whole groups), state tiles as in :func:`state_config`; three stages in half precision (the loop
    streams every token of the sequence through one program, so the loads are what it waits on)."""
    if dtype == torch.float32:  # as group_state: the exact FMA dot holds its operands in registers (8 warps; ptxas
        # capped one flag set at 128 registers and spilled in the loop on sm_90: maxnreg lifts the cap)
        cfg = dict(BT=16, BA=_block(da, 64), BB=_block(db, 64), num_warps=8, num_stages=2, maxnreg=255)
    else:
        bt = 16
        while bt < 64 and group % (2 * bt) == 0:
            bt *= 2
        cfg = dict(BT=bt, BA=_block(da, 64), BB=_block(db, 64), num_warps=4, num_stages=3)
    cfg = tuning.tuned("group_scan", arch, dtype, dict(group=group, da=da, db=db), cfg)
    if group % cfg["BT"]:  # the walk steps through whole groups: only a tuned entry can break this
        raise ValueError(f"group_scan: a tuned token step BT={cfg['BT']} does not divide the group size {group}")
    return cfg


# The fused scan runs one program per (state tile, batch row), each walking every group of its row in order; the
# unfused pair runs one program per (group, state tile) and round-trips the float32 per-group sums through memory.
# The fused form moves 2 x 4 x s x e / g fewer bytes per token and per scan, but holds fewer programs: it is chosen
# when there are enough programs to fill a GPU, or few enough groups that the walk is short. A static model, not a
# measurement: the tuning of issue 13 is to set these on a GPU.
FUSED_SCAN_MIN_PROGRAMS = 96
FUSED_SCAN_MAX_GROUPS = 32


def fused_scan_fits(
    batch: int, n: int, group: int, da: int, db: int, dtype: torch.dtype, arch: int | None = None
) -> bool:
    """Whether :func:`group_scan` picks the fused kernel for this shape (see ``FUSED_SCAN_MIN_PROGRAMS``)."""
    if group % 16:
        return False
    cfg = scan_config(group, da, db, dtype, arch)
    programs = batch * cdiv(da, cfg["BA"]) * cdiv(db, cfg["BB"])
    return programs >= FUSED_SCAN_MIN_PROGRAMS or cdiv(n, group) <= FUSED_SCAN_MAX_GROUPS


def group_scan(
    a: Tensor,
    b: Tensor,
    group: int,
    init: Tensor | None,
    want_last: bool,
    reverse: bool,
    row_mask: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    fused: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``state_scan(group_state(a, b, group, row_mask), group, init, want_last, reverse)`` for uniform groups:
    (B, G, DA, DB) in ``out_dtype`` (default: a's dtype; the consumers read the states in the inputs' precision),
    and the float32 (B, DA, DB) last state when ``want_last``.

    ``fused`` (default: :func:`fused_scan_fits`) runs the single kernel that keeps each group's sum in registers;
    ``False`` the two kernels. Fusing needs ``group`` to be a multiple of 16; asked for otherwise, it raises.
    """
    a, b = last_dim_contiguous(a, b)
    bsz, n, da = a.shape
    db = b.shape[-1]
    out_dtype = out_dtype or a.dtype
    if fused is None:
        fused = fused_scan_fits(bsz, n, group, da, db, a.dtype, device_arch(a.device))
    elif fused and group % 16:
        raise ValueError(f"the fused group scan needs a group size that is a multiple of 16, got group={group}")
    if not fused:
        states = group_state(a, b, group, row_mask=row_mask)
        return state_scan(states, group, init, want_last, reverse, out_dtype)
    check_row_offsets(a=a, b=b)
    g = cdiv(n, group)
    y = new_output(a, (bsz, g, da, db), out_dtype)
    last = new_output(a, (bsz, da, db), torch.float32) if want_last else None
    mask = row_mask_u8(row_mask)
    cfg = scan_config(group, da, db, a.dtype, device_arch(a.device))
    dummy = a.new_empty(0)
    _group_scan_kernel[(cdiv(da, cfg["BA"]) * cdiv(db, cfg["BB"]), bsz)](
        a_ptr=a,
        b_ptr=b,
        y_ptr=y,
        mask_ptr=mask if mask is not None else dummy,
        init_ptr=init.float().contiguous() if init is not None else dummy,
        last_ptr=last if last is not None else dummy,
        N=n,
        GS=group,
        G=g,
        STEPS=group // cfg["BT"],
        DA=da,
        DB=db,
        stride_ab=a.stride(0),
        stride_an=a.stride(1),
        stride_bb=b.stride(0),
        stride_bn=b.stride(1),
        stride_mb=mask.stride(0) if mask is not None else 0,
        inv_group=1.0 / group,
        REVERSE=reverse,
        HAS_MASK=mask is not None,
        HAS_INIT=init is not None,
        HAS_LAST=want_last,
        DOT_PREC=dot_precision(a.dtype),
        enable_fp_fusion=FP_FUSION,
        **cfg,
    )
    return y, last
