"""GPU-compile check that needs no GPU: compiles every kernel, with every combination of flags that the GAU and
FLASH layers launch, in the launch configurations the launchers choose, for sm_80 and sm_90, and reports registers,
spills, shared memory and tensor-core instructions per kernel and configuration.

    python -m flash_triton.aot [--arch 80 90] [--dtype ...] [--quick] [--kernel NAME ...]

The full check compiles every flag combination of :func:`layer_launches` at the production shape (the largest tiles)
and the layers' default launches at three other shapes (smallest tiles to widest query/key), in fp32, fp16 and
bf16; ``--quick`` the production shape with the default launches, in fp32 and bf16.
Exit code 1 when a compile fails, a kernel spills, its shared memory exceeds the architecture's per-block limit,
or a half-precision kernel does not multiply on tensor cores in its own type (a float32 one on them at all). One
allowance, reported as ``ok*`` with its bytes: at most SPILL_ALLOWANCE spilled bytes whose loads and stores all lie
outside every loop of the SASS (``nvdisasm``), i.e. touched once per program, never per loop iteration.
Each kernel is compiled as triton's launcher specialises it: 16-byte-aligned pointers, strides, and the feature
widths (S, E; DA, DB, DX, DY) that are multiples of 16 where the kernel does not exclude them from specialisation,
marked divisible by 16, and a stride that the layers pass as 1 (``group_apply``'s state, read as stored or through a
transposed view) as the constant 1.
Registers and spills come from ``ptxas -v`` on the generated PTX, run with the ptxas that triton itself uses for
that architecture; shared memory from the compiler's metadata (Triton allocates it dynamically, so ptxas does not
see it). Must run without ``TRITON_INTERPRET=1`` (under the interpreter ``triton.jit`` yields functions that
cannot be compiled).
"""

import argparse
import inspect
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .common import gate
from .common.jit import FP_FUSION, dot_precision
from .mixed_chunk_attn import kernels as mca
from .quad_attn import kernels as qa
from .quad_attn import short_window as sw

# largest dynamic shared memory one block may use, bytes
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
# pointer arguments whose element type does not follow the data dtype
POINTER_TYPES = {
    "mask_ptr": "*u8",
    "lut_ptr": "*i32",
    "seed_ptr": "*i64",
    "t5_ptr": "*fp32",
    "bias_ptr": "*fp32",
    "dt5_ptr": "*fp32",
    "dbias_ptr": "*fp32",
    "dqa_ptr": "*fp32",  # dq accumulated with float32 atomics
    "win_ptr": "*i32",
}
# per-kernel exceptions
KERNEL_POINTER_TYPES = {
    "_group_state_kernel": {"out_ptr": "*fp32"},
    "_dropout_keep_kernel": {"out_ptr": "*u8"},
    # the per-group sums in, the running sums' ends in and out in float32; the states the groups read (y) are
    # stored in the data's dtype, as every state a kernel reads (p_ptr, m_ptr)
    "_state_scan_kernel": {name: "*fp32" for name in ("x_ptr", "init_ptr", "last_ptr")},
    "_group_scan_kernel": {name: "*fp32" for name in ("init_ptr", "last_ptr")},
}
FLOAT_ARGS = {"scale", "t5_scale", "bias_scale", "dropout_p", "inv_group"}
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (window, query_key_dim, value_dim) whose launch configs span what the launchers choose. The production shape
# (the layers' defaults: g = 256, s = 128, e = 2 * 512; the largest tiles) is compiled with every flag combination
# the layers launch; the others (smallest tiles, and query/key widths past one feature block) with the quick set.
SHAPE_PRODUCTION = (256, 128, 1024)
SHAPES_OTHER = [(16, 16, 16), (32, 64, 48), (8192, 200, 1024)]
# bytes of spills allowed where the SASS shows that none of their loads or stores is inside a loop
SPILL_ALLOWANCE = 32
DTYPES_QUICK = ["fp32", "bf16"]  # fp16 compiles to the same tiles and instructions as bf16 but for the MMA type


