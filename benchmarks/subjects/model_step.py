"""A full model step: a byte-level causal language model of ``--model-depth`` layers (default 8 on a GPU, as
FLASH-pytorch's enwik8 model; 2 on CPU), dim 512, group 256, query/key 128, token shift, rotary, ScaleNorm,
vocabulary 256.

"fwd": the logits of (batch, n) tokens without autograd (inference). "fwd+bwd": next-token cross-entropy and
its gradients with respect to every parameter (one training step without the optimizer update, which is
O(parameters) and the same for every provider).
Providers: ``flash_triton.FLASHTransformer`` on the kernels and on the reference (eager and torch.compile),
FLASH-pytorch 0.1.9's ``FLASHTransformer`` eager, and a Transformer++ language model of the same dim and depth.
FLOPs: :func:`benchmarks.formulas.model_flops`; bytes: :func:`benchmarks.formulas.model_bytes`.
"""

import torch
import torch.nn.functional as F

import flash_triton as ft

from .. import formulas
from ..baselines import TransformerPPLM, sdpa_backend_note, sdpa_context
from ._layer import DIM, HEADS, E, S
from ._steps import step, sweep, upstream

NAME = "model-step"
TITLE = "Language model step (dim 512, group 256, s 128, e 1024, vocab 256)"
PROVIDERS = ("triton", "reference", "compile", "upstream", "transformer++")
NOT_APPLICABLE: dict[str, str] = {}
G, VOCAB = 256, 256


def _model(provider, depth):
    kw = dict(
        num_tokens=VOCAB, dim=DIM, depth=depth, group_size=G, query_key_dim=S, expansion_factor=E / DIM, causal=True
    )
    if provider == "upstream":
        return upstream().FLASHTransformer(**kw)
    if provider == "transformer++":
        return TransformerPPLM(VOCAB, DIM, depth, heads=HEADS, hidden=E)
    return ft.FLASHTransformer(**kw, backend=provider)


def _build(ctx, provider, mode, n, b):
    def make():
        if provider == "compile":
            return torch.compile(_model("reference", ctx.model_depth).to(ctx.device, ctx.dtype))
        return _model(provider, ctx.model_depth).to(ctx.device, ctx.dtype)

    model = ctx.once(provider, make)
    tokens = torch.randint(0, VOCAB, (b, n + 1), device=ctx.device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    params = [p for p in model.parameters() if p.requires_grad]
    context = (lambda: sdpa_context(ctx.device, ctx.dtype)) if provider == "transformer++" else None
    if mode == "fwd":
        return step(lambda: model(inputs), mode, params, *([context] if context else []))

    def loss():
        return F.cross_entropy(model(inputs).float().flatten(0, 1), targets.flatten())

    return step(loss, mode, params, *([context] if context else []))


def run(ctx) -> list[dict]:
    depth, p = ctx.model_depth, ctx.itemsize

    def spec(provider, mode, n, b):
        bwd = mode != "fwd"
        if provider == "transformer++":
            layer_flops = formulas.transformer_flops(n, DIM, E, True, False)
            layer_bytes = formulas.transformer_bytes(n, DIM, E, p, False)
            shape = {"dim": DIM, "depth": depth, "heads": HEADS, "hidden": E, "vocab": VOCAB}
            note = sdpa_backend_note(ctx.device, ctx.dtype)
        else:
            layer_flops = formulas.flash_flops(n, DIM, S, E, G, True, False)
            layer_bytes = formulas.flash_bytes(n, DIM, S, E, G, p, False)
            shape = {"dim": DIM, "depth": depth, "s": S, "e": E, "group": G, "vocab": VOCAB, "causal": True}
            note = None
        return dict(
            flops=b * formulas.model_flops(layer_flops, n, DIM, VOCAB, depth, bwd),
            bytes_moved=b * formulas.model_bytes(layer_bytes, n, DIM, VOCAB, depth, p, bwd),
            shape=shape,
            note=note,
            build=lambda: _build(ctx, provider, mode, n, b),
        )

    return sweep(ctx, NAME, PROVIDERS, spec)
