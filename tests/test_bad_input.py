"""Every argument of every public entry point gets at least one malformed value, refused with a ValueError or
TypeError that names the argument, before any compute (issue 16). ``test_every_argument_has_a_case`` reads the
entry points' signatures, so a new argument without a case here (or a stated reason) fails. The layers' common
inputs (x, mask, rel_pos_bias, cu_seqlens, token ids) have more cases in tests/test_validation.py, the decoding
cache's ownership in tests/test_decoding.py, the training CLI's file and resume errors in tests/test_train.py."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import flash_triton as ft
from flash_triton import ops, reference
from flash_triton import train as train_mod
from tests._helpers import MICRO, config_flags, snapshot

B, N, S, E, G = 2, 5, 8, 6, 4


class ComputeStarted(Exception):
    pass


class NoCompute(TorchFunctionMode):
    """Any matrix product, embedding lookup or normalisation means validation came too late."""

    COMPUTE = {
        torch.matmul,
        torch.mm,
        torch.bmm,
        torch.einsum,
        torch.Tensor.__matmul__,
        F.linear,
        F.embedding,
        F.layer_norm,
        torch.norm,
    }

    setting_up = False  # True while a case builds what it needs (a decoding cache) before the bad call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.COMPUTE and not NoCompute.setting_up:
            raise ComputeStarted(f"{getattr(func, '__name__', func)} ran before the input was refused")
        return func(*args, **(kwargs or {}))


@dataclasses.dataclass
class Case:
    entry: str
    arg: str
    value: str  # what is wrong, for the test id
    call: Callable[..., object]  # ops: call(backend)
    exc: type[Exception]
    match: str


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def gau(**kw):
    return ft.GAU(**({"dim": S, "query_key_dim": S} | kw))


def flash(**kw):
    return ft.FLASH(**({"dim": S, "group_size": G, "query_key_dim": S, "causal": True} | kw))


def lm(**kw):
    base = {"num_tokens": 10, "dim": S, "depth": 1, "group_size": G, "query_key_dim": S, "causal": True}
    return ft.FLASHTransformer(**(base | kw))


def wrapper(**kw):
    return ft.AutoregressiveWrapper(lm(), **kw)


def lm_cache():
    """A model and the decoding cache of 3 tokens it returned (computed: not part of the checked call)."""
    NoCompute.setting_up = True
    try:
        model = lm().eval()
        return model, model(torch.randint(0, 10, (B, 3)), return_cache=True)[1]
    finally:
        NoCompute.setting_up = False


def qa(backend, q=None, k=None, v=None, gate=None, **kw):
    q = t(B, N, S) if q is None else q
    return ops.quad_attn(
        q,
        t(B, N, S) if k is None else k,
        t(B, N, E) if v is None else v,
        gate,
        backend=backend,
        **({"scale": 0.2} | kw),
    )


def mca(backend, **over):
    args = dict(quad_q=t(B, N, S), quad_k=t(B, N, S), lin_q=t(B, N, S), lin_k=t(B, N, S), v=t(B, N, E), gate=t(B, N, E))
    tensors = {k: over.pop(k, v) for k, v in args.items()}
    return ops.mixed_chunk_attn(*tensors.values(), backend=backend, **({"group_size": G, "causal": True} | over))


def step(backend, **over):
    m, L = 2, 3
    args = dict(quad_q=t(B, m, S), lin_q=t(B, m, S), gate=t(B, m, E), quad_k=t(B, L, S), lin_k=t(B, L, S), v=t(B, L, E))
    tensors = {k: over.pop(k, v) for k, v in args.items()}
    state = over.pop("state", None)
    return ops.mixed_chunk_attn_step(*tensors.values(), state, backend=backend, **({"group_size": G} | over))


def _cases() -> list[Case]:
    c: list[Case] = []

    def add(entry, arg, value, call, exc, match=None):
        c.append(Case(entry, arg, value, call, exc, match or re.escape(arg)))

    # --- the layers' constructors: every argument
    for name, make in (("GAU", gau), ("FLASH", flash)):
        add(name, "dim", "0", lambda make=make: make(dim=0), ValueError, "dim must be positive")
        add(name, "query_key_dim", "float", lambda make=make: make(query_key_dim=8.0), TypeError)
        add(name, "expansion_factor", "str", lambda make=make: make(expansion_factor="2"), TypeError)
        add(name, "expansion_factor", "nan", lambda make=make: make(expansion_factor=float("nan")), ValueError)
        add(name, "causal", "str", lambda make=make: make(causal="no"), TypeError, "causal must be a bool")
        add(name, "dropout", "-0.1", lambda make=make: make(dropout=-0.1), ValueError)
        add(name, "laplace_attn_fn", "None", lambda make=make: make(laplace_attn_fn=None), TypeError)
        add(name, "norm_klass", "str", lambda make=make: make(norm_klass="LayerNorm"), TypeError)
        add(name, "norm_klass", "instance", lambda make=make: make(norm_klass=torch.nn.LayerNorm(S)), TypeError)
        add(name, "backend", "cuda", lambda make=make: make(backend="cuda"), ValueError)
    add("GAU", "add_residual", "str", lambda: gau(add_residual="yes"), TypeError)
    add("GAU", "rel_pos_bias", "tensor", lambda: gau(rel_pos_bias=torch.ones(3)), TypeError)
    add("FLASH", "group_size", "2**40", lambda: flash(group_size=2**40), ValueError, "group_size must be at most")
    add("FLASH", "rotary_pos_emb", "str", lambda: flash(rotary_pos_emb="rope"), TypeError)
    add("FLASH", "shift_tokens", "str", lambda: flash(shift_tokens="False"), TypeError)
    add("FLASH", "reduce_group_non_causal_attn", "None", lambda: flash(reduce_group_non_causal_attn=None), TypeError)
    for arg, value, exc in (
        ("dim", 7, ValueError),
        ("num_tokens", 0, ValueError),
        ("depth", "1", TypeError),
        ("group_size", -4, ValueError),
        ("query_key_dim", 17, ValueError),
        ("expansion_factor", 0, ValueError),
        ("causal", "yes", TypeError),
        ("attn_dropout", 1.5, ValueError),
        ("norm_type", ["layernorm"], ValueError),
        ("shift_tokens", None, TypeError),
        ("laplace_attn_fn", "no", TypeError),
        ("reduce_group_non_causal_attn", 2, TypeError),
        ("backend", "TRITON", ValueError),
    ):
        add("FLASHTransformer", arg, repr(value), lambda arg=arg, value=value: lm(**{arg: value}), exc)

    # --- the layers' forwards
    add("GAU.forward", "x", "features", lambda: gau()(t(B, N, S + 1)), ValueError)
    add("GAU.forward", "rel_pos_bias", "shape", lambda: gau()(t(B, N, S), rel_pos_bias=t(B, N, 4)), ValueError)
    add(
        "GAU.forward",
        "rel_pos_bias",
        "float64",
        lambda: gau()(t(B, N, S), rel_pos_bias=t(N, N, dtype=torch.float64)),
        TypeError,
    )
    add("GAU.forward", "mask", "float", lambda: gau()(t(B, N, S), mask=torch.ones(B, N)), TypeError)
    add("FLASH.forward", "x", "int", lambda: flash()(torch.ones(B, N, S, dtype=torch.long)), TypeError)
    add("FLASH.forward", "mask", "shape", lambda: flash()(t(B, N, S), mask=torch.ones(B, 1, dtype=bool)), ValueError)
    add(
        "FLASH.forward",
        "cu_seqlens",
        "batch 2",
        lambda: flash()(t(B, N, S), cu_seqlens=torch.tensor([0, 5])),
        ValueError,
    )
    add("FLASH.forward", "cache", "str", lambda: flash().eval()(t(B, 1, S), cache="c"), TypeError)
    add("FLASH.forward", "return_cache", "str", lambda: flash().eval()(t(B, 1, S), return_cache="no"), TypeError)
    add("FLASHTransformer.forward", "x", "uint8", lambda: lm()(torch.ones(B, N, dtype=torch.uint8)), TypeError)
    add(
        "FLASHTransformer.forward",
        "mask",
        "float",
        lambda: lm()(torch.ones(B, N).long(), mask=torch.ones(B, N)),
        TypeError,
    )
    add(
        "FLASHTransformer.forward",
        "cu_seqlens",
        "decreasing",
        lambda: lm()(torch.ones(1, N).long(), cu_seqlens=torch.tensor([0, 3, 2, 5])),
        ValueError,
    )
    add(
        "FLASHTransformer.forward",
        "return_cache",
        "None",
        lambda: lm().eval()(torch.ones(B, 2).long(), return_cache=None),
        TypeError,
    )

    def other_batch():
        model, cache = lm_cache()
        return model(torch.ones(1, 1).long(), cache=cache)

    add("FLASHTransformer.forward", "cache", "batch", other_batch, ValueError, "cache holds batch size 2")

    def inconsistent_layer_cache():
        model, cache = lm_cache()
        layer = model.layers[0]
        forged = dataclasses.replace(cache.layers[0], position=cache.position + 1)  # 3 buffered rows at position 4
        return layer(t(B, 1, S), cache=forged)

    add("FLASH.forward", "cache", "forged", inconsistent_layer_cache, ValueError, "not a cache this layer returned")

    # --- the wrapper and generate
    add("AutoregressiveWrapper", "net", "function", lambda: ft.AutoregressiveWrapper(lambda x: x), TypeError)
    add("AutoregressiveWrapper", "pad_value", "1.5", lambda: wrapper(pad_value=1.5), TypeError)
    add("AutoregressiveWrapper.forward", "x", "float", lambda: wrapper()(torch.rand(B, N)), TypeError)
    add(
        "AutoregressiveWrapper.forward",
        "kwargs",
        "return_cache",
        lambda: wrapper()(torch.ones(B, N).long(), return_cache=True),
        ValueError,
        "return_cache cannot be passed",
    )
    gen = "AutoregressiveWrapper.generate"
    add(gen, "start_tokens", "list", lambda: wrapper().generate([[1, 2]], 2), TypeError)
    add(gen, "start_tokens", "empty", lambda: wrapper().generate(torch.ones(B, 0).long(), 2), ValueError)
    add(gen, "seq_len", "-1", lambda: wrapper().generate(torch.ones(B, 2).long(), -1), ValueError)
    add(gen, "eos_token", "10", lambda: wrapper().generate(torch.ones(B, 2).long(), 2, eos_token=10), ValueError)
    add(gen, "eos_token", "1.5", lambda: wrapper().generate(torch.ones(B, 2).long(), 2, eos_token=1.5), TypeError)
    add(
        gen,
        "temperature",
        "nan",
        lambda: wrapper().generate(torch.ones(B, 2).long(), 2, temperature=float("nan")),
        ValueError,
    )
    add(
        gen,
        "filter_thres",
        "-0.5",
        lambda: wrapper().generate(torch.ones(B, 2).long(), 2, filter_thres=-0.5),
        ValueError,
    )
    add(gen, "use_cache", "str", lambda: wrapper().generate(torch.ones(B, 2).long(), 2, use_cache="no"), TypeError)
    add(
        gen,
        "kwargs",
        "cache",
        lambda: wrapper().generate(torch.ones(B, 2).long(), 2, use_cache=False, cache=None),
        ValueError,
        "cache cannot be passed",
    )

    # --- caches
    add("FLASHCache.reorder", "index", "bool", lambda: lm_cache()[1].reorder(torch.tensor([True, False])), TypeError)
    add("FLASHCache.reorder", "index", "range", lambda: lm_cache()[1].reorder(torch.tensor([0, 5])), ValueError)
    add(
        "FLASHCache.reorder",
        "index",
        "empty",
        lambda: lm_cache()[1].reorder(torch.tensor([], dtype=torch.long)),
        ValueError,
    )
    add("FLASHCache.to", "device", "dtype", lambda: lm_cache()[1].to(torch.float64), TypeError)
    add("FLASHCache.to", "device", "tpu", lambda: lm_cache()[1].to("tpu"), ValueError)
    add("FLASHLayerCache.reorder", "index", "list", lambda: lm_cache()[1].layers[0].reorder([1, 0]), TypeError)
    add("FLASHLayerCache.to", "device", "None", lambda: lm_cache()[1].layers[0].to(None), TypeError)

    # --- the building blocks
    add("RotaryEmbedding", "dim", "odd", lambda: ft.RotaryEmbedding(7), ValueError)
    add(
        "RotaryEmbedding",
        "custom_freqs",
        "2-D",
        lambda: ft.RotaryEmbedding(4, custom_freqs=torch.ones(2, 2)),
        ValueError,
    )
    add("RotaryEmbedding", "theta", "0", lambda: ft.RotaryEmbedding(4, theta=0), ValueError)
    add("RotaryEmbedding", "learned_freq", "str", lambda: ft.RotaryEmbedding(4, learned_freq="yes"), TypeError)
    add("ScaleNorm", "dim", "0", lambda: ft.ScaleNorm(0), ValueError)
    add("ScaleNorm", "eps", "nan", lambda: ft.ScaleNorm(8, eps=float("nan")), ValueError)
    add("T5RelativePositionBias", "scale", "str", lambda: ft.T5RelativePositionBias("x"), TypeError)
    add("T5RelativePositionBias", "causal", "None", lambda: ft.T5RelativePositionBias(1.0, causal=None), TypeError)
    add("T5RelativePositionBias", "num_buckets", "2", lambda: ft.T5RelativePositionBias(1.0, num_buckets=2), ValueError)
    add(
        "T5RelativePositionBias",
        "max_distance",
        "16",
        lambda: ft.T5RelativePositionBias(1.0, max_distance=16),
        ValueError,
    )
    add("ScaledSinuEmbedding", "dim", "-2", lambda: ft.ScaledSinuEmbedding(-2), ValueError)
    add("OffsetScale", "dim", "0", lambda: ft.OffsetScale(0), ValueError)
    add("OffsetScale", "heads", "str", lambda: ft.OffsetScale(8, heads="2"), TypeError)
    return c


def _op_cases() -> list[Case]:
    """The functional ops, each case run on both backends."""
    c: list[Case] = []

    def add(entry, arg, value, call, exc, match=None):
        c.append(Case(entry, arg, value, call, exc, match or re.escape(arg)))

    f64 = torch.float64
    add("ops.quad_attn", "q", "rank", lambda be: qa(be, q=t(N, S)), ValueError)
    add(
        "ops.quad_attn",
        "k",
        "length",
        lambda be: qa(be, k=t(B, N + 1, S)),
        ValueError,
        r"k must have shape \(b=2, n=5, s=8\)",
    )
    add(
        "ops.quad_attn",
        "v",
        "float64",
        lambda be: qa(be, v=t(B, N, E, dtype=f64)),
        TypeError,
        "v is torch.float64 but q",
    )
    add("ops.quad_attn", "gate", "width", lambda be: qa(be, gate=t(B, N, E + 1)), ValueError)
    add("ops.quad_attn", "scale", "nan", lambda be: qa(be, scale=float("nan")), ValueError)
    add("ops.quad_attn", "window", "0", lambda be: qa(be, window=0), ValueError)
    add("ops.quad_attn", "causal", "str", lambda be: qa(be, causal="no"), TypeError)
    add("ops.quad_attn", "key_mask", "float", lambda be: qa(be, key_mask=torch.ones(B, N)), TypeError)
    add("ops.quad_attn", "t5_weight", "2-D", lambda be: qa(be, t5_weight=t(32, 1)), ValueError)
    add("ops.quad_attn", "t5_scale", "inf", lambda be: qa(be, t5_scale=float("inf")), ValueError)
    add("ops.quad_attn", "t5_max_distance", "8", lambda be: qa(be, t5_weight=t(32), t5_max_distance=8), ValueError)
    add("ops.quad_attn", "bias", "batch", lambda be: qa(be, bias=t(3, N, N)), ValueError)
    add("ops.quad_attn", "bias", "float64", lambda be: qa(be, bias=t(N, N, dtype=f64)), TypeError)
    add("ops.quad_attn", "bias_scale", "str", lambda be: qa(be, bias=t(N, N), bias_scale="1"), TypeError)
    add("ops.quad_attn", "laplace", "None", lambda be: qa(be, laplace=None), TypeError)
    add("ops.quad_attn", "dropout_p", "1", lambda be: qa(be, dropout_p=1.0), ValueError)
    add(
        "ops.quad_attn",
        "dropout_mask",
        "shape",
        lambda be: qa(be, dropout_p=0.5, dropout_mask=torch.ones(B, 1, 4, 4, dtype=torch.bool)),
        ValueError,
    )
    add("ops.quad_attn", "backend", "foo", lambda be: qa("foo"), ValueError)
    mc = "ops.mixed_chunk_attn"
    for arg, shape in (("quad_q", (B, N)), ("quad_k", (B, N + 1, S)), ("lin_q", (B, N, S + 1)), ("lin_k", (1, N, S))):
        add(mc, arg, "shape", lambda be, arg=arg, shape=shape: mca(be, **{arg: t(*shape)}), ValueError)
    add(mc, "v", "int", lambda be: mca(be, v=torch.ones(B, N, E, dtype=torch.long)), TypeError)
    add(mc, "gate", "float64", lambda be: mca(be, gate=t(B, N, E, dtype=f64)), TypeError)
    add(mc, "group_size", "2**40", lambda be: mca(be, group_size=2**40), ValueError)
    add(mc, "causal", "None", lambda be: mca(be, causal=None), TypeError)
    add(mc, "key_mask", "shape", lambda be: mca(be, key_mask=torch.ones(B, N + 1, dtype=torch.bool)), ValueError)
    add(mc, "t5_weight", "1 bucket", lambda be: mca(be, t5_weight=t(1)), ValueError)
    add(mc, "t5_scale", "nan", lambda be: mca(be, t5_scale=float("nan")), ValueError)
    add(mc, "t5_max_distance", "0", lambda be: mca(be, t5_max_distance=0), ValueError)
    add(mc, "laplace", "str", lambda be: mca(be, laplace="yes"), TypeError)
    add(mc, "dropout_p", "-0.1", lambda be: mca(be, dropout_p=-0.1), ValueError)
    add(
        mc,
        "dropout_mask",
        "float",
        lambda be: mca(be, dropout_p=0.5, dropout_mask=torch.ones(B, 2, G, G)),
        TypeError,
    )
    add(mc, "reduce_group", "str", lambda be: mca(be, causal=False, reduce_group="no"), TypeError)
    add(mc, "initial_state", "shape", lambda be: mca(be, initial_state=t(B, E, S)), ValueError)
    add(mc, "initial_state", "non-causal", lambda be: mca(be, causal=False, initial_state=t(B, S, E)), ValueError)
    add(mc, "output_final_state", "str", lambda be: mca(be, output_final_state="yes"), TypeError)
    add(mc, "cu_seqlens", "batch 2", lambda be: mca(be, cu_seqlens=torch.tensor([0, N])), ValueError)
    add(mc, "backend", "1", lambda be: mca(1), ValueError)
    st = "ops.mixed_chunk_attn_step"
    add(
        st,
        "quad_q",
        "longer than the window",
        lambda be: step(be, quad_q=t(B, 4, S), lin_q=t(B, 4, S), gate=t(B, 4, E)),
        ValueError,
    )
    add(st, "lin_q", "width", lambda be: step(be, lin_q=t(B, 2, S + 1)), ValueError)
    add(st, "gate", "length", lambda be: step(be, gate=t(B, 3, E)), ValueError, r"gate must have shape \(b=2, m=2, e\)")
    add(st, "quad_k", "batch", lambda be: step(be, quad_k=t(1, 3, S)), ValueError)
    add(st, "lin_k", "length", lambda be: step(be, lin_k=t(B, 4, S)), ValueError, "sizes from quad_q, quad_k")
    add(st, "v", "float16", lambda be: step(be, v=t(B, 3, E, dtype=torch.float16)), TypeError)
    add(st, "state", "shape", lambda be: step(be, state=t(B, E, S)), ValueError)
    add(st, "group_size", "0", lambda be: step(be, group_size=0), ValueError)
    add(st, "t5_weight", "int", lambda be: step(be, t5_weight=torch.ones(32, dtype=torch.long)), TypeError)
    add(st, "t5_scale", "None", lambda be: step(be, t5_scale=None), TypeError)
    add(st, "t5_max_distance", "1.5", lambda be: step(be, t5_max_distance=1.5), TypeError)
    add(st, "laplace", "str", lambda be: step(be, laplace="no"), TypeError)
    add(
        st,
        "kwargs",
        "key_mask",
        lambda be: step(be, key_mask=torch.ones(B, 3, dtype=torch.bool)),
        TypeError,
        "key_mask",
    )
    add(st, "backend", "gpu", lambda be: step("gpu"), ValueError)
    return c


CASES = _cases()
OP_CASES = _op_cases()


def _entry_points() -> dict[str, set[str]]:
    """Each public entry point and the names of its parameters (the functional ops: theirs plus their reference
    function's keywords, which they take through **kw)."""

    def params(fn) -> set[str]:
        sig = inspect.signature(fn)
        return {
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        } | ({"kwargs"} if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()) else set())

    out = {}
    for name in ("GAU", "FLASH", "FLASHTransformer", "RotaryEmbedding", "ScaleNorm", "T5RelativePositionBias"):
        out[name] = params(getattr(ft, name).__init__)
    for name in ("ScaledSinuEmbedding", "OffsetScale", "AutoregressiveWrapper"):
        out[name] = params(getattr(ft, name).__init__)
    for name in ("GAU", "FLASH", "FLASHTransformer", "AutoregressiveWrapper"):
        out[f"{name}.forward"] = params(getattr(ft, name).forward)
    out["AutoregressiveWrapper.generate"] = params(ft.AutoregressiveWrapper.generate)
    for cls in (ft.FLASHCache, ft.FLASHLayerCache):
        for method in ("reorder", "to"):
            out[f"{cls.__name__}.{method}"] = params(getattr(cls, method))
    for name in ("quad_attn", "mixed_chunk_attn", "mixed_chunk_attn_step"):
        out[f"ops.{name}"] = (params(getattr(ops, name)) | params(getattr(reference, name))) - {"kwargs"}
    out["ops.mixed_chunk_attn_step"].add("kwargs")  # its stray keywords are refused by name
    out["AutoregressiveWrapper.forward"] = {"x", "kwargs"}
    return out


