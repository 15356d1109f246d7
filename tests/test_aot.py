"""Every kernel, with the flag combinations the layers launch and in the launch configurations the launchers choose,
compiles for sm_80 and sm_90 without spills, within shared memory and on the right tensor-core instructions, on this
GPU-less machine (python -m flash_triton.aot), with the ptxas triton itself uses, leaving no file behind."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest

from tests._early import Command

triton = pytest.importorskip("triton")


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TMPDIR"] = str(tmp_path)  # where the check's temporary PTX files go: must be empty afterwards
    return env


def _quick_check(workdir, jobs) -> Command:
    argv = [sys.executable, "-m", "flash_triton.aot", "--quick", "--jobs", str(jobs)]
    return Command(argv, _env(workdir), timeout=1200)


@pytest.mark.slow
@pytest.mark.early_subprocess.with_args(_quick_check)
def test_kernels_compile_for_sm80_and_sm90_without_spills(early_subprocess):
    proc = early_subprocess(_quick_check)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-4000:]
    assert " 0 failed" in report
    assert "sm_80" in report and "sm_90" in report
    kernels = ("quad_attn_fwd", "quad_attn_dv", "quad_attn_dkq", "quad_attn_dk", "quad_attn_dq", "group_state")
    for kernel in (*kernels, "group_apply", "group_scan", "state_scan", "gate_backward"):
        assert kernel in report
    # the production FLASH forward (causal, T5, fused linear half, gate, pre-gate output stored) is among them
    assert "[CAUSAL,HAS_T5,HAS_LIN,HAS_GATE,STORE_PRE]" in report
    # bf16 stays on bf16 tensor cores when compiled for a GPU (the interpreter's upcast is not compiled in)
    assert "sm_90 bf16: mma+wgmma" in report or "sm_90 bf16: wgmma" in report, report[-2000:]
    assert "sm_80 bf16: mma" in report
    assert os.listdir(proc.workdir) == []  # the check's TMPDIR


def test_a_failing_ptxas_is_reported_and_leaves_no_file(tmp_path):
    script = textwrap.dedent(
        """
        from flash_triton import aot
        aot.ptxas_path = lambda arch: "false"  # a ptxas that fails
        name, fn, dtype, constexprs, options, divisible = next(
            v for v in aot.variants([(16, 16, 16)], ["fp32"], aot.layer_launches(True)) if v[0] == "group_apply"
        )
        r = aot.check(name, fn, dtype, constexprs, 80, options, divisible=divisible)
        print("ERROR:", r.error, "OK:", r.ok)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR: RuntimeError: ptxas failed (1)" in proc.stdout and "OK: False" in proc.stdout
    assert os.listdir(tmp_path) == []


def test_the_ptxas_is_the_one_triton_uses():
    from triton.backends.nvidia.compiler import get_ptxas

    from flash_triton import aot

    for arch in (80, 90):
        assert aot.ptxas_path(arch) == get_ptxas(arch).path


def test_tensor_core_instructions_are_read_from_the_ptx():
    from flash_triton.aot import Result, tensor_core_ops

    ptx = """
        mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1, %f2}, {%r1}, {%r2}, {%f3};
        wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f4}, %rd1, %rd2, 1, 1, 1, 0, 1;
        wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f4}, %rd1, %rd2, 1, 1, 1, 0, 1;
        fma.rn.f32 %f5, %f6, %f7, %f8;
    """
    assert tensor_core_ops(ptx) == {"mma.sync.bf16": 1, "wgmma.mma_async.bf16": 2}
    half = dict(kernel="k", arch=90, config="", registers=1, spill_bytes=0, shared=0)
    assert Result(**half, dtype="bf16", mma={"wgmma.mma_async.bf16": 2}).ok
    assert not Result(**half, dtype="bf16", mma={}).ok  # no tensor cores at all
    assert not Result(**half, dtype="bf16", mma={"mma.sync.f16": 1}).ok  # the wrong type
    assert not Result(**half, dtype="fp32", mma={"mma.sync.tf32": 4}).ok  # float32 must not run on TF32
    assert Result(**half, dtype="fp32").ok
    assert not Result(**dict(half, spill_bytes=8), dtype="fp32").ok


