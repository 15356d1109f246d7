"""FLASH layer (``flash_triton.FLASH``): dim 512, query/key 128, value width e = 1024, group 256, causal, token
shift off, no rotary; LayerNorm, projections, mixed chunk attention, gate, output projection, residual.

Providers: the kernels, the reference (eager and torch.compile), FLASH-pytorch 0.1.9 eager, the layer with an
identity core ("projections": the floor the core's cost adds to), and a Transformer++
layer of the same dim (pre-LayerNorm, causal SDPA 8 heads x 64, SwiGLU FFN of hidden width 1024, residuals).
``LONG``: in the full sweep the batch-1 lengths go on to 1M tokens (rows that do not fit say why).
FLOPs: :func:`benchmarks.formulas.flash_flops` / ``transformer_flops``; bytes: ``flash_bytes`` /
``transformer_bytes``.
"""

from .. import formulas
from ._layer import DIM, E, S, run_layers

NAME = "flash-layer"
TITLE = "FLASH layer (dim 512, s 128, e 1024, group 256, causal)"
PROVIDERS = ("triton", "reference", "compile", "upstream", "transformer++", "projections")
NOT_APPLICABLE: dict[str, str] = {}
LONG = True
G = 256
KW = dict(dim=DIM, group_size=G, query_key_dim=S, expansion_factor=E / DIM, causal=True)


def run(ctx) -> list[dict]:
    def costs(n, b, bwd):
        p = ctx.itemsize
        return b * formulas.flash_flops(n, DIM, S, E, G, True, bwd), b * formulas.flash_bytes(n, DIM, S, E, G, p, bwd)

    return run_layers(
        ctx,
        name=NAME,
        providers=PROVIDERS,
        layer="FLASH",
        kw=KW,
        cost=costs,
        long=LONG,
        shape={"dim": DIM, "s": S, "e": E, "group": G, "causal": True},
    )
