"""Static performance profile without a GPU: what the compiled kernels will do on an H100 (sm_90) or A100 (sm_80),
read from their SASS, plus a model of the executed FLOPs and the HBM bytes of the attention cores.

    python -m flash_triton.profile [--arch 90 80] [--dtype bf16 fp16] [--quick] [--jobs N]

Per kernel, in the launch configuration its launcher picks on that architecture at the benchmark shapes (FLASH: s
128, e 1024, g 256; GAU: window n = 8192; causal), for the flag combinations the layers launch (``--quick``: the
causal training launch of each layer, bf16 only): registers, spill bytes, shared memory, resident blocks and warps
per SM, the MMA kind (wgmma / mma.sync / none) and count, global loads by width (16-byte vectors vs narrower),
cp.async and TMA loads, and the hot loop (the loop of the SASS holding the most MMA work; nested loops counted
once; of equal ones the shortest, which for the streaming kernels is a loop over the tiles outside the T5 band: at
n 8192 and the default max_distance 128 they are all but a few of each program's tiles): its instructions, the
MMA FLOPs per warp instruction and its global loads and cp.async copies by width; and the hot loop's inner loop
(its innermost loop with MMA work, e.g. the streaming backward's loop over the value width; the hot loop itself
where it has none), which runs many times per hot-loop iteration: its instructions and MMA, its synchronous global
loads (LDG: the iteration waits out their latency, which at one block of 8 warps per SM nothing else hides) against
its asynchronous copies (cp.async or TMA, issued a stage ahead by triton's software pipeline), and its waits for
every wgmma in flight (none overlaps the next iteration's work). The hot loop's static count holds its inner loop
once; as executed, the inner loop runs once per BE-wide step over the value width (E / BE times), so one hot-loop
iteration issues ``hot + (E / BE - 1) x inner`` warp instructions: that count and its MMA FLOPs per warp instruction
are the profile's last columns (the same as the hot loop's where it has no inner loop of its own), with the MMA FLOPs
the SASS issues per iteration over those of its tile products counted once (the streaming kernels: above 1 where
warps compute the same products), the bytes its global loads and copies request (all warps, every issued load at
full width: an upper bound; the 16-byte cp.async that stream the operands bypass L1, so those are L2 reads, while
LDG may hit L1) and the tile FLOPs per such byte. An H100 SM is served roughly 20-40 bytes a cycle from L2 and
issues 4,096 dense bf16 FLOPs a cycle, so a hot loop far below ~100 tile FLOPs per L2 byte is bound by L2
bandwidth, not by the tensor cores (a model, not a measurement).

Per core (n 8192, batch 1, the default flags), from the launch grids and loop bounds of the launchers: executed
MMA FLOPs over the minimum of :mod:`benchmarks.formulas` (the same convention: useful products only, causal
n g / 2), and HBM bytes per token over the floor, modelled as every kernel reading each tensor it needs once and
writing each output once (perfect reuse inside a kernel, none across kernels) plus the torch ops between them.
The H100 time (batch 4, the suite's core rows) is an estimate from those two models at peak rates (989 TFLOP/s
bf16 dense, 67 TFLOP/s float32 FMA, 3.35 TB/s), a lower bound that assumes every kernel runs at its roofline; not a
measurement. Must run without ``TRITON_INTERPRET=1``.
"""

import argparse
import inspect
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch

from . import aot
from .embeddings import T5RelativePositionBias
from .mixed_chunk_attn import kernels as mca
from .quad_attn import kernels as qa
from .quad_attn import short_window as sw

