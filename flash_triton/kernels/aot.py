"""GPU-compile check that needs no GPU: compiles every kernel in the launch configurations the launchers can
choose, for sm_80 and sm_90, and reports registers, spills and shared memory per kernel and configuration.

    python -m flash_triton.kernels.aot [--arch 80 90] [--quick]

Exit code 1 when a compile fails, a kernel spills, or its shared memory exceeds the architecture's per-block
limit. Registers and spills come from the triton wheel's own ``ptxas -v`` on the generated PTX; shared memory
from the compiler's metadata (Triton allocates it dynamically, so ptxas does not see it). Must run without
``TRITON_INTERPRET=1`` (under the interpreter ``triton.jit`` yields functions that cannot be compiled).
"""

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import chunk_state as cs
from . import quad_attn as qa

# largest dynamic shared memory one block may use, bytes
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
DTYPES = {"fp32": "ieee", "fp16": "tf32", "bf16": "tf32"}  # value: DOT_PREC the launchers pass
# pointer arguments whose element type does not follow the data dtype
POINTER_TYPES = {
    "mask_ptr": "*u8",
    "lut_ptr": "*i32",
    "seed_ptr": "*i64",
    "t5_ptr": "*fp32",
    "bias_ptr": "*fp32",
    "dt5_ptr": "*fp32",
    "dbias_ptr": "*fp32",
    "p_ptr": "*fp32",
    "win_ptr": "*i32",
}
# per-kernel exceptions
KERNEL_POINTER_TYPES = {
    "_group_state_kernel": {"out_ptr": "*fp32"},
    "_group_apply_kernel": {"m_ptr": "*fp32"},
    "_dropout_keep_kernel": {"out_ptr": "*u8"},
}
FLOAT_ARGS = {"scale", "t5_scale", "bias_scale", "dropout_p"}
# (window, query_key_dim, value_dim) whose launch configs span what the launchers choose: smallest tiles, the
# largest tiles, and query/key widths past one feature block
SHAPES_FULL = [(16, 16, 16), (32, 64, 48), (256, 128, 1024), (8192, 200, 1024)]
SHAPES_QUICK = [(256, 128, 1024)]


@dataclass
class Result:
    kernel: str
    arch: int
    config: str
    registers: int = -1
    spill_bytes: int = -1
    shared: int = -1
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.spill_bytes == 0 and self.shared <= SMEM_LIMIT[self.arch]


def signature(fn, dtype: str, constexprs: dict) -> dict:
    sig = {}
    pointer_types = {**POINTER_TYPES, **KERNEL_POINTER_TYPES.get(fn.__name__, {})}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = pointer_types.get(name, f"*{dtype}")
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return sig


def variants(shapes: list, dtypes: list[str]) -> list[tuple[str, str, str, dict, dict]]:
    """(kernel name, jit function's name in quad_attn, dtype, constexprs, options) for every configuration to
    compile: per shape and dtype, every feature on with and without dropout (the heaviest code), and all off."""
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    out = []
    for (w, s, e), dtype, (on, dropout) in itertools.product(
        shapes, dtypes, ((True, True), (True, False), (False, False))
    ):
        flags = dict(
            CAUSAL=on,
            LAPLACE=on,
            VARLEN=on,
            HAS_MASK=on,
            HAS_T5=on,
            HAS_BIAS=on,
            DROPOUT=dropout,
            DOT_PREC=DTYPES[dtype],
        )
        for kind in ("fwd", "dv", "dk", "dq"):
            cfg = qa.launch_config(kind, w, s, e, torch_dtype[dtype], dropout)
            tiles = {k: cfg[k] for k in ("BM", "BN", "BS", "S_BLOCKS", "BE")}
            options = {k: cfg[k] for k in ("num_warps", "num_stages")}
            if kind == "fwd":
                fn, constexprs = "_quad_attn_fwd_kernel", dict(flags, HAS_LIN=on, HAS_GATE=on, STORE_PRE=on, **tiles)
            elif kind == "dv":
                fn, constexprs = "_quad_attn_bwd_dv_kernel", dict(flags, **tiles)
            else:
                key = kind == "dk"
                extra = dict(KEY_TILES=key, DT5=on and key, DBIAS=on and not key, NB=32)
                fn, constexprs = "_quad_attn_bwd_dqk_kernel", dict(flags, **extra, **tiles)
            out.append((f"quad_attn_{kind}", fn, dtype, constexprs, options))
    for (w, s, e), dtype, on in itertools.product(shapes, dtypes, (True, False)):
        flags = dict(HAS_MASK=on, VARLEN=on, DOT_PREC=DTYPES[dtype])
        # states lin_kᵀ v (and dP = lin_qᵀ dY: the same shapes)
        for name, fn, cfg in (
            ("group_state", "_group_state_kernel", cs.state_config(w, s, e, torch_dtype[dtype])),
            ("group_apply", "_group_apply_kernel", cs.apply_config(w, s, e, torch_dtype[dtype])),  # lin_q P, lin_k dS
            ("group_apply", "_group_apply_kernel", cs.apply_config(w, e, s, torch_dtype[dtype])),  # dY Pᵀ, v dSᵀ
        ):
            options = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
            out.append((name, fn, dtype, dict(flags, **cfg), options))
    return out