def test_every_argument_has_a_case():
    covered = {(c.entry, c.arg) for c in CASES + OP_CASES}
    missing = sorted(
        (entry, arg) for entry, args in _entry_points().items() for arg in args if (entry, arg) not in covered
    )
    assert not missing, f"arguments without a malformed-input case: {missing}"


def _check(case: Case, call: Callable[[], object]) -> None:
    with pytest.raises(case.exc) as info, NoCompute():
        call()
    message = str(info.value)
    assert re.search(case.match, message), f"{case.match!r} not in {message!r}"
    named = case.arg if case.arg != "kwargs" else case.match
    assert re.search(named, message), f"the message does not name {named!r}: {message!r}"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.entry}-{c.arg}-{c.value}" for c in CASES])
def test_bad_argument_is_refused_naming_it(case):
    _check(case, case.call)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("case", OP_CASES, ids=[f"{c.entry}-{c.arg}-{c.value}" for c in OP_CASES])
def test_bad_op_argument_is_refused_naming_it_on_both_backends(case, backend):
    _check(case, lambda: case.call(backend))


# ------------------------------------------------------------------------------------------------------------------
# the training CLI: every flag

#: A malformed value of every flag (None: the flag itself is the malformed part, e.g. --resume without a run).
CLI_BAD = {
    "--preset": ["nope"],
    "--data": ["{tmp}/missing.txt"],
    "--out": [""],
    "--device": ["tpu"],
    "--backend": ["cuda"],
    "--precision": ["fp8"],
    "--resume": [],  # in a directory without a run
    "--eval-only": ["{tmp}/missing.pt"],
    "--overwrite": ["--resume"],  # the two together
    "--stop-after": ["0"],
    "--no-progress": None,  # a switch: any value given to it is an argparse error, tested below
    "--norm-type": ["rms"],
    "--seed": [str(2**70)],
    "--lr": ["1e300"],
    "--group-size": [str(2**40)],
    "--dim": ["15"],
    "--save-hf": [__file__],  # an existing file
    "--context-parallel": ["2"],  # one process: 2 does not divide WORLD_SIZE 1
    "--fsdp": [],  # one process: nothing to shard over
}
#: the numeric configuration flags not listed above: a negative count, or a non-number
CLI_NUMERIC_BAD = {int: "-3", float: "x"}


