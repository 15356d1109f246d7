"""The static performance profile (python -m flash_triton.profile): its SASS reading on known instructions, its
occupancy rule, its executed-FLOP model against a count made another way, and the quick profile of today's kernels
(sm_90 and sm_80, bf16) against the static targets of issue 13. Compiler outputs, not timings: deterministic for a
triton release. The targets the kernels do not meet yet are strict xfails, so meeting one fails the test until
its marker goes."""

import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from tests._early import Command

triton = pytest.importorskip("triton")
profile = pytest.importorskip("flash_triton.profile")
aot = pytest.importorskip("flash_triton.aot")

ROOT = Path(__file__).resolve().parents[1]

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.U16 R2, desc[UR4][R4.64] ;
.L_x_0:
        /*0020*/                   LDG.E.128 R8, desc[UR4][R6.64] ;
        /*0030*/              @P0  LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R10.64] ;
        /*0040*/                   LDGDEPBAR ;
        /*0050*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0060*/                   HMMA.16816.F32.BF16 R12, R16, R18, R12 ;
        /*0070*/                   LDG.E R20, desc[UR4][R6.64] ;
        /*0080*/              @!P1 BRA `(.L_x_0) ;
        /*0090*/                   UTMALDG.2D [UR8], [UR10] ;
        /*00a0*/                   EXIT ;
"""


def test_sass_reading_of_loads_mma_and_the_hot_loop():
    st = profile.sass_stats(SASS)
    assert st.instructions == 11
    assert st.mma_kind == "wgmma+mma.sync" and st.mma_count == 2
    # a cp.async group's barrier (LDGDEPBAR) is no load: it was once counted as a 4-byte LDG
    assert st.loads == {2: 1, 16: 1, 4: 1} and st.cp_async == {16: 1} and st.tma == 1
    assert st.loop_instructions == 7 and st.loop_mma == 2  # 0x20 .. 0x80
    assert st.loop_loads == {16: 2, 4: 1}  # LDG and cp.async inside the hot loop
    per_warp = 2 * 64 * 32 * 16 / 4 + 2 * 16 * 8 * 16  # a wgmma's share of one of its 4 warps, one mma.sync
    assert st.loop_flop_per_instruction == pytest.approx(per_warp / 7)
    # no loop inside the hot loop: it is its own inner loop (two LDG, one cp.async)
    assert (st.inner_instructions, st.inner_mma, st.inner_async_loads) == (7, 2, 1)
    assert st.inner_sync_loads == {16: 1, 4: 1}
    assert st.inner_mma_waits == 0
    assert not st.nested and st.inner_flops == per_warp
    assert profile.executed(st, 16) == (7, pytest.approx(per_warp))  # no nested loop: nothing runs twice
    # bytes one warp requests: 32 threads x (16 + 16 + 4), the loads outside the loop not counted
    assert st.loop_load_bytes == st.inner_load_bytes == 32 * 36 and profile.executed_bytes(st, 16) == 32 * 36


NESTED = """
.L_x_0:
        /*0000*/                   LDG.E.128 R8, desc[UR4][R6.64] ;
        /*0010*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR8], R24 ;
.L_x_1:
        /*0020*/                   LDG.E R20, desc[UR4][R6.64] ;
        /*0030*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R10.64] ;
        /*0040*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR8], R24, gsb0 ;
        /*0050*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0060*/               @P0 BRA `(.L_x_1) ;
        /*0070*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0080*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*0090*/               @P1 BRA `(.L_x_0) ;
        /*00a0*/                   EXIT ;
"""


def test_sass_reading_of_the_inner_loop():
    """A loop nested in the hot loop (the streaming backward's loop over the value width) is its inner loop: its
    synchronous LDG, its cp.async and its waits for every wgmma in flight (gsb0, 0x0; not a wait that leaves one
    in flight) counted apart from the hot loop's."""
    st = profile.sass_stats(NESTED)
    assert st.loop_instructions == 10 and st.loop_mma == 3  # the outer loop holds the most MMA work
    assert (st.inner_instructions, st.inner_mma, st.inner_async_loads) == (5, 1, 1)
    assert st.inner_sync_loads == {4: 1}
    assert st.inner_mma_waits == 1
    wgmma = 2 * 64 * 32 * 16 / 4
    assert st.nested and st.inner_flops == wgmma
    # run 16 times per outer iteration: 10 + 15 x 5 instructions issue 3 + 15 wgmma
    assert profile.executed(st, 16) == (85, pytest.approx(18 * wgmma))
    # the outer loop's 16-byte LDG once, the inner loop's 4-byte LDG and 16-byte cp.async 16 times
    assert (st.loop_load_bytes, st.inner_load_bytes) == (32 * 36, 32 * 20)
    assert profile.executed_bytes(st, 16) == 32 * 16 + 16 * 32 * 20


def test_load_widths_and_float32_fma_counting():
    assert [profile.load_width(m) for m in (".E.128", ".E.64", ".E", ".E.U16", ".E.S8", ".E.EL.128")] == [
        16,
        8,
        4,
        2,
        1,
        16,
    ]
    assert profile.mma_flops("FFMA R1, R2, R3, R1 ;", tensor_cores=False) == 64
    assert profile.mma_flops("FFMA R1, R2, R3, R1 ;", tensor_cores=True) == 0  # element-wise in a tensor-core kernel


def test_occupancy_rule():
    assert profile.occupancy(90, 255, 0, 8) == (1, 8)  # 8 warps x 8192 registers fill the register file
    assert profile.occupancy(90, 128, 0, 4) == (4, 16)
    assert profile.occupancy(90, 32, 200 * 1024, 4) == (1, 4)  # shared memory bound
    assert profile.occupancy(80, 64, 0, 2) == (16, 32)


def _score_tiles(n, w, bm, bn, causal):
    """(query tile, key tile) pairs the forward visits, counted pair by pair."""
    pairs = 0
    for win in range(math.ceil(n / w)):
        ws, we = win * w, min(n, win * w + w)
        for q0 in range(ws, we, bm):
            for k0 in range(ws, we, bn):
                pairs += (not causal) or k0 < min(we, q0 + bm)
    return pairs


@pytest.mark.parametrize("n, w, causal", [(8192, 512, True), (1000, 384, True), (777, 777, False), (512, 512, True)])
def test_forward_flop_model_counts_every_visited_tile(n, w, causal):
    """The streaming forward (windows past SHORT_WINDOW): the scores once per value block."""
    dtype = torch.bfloat16
    assert w > profile.qa.SHORT_WINDOW
    c = profile.quad_tiles("fwd", w, 128, 1024, dtype)
    per_tile = 2 * c["BM"] * c["BN"] * (c["S_BLOCKS"] * c["BS"] + c["BE"])
    expected = _score_tiles(n, w, c["BM"], c["BN"], causal) * per_tile * (1024 // c["BE"])
    assert profile.quad_forward(n, w, 128, 1024, dtype, causal, lin=False) == expected


@pytest.mark.parametrize("n, w, causal", [(8192, 256, True), (1000, 256, True), (200, 200, False), (70, 16, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_short_window_flop_model_computes_the_scores_once(n, w, causal, dtype):
    """Windows of at most SHORT_WINDOW tokens: the scores once per visited tile, A v once per value block."""
    s, e = 128, 1024
    cw, co = profile.sw.short_config("weights", w, s, e, dtype), profile.sw.short_config("out", w, s, e, dtype)
    assert (cw["BM"], cw["BN"]) == (co["BM"], co["BN"])
    pairs = _score_tiles(n, w, cw["BM"], cw["BN"], causal)
    expected = pairs * 2 * cw["BM"] * cw["BN"] * (cw["S_BLOCKS"] * cw["BS"] + e)
    assert profile.quad_forward(n, w, s, e, dtype, causal, lin=False) == expected
    assert profile.short_forward(n, w, s, e, dtype, causal, lin=False)[2] == pairs * cw["BM"] * cw["BN"]


def test_core_model_at_the_benchmark_shape():
    m = profile.core_model("mixed_chunk_attn", "bf16")
    assert m.fwd_min == pytest.approx(2 * 8192 * 256 * (128 + 1024) * 0.5 + 4 * 8192 * 128 * 1024)
    assert m.fwd_ratio >= 1 and m.bwd_ratio >= 1 and m.bytes_ratio >= 1


def _quick_profile(workdir, jobs) -> Command:
    """The quick profile's kernels (sm_90 and sm_80, bf16) and core models, and the kernels of GAU's causal training
    launch with attention dropout that take the DROPOUT flag, computed in a child process without TRITON_INTERPRET
    (the interpreter's triton.jit functions cannot be compiled for a GPU)."""
    code = (
        "import dataclasses, json, sys; from flash_triton import aot, profile as p; "
        "from concurrent.futures import ProcessPoolExecutor; "
        "jobs = p.profile_jobs(True, ['bf16'], [90, 80]); "
        "drop = [('GAU', aot.Launch(False, True, False, False, dropout=True))]; "
        "drop = [j for j in p.profile_jobs(True, ['bf16'], [90, 80], drop) if j[4].get('DROPOUT')]; "
        f"pool = ProcessPoolExecutor({jobs}); "
        "kernels = [dataclasses.asdict(k) for k in pool.map(p.profile_kernel, jobs + drop)]; "
        "cores = [dataclasses.asdict(p.core_model(c, d)) for c in ('quad_attn', 'mixed_chunk_attn') "
        "for d in ('bf16', 'fp32')]; "
        "json.dump({'kernels': kernels[:len(jobs)], 'dropout': kernels[len(jobs):], 'cores': cores}, sys.stdout)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return Command([sys.executable, "-c", code], env, ROOT, 900)


# every test that uses quick waits for the one child process, started when collection ends (tests/_early.py)
EARLY_FIXTURES = {"quick_data": _quick_profile}


@pytest.fixture(scope="module")
def quick_data(early_subprocess):
    out = early_subprocess(_quick_profile)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def quick(quick_data):
    return quick_data["kernels"], quick_data["cores"]


def target(reason: str):
    """A static target of issue 13 that today's kernels miss: fails (strictly) until they meet it."""
    return pytest.mark.xfail(raises=AssertionError, strict=True, reason=f"issue 13 target not met yet: {reason}")


def _bf16(kernels, arch=None):
    return [k for k in kernels if k["dtype"] == "bf16" and (arch is None or k["arch"] == arch)]


def test_quick_profile_compiles_every_kernel_without_spills_on_tensor_cores(quick):
    kernels, _ = quick
    names = {(k["layer"], k["kernel"]) for k in kernels}
    assert {
        ("FLASH", "quad_attn_fwd"),
        ("FLASH", "group_scan"),
        ("FLASH", "group_state"),
        ("FLASH", "state_scan"),
        ("FLASH", "group_apply"),
        ("FLASH", "gate_backward"),
        ("GAU", "quad_attn_dkq"),
        ("GAU", "quad_attn_dq"),
    } <= (names)
    for k in kernels:
        assert not k["error"], k
        assert k["spill_bytes"] <= aot.SPILL_ALLOWANCE and k["spills_in_loops"] == 0, k
        if k["dtype"] != "fp32" and k["kernel"] not in aot.WITHOUT_PRODUCTS:  # half precision: on tensor cores
            assert k["sass"]["mma_kind"] != "none", k
        assert k["blocks"] >= 2 or k["resident_warps"] >= 8, k  # target: >= 2 blocks or >= 8 warps per SM
    # target: no spills, under triton 3.6 and 3.9 (sm_90's dk with dq added spilled 24 B outside its loops until its
    # final store addressed rows from the tile's first one; under 3.9, GAU's 16-warp sm_90 forward spilled 8 B until
    # it took 128 x 256 tiles in 8 warps)
    spilled = {(k["layer"], k["kernel"], k["arch"]) for k in kernels if k["spill_bytes"]}
    assert spilled == set(), spilled
    bf90 = _bf16(kernels, 90)
    # the streaming forward (GAU), every short-window kernel and FLASH's group kernels multiply on wgmma on sm_90, and
    # so does the streaming backward: dv in 64-row query steps, dk (dq added atomically, or not) over transposed tiles
    # of 128 key rows, the deterministic pass's dq in 64 x 64 tiles (with dropout or a caller's bias, which this
    # launch has not, dk and dkq keep 32 x 32 tiles on mma.sync: the full profile shows them)
    short = {"quad_attn_weights", "quad_attn_out", "quad_attn_dscores", "quad_attn_dv_product", "quad_attn_dq_product"}
    group = {"group_scan", "group_state", "group_apply"}
    assert {k["kernel"] for k in bf90} >= short | group | {"quad_attn_fwd", "quad_attn_dk_product", "quad_attn_dv"}
    assert "quad_attn_dq" in {k["kernel"] for k in bf90}
    streaming_bwd = ("quad_attn_dkq", "quad_attn_dk", "quad_attn_dq")
    products = [k for k in bf90 if k["kernel"] not in aot.WITHOUT_PRODUCTS]
    assert all(k["sass"]["mma_kind"] == "wgmma" for k in products)
    assert all("BN128" in k["config"] and "BM_NEAR16" in k["config"] for k in bf90 if k["kernel"] in streaming_bwd[:2])
    # feature widths specialised in every kernel: no bf16 element is loaded alone (2-byte loads), in or out of
    # cp.async; what else is narrower than 16 bytes is the T5 gathers, the window table, the key mask and, in the
    # transposed dk with dq added, the 16 x 32 dy tiles of its near steps (two elements a thread)
    for k in _bf16(kernels):
        assert "2" not in k["sass"]["loads"] and "2" not in k["sass"]["cp_async"], k
        wide = "16" in k["sass"]["loads"] or "16" in k["sass"]["cp_async"]
        assert k["kernel"] not in streaming_bwd or wide, k  # dk / dq: operands 16 bytes
    # hot loops: every load and cp.async 16 bytes wide but in the kernels the 16-byte target below names (the
    # transposed dk copies dy in 32 x 64 steps, 16 bytes a thread: alone since the sixth session of 2026-12-07, with
    # dq added since the seventh; sm_90's causal forward splits at the T5 band since the eighth, so its far tiles
    # gather nothing)
    narrow = {(k["layer"], k["kernel"], k["arch"]) for k in _bf16(kernels) if set(k["sass"]["loop_loads"]) - {"16"}}
    assert narrow <= {("GAU", "quad_attn_dq", 90), ("FLASH", "quad_attn_dq", 90)}, narrow


def test_streaming_kernels_compute_each_tile_product_once_where_it_matters(quick):
    """The MMA FLOPs every warp of a streaming kernel issues in one hot-loop iteration (SASS), over those of the
    iteration's tile products counted once. Never below 1 (the tile model would be wrong); 1 on sm_90 for the forward
    (its 16-warp 64 x 512 tiles: 1.6, each warpgroup computing the whole score tile), the transposed dk / dkq (128 key
    rows, a warpgroup per 64), dv over transposed tiles (its 64 x 64 tiles of A: 1.33, both warpgroups computing
    the scores). Known above 1: the deterministic pass's dq (1.10) on sm_90, whose two warpgroups split dq's width
    and each compute the 64 x 64 scores (128-row tiles spilled 80 B under triton 3.7.1); FLASH's forward (BM 64, 8
    warps: 1.33), and sm_80's mma.sync kernels (1.0-1.33). With dropout: the next test."""
    kernels, _ = quick
    streaming = [k for k in _bf16(kernels) if k["replication"]]
    assert {k["kernel"] for k in streaming} >= {"quad_attn_fwd", "quad_attn_dv", "quad_attn_dkq"}
    for k in streaming:
        assert 0.999 <= k["replication"] <= 1.34, k
    once = [k for k in streaming if k["arch"] == 90 and k["layer"] == "GAU"]
    once = [k for k in once if k["kernel"] in ("quad_attn_fwd", "quad_attn_dv", "quad_attn_dk", "quad_attn_dkq")]
    assert len(once) == 4 and all(k["replication"] == pytest.approx(1.0) for k in once), once
    assert all("TRANSPOSED" in k["config"] for k in once if k["kernel"] == "quad_attn_dv"), once


def test_dropout_tiles_compute_each_product_once(quick_data):
    """GAU's causal training launch with attention dropout (bf16): every streaming kernel computes each tile product
    once, in 4 warps where 8 computed them over (sm_90's 32 x 32 dk and dq 3.65 times, the forward's 64 x 32 score
    tiles 1.5 times on both GPUs, sm_80's dk with dq added 1.09 times; launch_config), spill-free. The one known
    exception: sm_90's dk with dq added keeps 8 warps (3.4 times; at 4 it spilled 56-180 B on that GPU)."""
    streaming = {(k["kernel"], k["arch"]): k for k in quick_data["dropout"] if k["replication"]}
    names = ("quad_attn_fwd", "quad_attn_dv", "quad_attn_dkq", "quad_attn_dk", "quad_attn_dq")
    assert set(streaming) == {(n, a) for n in names for a in (90, 80)}
    for (name, arch), k in streaming.items():
        assert not k["error"] and k["spill_bytes"] == 0 and "DROPOUT" in k["config"], k
        if (name, arch) == ("quad_attn_dkq", 90):
            assert k["warps"] == 8 and k["replication"] > 3, k
        else:
            assert k["replication"] == pytest.approx(1.0, abs=1e-3), k
            assert k["warps"] == (8 if name == "quad_attn_dv" else 4), k


def test_bytes_each_streaming_iteration_requests(quick):
    """Bytes the hot loop's loads and copies request per executed iteration, all warps, and the tile FLOPs per such
    byte (sm_90, GAU's causal training launch). The forward and dv stream one 32-row tile of the query/key width and
    one of the value block per iteration, exactly (24 KiB: 128 FLOP per byte); dk with dq added streams its 128-row
    key tile's v and the 32-row query step's dy over all of E (320 KiB) and more (q loaded by both warpgroups, the
    pipeline's prefetch issued once more than it lands): under 40 FLOP per byte, so on an H100 it is bound by L2
    bandwidth (about 20-40 bytes a cycle an SM against 4,096 FLOPs), not by its wgmma (a model)."""
    kernels, _ = quick
    gau90 = {k["kernel"]: k for k in _bf16(kernels, 90) if k["layer"] == "GAU" and k["replication"]}
    for name in ("quad_attn_fwd", "quad_attn_dv"):
        k = gau90[name]
        c = dict(re.findall(r"(BM|BN|BS|BE)(\d+)", k["config"]))
        rows = int(c["BN"] if name == "quad_attn_fwd" else c["BM"])  # the streamed tile's rows: keys, queries
        assert k["loaded_bytes"] == rows * (int(c["BS"]) + int(c["BE"])) * 2, k
        assert k["tile_flop_per_byte"] == pytest.approx(128.0), k
    dkq = gau90["quad_attn_dkq"]
    streamed = (128 + 32) * 1024 * 2  # v of the key tile and dy of the query step, over E
    assert streamed <= dkq["loaded_bytes"] <= 1.25 * streamed and dkq["tile_flop_per_byte"] < 40, dkq


def test_executed_instructions_of_the_streaming_backward(quick):
    """The streaming dk / dq / dkq run their loop over the value width (E = 1024) E / BE times per query (key) step:
    the profile counts it that often. On sm_90 (wgmma) those loops take 64-wide steps, four wgmma each, and a step of
    the outer loop issues at least 600 FLOP per warp instruction: sm_90's dk with dq added took 16-wide steps, one
    wgmma in 53 instructions, 369 FLOP per executed instruction (786 in 64-wide steps; triton 3.6)."""
    kernels, _ = quick
    nested = [k for k in _bf16(kernels) if k["sass"]["nested"]]
    assert {k["kernel"] for k in nested} == {"quad_attn_dkq", "quad_attn_dk", "quad_attn_dq"} & {
        k["kernel"] for k in kernels
    }
    for k in nested:
        be = int(re.search(r"(?:^|x)BE(\d+)", k["config"]).group(1))
        assert k["inner_trips"] == math.ceil(1024 / be), k
        st = k["sass"]
        assert k["executed_instructions"] == st["loop_instructions"] + (k["inner_trips"] - 1) * st["inner_instructions"]
        if k["arch"] == 90:
            assert st["inner_mma"] >= 4 and k["executed_flop_per_instruction"] >= 600, k
    for k in kernels:
        if not k["sass"]["nested"]:
            assert k["inner_trips"] == 1 and k["executed_instructions"] == k["sass"]["loop_instructions"], k


def test_bf16_inner_loops_copy_their_operands_a_stage_ahead(quick):
    """The inner loop of every bf16 kernel with tensor-core products (the loop nested in its hot loop, e.g. the
    streaming dk / dq over the value width, run E / BE times per query step) copies its operands with cp.async or
    TMA, which triton's pipeline issues a stage ahead, and loads no 16-byte operand tile with a synchronous LDG. In
    one stage, the streaming dk / dkq / dq loaded each step's v and dy with LDG, stored them to shared memory, synced
    and multiplied: every 16- or 32-column step waited out the global latency, at one block of 8 warps per SM.
    Synchronous loads left: the T5 gathers (4 bytes) of sm_90's streaming forward. (The short-window dk product read
    its stored tiles through a transpose; on sm_80 two 16-byte LDG a step beside four cp.async, until it loaded the
    tiles transposed.)"""
    kernels, _ = quick
    checked = 0
    for k in _bf16(kernels):
        st = k["sass"]
        if k["kernel"] in aot.WITHOUT_PRODUCTS or not st["inner_mma"]:
            continue
        checked += 1
        assert st["inner_async_loads"] > 0, k
        assert "16" not in st["inner_sync_loads"], k
        if k["kernel"] in ("quad_attn_dkq", "quad_attn_dk", "quad_attn_dq"):
            assert not st["inner_sync_loads"], k
    assert checked >= 20


@target(
    "sm_90: the deterministic pass's dq gathers the T5 term in its one loop (4-byte loads and cp.async; its "
    "two-stage build split at the T5 band spilled 44 B), and so does GAU's forward where not causal or with a key "
    "mask (its split spilled 8-224 B under triton 3.9; not in this causal launch); float32 tables, not bf16 operands"
)
def test_target_bf16_hot_loop_loads_are_16_byte_vectors(quick):
    """Every load of a bf16 kernel's hot loop, global or cp.async, 16 bytes wide. Outside the hot loops, the T5
    band's gathers, the window table and the key mask are narrower (the profile's whole-kernel columns)."""
    kernels, _ = quick
    narrow = [(k["layer"], k["kernel"], k["arch"], k["sass"]["loop_loads"]) for k in _bf16(kernels)]
    assert [n for n in narrow if set(n[3]) - {"16"}] == []


@pytest.mark.parametrize(
    "core, dtype",
    [
        pytest.param("mixed_chunk_attn", "bf16", id="flash-bf16"),
        pytest.param("mixed_chunk_attn", "fp32", id="flash-fp32"),
        pytest.param(
            "quad_attn",
            "bf16",
            id="gau-bf16",
            marks=target(
                "GAU forward 1.35x (backward 1.29x): sm_90's 256-wide value blocks recompute q kᵀ E / 256 times. The "
                "512-wide ones in 16 warps (1.12x in this model, which counts each tile product once) computed "
                "every score tile in all four warpgroups, 1.6x its FLOPs in m64n8k16 wgmma (the profile's SASS / "
                "tile column): more executed work and 1.7x the warp instructions of today's tiles"
            ),
        ),
        # forward 1.78x; backward 1.51x: dk with dq added takes the query/key width in one block (one dy vᵀ per key
        # tile) and dv 128-wide value blocks (4.35x when they were 32-wide blocks, each recomputing its share)
        pytest.param("quad_attn", "fp32", id="gau-fp32"),
    ],
)
def test_target_executed_flops_near_the_minimum(quick, core, dtype):
    """bf16 <= 1.25x the minimal forward FLOPs and 1.4x the backward's; float32 <= 2x."""
    _, cores = quick
    (c,) = (c for c in cores if c["core"] == core and c["dtype"] == dtype)
    fwd, bwd = c["fwd_flops"] / c["fwd_min"], c["bwd_flops"] / c["bwd_min"]
    limit = (2.0, 2.0) if dtype == "fp32" else (1.25, 1.4)
    assert fwd <= limit[0] and bwd <= limit[1], (core, dtype, fwd, bwd)


_GAU_BYTES = (
    "the pre-gate output stored for the gate's gradient (written, then read: 4 KiB per token in bf16 that the floor "
    "does not count), dy written by the gate's backward and read by dv and dk, which each read q and k, and dq "
    "through a float32 accumulator (zeroed, added into, read, cast)"
)


@pytest.mark.parametrize(
    "core, dtype",
    [
        # 1.47x: the states kept from the forward, and dv's tile product adding the linear half's lin_k dS (1.71x
        # when the backward computed the states again and added lin_k dS to dv in a pass of its own)
        pytest.param("mixed_chunk_attn", "bf16", id="flash-bf16"),
        pytest.param(
            "mixed_chunk_attn",
            "fp32",
            id="flash-fp32",
            marks=target(
                "FLASH float32 1.82x: the floor's states are float32 in every dtype, so it grows less than the "
                "kernels' traffic, which doubles from bf16 with the element size (the target is stated for bf16)"
            ),
        ),
        pytest.param("quad_attn", "bf16", id="gau-bf16", marks=target(f"GAU 1.69x: {_GAU_BYTES}")),
        pytest.param("quad_attn", "fp32", id="gau-fp32", marks=target(f"GAU float32 1.64x: {_GAU_BYTES}")),
    ],
)
def test_target_core_bytes_within_1_5x_the_floor(quick, core, dtype):
    """Modelled HBM bytes per token of the core at most 1.5x the floor (the issue states the target for bf16; the
    float32 cases stay tracked)."""
    _, cores = quick
    (c,) = (c for c in cores if c["core"] == core and c["dtype"] == dtype)
    assert c["bytes_per_token"] <= 1.5 * c["floor_per_token"], (core, dtype, c["bytes_per_token"], c["floor_per_token"])