# benchmark shapes (benchmarks/subjects: quad-attn, mixed-chunk-attn, gau-layer, flash-layer)
N, S, E, G, BATCH = 8192, 128, 1024, 256, 4
# per SM: registers, shared memory (bytes, including the 1 KiB each block reserves), warps, blocks; peak rates
ARCH = {
    90: dict(regs=65536, smem=233472, warps=64, blocks=32, tflops=989.0, gbps=3350.0, name="H100 SXM"),
    80: dict(regs=65536, smem=167936, warps=64, blocks=32, tflops=312.0, gbps=2039.0, name="A100 SXM"),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ---------------------------------------------------------------------------------------------------------------
# SASS


_LOAD = re.compile(r"\b(LDGSTS|LDG)(?![A-Z])((?:\.[A-Z0-9_]+)*)")  # not LDGDEPBAR (a cp.async group's barrier)
_HGMMA = re.compile(r"\bHGMMA\.(\d+)x(\d+)x(\d+)")
_HMMA = re.compile(r"\bHMMA\.(16)(8)(16|8|4)\b")
_FFMA = re.compile(r"\bFFMA\b")
_TMA = re.compile(r"\b(UTMALDG|UBLKCP)\b")
_MMA_WAIT_ALL = re.compile(r"\bWARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x0\b")


def load_width(modifiers: str) -> int:
    """Bytes per thread of a global load from its SASS modifiers (``.128`` = 16-byte vectors; none = 4)."""
    mods = modifiers.split(".")
    if "128" in mods:
        return 16
    if "64" in mods:
        return 8
    if "U16" in mods or "S16" in mods:
        return 2
    if "U8" in mods or "S8" in mods:
        return 1
    return 4


def mma_flops(instruction: str, tensor_cores: bool) -> float:
    """Matrix-product FLOPs one warp's instance of ``instruction`` computes: a wgmma (HGMMA m x n x k) is issued by
    the 4 warps of a warpgroup, an mma.sync (HMMA m16 n8 k) by one warp; FFMA counts (32 lanes x 2) only in a
    kernel without tensor-core products (the float32 path, where the matrix products are FMAs)."""
    m = _HGMMA.search(instruction)
    if m:
        a, b, c = map(int, m.groups())
        return 2.0 * a * b * c / 4
    m = _HMMA.search(instruction)
    if m:
        a, b, c = map(int, m.groups())
        return 2.0 * a * b * c
    if not tensor_cores and _FFMA.search(instruction):
        return 64.0
    return 0.0


@dataclass
class SassStats:
    instructions: int = 0
    mma_kind: str = "none"  # "wgmma", "mma.sync", "wgmma+mma.sync" or "none"
    mma_count: int = 0
    loads: dict = field(default_factory=dict)  # bytes per thread -> global load instructions (LDG)
    cp_async: dict = field(default_factory=dict)  # bytes per thread -> cp.async instructions (LDGSTS)
    tma: int = 0
    loop_instructions: int = 0  # the hot loop
    loop_mma: int = 0
    loop_flop_per_instruction: float = 0.0
    loop_loads: dict = field(default_factory=dict)  # the hot loop's LDG and LDGSTS: bytes per thread -> count
    loop_load_bytes: int = 0  # bytes one warp's LDG and LDGSTS in the hot loop request (32 threads each)
    # the inner loop: the innermost loop with MMA work inside the hot loop (the hot loop itself when it has none)
    inner_instructions: int = 0
    inner_mma: int = 0
    inner_sync_loads: dict = field(default_factory=dict)  # LDG by width: the iteration waits out their latency
    inner_async_loads: int = 0  # cp.async (LDGSTS) and TMA copies: issued ahead by the software pipeline
    inner_mma_waits: int = 0  # waits for every wgmma in flight (WARPGROUP.DEPBAR.LE gsb0, 0x0): none overlaps
    inner_flops: float = 0.0  # MMA FLOPs per warp of one inner-loop iteration
    nested: bool = False  # the inner loop lies inside the hot loop (not the hot loop itself)
    inner_load_bytes: int = 0  # bytes one warp's LDG and LDGSTS in the inner loop request


def _by_width(loads) -> dict:
    """Bytes per thread -> count of ``_LOAD`` matches."""
    out = {}
    for m in loads:
        width = load_width(m.group(2))
        out[width] = out.get(width, 0) + 1
    return out


def _warp_bytes(loads) -> int:
    """Bytes one warp requests with these ``_LOAD`` matches (LDG / LDGSTS): 32 threads each, at full width."""
    return sum(32 * load_width(m.group(2)) for m in loads)


def _mma_instructions(body: list[str]) -> int:
    return sum(bool(_HGMMA.search(t) or _HMMA.search(t)) for t in body)


def sass_stats(sass: str) -> SassStats:
    """What the SASS of one kernel shows (see the module docstring)."""
    instructions, loops = aot.parse_sass(sass)
    st = SassStats(instructions=len(instructions))
    hgmma = sum(bool(_HGMMA.search(t)) for _, t in instructions)
    hmma = sum(bool(_HMMA.search(t)) for _, t in instructions)
    st.mma_count = hgmma + hmma
    st.mma_kind = "+".join(k for k, c in (("wgmma", hgmma), ("mma.sync", hmma)) if c) or "none"
    tensor_cores = st.mma_count > 0
    loads = [m for m in (_LOAD.search(t) for _, t in instructions) if m]
    st.loads = _by_width(m for m in loads if m.group(1) == "LDG")
    st.cp_async = _by_width(m for m in loads if m.group(1) == "LDGSTS")
    st.tma = sum(bool(_TMA.search(t)) for _, t in instructions)

    def hottest(candidates):  # (flops, first, last, body) of the most MMA work; of equal ones the shortest
        best = None
        for first, last in candidates:
            body = [t for a, t in instructions if first <= a <= last]
            flops = sum(mma_flops(t, tensor_cores) for t in body)
            if flops and (best is None or flops > best[0] or (flops == best[0] and len(body) < len(best[3]))):
                best = (flops, first, last, body)
        return best

    best = hottest(loops)
    if best is not None:
        flops, first, last, body = best
        st.loop_flop_per_instruction = flops / len(body)
        st.loop_instructions = len(body)
        st.loop_mma = _mma_instructions(body)
        loop_loads = [m for m in map(_LOAD.search, body) if m]
        st.loop_loads = _by_width(loop_loads)
        st.loop_load_bytes = _warp_bytes(loop_loads)
        inside = [(a, b) for a, b in loops if first <= a and b <= last]
        innermost = [(a, b) for a, b in inside if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in inside)]
        inner = hottest(innermost) or best
        inner_flops, _, _, body = inner
        st.nested = inner[1:3] != best[1:3]
        st.inner_flops = inner_flops
        loads = [m for m in map(_LOAD.search, body) if m]
        st.inner_instructions = len(body)
        st.inner_load_bytes = _warp_bytes(loads)
        st.inner_mma = _mma_instructions(body)
        st.inner_sync_loads = _by_width(m for m in loads if m.group(1) == "LDG")
        st.inner_async_loads = sum(m.group(1) == "LDGSTS" for m in loads) + sum(bool(_TMA.search(t)) for t in body)
        st.inner_mma_waits = sum(bool(_MMA_WAIT_ALL.search(t)) for t in body)
    return st


