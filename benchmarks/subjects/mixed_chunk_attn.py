"""mixed_chunk_attn (FLASH's attention core): :func:`flash_triton.mixed_chunk_attn.mixed_chunk_attn`, causal, groups of
g = 256, relu² within groups with the T5 bias, causal linear attention across groups, gated; query/key width
s = 128 (four heads: quad_q, quad_k, lin_q, lin_k), value and gate width e = 1024.

Providers: the kernels, the reference (eager and torch.compile), and Transformer++'s core: SDPA causal softmax
attention of the same value width (8 heads x 128). FLASH-pytorch has no separate op: compare in ``flash-layer``.
FLOPs: :func:`benchmarks.formulas.mixed_chunk_attn_flops`; bytes: :func:`benchmarks.formulas.mixed_chunk_attn_bytes`.
"""

from .. import formulas
from ._steps import core_op, random_inputs, sdpa_core_row, step, sweep

NAME = "mixed-chunk-attn"
TITLE = "mixed_chunk_attn: FLASH attention core (causal mixed chunk attention, g 256, s 128, e 1024, T5 bias, gate)"
PROVIDERS = ("triton", "reference", "compile", "transformer++")
NOT_APPLICABLE = {"upstream": "FLASH-pytorch has no separate attention op; see flash-layer"}
S, E, G, T5_BUCKETS, HEAD_DIM = 128, 1024, 256, 32, 128
KW = dict(group_size=G, causal=True, t5_scale=S**0.5)


def _build(ctx, provider, mode, n, b):
    make = random_inputs(ctx, mode)
    heads = [make(b, n, S) for _ in range(4)]
    v, gate, t5 = make(b, n, E), make(b, n, E), make(T5_BUCKETS)
    fn = core_op(ctx, provider, "mixed_chunk_attn")
    return step(lambda: fn(*heads, v, gate, t5_weight=t5, **KW), mode, (*heads, v, gate, t5))


def run(ctx) -> list[dict]:
    def spec(provider, mode, n, b):
        if provider == "transformer++":
            return sdpa_core_row(ctx, mode, n, b, E, HEAD_DIM)
        bwd = mode != "fwd"
        return dict(
            flops=b * formulas.mixed_chunk_attn_flops(n, S, E, G, True, bwd),
            bytes_moved=b * formulas.mixed_chunk_attn_bytes(n, S, E, G, ctx.itemsize, bwd),
            shape={"s": S, "e": E, "group": G, "causal": True},
            build=lambda: _build(ctx, provider, mode, n, b),
        )

    return sweep(ctx, NAME, PROVIDERS, spec)
