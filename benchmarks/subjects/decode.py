"""Decoding: the latency of one generated token at context length n (the subject's "n"), batch 1.

The model is the model-step subject's causal language model (dim 512, group 256, s 128, e 1024, vocab 256,
``--model-depth`` layers). One timed call is one token of ``generate``: the net's logits for the new position,
top-k filtering (0.9) and a multinomial draw.

- ``triton`` / ``reference``: flash_triton's cached decoding on the kernels / on the reference. The prompt of n
  tokens is prefilled once (untimed); one timed call then generates ``group_size`` tokens from that cache, one
  per forward, so every position of a group is covered once (the cost of a step depends on the position in the
  group, through the current group's keys, not on n). The row reports the call's time divided by ``group_size``.
- ``hf``: the Hugging Face integration, ``FLASHForCausalLM.generate`` (sampling, top-k of the same k) on the same
  model (the kernels on a GPU, the reference on the CPU), handed the prefilled cache of the first n - 1 tokens:
  one timed call generates ``group_size`` tokens, like the cached rows, so the ratio of the two rows is what
  transformers' generate loop adds per token (its logits processors, stopping criteria and bookkeeping).
- ``upstream``: FLASH-pytorch 0.1.9's ``AutoregressiveWrapper.generate(prompt, 1)`` on a model of the same
  configuration (its own random weights; the time does not depend on them): it runs the whole sequence of n tokens
  through the net for every new token.

FLOPs: :func:`benchmarks.formulas.decode_flops` (cached) and the full forward of n tokens (upstream); bytes: the
weights plus the cache read per token (cached) or :func:`benchmarks.formulas.model_bytes` (upstream).
"""

import torch

import flash_triton as ft

from .. import formulas
from ._layer import DIM, E, S
from ._steps import upstream

NAME = "decode"
TITLE = "Decoding: one token at context n, batch 1 (LM dim 512, group 256, s 128, e 1024, vocab 256)"
PROVIDERS = ("triton", "reference", "hf", "upstream")
NOT_APPLICABLE = {
    "compile": "the cached step is a few small ops per layer; not compiled",
    "transformer++": "no KV-cache decoder written for it",
}
LONG = True
G, VOCAB, THRES = 256, 256, 0.9


def _config() -> dict:
    return dict(
        num_tokens=VOCAB, dim=DIM, depth=1, group_size=G, query_key_dim=S, expansion_factor=E / DIM, causal=True
    )


def _sample(logits: torch.Tensor) -> torch.Tensor:
    from flash_triton.autoregressive_wrapper import top_k

    probs = torch.softmax(top_k(logits, thres=THRES), dim=-1)
    return torch.multinomial(probs, 1)


def _cached_step(ctx, provider: str, n: int):
    def make():
        model = ft.FLASHTransformer(**{**_config(), "depth": ctx.model_depth}, backend=provider)
        return model.to(ctx.device, ctx.dtype).eval()

    model = ctx.once(provider, make)
    prompt = torch.randint(0, VOCAB, (1, n), device=ctx.device)
    with torch.no_grad():
        logits, prefilled = model(prompt, return_cache=True)
    first = _sample(logits[:, -1])

    def group_of_tokens() -> None:
        with torch.no_grad():
            cache, token = prefilled, first
            for _ in range(G):
                logits, cache = model(token, cache=cache, return_cache=True)
                token = _sample(logits[:, -1])

    return group_of_tokens