@dataclass(frozen=True)
class Launch:
    """One way a layer calls the kernels: GAU (quad_attn, optionally with a caller's bias) or FLASH
    (mixed_chunk_attn, optionally packed); ``train`` = gradients wanted (the gate's pre-activation is stored and the
    backward runs); ``dropout`` = attention dropout active (training mode); ``bias_grad`` = the caller's bias
    wants a gradient; ``state`` = FLASH's linear state passed in and out (the decoding cache, the functional API's
    ``initial_state`` / ``output_final_state``: the state scans' HAS_INIT / HAS_LAST variants)."""

    flash: bool
    causal: bool
    laplace: bool
    mask: bool
    packed: bool = False  # FLASH only: cu_seqlens
    bias: bool = False  # GAU only: rel_pos_bias
    dropout: bool = False
    train: bool = True
    bias_grad: bool = False
    state: bool = True


def layer_launches(quick: bool) -> list[Launch]:
    """Every combination of kernel flags that GAU and FLASH launch in training and in inference (full), or the
    layers' defaults in training and inference, causal and not, plus everything on at once (quick). Not covered:
    a T5 table frozen by the user (dk without its T5 partials) and attention dropout in training mode under
    ``torch.no_grad`` (the forward with dropout but without the stored pre-gate output)."""
    if quick:
        out = []
        for flash, causal in itertools.product((False, True), (True, False)):
            out += [  # the state in / out with the inference launch only (the decoding cache)
                Launch(flash, causal, False, False, train=train, dropout=drop, state=not train)
                for train, drop in ((True, False), (True, True), (False, False))
            ]
        out += [
            Launch(False, True, True, True, bias=True, bias_grad=True, dropout=True),
            Launch(True, True, True, True, packed=True, dropout=True),
        ]
        return out
    out = []
    for flash, causal, laplace, mask, extra, (train, dropout) in itertools.product(
        (False, True),
        (True, False),
        (False, True),
        (False, True),
        (False, True),
        ((True, False), (True, True), (False, False)),  # training (dropout off / on), inference
    ):
        base = dict(flash=flash, causal=causal, laplace=laplace, mask=mask, train=train, dropout=dropout)
        if flash:
            out.append(Launch(**base, packed=extra))
        else:
            out += [Launch(**base, bias=extra, bias_grad=g) for g in ((False, True) if extra and train else (False,))]
    return out


