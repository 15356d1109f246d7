"""The loop the layer subjects share: one model per provider, built once, fed (batch, n, dim) inputs."""

import contextlib
from collections.abc import Callable

import torch

import flash_triton as ft
from flash_triton import layers

from .. import formulas
from ..baselines import TransformerPP, sdpa_backend_note, sdpa_context
from ._steps import step, sweep, upstream

DIM, S, E = 512, 128, 1024
HEADS = DIM // 64  # Transformer++: 8 heads x 64, SwiGLU hidden width e


def transformer_pp() -> TransformerPP:
    return TransformerPP(DIM, heads=HEADS, hidden=E)


def _kept(*tensors, **kw) -> torch.Tensor:
    """0, depending on every tensor the real core would read (q, k, the T5 table, ...): their producers' backward
    runs as in the real layer, and every parameter gets a (zero) gradient."""
    rest = [t for t in kw.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return 0.0 * (sum(t[..., :1] for t in tensors) + sum(t.sum() for t in rest))


def identity_quad(q, k, v, gate, **kw):
    """GAU's core as the identity on the gated value."""
    return v * gate + _kept(q, k, **kw)


def identity_mixed(quad_q, quad_k, lin_q, lin_k, v, gate, **kw):
    """FLASH's core as the identity on the gated value."""
    return v * gate + _kept(quad_q, quad_k, lin_q, lin_k, **kw)


@contextlib.contextmanager
def identity_core():
    """The layers' attention cores replaced by the identity for the duration (the "projections" provider)."""
    saved = layers.run_quad_attn, layers.run_mixed_chunk_attn
    layers.run_quad_attn, layers.run_mixed_chunk_attn = identity_quad, identity_mixed
    try:
        yield
    finally:
        layers.run_quad_attn, layers.run_mixed_chunk_attn = saved


def run_layers(
    ctx,
    *,
    name: str,
    providers: tuple[str, ...],
    layer: str,
    kw: dict,
    cost: Callable[[int, int, bool], tuple[float, float]],
    shape: dict,
    mem: Callable[[str, int, int, str], float | None] = lambda *_: None,
    long: bool = False,
) -> list[dict]:
    """``layer`` names the class (``"GAU"`` or ``"FLASH"``) built with ``kw`` by flash_triton (per backend) and by
    FLASH-pytorch ("upstream"); "compile" wraps the reference's in torch.compile, "transformer++" is the same-width
    Transformer++ layer, "projections" the layer with its core replaced by the identity (:func:`identity_core`).
    ``cost(n, batch, backward)`` gives the layer's (FLOPs, bytes); ``mem(provider, n, batch, mode)`` an optional
    memory estimate in bytes."""

    def model(provider):
        if provider == "upstream":
            return getattr(upstream(), layer)(**kw)
        if provider == "transformer++":
            return transformer_pp()
        return getattr(ft, layer)(**kw, backend="reference" if provider == "projections" else provider)

    def get(provider):
        def make():
            if provider == "compile":
                return torch.compile(model("reference").to(ctx.device, ctx.dtype))
            return model(provider).to(ctx.device, ctx.dtype)

        return ctx.once(provider, make)

    def build(provider, mode, n, b):
        layer = get(provider)
        x = torch.randn(b, n, DIM, device=ctx.device, dtype=ctx.dtype, requires_grad=mode != "fwd")
        params = [p for p in layer.parameters() if p.requires_grad]
        context = {"transformer++": lambda: sdpa_context(ctx.device, ctx.dtype), "projections": identity_core}
        return step(lambda: layer(x), mode, [x, *params], context.get(provider, contextlib.nullcontext))

    def spec(provider, mode, n, b):
        bwd, is_tpp = mode != "fwd", provider == "transformer++"
        if is_tpp:
            p = ctx.itemsize
            flops = b * formulas.transformer_flops(n, DIM, E, True, bwd)
            nbytes = b * formulas.transformer_bytes(n, DIM, E, p, bwd)
        else:
            flops, nbytes = cost(n, b, bwd)
        if provider == "projections":  # the projections' FLOPs; bytes: the layer's (the identity core reads and
            # writes nearly what the real one does)
            flops = b * formulas.projections_flops(n, DIM, S, E, bwd)
        return dict(
            flops=flops,
            bytes_moved=nbytes,
            shape={"dim": DIM, "heads": HEADS, "hidden": E} if is_tpp else shape,
            mem_bytes=mem(provider, n, b, mode),
            note=sdpa_backend_note(ctx.device, ctx.dtype) if is_tpp else None,
            build=lambda: build(provider, mode, n, b),
        )

    return sweep(ctx, name, providers, spec, long)
