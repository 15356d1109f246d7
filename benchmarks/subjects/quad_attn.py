"""quad_attn (GAU's attention core): causal single-head relu² attention over the whole sequence with the in-kernel
T5 bias and the gate (:func:`flash_triton.quad_attn.quad_attn`); query/key width s = 128, value and gate width e = 1024.

Providers: the kernels, the reference (eager and torch.compile), and Transformer++'s core: SDPA causal softmax
attention of the same value width (8 heads x 128 for q, k and v). FLASH-pytorch has no separate attention op
(its core is inline in ``GAU.forward``): compare with it in ``gau-layer``.
FLOPs: :func:`benchmarks.formulas.quad_attn_flops`; bytes: :func:`benchmarks.formulas.quad_attn_bytes`.
"""

from .. import formulas
from ._steps import core_op, quadratic_bytes, random_inputs, sdpa_core_row, step, sweep

NAME = "quad-attn"
TITLE = "quad_attn: GAU attention core (causal relu², s 128, e 1024, T5 bias, gate)"
PROVIDERS = ("triton", "reference", "compile", "transformer++")
NOT_APPLICABLE = {"upstream": "FLASH-pytorch has no separate attention op; see gau-layer"}
S, E, T5_BUCKETS, HEAD_DIM = 128, 1024, 32, 128
# fixed scales: the GAU layer divides by n, but a scale that changes with n would make torch.compile recompile
# for every length; the work does not depend on the values
KW = dict(scale=1.0 / 1024, causal=True, t5_scale=512**0.5 / 1024)


def _build(ctx, provider, mode, n, b):
    make = random_inputs(ctx, mode)
    q, k, v, gate, t5 = make(b, n, S), make(b, n, S), make(b, n, E), make(b, n, E), make(T5_BUCKETS)
    fn = core_op(ctx, provider, "quad_attn")
    return step(lambda: fn(q, k, v, gate, t5_weight=t5, **KW), mode, (q, k, v, gate, t5))


def run(ctx) -> list[dict]:
    def spec(provider, mode, n, b):
        if provider == "transformer++":
            return sdpa_core_row(ctx, mode, n, b, E, HEAD_DIM)
        bwd = mode != "fwd"
        return dict(
            flops=b * formulas.quad_attn_flops(n, S, E, True, bwd),
            bytes_moved=b * formulas.quad_attn_bytes(n, S, E, ctx.itemsize, bwd),
            shape={"s": S, "e": E, "causal": True},
            mem_bytes=None if provider == "triton" else quadratic_bytes(n, b, ctx.itemsize, mode),
            build=lambda: _build(ctx, provider, mode, n, b),
        )

    return sweep(ctx, NAME, PROVIDERS, spec)