def kernel_launches(launch: Launch, window: int, every_path: bool = False) -> list[tuple[str, str, dict]]:
    """(check name, jit function name, flags) of every kernel that ``launch`` runs at ``window`` tokens per window,
    as the launchers set them. Windows of at most ``SHORT_WINDOW`` tokens run the short-window kernels (weights and
    output; score gradients and three tile products), longer ones the streaming kernels; ``every_path`` adds the
    streaming kernels at short windows too (their tiles stop growing below them, so the check compiles there what
    longer windows run)."""
    common = dict(
        CAUSAL=launch.causal,
        LAPLACE=launch.laplace,
        VARLEN=launch.packed,
        HAS_MASK=launch.mask,
        HAS_T5=True,
        HAS_BIAS=launch.bias,
        DROPOUT=launch.dropout,
    )
    out = []
    short = window <= qa.SHORT_WINDOW
    tiles = dict(CAUSAL=launch.causal, VARLEN=launch.packed)  # what the short-window GEMM passes take
    epilogue = dict(HAS_LIN=launch.flash, HAS_GATE=True, STORE_PRE=launch.train)
    if every_path or not short:
        out.append(("quad_attn_fwd", "_quad_attn_fwd_kernel", dict(common, **epilogue)))
    if short:
        out += [
            ("quad_attn_weights", "_quad_weights_kernel", common),
            ("quad_attn_out", "_quad_out_kernel", dict(tiles, **epilogue)),
        ]
    scan = launch.flash and launch.causal and not launch.packed
    if launch.flash:  # the forward's states lin_kᵀ v (masked keys dropped)
        out.append(("group_state", "_group_state_kernel", dict(HAS_MASK=launch.mask, VARLEN=launch.packed)))
    if scan:  # their prefix (and in the backward its adjoint): by a scan over the per-group sums, or, when the
        # launcher fuses the two (mca.fused_scan_fits), in one kernel; every flag set: a state in and out come with
        # the decoding cache and the functional API. Backward: the prefix again (keys masked, no final state), its
        # adjoint (lin_qᵀ dY, unmasked)
        flags = [
            dict(REVERSE=r, HAS_INIT=i, HAS_LAST=la)
            for r, i, la in itertools.product((False, True), repeat=3)
            if (launch.train or not r) and (launch.state or not (i or la))
        ]
        out += [("state_scan", "_state_scan_kernel", f) for f in flags]
        out += [("group_scan", "_group_scan_kernel", dict(f, HAS_MASK=launch.mask and not f["REVERSE"])) for f in flags]
    if not launch.train:
        return out
    # the backward's first step: dy = d_out * gate and dgate = d_out * o_pre (dy alone for a gate that wants no
    # gradient)
    out += [("gate_backward", "_gate_backward_kernel", dict(HAS_DGATE=d)) for d in (True, False)]
    dbias = launch.bias and launch.bias_grad
    dqk = dict(KEY_TILES=True, DT5=True, NB=32)
    if every_path or not short:
        out += [
            ("quad_attn_dv", "_quad_attn_bwd_dv_kernel", common),
            # dq added into float32 atomically from the key tiles (the default), or, with torch's deterministic
            # algorithms, a query-tile pass of its own
            ("quad_attn_dkq", "_quad_attn_bwd_dqk_kernel", dict(common, **dqk, DQ_ATOMIC=True, DBIAS=dbias)),
            ("quad_attn_dk", "_quad_attn_bwd_dqk_kernel", dict(common, **dqk, DQ_ATOMIC=False, DBIAS=False)),
            (
                "quad_attn_dq",
                "_quad_attn_bwd_dqk_kernel",
                dict(common, KEY_TILES=False, DQ_ATOMIC=False, DT5=False, DBIAS=dbias, NB=32),
            ),
        ]
    if short:  # the weights and score gradients stored, then dv = Aᵀ dy, dq = ds k, dk = dsᵀ q over them (FLASH's
        # dv adding the linear half's lin_k dS, keys the mask drops adding nothing)
        products = dict(tiles, HAS_LIN=False, HAS_MASK=False)
        out += [
            ("quad_attn_dscores", "_quad_dscores_kernel", dict(common, DT5=True, DBIAS=dbias, NB=32)),
            (
                "quad_attn_dv_product",
                "_quad_tile_product_kernel",
                dict(products, COLUMNS=True, HAS_LIN=launch.flash, HAS_MASK=launch.flash and launch.mask),
            ),
            ("quad_attn_dq_product", "_quad_tile_product_kernel", dict(products, COLUMNS=False)),
            ("quad_attn_dk_product", "_quad_tile_product_kernel", dict(products, COLUMNS=True)),
        ]
    if launch.flash:  # dP = lin_qᵀ dY (unmasked; the forward's states are kept); dY Pᵀ (unmasked), v dSᵀ (masked)
        # and, for groups past SHORT_WINDOW, dv += lin_k dS (masked, added to the quadratic half's dv in the epilogue)
        varlen = dict(VARLEN=launch.packed)
        out += [
            ("group_state", "_group_state_kernel", dict(HAS_MASK=False, **varlen)),
            ("group_apply", "_group_apply_kernel", dict(HAS_MASK=False, ACCUMULATE=False, **varlen)),
            ("group_apply", "_group_apply_kernel", dict(HAS_MASK=launch.mask, ACCUMULATE=False, **varlen)),
        ]
        if every_path or not short:
            out.append(("group_apply", "_group_apply_kernel", dict(HAS_MASK=launch.mask, ACCUMULATE=True, **varlen)))
    return out


