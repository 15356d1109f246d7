"""The loop the layer subjects share: one model per provider, built once, fed (batch, n, dim) inputs."""

from collections.abc import Callable

import torch

from ..baselines import TransformerPP, sdpa_backend_note, sdpa_context
from ._steps import step, sweep

DIM, S, E = 512, 128, 1024
HEADS = DIM // 64  # Transformer++: 8 heads x 64, SwiGLU hidden width e


def transformer_pp() -> TransformerPP:
    return TransformerPP(DIM, heads=HEADS, hidden=E)


def run_layers(
    ctx,
    *,
    name: str,
    providers: tuple[str, ...],
    model: Callable[[str], torch.nn.Module],
    cost: Callable[[str, int, int, bool], tuple[float, float]],
    shape: dict,
    mem: Callable[[str, int, int, str], float | None],
    long: bool = False,
) -> list[dict]:
    """``model(provider)`` builds a provider's layer (eager; "compile" wraps the reference's in torch.compile);
    ``cost(provider, n, batch, backward)`` gives (FLOPs, bytes); ``mem(provider, n, batch, mode)`` an optional
    memory estimate in bytes."""

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
        context = (lambda: sdpa_context(ctx.device, ctx.dtype)) if provider == "transformer++" else None
        return step(lambda: layer(x), mode, [x, *params], *([context] if context else []))

    def spec(provider, mode, n, b):
        flops, nbytes = cost(provider, n, b, mode != "fwd")
        is_tpp = provider == "transformer++"
        return dict(
            flops=flops,
            bytes_moved=nbytes,
            shape={"dim": DIM, "heads": HEADS, "hidden": E} if is_tpp else shape,
            mem_bytes=mem(provider, n, b, mode),
            note=sdpa_backend_note(ctx.device, ctx.dtype) if is_tpp else None,
            build=lambda: build(provider, mode, n, b),
        )

    return sweep(ctx, name, providers, spec, long)