def _hf_step(ctx, n: int):
    from ..common import Unavailable

    try:
        from flash_triton import hf
    except ImportError as exc:
        raise Unavailable("not installed (pip install 'flash-triton[hf]')") from exc
    backend = "triton" if ctx.device == "cuda" else "reference"

    def make():
        cfg = _config()
        config = hf.FLASHConfig(vocab_size=cfg.pop("num_tokens"), **{**cfg, "depth": ctx.model_depth}, backend=backend)
        return hf.FLASHForCausalLM(config).to(ctx.device, ctx.dtype).eval()

    model = ctx.once("hf", make)
    prompt = torch.randint(0, VOCAB, (1, n), device=ctx.device)
    with torch.no_grad():
        _, prefilled = model.model(prompt[:, :-1], return_cache=True)  # generate feeds the last prompt token
    k = max(1, int((1 - THRES) * VOCAB))  # what top_k(thres=THRES) keeps
    ones = torch.ones_like(prompt)  # no padding (generate would infer one from pad_token_id otherwise)

    def group_of_tokens() -> None:
        cache = hf.FLASHGenerationCache(prefilled)
        model.generate(
            prompt,
            attention_mask=ones,
            max_new_tokens=G,
            min_new_tokens=G,
            do_sample=True,
            top_k=k,
            **{hf.CACHE_FIELD: cache},
        )

    return group_of_tokens


def _upstream_step(ctx, n: int):
    flash_pytorch = upstream()
    from flash_pytorch.autoregressive_wrapper import AutoregressiveWrapper

    def make():
        net = flash_pytorch.FLASHTransformer(**{**_config(), "depth": ctx.model_depth})
        return AutoregressiveWrapper(net).to(ctx.device, ctx.dtype)

    wrapper = ctx.once("upstream", make)
    prompt = torch.randint(0, VOCAB, (1, n), device=ctx.device)
    return lambda: wrapper.generate(prompt, 1, filter_thres=THRES)


def run(ctx) -> list[dict]:
    if "fwd" not in ctx.modes:
        return []
    depth, p = ctx.model_depth, ctx.itemsize
    contexts = sorted({n for n, _ in ctx.shapes_for(LONG)})
    rows = []
    for n in contexts:
        for provider in ctx.providers_for(PROVIDERS):
            cached = provider != "upstream"
            tokens_per_call = G if cached else 1
            shape = {
                "dim": DIM,
                "depth": depth,
                "s": S,
                "e": E,
                "group": G,
                "vocab": VOCAB,
                "causal": True,
                "context": n,
                "tokens_per_call": tokens_per_call,
            }
            if cached:
                flops = G * formulas.decode_flops(DIM, S, E, G, VOCAB, depth)
                nbytes = G * formulas.decode_bytes(DIM, S, E, G, VOCAB, depth, p)
                if provider == "hf":
                    build = lambda n=n: _hf_step(ctx, n)  # noqa: E731
                    note = f"transformers generate, cached; per token: one call of {G} tokens / {G}"
                else:
                    build = lambda pr=provider, n=n: _cached_step(ctx, pr, n)  # noqa: E731
                    note = f"cached; per token: one call of {G} tokens (a whole group) / {G}"
            else:
                layer_flops = formulas.flash_flops(n, DIM, S, E, G, True, False)
                layer_bytes = formulas.flash_bytes(n, DIM, S, E, G, p, False)
                flops = formulas.model_flops(layer_flops, n, DIM, VOCAB, depth, False)
                nbytes = formulas.model_bytes(layer_bytes, n, DIM, VOCAB, depth, p, False)
                build = lambda n=n: _upstream_step(ctx, n)  # noqa: E731
                note = "its generate: the whole n-token sequence through the net for each new token"
            row = ctx.measure(
                subject=NAME,
                provider=provider,
                mode="fwd",
                n=n,
                batch=1,
                shape=shape,
                flops=flops,
                bytes_moved=nbytes,
                build=build,
                note=note,
            )
            for key in ("ms", "ms_p20", "ms_p80", "floor_ms", "flops", "bytes"):  # per generated token
                if row.get(key) is not None:
                    row[key] /= tokens_per_call
            if row.get("ms") and tokens_per_call > 1:
                per_call = row["ms"] * tokens_per_call
                ctx.log(
                    f"  {NAME:12s} (that is one call of {tokens_per_call} tokens: {row['ms']:.3f} ms per token; "
                    f"{per_call:.1f} ms per call)"
                )
            row["sweep"] = "context"  # its own sweep (and plot): batch 1, n = context length
            rows.append(row)
    return rows