def _tiles(
    name: str,
    w: int,
    s: int,
    e: int,
    dtype: torch.dtype,
    dropout: bool,
    arch: int | None = None,
    lin: bool = False,
    bias: bool = False,
    mask: bool = False,
    causal: bool = False,
) -> list[tuple[dict, dict]]:
    """The launch configs (tiles and options) that the launchers pick for kernel ``name`` at this shape on a GPU of
    compute capability ``arch`` (None: the configs for every GPU; ``lin``: FLASH's launch; ``bias``: with a caller's
    bias; ``mask``: with a key mask; ``causal``: causal), each with the values of the kernel's feature-width
    arguments (which triton specialises on divisibility by 16)."""
    if name in ("quad_attn_weights", "quad_attn_out", "quad_attn_dscores"):
        kind = name.removeprefix("quad_attn_")
        cfg = sw.short_config(kind, w, s, e, dtype, arch, bias=bias)
        return [(cfg, {"S": s} if kind == "weights" else {"S": s, "E": e})]
    if name.endswith("_product"):  # dv over the value width, dq and dk over the query/key width
        dv = name == "quad_attn_dv_product"
        d = e if dv else s
        return [(sw.short_config("product", w, d, d, dtype, arch, masked_lin=dv and lin and mask), {"D": d, "S": s})]
    if name.startswith("quad_attn_"):
        kind = name.removeprefix("quad_attn_")
        return [(qa.launch_config(kind, w, s, e, dtype, dropout, arch, lin, bias, mask, causal), {"S": s, "E": e})]
    if name == "state_scan":  # per batch row, s * e state elements
        return [(dict(mca.SCAN_CONFIG), {"F": s * e})]
    if name == "gate_backward":  # (B, N, e) element-wise
        return [(gate.gate_config(e), {"E": e})]
    if name == "group_scan":  # as group_state, the prefix fused
        return [(mca.scan_config(w, s, e, dtype, arch), {"DA": s, "DB": e})]
    if name == "group_state":  # lin_kᵀ v and lin_qᵀ dY: both (s, e)
        return [(mca.state_config(w, s, e, dtype, arch), {"DA": s, "DB": e})]
    # lin_k dS: (s -> e), the state read as stored (unit stride along DY); dY Pᵀ, v dSᵀ: (e -> s), through a
    # transposed view (unit stride along DX). Triton's launcher passes an integer argument equal to 1 as the
    # constant 1, so each compiles with that stride fixed (what lets the fp32 state load as 16-byte vectors)
    return [
        (dict(mca.apply_config(w, s, e, dtype, arch), stride_my=1), {"DX": s, "DY": e}),
        (dict(mca.apply_config(w, e, s, dtype, arch), stride_mx=1), {"DX": e, "DY": s}),
    ]


def variants(
    shapes: list, dtypes: list[str], launches: list[Launch], every_path: bool = True, arch: int | None = None
) -> list[tuple]:
    """(check name, jit function name, dtype, constexprs, options, divisible) of every distinct compile: each kernel
    of each launch, at each shape and dtype, in the config its launcher picks on a GPU of compute capability
    ``arch`` (None: the configs for every GPU); ``divisible`` names the feature-width arguments that are multiples
    of 16 at that shape and that the kernel lets triton specialise (as its launcher then does). ``every_path``: as in
    :func:`kernel_launches`."""
    seen, out = set(), []
    for (w, s, e), data_dtype, launch in itertools.product(shapes, dtypes, launches):
        for name, fn, flags in kernel_launches(launch, w, every_path):
            jit = kernel_fn(fn)
            dtype = data_dtype
            dropout = launch.dropout and name.startswith("quad")
            tiles = _tiles(
                name, w, s, e, TORCH_DTYPES[dtype], dropout, arch, launch.flash, launch.bias, launch.mask, launch.causal
            )
            for cfg, widths in tiles:
                cfg = dict(cfg)
                options = {k: cfg.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in cfg}
                options["enable_fp_fusion"] = FP_FUSION
                constexprs = dict(flags, **cfg)
                kernel = jit
                if fn == "_quad_attn_bwd_dqk_kernel":  # dk / dkq / dq: the kernel quad_attn_bwd picks for the config
                    kernel, picked = qa.streaming_dqk_kernel(cfg, constexprs.pop("KEY_TILES"))
                    constexprs.update(picked)
                if "DOT_PREC" in kernel.arg_names:
                    constexprs["DOT_PREC"] = dot_precision(TORCH_DTYPES[dtype])
                constexprs = {**constexpr_defaults(kernel), **constexprs}
                divisible = tuple(sorted(k for k, v in widths.items() if v % 16 == 0 and specialised(kernel, k)))
                key = (name, dtype, tuple(sorted(constexprs.items())), tuple(sorted(options.items())), divisible)
                if key not in seen:
                    seen.add(key)
                    out.append((name, kernel.__name__, dtype, constexprs, options, divisible))
    return out