def ptxas_path() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def alignment_attrs(fn, constexprs: dict) -> dict:
    """What Triton's launcher specialises for 16-byte-aligned tensors and strides divisible by 16 (the usual case:
    any feature width that is a multiple of 8 in half precision): tt.divisibility=16 on pointers and strides."""
    return {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if name not in constexprs and (name.endswith("_ptr") or name.startswith("stride_"))
    }


def check(
    name: str, fn_name: str, dtype: str, constexprs: dict, arch: int, options: dict, aligned: bool = True
) -> Result:
    flags = ",".join(k for k, v in constexprs.items() if v is True)
    tiles = "x".join(f"{k}{v}" for k, v in constexprs.items() if k.startswith("B") and isinstance(v, int))
    warps = options["num_warps"]
    res = Result(name, arch, f"{dtype} {tiles} S_BLOCKS={constexprs.get('S_BLOCKS', 1)} w{warps} [{flags}]")
    t0 = time.perf_counter()
    fn = getattr(cs if hasattr(cs, fn_name) else qa, fn_name)
    try:
        attrs = alignment_attrs(fn, constexprs) if aligned else None
        src = ASTSource(fn=fn, signature=signature(fn, dtype, constexprs), constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))
        res.shared = compiled.metadata.shared
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(compiled.asm["ptx"])
        sm = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        log = subprocess.run(
            [ptxas_path(), f"-arch={sm}", "-v", f.name, "-o", os.devnull], capture_output=True, text=True, check=True
        ).stderr
        os.unlink(f.name)
        res.registers = int(re.search(r"Used (\d+) registers", log).group(1))
        stores = re.search(r"(\d+) bytes spill stores", log)
        loads = re.search(r"(\d+) bytes spill loads", log)
        res.spill_bytes = (int(stores.group(1)) if stores else 0) + (int(loads.group(1)) if loads else 0)
    except Exception as exc:  # a compile or ptxas failure is a finding, reported per configuration
        res.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:300]
    res.seconds = time.perf_counter() - t0
    return res


def _check(job: tuple) -> Result:
    return check(*job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SMEM_LIMIT))
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--quick", action="store_true", help="only the largest tiles (smaller ones use less)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter's functions cannot be compiled for a GPU", file=sys.stderr)
        return 2
    shapes = SHAPES_QUICK if args.quick else SHAPES_FULL
    jobs = [(n, fn, d, c, arch, opts) for arch in args.arch for n, fn, d, c, opts in variants(shapes, args.dtype)]
    failed = 0
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        for r in pool.map(_check, jobs):
            failed += not r.ok
            detail = r.error or f"regs={r.registers} spill={r.spill_bytes}B smem={r.shared}B"
            status = "ok" if r.ok else "FAIL"
            print(f"{status:4} sm_{r.arch} {r.kernel:18} {r.config:80} {detail} ({r.seconds:.1f}s)", flush=True)
    print(f"{len(jobs) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
