"""GAU attention core: causal single-head relu² attention over the whole sequence with the in-kernel T5 bias and
the gate (``flash_triton.ops.quad_attn``); query/key width s = 128, value and gate width e = 1024.

Providers: the kernels, the reference (eager and torch.compile), and Transformer++'s core: SDPA causal softmax
attention of the same value width (8 heads x 128 for q, k and v). FLASH-pytorch has no separate attention op
(its core is inline in ``GAU.forward``): compare with it in ``gau-layer``.
FLOPs: :func:`benchmarks.formulas.core_flops`; bytes: :func:`benchmarks.formulas.core_bytes`.
"""

from .. import formulas
from ..baselines import sdpa_backend_note
from ._steps import core_op, quadratic_bytes, random_inputs, sdpa_core_step, step

NAME = "gau-core"
TITLE = "GAU attention core (causal relu², s 128, e 1024, T5 bias, gate)"
PROVIDERS = ("triton", "reference", "compile", "transformer++")
NOT_APPLICABLE = {"upstream": "FLASH-pytorch has no separate attention op; see gau-layer"}
S, E, T5_BUCKETS, HEAD_DIM = 128, 1024, 32, 128
# fixed scales: the GAU layer divides by n, but a scale that changes with n would make torch.compile recompile
# for every length; the work does not depend on the values
KW = dict(scale=1.0 / 1024, causal=True, t5_scale=512**0.5 / 1024)


def _build(ctx, provider, mode, n, b):
    if provider == "transformer++":
        return sdpa_core_step(ctx, mode, n, b, E, HEAD_DIM)
    make = random_inputs(ctx, mode)
    q, k, v, gate, t5 = make(b, n, S), make(b, n, S), make(b, n, E), make(b, n, E), make(T5_BUCKETS)
    fn = core_op(ctx, provider, "quad_attn")
    return step(lambda: fn(q, k, v, gate, t5_weight=t5, **KW), mode, (q, k, v, gate, t5))


def run(ctx) -> list[dict]:
    rows = []
    for n, b in ctx.shapes_for():
        for mode in ctx.modes:
            bwd = mode != "fwd"
            for provider in ctx.providers_for(PROVIDERS):
                if provider == "transformer++":
                    flops = b * formulas.sdpa_flops(n, E, True, bwd)
                    nbytes = b * formulas.sdpa_bytes(n, E, ctx.itemsize, bwd)
                    note = sdpa_backend_note(ctx.device, ctx.dtype)
                    shape, mem = {"heads": E // HEAD_DIM, "head_dim": HEAD_DIM}, None
                else:
                    flops = b * formulas.core_flops(n, S, E, True, bwd)
                    nbytes = b * formulas.core_bytes(n, S, E, ctx.itemsize, bwd)
                    shape, note = {"s": S, "e": E, "causal": True}, None
                    mem = None if provider == "triton" else quadratic_bytes(n, b, ctx.itemsize, mode)
                row = ctx.measure(
                    subject=NAME,
                    provider=provider,
                    mode=mode,
                    n=n,
                    batch=b,
                    shape=shape,
                    flops=flops,
                    bytes_moved=nbytes,
                    mem_bytes=mem,
                    note=note,
                    build=lambda p=provider, m=mode, n=n, b=b: _build(ctx, p, m, n, b),
                )
                rows.append(row)
    return rows
