"""GAU layer (``flash_triton.GAU``): dim 512, query/key 128, value width e = 1024, causal, whole-sequence relu²
attention with the T5 bias; LayerNorm, projections, attention, gate, output projection, residual.

Providers: the kernels, the reference (eager and torch.compile), FLASH-pytorch 0.1.9 eager, the layer with an
identity core ("projections": the floor the core's cost adds to), and the same
Transformer++ layer as ``flash-layer``. The reference and FLASH-pytorch materialise n x n matrices: rows whose
estimate exceeds the memory available are skipped and say so.
FLOPs: :func:`benchmarks.formulas.gau_flops` / ``transformer_flops``; bytes: ``gau_bytes`` / ``transformer_bytes``.
"""

from .. import formulas
from ._layer import DIM, E, S, run_layers
from ._steps import quadratic_bytes

NAME = "gau-layer"
TITLE = "GAU layer (dim 512, s 128, e 1024, causal)"
PROVIDERS = ("triton", "reference", "compile", "upstream", "transformer++", "projections")
NOT_APPLICABLE: dict[str, str] = {}
KW = dict(dim=DIM, query_key_dim=S, expansion_factor=E / DIM, causal=True)


def run(ctx) -> list[dict]:
    def costs(n, b, bwd):
        p = ctx.itemsize
        return b * formulas.gau_flops(n, DIM, S, E, True, bwd), b * formulas.gau_bytes(n, DIM, S, E, p, bwd)

    def mem(provider, n, b, mode):
        quadratic = provider in ("reference", "compile", "upstream")
        return quadratic_bytes(n, b, ctx.itemsize, mode) if quadratic else None

    return run_layers(
        ctx,
        name=NAME,
        providers=PROVIDERS,
        layer="GAU",
        kw=KW,
        cost=costs,
        mem=mem,
        shape={"dim": DIM, "s": S, "e": E, "causal": True},
    )