def ptxas_path(arch: int) -> str:
    """The ptxas that triton itself uses for ``arch`` (triton >= 3.9 brings a newer one for sm_90 and up, whose PTX
    version the older bundled ptxas cannot read)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def nvdisasm_path() -> str:
    from triton import knobs

    return knobs.nvidia.nvdisasm.path


_SASS_ADDRESS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*)")
_SASS_LABEL = re.compile(r"^(\.L_x_\d+):")
_SASS_BRANCH = re.compile(r"\bBRA\b[^`]*`\((\.L_x_\d+)\)")


def parse_sass(sass: str) -> tuple[list[tuple[int, str]], list[tuple[int, int]]]:
    """The instructions of ``nvdisasm -c`` output as (address, text), and its loops as (first, last) addresses:
    each backward branch closes one, from the branch's target label to the branch."""
    labels, branches, instructions, pending = {}, [], [], []
    for line in sass.splitlines():
        label = _SASS_LABEL.match(line.strip())
        if label:
            pending.append(label.group(1))
            continue
        m = _SASS_ADDRESS.search(line)
        if not m:
            continue
        address, instruction = int(m.group(1), 16), m.group(2).strip()
        for name in pending:
            labels[name] = address
        pending = []
        target = _SASS_BRANCH.search(instruction)
        if target:
            branches.append((address, target.group(1)))
        instructions.append((address, instruction))
    loops = [(labels[t], a) for a, t in branches if t in labels and labels[t] <= a]
    return instructions, loops


def spills_in_loops(sass: str) -> int:
    """How many local-memory spill instructions (STL/LDL) of ``nvdisasm -c`` output lie inside a loop: between the
    target of a backward branch and the branch."""
    instructions, loops = parse_sass(sass)
    spills = [a for a, text in instructions if re.search(r"\b(STL|LDL)(\.|\s)", text)]
    return sum(any(start <= x <= end for start, end in loops) for x in spills)


def specialised(fn, name: str) -> bool:
    """Whether triton's launcher specialises integer argument ``name`` of ``fn`` (not in ``do_not_specialize``)."""
    nospec = {fn.arg_names[a] if isinstance(a, int) else a for a in getattr(fn, "do_not_specialize", ())}
    return name not in nospec


def alignment_attrs(fn, constexprs: dict, divisible: tuple = ()) -> dict:
    """What Triton's launcher specialises for 16-byte-aligned tensors, strides divisible by 16 (the usual case: any
    feature width that is a multiple of 8 in half precision) and the integer arguments named in ``divisible`` that
    the kernel lets triton specialise: tt.divisibility=16."""
    return {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if name not in constexprs
        and (name.endswith("_ptr") or name.startswith("stride_") or (name in divisible and specialised(fn, name)))
    }


# tensor-core instructions in PTX: wgmma (sm_90) and mma.sync (sm_80, and sm_90 tiles wgmma cannot take)
_MMA = re.compile(r"^\s*(wgmma\.mma_async|mma\.sync)\S*?\.(bf16|f16|tf32)\b", re.MULTILINE)
_PTX_TYPE = {"bf16": "bf16", "fp16": "f16"}


def tensor_core_ops(ptx: str) -> dict[str, int]:
    """{"wgmma.mma_async.bf16": count, "mma.sync.bf16": count, ...} of the tensor-core instructions in ``ptx``."""
    counts: dict[str, int] = {}
    for op, kind in _MMA.findall(ptx):
        counts[f"{op}.{kind}"] = counts.get(f"{op}.{kind}", 0) + 1
    return counts


WITHOUT_PRODUCTS = {"state_scan", "gate_backward"}  # check names of kernels that multiply no matrices


@dataclass
class Result:
    kernel: str
    arch: int
    config: str
    dtype: str = ""
    registers: int = -1
    spill_bytes: int = -1
    shared: int = -1
    mma: dict = field(default_factory=dict)  # tensor-core instructions in the PTX, by kind
    spills_in_loops: int = -1  # spill loads/stores (STL/LDL) inside a loop of the SASS; -1: not looked at
    seconds: float = 0.0
    error: str = ""

    @property
    def spill_allowed(self) -> bool:
        """A few spilled bytes that no loop touches (each program stores and reloads them once, e.g. a saved
        predicate mask around the key loop): measured harmless, allowed and reported as such."""
        return 0 < self.spill_bytes <= SPILL_ALLOWANCE and self.spills_in_loops == 0

    @property
    def tensor_cores_ok(self) -> bool:
        """Half-precision kernels multiply on tensor cores in their own type (bf16 stays bf16: the interpreter's
        upcast is not compiled in); float32 ones use exact FMA products, no tensor cores; kernels without products
        (the state scan, the gate's backward: their data-typed pointers are element-wise) none."""
        if self.kernel in WITHOUT_PRODUCTS:
            return not self.mma
        if self.dtype in _PTX_TYPE:
            return bool(self.mma) and all(kind.endswith("." + _PTX_TYPE[self.dtype]) for kind in self.mma)
        return not self.mma

    @property
    def ok(self) -> bool:
        fits = (self.spill_bytes == 0 or self.spill_allowed) and self.shared <= SMEM_LIMIT[self.arch]
        return not self.error and fits and self.tensor_cores_ok