def _cli_flags() -> dict[str, object]:
    """Every option of the training program's parser: flag -> its argparse action."""
    parser = train_mod.build_parser()
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}


def _bad_argv(flag: str, action, tmp: Path) -> list[str]:
    if flag in CLI_BAD:
        values = CLI_BAD[flag]
        if values is None:
            return [f"{flag}=yes"]
        return [flag, *(v.replace("{tmp}", str(tmp)) for v in values)]
    if action.nargs == 0:  # BooleanOptionalAction: --shift-tokens / --no-shift-tokens
        return [f"{flag}=1"]
    if action.choices:
        return [flag, "not-a-choice"]
    kind = {"float": float}.get(getattr(action.type, "__name__", "int"), int)
    return [flag, CLI_NUMERIC_BAD[kind]]


@pytest.mark.parametrize("flag", sorted(_cli_flags()))
def test_every_cli_flag_refuses_a_malformed_value_and_writes_nothing(flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --out "" once wrote the run into the working directory
    action = _cli_flags()[flag]
    argv = _bad_argv(flag, action, tmp_path)
    out = tmp_path / "run"
    flags = [*config_flags(MICRO, steps=1, eval_every=1, sample_len=0), "--device", "cpu"]
    if flag in flags:  # the flag under test replaces the valid value
        i = flags.index(flag)
        del flags[i : i + (1 if action.nargs == 0 else 2)]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = train_mod.main([*flags, *argv] + ([] if flag == "--out" else ["--out", str(out)]))
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert err.count("error:") == 1 and flag.lstrip("-").replace("-", "_") in err.replace("-", "_"), err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before
    assert snapshot(tmp_path) == {}  # nothing written anywhere under the working directory


def test_running_out_of_memory_mid_run_is_one_clear_line(tmp_path, capsys, monkeypatch):
    """(once: the CPU allocator's RuntimeError as a traceback, e.g. --batch-size 1000000000)"""
    from flash_triton.train import cli

    def train(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 136 GB")

    monkeypatch.setattr(cli, "train", train)
    flags = [*config_flags(MICRO, steps=1, sample_len=0), "--device", "cpu", "--out", str(tmp_path / "run")]
    assert train_mod.main(flags) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0] and "--batch-size" in err[0], err

    def bug(*args, **kwargs):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(cli, "train", bug)
    with pytest.raises(RuntimeError, match="some other failure"):  # a bug keeps its traceback
        train_mod.main(flags + ["--overwrite"])