def test_the_checked_launches_are_those_the_layers_make():
    from flash_triton.aot import kernel_launches, layer_launches

    full, quick = layer_launches(False), layer_launches(True)
    # the quick set is a subset of the full one, but for the state scans' HAS_INIT / HAS_LAST variants, which it
    # compiles with FLASH's inference launch (the decoding cache) only
    assert all(x.state for x in full)
    assert {dataclasses.replace(x, state=True) for x in quick} <= set(full)
    assert any(x.flash and x.state for x in quick) and any(x.flash and not x.state for x in quick)
    # causal x laplace x mask = 8, times: GAU 3 modes without bias + 5 with (bias grad or not in training) = 64;
    # FLASH 2 (packed or not) x 3 modes = 48
    assert len(set(full)) == len(full) == 112
    # every fwd flag set that GAU / FLASH can produce in training or inference is compiled
    fwd = {tuple(sorted(kernel_launches(x, 8192)[0][2].items())) for x in full}  # the streaming forward
    for flash in (False, True):
        for causal in (False, True):
            for laplace in (False, True):
                for mask in (False, True):
                    for extra in (False, True):
                        for train, dropout in ((True, False), (True, True), (False, False)):
                            flags = dict(
                                CAUSAL=causal,
                                LAPLACE=laplace,
                                VARLEN=flash and extra,
                                HAS_MASK=mask,
                                HAS_T5=True,
                                HAS_BIAS=not flash and extra,
                                DROPOUT=dropout,
                                HAS_LIN=flash,
                                HAS_GATE=True,
                                STORE_PRE=train,
                            )
                            assert tuple(sorted(flags.items())) in fwd, flags
    # windows of at most SHORT_WINDOW tokens: the weights and output kernels instead (the streaming one only with
    # every_path, as the check compiles it), each with the flags it takes
    for x in full:
        short = {name: flags for name, _, flags in kernel_launches(x, 256)}
        assert "quad_attn_fwd" not in short and "quad_attn_fwd" in {k[0] for k in kernel_launches(x, 256, True)}
        streaming = kernel_launches(x, 8192)[0][2]
        assert short["quad_attn_weights"] == {
            k: v for k, v in streaming.items() if k not in ("HAS_LIN", "HAS_GATE", "STORE_PRE")
        }
        out_flags = ("CAUSAL", "VARLEN", "HAS_LIN", "HAS_GATE", "STORE_PRE")
        assert short["quad_attn_out"] == {k: streaming[k] for k in out_flags}


def test_the_check_compiles_only_the_specialisation_the_launcher_makes(tmp_path):
    """Feature widths get tt.divisibility=16 only where the kernel lets triton specialise them (every kernel's
    feature widths; lengths and counts stay in do_not_specialize), so the check
    compiles the variants that run. In a child without the interpreter, whose triton.jit functions carry no
    do_not_specialize."""
    script = textwrap.dedent(
        """
        from flash_triton import aot
        fn = aot.kernel_fn("_quad_attn_fwd_kernel")
        assert aot.specialised(fn, "S") and aot.specialised(fn, "E") and aot.specialised(fn, "stride_qn")
        assert not aot.specialised(fn, "N") and not aot.specialised(fn, "W")
        dqk = aot.kernel_fn("_quad_attn_bwd_dqk_kernel")
        assert aot.specialised(dqk, "S") and aot.specialised(dqk, "E") and not aot.specialised(dqk, "N")
        dk = aot.kernel_fn("_quad_attn_bwd_dk_kernel")
        assert aot.specialised(dk, "S") and aot.specialised(dk, "E") and not aot.specialised(dk, "N")
        out = aot.kernel_fn("_quad_out_kernel")
        assert aot.specialised(out, "S") and aot.specialised(out, "E") and not aot.specialised(out, "N")
        for name, fn_name, _, constexprs, _, divisible in aot.variants(
            [aot.SHAPE_PRODUCTION], ["bf16"], aot.layer_launches(True)
        ):
            jit = aot.kernel_fn(fn_name)
            assert divisible == tuple(d for d in divisible if aot.specialised(jit, d)), name
            marked = {jit.arg_names[i] for (i,) in aot.alignment_attrs(jit, constexprs, ("S", "E", "DA", "DB"))}
            assert all(m.endswith("_ptr") or m.startswith("stride_") or aot.specialised(jit, m) for m in marked)
            strides = [a for a in jit.arg_names if a.startswith("stride_")]
            assert not strides or any(m.startswith("stride_") for m in marked), name
        print("CHECKED")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(tmp_path))
    assert proc.returncode == 0 and "CHECKED" in proc.stdout, proc.stderr[-3000:]