def constexpr_defaults(fn) -> dict:
    """The kernel's constexpr parameters that have a default value, at it: what a launch that leaves them out gets
    (triton's launcher applies the defaults; ``ASTSource`` does not, so the check passes them)."""
    params = inspect.signature(fn.fn).parameters.values()  # JITFunction and the interpreter's wrapper alike
    return {p.name: p.default for p in params if p.default is not p.empty and "constexpr" in str(p.annotation)}


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


@dataclass
class Binary:
    """One kernel compiled for one architecture: its PTX, ptxas's resource report, and (when asked) its SASS."""

    ptx: str
    shared: int
    registers: int
    spill_bytes: int
    sass: str = ""


def kernel_fn(fn_name: str):
    """The ``@triton.jit`` function of that name in the op packages."""
    return getattr(next(m for m in (mca, sw, qa, gate) if hasattr(m, fn_name)), fn_name)


def compile_kernel(
    fn_name: str,
    dtype: str,
    constexprs: dict,
    arch: int,
    options: dict,
    aligned: bool = True,
    sass: bool = False,
    divisible: tuple = (),
) -> Binary:
    """Compile ``fn_name`` for ``arch`` with triton, assemble its PTX with triton's own ptxas (``-v``) and, with
    ``sass`` (or when it spills), disassemble the cubin with ``nvdisasm -c``. Raises on a compile or ptxas
    failure."""
    fn = kernel_fn(fn_name)
    constexprs = {**constexpr_defaults(fn), **constexprs}
    attrs = alignment_attrs(fn, constexprs, divisible) if aligned else None
    src = ASTSource(fn=fn, signature=signature(fn, dtype, constexprs), constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))
    sm = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory(prefix="flash_triton_aot_") as tmp:  # removed whatever ptxas does
        ptx, cubin = os.path.join(tmp, "kernel.ptx"), os.path.join(tmp, "kernel.cubin")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        proc = subprocess.run([ptxas_path(arch), f"-arch={sm}", "-v", ptx, "-o", cubin], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas failed ({proc.returncode}): {proc.stderr.strip()}")
        log = proc.stderr
        stores = re.search(r"(\d+) bytes spill stores", log)
        loads = re.search(r"(\d+) bytes spill loads", log)
        out = Binary(
            ptx=compiled.asm["ptx"],
            shared=compiled.metadata.shared,
            registers=int(re.search(r"Used (\d+) registers", log).group(1)),
            spill_bytes=(int(stores.group(1)) if stores else 0) + (int(loads.group(1)) if loads else 0),
        )
        if sass or out.spill_bytes:
            out.sass = subprocess.run([nvdisasm_path(), "-c", cubin], capture_output=True, text=True, check=True).stdout
    return out


def describe(constexprs: dict, divisible: tuple = ()) -> tuple[str, str]:
    """("BM64xBN32x...", "E%16 S%16 [CAUSAL,...]"): a compile's tiles, and its divisible widths and flags set."""
    tiles = "x".join(f"{k}{v}" for k, v in constexprs.items() if k.startswith("B") and isinstance(v, int))
    flags = ",".join(k for k, v in constexprs.items() if v is True)
    units = "".join(f"{k}=1 " for k, v in constexprs.items() if k.startswith("stride_") and v == 1)
    return tiles, "".join(f"{k}%16 " for k in divisible) + units + f"[{flags}]"


def check(
    name: str,
    fn_name: str,
    dtype: str,
    constexprs: dict,
    arch: int,
    options: dict,
    aligned: bool = True,
    divisible: tuple = (),
) -> Result:
    tiles, flags = describe(constexprs, divisible)
    config = f"{dtype} {tiles} S_BLOCKS={constexprs.get('S_BLOCKS', 1)} w{options['num_warps']} {flags}"
    res = Result(name, arch, config, dtype)
    t0 = time.perf_counter()
    try:
        binary = compile_kernel(fn_name, dtype, constexprs, arch, options, aligned, divisible=divisible)
        res.shared, res.registers, res.spill_bytes = binary.shared, binary.registers, binary.spill_bytes
        res.mma = tensor_core_ops(binary.ptx)
        if binary.spill_bytes:
            res.spills_in_loops = spills_in_loops(binary.sass)
    except Exception as exc:  # a compile or ptxas failure is a finding, reported per configuration
        res.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:300]
    res.seconds = time.perf_counter() - t0
    return res