def tile_flops(kernel: str, c: dict) -> float:
    """MMA FLOPs of one hot-loop iteration of a streaming kernel, each product of its tiles counted once (the
    benchmark's E): the forward's scores and A v over its value block; dv's scores and Aᵀ dy; the dk / dq / dkq step's
    dy vᵀ over all of E, its scores and its feature block's dk and / or dq. 0 for the other kernels."""
    if kernel not in ("quad_attn_fwd", "quad_attn_dv", "quad_attn_dk", "quad_attn_dq", "quad_attn_dkq"):
        return 0.0
    tile, s_pad = 2.0 * c["BM"] * c["BN"], c["S_BLOCKS"] * c["BS"]
    if kernel in ("quad_attn_fwd", "quad_attn_dv"):
        return tile * (s_pad + c["BE"])
    return tile * (_cdiv(E, c["BE"]) * c["BE"] + s_pad + c["BS"] * (2 if kernel == "quad_attn_dkq" else 1))


def executed(st: SassStats, inner_trips: int) -> tuple[int, float]:
    """(warp instructions, MMA FLOPs) of one warp in one hot-loop iteration as it executes: its inner loop
    ``inner_trips`` times, the rest once. The hot loop's static count holds its inner loop's body once, so where
    that runs 16 times (the streaming backward over E = 1024 in 64-wide steps) the static FLOP per instruction
    overstates what the warps issue per FLOP."""
    extra = inner_trips - 1 if st.nested else 0
    instructions = st.loop_instructions + extra * st.inner_instructions
    return instructions, st.loop_flop_per_instruction * st.loop_instructions + extra * st.inner_flops


def executed_bytes(st: SassStats, inner_trips: int) -> int:
    """Bytes one warp's global loads and copies request in one hot-loop iteration as it executes (as
    :func:`executed`; every issued load at full width, so an upper bound: a software pipeline's last prefetch is
    predicated off): what the L1 and L2 caches serve. The 16-byte cp.async of the streamed operands bypass L1
    (``LDGSTS.E.BYPASS``): each is an L2 read; LDG may hit L1 (the T5 table, the key mask, a tile that both
    warpgroups load)."""
    extra = inner_trips - 1 if st.nested else 0
    return st.loop_load_bytes + extra * st.inner_load_bytes


def occupancy(arch: int, registers: int, shared: int, warps: int) -> tuple[int, int]:
    """(resident blocks, resident warps) per SM: registers are allocated per warp in units of 256, each block
    reserves 1 KiB of shared memory beyond its own."""
    a = ARCH[arch]
    per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    by_regs = (a["regs"] // per_warp) // warps
    by_smem = a["smem"] // (shared + 1024)
    blocks = min(by_regs, by_smem, a["warps"] // warps, a["blocks"])
    return blocks, blocks * warps


# ---------------------------------------------------------------------------------------------------------------
# executed FLOPs and HBM bytes of the cores, from the launchers' grids and loop bounds


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class Launch:
    """One kernel launch of a core: executed matrix-product FLOPs, and the bytes it reads and writes (each tensor
    once). ``torch`` launches are the torch ops between kernels (element-wise, no FLOPs counted)."""

    name: str
    flops: float
    read: float
    written: float


# the layers' default T5 max_distance (where the transposed dk kernel's per-bucket band ends)
T5_MAX_DISTANCE = inspect.signature(T5RelativePositionBias).parameters["max_distance"].default


def quad_tiles(kind: str, w: int, s: int, e: int, dtype: torch.dtype) -> dict:
    return qa.launch_config(kind, w, s, e, dtype, False, arch=90)  # the model's GPU: an H100


def short_forward(n: int, w: int, s: int, e: int, dtype: torch.dtype, causal: bool, lin: bool) -> tuple:
    """The short-window forward (windows of at most ``SHORT_WINDOW`` tokens): executed FLOPs of
    ``_quad_weights_kernel`` (q kᵀ over the padded query/key width, once per visited (query tile, key tile)) and of
    ``_quad_out_kernel`` (per (value block, query tile): A v over the same key tiles and, with ``lin``, lin_q P over
    the padded query/key width), and the number of weights stored."""
    cw, co = sw.short_config("weights", w, s, e, dtype, 90), sw.short_config("out", w, s, e, dtype, 90)
    bm, bn, be = cw["BM"], cw["BN"], co["BE"]
    e_pad = _cdiv(e, be) * be
    tiles = _visited_tiles(n, w, bm, bn, causal)
    query_tiles = _cdiv(n, w) * _cdiv(min(w, n), bm)
    out = tiles * 2.0 * bm * bn * e_pad + (query_tiles * 2.0 * bm * _cdiv(s, co["BS"]) * co["BS"] * e_pad if lin else 0)
    return tiles * 2.0 * bm * bn * cw["S_BLOCKS"] * cw["BS"], out, float(tiles * bm * bn)


def quad_forward(n: int, w: int, s: int, e: int, dtype: torch.dtype, causal: bool, lin: bool) -> float:
    """Executed FLOPs of the forward the launcher picks: :func:`short_forward` for windows of at most
    ``SHORT_WINDOW`` tokens, else ``_quad_attn_fwd_kernel``: per (window, query tile, value block) program, each key
    tile up to the window's end (causal: the tile's diagonal) costs q kᵀ over the padded query/key width and A v
    over the value block; with ``lin``, lin_q P over the padded query/key width."""
    if w <= qa.SHORT_WINDOW:
        weights_flops, out_flops, _ = short_forward(n, w, s, e, dtype, causal, lin)
        return weights_flops + out_flops
    c = quad_tiles("fwd", w, s, e, dtype)
    bm, bn, s_pad, be = c["BM"], c["BN"], c["S_BLOCKS"] * c["BS"], c["BE"]
    flops = 0.0
    for win in range(_cdiv(n, w)):
        ws, we = win * w, min(n, win * w + w)
        for q0 in range(ws, we, bm):
            hi = min(we, q0 + bm) if causal else we
            steps = _cdiv(hi - ws, bn)
            flops += steps * 2.0 * bm * bn * (s_pad + be) + (2.0 * bm * _cdiv(s, c["BS"]) * c["BS"] * be if lin else 0)
    return flops * _cdiv(e, be)


def _visited_tiles(n: int, w: int, bm: int, bn: int, causal: bool) -> int:
    """(query tile, key tile) pairs of the short-window kernels: key tiles up to the window's end (causal: up to the
    query tile's last row)."""
    tiles = 0
    for win in range(_cdiv(n, w)):
        ws, we = win * w, min(n, win * w + w)
        for q0 in range(ws, we, bm):
            tiles += _cdiv((min(we, q0 + bm) if causal else we) - ws, bn)
    return tiles


def short_backward(n: int, w: int, s: int, e: int, dtype: torch.dtype, causal: bool) -> tuple[float, float, float]:
    """The short-window backward: executed FLOPs of ``_quad_dscores_kernel`` (per visited tile: dA = dy vᵀ over the
    padded value width, the scores over the padded query/key width) and of the three tile products (dv = Aᵀ dy, dq =
    ds k, dk = dsᵀ q over the visited tiles, widths padded to their feature blocks), and the elements each of the
    two stored tensors (weights, score gradients) holds."""
    c = sw.short_config("dscores", w, s, e, dtype, 90)
    bm, bn = c["BM"], c["BN"]
    tiles = _visited_tiles(n, w, bm, bn, causal)
    dscores = tiles * 2.0 * bm * bn * (_cdiv(e, c["BE"]) * c["BE"] + c["S_BLOCKS"] * c["BS"])
    products = 0.0
    for d in (e, s, s):
        bd = sw.short_config("product", w, d, d, dtype, 90)["BD"]
        products += tiles * 2.0 * bm * bn * _cdiv(d, bd) * bd
    return dscores, products, float(tiles * bm * bn)


def quad_backward(
    n: int, w: int, s: int, e: int, dtype: torch.dtype, causal: bool, deterministic: bool = False
) -> float:
    """Executed FLOPs of the backward the launcher picks: :func:`short_backward` for windows of at most
    ``SHORT_WINDOW`` tokens; else the dv kernel (scores and Aᵀ dy per key tile and value block) and the dk kernel
    with dq added atomically ("dkq": per key tile and query/key feature block, dA = dy vᵀ over all of E, the scores
    over the padded width, the tile's dsᵀ q and ds k over its feature block); with ``deterministic`` (torch's
    deterministic algorithms) the dk and dq kernels instead, each with dA and the scores of its own."""
    if w <= qa.SHORT_WINDOW:
        return sum(short_backward(n, w, s, e, dtype, causal)[:2])
    total = 0.0
    for kind in ("dv", "dk", "dq") if deterministic else ("dv", "dkq"):
        c = quad_tiles(kind, w, s, e, dtype)
        bm, bn, bs, be = c["BM"], c["BN"], c["BS"], c["BE"]
        s_pad, e_pad = c["S_BLOCKS"] * bs, _cdiv(e, be) * be
        for win in range(_cdiv(n, w)):
            ws, we = win * w, min(n, win * w + w)
            if kind == "dv":
                for k0 in range(ws, we, bn):
                    steps = _cdiv(we - (k0 if causal else ws), bm)
                    total += _cdiv(e, be) * steps * 2.0 * bm * bn * (s_pad + be)
            elif kind in ("dk", "dkq"):
                products = bs if kind == "dk" else 2 * bs  # dsᵀ q (and ds k)
                for k0 in range(ws, we, bn):
                    lo = k0 if causal else ws
                    if "BM_NEAR" in c:  # the transposed kernel: queries within T5_MAX_DISTANCE in BM_NEAR steps
                        near, far = max(lo, k0 - T5_MAX_DISTANCE), min(we, k0 + bn + T5_MAX_DISTANCE)
                        rows = (_cdiv(near - lo, bm) + _cdiv(we - far, bm)) * bm
                        rows += _cdiv(far - near, c["BM_NEAR"]) * c["BM_NEAR"]
                    else:
                        rows = _cdiv(we - lo, bm) * bm
                    total += c["S_BLOCKS"] * rows * 2.0 * bn * (e_pad + s_pad + products)
            else:
                for q0 in range(ws, we, bm):
                    hi = min(we, q0 + bm) if causal else we
                    total += c["S_BLOCKS"] * _cdiv(hi - ws, bn) * 2.0 * bm * bn * (e_pad + s_pad + bs)
    return total


def _gated_quad(
    n: int, w: int, s: int, e: int, dtype: torch.dtype, backward: bool, lin: bool, state: float
) -> tuple[list[Launch], list[Launch]]:
    """The quadratic part of a core (GAU's whole core, FLASH's within-group half with lin_q P fused when ``lin``):
    its forward launch, and its backward launches (the gate's backward and the dv, dk, dq kernels)."""
    p = dtype.itemsize
    qk = n * p * 2 * s
    values = n * p * ((s if lin else 0) + 2 * e) + (state if lin else 0.0)  # v, gate (and lin_q, the states)
    written = n * p * e * (2 if backward else 1)
    lin_name = " + lin_q P" if lin else ""
    if w <= qa.SHORT_WINDOW:  # the weights written once and read once (value blocks of a query tile share them in L2)
        weights_flops, out_flops, weights = short_forward(n, w, s, e, dtype, True, lin)
        fwd = [
            Launch("quad_attn weights (q kᵀ once)", weights_flops, qk, weights * p),
            Launch(f"quad_attn out (A v{lin_name} + gate)", out_flops, values + weights * p, written),
        ]
    else:
        fwd = [
            Launch(f"quad_attn_fwd{lin_name} + gate", quad_forward(n, w, s, e, dtype, True, lin), qk + values, written)
        ]
    if not backward:
        return fwd, []
    gate = Launch("gate_backward (dy = d_out * gate, dgate = d_out * o_pre)", 0.0, 3.0 * n * p * e, 2.0 * n * p * e)
    if w <= qa.SHORT_WINDOW:  # weights and score gradients stored once, each read back by its products
        dscores, products, stored = short_backward(n, w, s, e, dtype, True)
        return fwd, [
            gate,
            Launch("quad_attn dscores (dy vᵀ, scores once)", dscores, n * p * (2 * s + 2 * e), 2 * stored * p),
            # dv reads the weights and dy, dq and dk the score gradients and k / q
            Launch(
                "quad_attn products (dv, dq, dk)", products, 3 * stored * p + n * p * (2 * s + e), n * p * (2 * s + e)
            ),
        ]
    return fwd, [
        gate,
        # dv reads q, k, dy; dk (dq added atomically into float32, which stays in L2 until written once) reads q, k,
        # v, dy
        Launch(
            "quad_attn_bwd (dv, dk + atomic dq)",
            quad_backward(n, w, s, e, dtype, True),
            n * p * (4 * s + 3 * e),
            n * p * (s + e) + n * 4.0 * s,
        ),
        Launch("torch: dq accumulator zeroed, cast to the input dtype", 0.0, n * 4.0 * s, n * 4.0 * s + n * p * s),
    ]


def core_launches(
    core: str, n: int, s: int, e: int, g: int, dtype: torch.dtype, backward: bool, batch: int = BATCH
) -> list[Launch]:
    """The launches of one causal training (or, without ``backward``, inference) call of a core, per batch row, no
    key mask, T5 bias on: ``core`` is "quad_attn" (window n) or "mixed_chunk_attn". ``batch`` decides what the
    launchers choose where that depends on it (the fused state scan)."""
    p = dtype.itemsize
    sums = 4.0 * _cdiv(n, g) * s * e  # one fp32 s x e per-group sum per group (the unfused scan's input)
    state = p * _cdiv(n, g) * s * e  # the states the kernels read, stored in the inputs' dtype
    gemm = 2.0 * n * s * e  # one per-group state product (group_state / group_apply)
    fwd, bwd = _gated_quad(n, n if core == "quad_attn" else g, s, e, dtype, backward, core != "quad_attn", state)
    if core == "quad_attn":
        return fwd + bwd

    def scan(what: str) -> list[Launch]:  # per-group sums of a product and their prefix (or its adjoint)
        if mca.fused_scan_fits(batch, n, g, s, e, dtype, 90):
            return [Launch(f"group_scan ({what}, sums in registers)", gemm, n * p * (s + e), state)]
        return [
            Launch(f"group_state ({what})", gemm, n * p * (s + e), sums),
            Launch("state_scan", 0.0, sums, state),
        ]

    out = [*scan("lin_kᵀ v, exclusive prefix / g; kept for the backward"), *fwd]
    if backward:
        fused = g <= qa.SHORT_WINDOW  # dv's tile product adds lin_k dS (reading lin_k and the state gradients)
        if fused:
            bwd = [
                Launch(x.name + ", dv += lin_k dS", x.flops + gemm, x.read + n * p * s + state, x.written)
                if x.name.startswith("quad_attn products")
                else x
                for x in bwd
            ]
        out += [  # the gate's backward, the state gradients, then the quadratic half's passes (dv adding lin_k dS)
            bwd[0],
            *scan("lin_qᵀ dY, adjoint of the prefix"),
            *bwd[1:],
            Launch("group_apply (dY Pᵀ)", gemm, n * p * e + state, n * p * s),
            Launch("group_apply (v dSᵀ)", gemm, n * p * e + state, n * p * s),
        ]
        if not fused:
            out.append(Launch("group_apply (dv += lin_k dS)", gemm, n * p * (s + e) + state, n * p * e))
    return out


@dataclass
class CoreModel:
    core: str
    dtype: str
    fwd_flops: float
    fwd_min: float
    bwd_flops: float
    bwd_min: float
    bytes_per_token: float
    floor_per_token: float
    h100_ms: float  # estimate at batch 4: Σ per launch max(FLOPs / peak, bytes / bandwidth), a lower bound

    @property
    def fwd_ratio(self) -> float:
        return self.fwd_flops / self.fwd_min

    @property
    def bwd_ratio(self) -> float:
        return self.bwd_flops / self.bwd_min

    @property
    def bytes_ratio(self) -> float:
        return self.bytes_per_token / self.floor_per_token


def core_model(core: str, dtype: str, n: int = N, s: int = S, e: int = E, g: int = G) -> CoreModel:
    """Executed over minimal FLOPs (forward; backward) and modelled over floor HBM bytes of a causal training call
    of ``core`` at batch 1."""
    try:
        from benchmarks import formulas  # the minimal counts the benchmark suite reports against
    except ImportError as err:
        raise RuntimeError("the core model needs benchmarks/formulas.py: run from the repository's root") from err

    td = DTYPES[dtype]
    p = td.itemsize
    if core == "quad_attn":
        fwd_min = formulas.quad_attn_flops(n, s, e, True, False)
        floor = formulas.quad_attn_bytes(n, s, e, p, True)
    else:
        fwd_min = formulas.mixed_chunk_attn_flops(n, s, e, g, True, False)
        floor = formulas.mixed_chunk_attn_bytes(n, s, e, g, p, True)
    fwd = core_launches(core, n, s, e, g, td, False)
    both = core_launches(core, n, s, e, g, td, True)
    fwd_flops = sum(x.flops for x in fwd)
    bwd_flops = sum(x.flops for x in both) - fwd_flops
    moved = sum(x.read + x.written for x in both)
    a = ARCH[90]
    peak = a["tflops"] * 1e12 * (1.0 if td != torch.float32 else 67.0 / 989.0)  # float32: FMA units, not tensor cores
    est = BATCH * sum(max(x.flops / peak, (x.read + x.written) / (a["gbps"] * 1e9)) for x in both)
    return CoreModel(core, dtype, fwd_flops, fwd_min, bwd_flops, 2 * fwd_min, moved / n, floor / n, est * 1e3)


# ---------------------------------------------------------------------------------------------------------------
# the kernels at the benchmark shapes


@dataclass
class KernelProfile:
    layer: str
    kernel: str
    arch: int
    dtype: str
    config: str
    warps: int
    registers: int = -1
    spill_bytes: int = -1
    spills_in_loops: int = 0  # spill instructions (STL / LDL) inside a loop, where it spills
    shared: int = -1
    blocks: int = 0
    resident_warps: int = 0
    sass: SassStats = field(default_factory=SassStats)
    # per hot-loop iteration as executed: its inner loop run ``inner_trips`` times (the streaming dk / dq / dkq:
    # once per BE-wide step over the value width E), the rest of the hot loop once
    inner_trips: int = 1
    executed_instructions: int = 0
    executed_flop_per_instruction: float = 0.0
    # the streaming kernels: MMA FLOPs of one executed hot-loop iteration, every warp's (SASS), over those of the
    # iteration's tile products (1: each computed once; 1.6: sm_90's 16-warp forward computed every 64 x 32 score
    # tile in all four warpgroups, each needing all of it as its register operand); 0 where not modelled
    replication: float = 0.0
    # bytes all warps' global loads and copies request in one executed hot-loop iteration, and (the streaming
    # kernels) the iteration's tile-product FLOPs per such byte: what the caches must serve per unit of useful work
    loaded_bytes: int = 0
    tile_flop_per_byte: float = 0.0
    error: str = ""


def profile_launches(quick: bool) -> list[tuple[str, aot.Launch]]:
    """(layer, launch) pairs: the causal training launch of GAU and FLASH (quick), or every combination the
    layers launch at their defaults plus the all-flags launch (:func:`flash_triton.aot.layer_launches`)."""
    if quick:
        return [
            ("GAU", aot.Launch(False, True, False, False)),
            ("FLASH", aot.Launch(True, True, False, False, state=False)),
        ]
    return [("FLASH" if la.flash else "GAU", la) for la in aot.layer_launches(True)]


def profile_jobs(
    quick: bool, dtypes: list[str], archs: list[int], launches: list[tuple[str, aot.Launch]] | None = None
) -> list[tuple]:
    """The distinct compiles of :func:`profile_launches` (or of ``launches``, (layer, launch) pairs) at the
    benchmark shapes, per dtype and arch."""
    jobs, seen = [], set()
    for layer, launch in launches if launches is not None else profile_launches(quick):
        w = G if launch.flash else N
        for dtype in dtypes:
            for arch in archs:
                for name, fn_name, dtype_, constexprs, options, divisible in aot.variants(
                    [(w, S, E)], [dtype], [launch], arch=arch
                ):
                    key = (layer, name, arch, dtype_, tuple(sorted(constexprs.items())), divisible)
                    if key not in seen:
                        seen.add(key)
                        jobs.append((layer, name, fn_name, dtype_, constexprs, arch, options, divisible))
    return jobs


def profile_kernel(job: tuple) -> KernelProfile:
    layer, name, fn_name, dtype, constexprs, arch, options, divisible = job
    tiles, flags = aot.describe(constexprs, divisible)
    res = KernelProfile(layer, name, arch, dtype, f"{tiles} {flags}", options["num_warps"])
    try:
        binary = aot.compile_kernel(fn_name, dtype, constexprs, arch, options, sass=True, divisible=divisible)
        res.registers, res.spill_bytes, res.shared = binary.registers, binary.spill_bytes, binary.shared
        res.spills_in_loops = aot.spills_in_loops(binary.sass) if binary.spill_bytes else 0
        res.blocks, res.resident_warps = occupancy(arch, binary.registers, binary.shared, res.warps)
        res.sass = st = sass_stats(binary.sass)
        if st.nested:  # the streaming backward's loop over the value width (no other kernel nests loops with MMA)
            res.inner_trips = _cdiv(E, constexprs["BE"])
        res.executed_instructions, flops = executed(st, res.inner_trips)
        if res.executed_instructions:
            res.executed_flop_per_instruction = flops / res.executed_instructions
        res.loaded_bytes = executed_bytes(st, res.inner_trips) * res.warps
        tile = tile_flops(name, constexprs)
        if tile:
            res.replication = flops * res.warps / tile
            if res.loaded_bytes:
                res.tile_flop_per_byte = tile / res.loaded_bytes
    except Exception as exc:  # reported per kernel
        res.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:300]
    return res


def _loads(d: dict) -> str:
    return " ".join(f"{w}B:{d[w]}" for w in sorted(d, reverse=True)) or "-"


def _spill(r: KernelProfile) -> str:
    return f"{r.spill_bytes} ({r.spills_in_loops} in loops)" if r.spill_bytes else "0"


def kernel_table(results: list[KernelProfile]) -> str:
    lines = [
        "| layer | kernel | arch | dtype | config | warps | regs | spill B | smem KiB | blocks/SM | warps/SM | MMA | "
        "MMA instr | LDG by width | cp.async | TMA | hot loop instr | MMA in loop | FLOP / warp instr | "
        "hot loop LDG + cp.async | inner loop instr | MMA in inner loop | inner loop LDG / cp.async + TMA | "
        "inner loop waits for every wgmma | inner loop runs per hot-loop iteration | executed instr per hot-loop "
        "iteration | FLOP / executed warp instr | MMA FLOPs, SASS (all warps) / tile | KiB requested per executed "
        "hot-loop iteration (all warps) | tile FLOPs per requested byte |",
        "|" + " --- |" * 30,
    ]
    for r in sorted(results, key=lambda r: (r.layer, r.kernel, r.dtype, -r.arch, r.config)):
        if r.error:
            lines.append(f"| {r.layer} | {r.kernel} | sm_{r.arch} | {r.dtype} | {r.config} | {r.warps} | {r.error} |")
            continue
        st = r.sass
        lines.append(
            f"| {r.layer} | {r.kernel} | sm_{r.arch} | {r.dtype} | {r.config} | {r.warps} | {r.registers} | "
            f"{_spill(r)} | {r.shared / 1024:.0f} | {r.blocks} | {r.resident_warps} | {st.mma_kind} | "
            f"{st.mma_count} | {_loads(st.loads)} | {_loads(st.cp_async)} | {st.tma} | {st.loop_instructions} | "
            f"{st.loop_mma} | {st.loop_flop_per_instruction:.0f} | {_loads(st.loop_loads)} | "
            f"{st.inner_instructions} | {st.inner_mma} | {_loads(st.inner_sync_loads)} / {st.inner_async_loads} | "
            f"{st.inner_mma_waits} | {r.inner_trips} | {r.executed_instructions} | "
            f"{r.executed_flop_per_instruction:.0f} | {f'{r.replication:.2f}' if r.replication else '-'} | "
            f"{r.loaded_bytes / 1024:.1f} | {f'{r.tile_flop_per_byte:.0f}' if r.tile_flop_per_byte else '-'} |"
        )
    return "\n".join(lines)


def core_table(models: list[CoreModel]) -> str:
    lines = [
        "| core | dtype | executed / minimal FLOPs, forward | backward | HBM bytes per token (model) | floor | "
        "bytes / floor | H100 roofline bound, fwd+bwd, batch 4, n 8192 (ms, estimate) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in models:
        lines.append(
            f"| {m.core} | {m.dtype} | {m.fwd_ratio:.2f} | {m.bwd_ratio:.2f} | {m.bytes_per_token / 1024:.1f} KiB | "
            f"{m.floor_per_token / 1024:.1f} KiB | {m.bytes_ratio:.2f} | {m.h100_ms:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(ARCH))
    parser.add_argument("--dtype", nargs="+", default=None, choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--quick", action="store_true", help="the causal training launch of each layer, bf16")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter's functions cannot be compiled for a GPU", file=sys.stderr)
        return 2
    dtypes = args.dtype or (["bf16"] if args.quick else ["bf16", "fp16"])
    t0 = time.perf_counter()
    jobs = profile_jobs(args.quick, dtypes, args.arch)
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(profile_kernel, jobs))
    print(kernel_table(results))
    print()
    models = [core_model(core, d) for core in ("quad_attn", "mixed_chunk_attn") for d in (*dtypes, "fp32")]
    print(core_table(models))
    failed = sum(bool(r.error) for r in results)
    print(f"\n{len(results)} kernels profiled, {failed} failed to compile, in {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