def _check(job: tuple) -> Result:
    return check(*job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SMEM_LIMIT))
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=None,
        choices=list(TORCH_DTYPES),
        help="default: all three (fp32 and bf16 with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the production shape, the layers' default launches, fp32 and bf16"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument(
        "--kernel", nargs="+", default=None, metavar="NAME", help="only these kernels (e.g. quad_attn_fwd group_state)"
    )
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter's functions cannot be compiled for a GPU", file=sys.stderr)
        return 2
    dtypes = args.dtype or (DTYPES_QUICK if args.quick else list(TORCH_DTYPES))
    jobs = []
    for arch in args.arch:  # each GPU compiles what its launchers pick there (the configs are keyed by arch)
        configs = variants([SHAPE_PRODUCTION], dtypes, layer_launches(args.quick), arch=arch)
        if not args.quick:
            other = variants(SHAPES_OTHER, dtypes, layer_launches(True), arch=arch)
            configs += [c for c in other if c not in configs]
        if args.kernel:
            unknown = sorted(set(args.kernel) - {c[0] for c in configs})
            if unknown:  # a typo would otherwise check nothing and pass
                known = sorted({c[0] for c in configs})
                parser.error(f"--kernel: no such kernel {', '.join(unknown)} (known: {known})")
            configs = [c for c in configs if c[0] in args.kernel]
        jobs += [(n, fn, d, c, arch, opts, True, div) for n, fn, d, c, opts, div in configs]
    print(f"triton {triton.__version__}; ptxas: " + ", ".join(f"sm_{a} {ptxas_path(a)}" for a in args.arch))
    t0 = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        for r in pool.map(_check, jobs):
            results.append(r)
            detail = r.error or f"regs={r.registers} spill={r.spill_bytes}B smem={r.shared}B"
            if r.spill_bytes > 0:
                detail += f" ({r.spills_in_loops} spill instructions inside loops)"
            if not r.error and not r.tensor_cores_ok:
                detail += f" tensor cores: {r.mma or 'none'}"
            status = ("ok*" if r.spill_allowed else "ok") if r.ok else "FAIL"
            print(f"{status:4} sm_{r.arch} {r.kernel:18} {r.config:80} {detail} ({r.seconds:.1f}s)", flush=True)
    print(summary(results))
    failed = sum(not r.ok for r in results)
    allowed = sum(r.ok and r.spill_allowed for r in results)
    if allowed:
        print(f"ok*: {allowed} configurations spill at most {SPILL_ALLOWANCE} bytes, none inside a loop (allowed)")
    print(f"{len(jobs) - failed} passed, {failed} failed in {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


def summary(results: list[Result]) -> str:
    """A Markdown table per (arch, kernel, dtype): configurations, worst registers, shared memory and spills, and
    the tensor-core instructions used; then the tensor-core line per (arch, dtype)."""
    rows, mma = {}, {}
    for r in results:
        row = rows.setdefault((r.arch, r.kernel, r.dtype), [0, 0, 0, 0, 0, set()])
        row[0] += 1
        row[1] = max(row[1], r.registers)
        row[2] = max(row[2], r.shared)
        row[3] = max(row[3], r.spill_bytes)
        row[4] += r.spill_allowed
        for kind in r.mma:
            row[5].add(kind.split(".")[0])
            mma.setdefault((r.arch, r.dtype), set()).add(kind.split(".")[0])
    lines = [
        "| arch | kernel | dtype | configurations | max registers | max shared memory (KiB) | max spill bytes | "
        "of which outside loops (ok*) | tensor cores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (arch, kernel, dtype), (n, regs, smem, spill, allowed, kinds) in sorted(rows.items()):
        lines.append(
            f"| sm_{arch} | {kernel} | {dtype} | {n} | {regs} | {smem / 1024:.0f} | {spill} | {allowed} | "
            f"{'+'.join(sorted(kinds)) or 'none (FMA)'} |"
        )
    kinds = "; ".join(f"sm_{a} {d}: {'+'.join(sorted(k))}" for (a, d), k in sorted(mma.items()))
    return "\n".join(lines) + f"\ntensor-core instructions: {kinds or 'none'}"


if __name__ == "__main__":
    sys.exit(main())
