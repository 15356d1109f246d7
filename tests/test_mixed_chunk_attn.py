"""FLASH's mixed chunk attention on the fused kernels (group states + quadratic tiles with the linear half and the
gate in the output tile) against the reference: output and every gradient, and through FLASH / FLASHTransformer
against the reference path and FLASH-pytorch 0.1.9. CUDA when present, else the CPU interpreter."""

import itertools

import pytest
import torch

import flash_triton as ft
from flash_triton import reference as ref
from tests._helpers import (
    DEVICE,
    DTYPE_PATHS,
    UPSTREAM_TOL,
    assert_close_scaled,
    close_to_reference,
    count_launches,
    layer_in_dtypes,
    output_and_grads,
    scramble,
    strided,
)

triton = pytest.importorskip("triton")
tuning = pytest.importorskip("flash_triton.tuning")
qa = pytest.importorskip("flash_triton.quad_attn.kernels")
sw = pytest.importorskip("flash_triton.quad_attn.short_window")
mca_kernels = pytest.importorskip("flash_triton.mixed_chunk_attn.kernels")
op = pytest.importorskip("flash_triton.mixed_chunk_attn.op")
state = pytest.importorskip("flash_triton.mixed_chunk_attn.state")

pytestmark = pytest.mark.usefixtures("poison_outputs")
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INPUTS = ["quad_q", "quad_k", "lin_q", "lin_k", "v", "gate", "t5_weight"]


def run(fn, tensors, grad_out, **kw):
    """Output and the gradient of each of the seven tensor inputs (in the order of ``INPUTS``), by name."""
    return output_and_grads(fn, dict(zip(INPUTS, tensors, strict=True)), grad_out, positional=6, **kw)


CASES = [
    # b, n, s, e, g, causal, reduce_group, masked, laplace
    pytest.param(1, 1, 16, 16, 16, True, True, False, False, id="n1-causal"),
    pytest.param(2, 5, 24, 20, 16, True, True, True, False, id="n-lt-g-causal-mask"),
    pytest.param(2, 64, 16, 24, 16, True, True, False, False, id="multiple-causal"),
    pytest.param(2, 45, 24, 20, 16, True, True, True, True, id="ragged-causal-mask-laplace"),
    pytest.param(2, 45, 24, 20, 16, False, True, True, False, id="ragged-noncausal-reduce-mask"),
    pytest.param(1, 45, 40, 33, 16, False, False, False, True, id="ragged-noncausal-pergroup-laplace"),
    pytest.param(1, 70, 130, 20, 32, True, True, True, False, id="s130-g32-causal"),
    pytest.param(1, 300, 16, 16, 128, True, True, True, False, id="n300-g128"),
    pytest.param(1, 300, 16, 16, 256, True, True, False, False, id="n300-g256"),
    pytest.param(2, 7, 8, 5, 1, True, True, True, False, id="g1-causal-s8-e5"),
    pytest.param(2, 10, 8, 5, 3, False, False, True, True, id="g3-pergroup-laplace"),
]


@pytest.mark.parametrize("dtype, kernel_path", DTYPE_PATHS, indirect=["kernel_path"])
@pytest.mark.parametrize("b, n, s, e, g, causal, reduce_group, masked, laplace", CASES)
def test_kernels_match_reference(b, n, s, e, g, causal, reduce_group, masked, laplace, dtype, kernel_path):
    check_against_reference(b, n, s, e, g, causal, reduce_group, masked, laplace, dtype)


def check_against_reference(b, n, s, e, g, causal, reduce_group, masked, laplace, dtype):
    """Output and the gradient of every input on the kernels against the reference in ``dtype`` and in float64."""
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(b, n, s, generator=gen) for _ in range(4)] + [torch.randn(b, n, e, generator=gen) * 0.5]
    tensors += [torch.randn(b, n, e, generator=gen), torch.randn(32, generator=gen)]
    tensors = [t.to(DEVICE, dtype) for t in tensors]
    mask = (torch.rand(b, n, generator=gen) > 0.3).to(DEVICE) if masked else None
    kw = dict(group_size=g, causal=causal, key_mask=mask, t5_scale=1.3, laplace=laplace, reduce_group=reduce_group)
    grad_out = torch.randn(b, n, e, device=DEVICE)
    out, grads = run(op.mixed_chunk_attn_triton, tensors, grad_out, **kw)
    out_ref, grads_ref = run(ref.mixed_chunk_attn, tensors, grad_out, **kw)
    out64, grads64 = run(ref.mixed_chunk_attn, [t.double() for t in tensors], grad_out.double(), **kw)
    assert out.dtype == dtype
    assert_close_scaled(out.double(), out64, TOL[dtype], "output")
    close_to_reference(out, out_ref, out64, dtype, "output")
    assert grads.keys() == grads_ref.keys() == grads64.keys() == set(INPUTS)
    for name in INPUTS:
        g_ours, g_ref, g64 = grads[name], grads_ref[name], grads64[name]
        assert torch.isfinite(g_ours).all(), name
        assert_close_scaled(g_ours.double(), g64, TOL[dtype], f"grad of {name}")
        close_to_reference(g_ours, g_ref, g64, dtype, f"grad of {name}")


def _default_of(default: dict, k: str):
    return default.get(k, tuning.FLAGS.get(k))  # a flag the launcher left out runs at the kernel's default


def _halved(kernel: str, default: dict) -> dict:
    """A config unlike the default for every tunable value the launch's kernel takes: each block halved (16 at
    least), one stage, 2 warps, the T5 band split flipped (not in the transposed key-tile kernel, which has none)."""
    tunable = tuning.TUNABLE[kernel]
    cfg = {k: max(16, default[k] // 2) for k in tunable if k.startswith("B") and k in default}
    if "BM_NEAR" not in default:
        cfg.update({k: not _default_of(default, k) for k in tuning.FLAGS if k in tunable})
    return dict(cfg, num_warps=2, num_stages=1)


@pytest.mark.parametrize(
    "dtype, kernel_path",
    [(torch.float32, "short"), (torch.float16, "short"), (torch.bfloat16, "streaming"), (torch.float32, "streaming")],
    indirect=["kernel_path"],
    ids=["fp32-short", "fp16-short", "bf16-streaming", "fp32-streaming"],
)
def test_tuned_configs_give_the_reference_results(dtype, kernel_path):
    """What a tuned table may set, forced (flash_triton.tuning.override) to other values for every tunable launch
    of a FLASH training step (each block halved, one stage): outputs and every gradient still match the reference.
    The launches asked for are the tunable kernels of the path, with the forced configs in effect."""
    case = (2, 80, 24, 40, 32, True, True, True, False)  # b n s e g causal reduce_group masked laplace
    with tuning.recording() as asked:
        check_against_reference(*case, dtype)
    kernels = {k for k, *_ in asked}
    expected = {"group_scan", "group_apply"}
    expected |= (
        {"quad_attn_fwd", "quad_attn_dv", "quad_attn_dkq"}
        if kernel_path == "streaming"
        else {"quad_attn_weights", "quad_attn_out", "quad_attn_dscores", "quad_attn_product"}
    )
    assert expected <= kernels, kernels
    forced = {(k, d, tuning.freeze(key)): _halved(k, default) for k, d, key, default in asked}
    with tuning.override(forced):
        for kernel, d, key, default in asked:  # the launchers' config functions now return the forced values
            want = forced[(kernel, d, tuning.freeze(key))]
            got = tuning.tuned(kernel, None, DTYPES[d], key, default)
            assert {k: got[k] for k in want} == want != {k: _default_of(default, k) for k in want}, (kernel, key)
        check_against_reference(*case, dtype)


@pytest.mark.parametrize("s, e", [(3, 7), (40, 33)], ids=["one-block", "two-blocks"])
@pytest.mark.parametrize("init", [False, True], ids=["", "init"])
def test_state_scan_is_the_torch_state_algebra(s, e, init):
    """The scan kernel of the causal prefix and of its adjoint against the torch functions of state.py (uniform
    groups), with and without an initial state / final-state gradient, over one or two feature blocks."""
    gen = torch.Generator().manual_seed(5)
    b, g_count, group = 2, 5, 16
    states, d_read = (torch.randn(b, g_count, s, e, generator=gen).to(DEVICE) for _ in range(2))
    initial = torch.randn(b, s, e, generator=gen).to(DEVICE) if init else None
    d_final = torch.randn(b, s, e, generator=gen).to(DEVICE) if init else None
    n = g_count * group - 3
    read, final = mca_kernels.state_scan(states, group, initial, True, reverse=False)
    torch.testing.assert_close(read, state.window_state(states, n, group, True, True, initial), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(final, state.final_state(states, group, initial, None), rtol=1e-6, atol=1e-6)
    d_states, d_init = mca_kernels.state_scan(d_read, group, d_final, True, reverse=True)
    d_states_ref, d_init_ref = state.window_state_backward(d_read, n, group, True, True, d_final)
    torch.testing.assert_close(d_states, d_states_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d_init, d_init_ref, rtol=1e-6, atol=1e-6)
    read_only, none = mca_kernels.state_scan(states, group, initial, False, reverse=False)
    assert none is None and torch.equal(read_only, read)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    "b, n, group, da, db, masked, init",
    [
        pytest.param(2, 75, 16, 24, 40, True, True, id="partial-last-group-mask-init"),
        pytest.param(1, 64, 32, 16, 16, False, False, id="whole-groups"),
        pytest.param(2, 130, 64, 70, 33, False, True, id="two-by-one-blocks-init"),
    ],
)
def test_group_scan_fused_and_unfused_match_the_state_algebra(b, n, group, da, db, masked, init, dtype):
    """group_scan both ways (the fused kernel, each group's sum kept in registers; group_state then state_scan)
    against state.py's algebra on float64 per-group sums: the prefix and the final state, the adjoint and the
    initial state's gradient, stored in float32 and in the inputs' dtype."""
    gen = torch.Generator().manual_seed(7)
    a, b_ = (torch.randn(b, n, d, generator=gen).to(DEVICE, dtype) for d in (da, db))
    mask = (torch.rand(b, n, generator=gen) > 0.3).to(DEVICE) if masked else None
    ini = torch.randn(b, da, db, generator=gen).to(DEVICE) if init else None
    a64 = a.double() * (mask[..., None] if masked else 1)
    pad = (0, 0, 0, -n % group)
    chunks = (torch.nn.functional.pad(x, pad).unflatten(1, (-1, group)) for x in (a64, b_.double()))
    sums = torch.einsum("bgta,bgtc->bgac", *chunks)
    ini64 = ini.double() if init else None
    expected = {
        False: (
            state.window_state(sums, n, group, True, True, ini64, dtype=torch.float64),
            state.final_state(sums, group, ini64, None),
        ),
        True: state.window_state_backward(sums, n, group, True, True, ini64, dtype=torch.float64),
    }
    for reverse in (False, True):
        ys = {}
        for fused, out_dtype in itertools.product((True, False), (torch.float32, dtype)):
            what = f"reverse={reverse} fused={fused} out={out_dtype}"
            y, last = mca_kernels.group_scan(a, b_, group, ini, True, reverse, mask, out_dtype, fused=fused)
            assert y.shape == (b, -(-n // group), da, db) and y.dtype == out_dtype, what
            assert last.shape == (b, da, db) and last.dtype == torch.float32, what
            # float32 sums of exact products: rounding only; a half-precision store: its own rounding (2**-11)
            assert_close_scaled(y.double(), expected[reverse][0], 1e-5 if out_dtype == torch.float32 else 2e-3, what)
            assert_close_scaled(last.double(), expected[reverse][1], 1e-5, what)
            ys[fused, out_dtype] = y
        torch.testing.assert_close(ys[True, torch.float32], ys[False, torch.float32], rtol=1e-5, atol=1e-5)
        y, none = mca_kernels.group_scan(a, b_, group, ini, False, reverse, mask, fused=True)
        assert none is None and y.dtype == dtype and torch.equal(y, ys[True, dtype])


def test_group_scan_fuses_where_it_fits_and_refuses_what_it_cannot():
    """The launcher's choice (fused_scan_fits) at the benchmark's training shape (batch 4: enough programs), at
    1M tokens in one row (4096 groups walked by 32 programs: the parallel pair instead), for groups that are not a
    multiple of 16 (never fused); and an explicit fused request for such a group raises instead of falling back."""
    assert mca_kernels.fused_scan_fits(4, 8192, 256, 128, 1024, torch.bfloat16)
    assert mca_kernels.fused_scan_fits(1, 4096, 256, 128, 1024, torch.bfloat16)  # 16 groups: a short walk
    assert not mca_kernels.fused_scan_fits(1, 2**20, 256, 128, 1024, torch.bfloat16)
    assert not mca_kernels.fused_scan_fits(8, 64, 24, 16, 16, torch.float32)
    a = torch.randn(1, 48, 16, device=DEVICE)
    with pytest.raises(ValueError, match="group=24"):
        mca_kernels.group_scan(a, a, 24, None, False, False, fused=True)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_kernels_at_production_widths(dtype):
    """The benchmark's widths (s 128, e 1024, g 256: the launchers' largest tiles; a full group and a partial one,
    masked keys) on the kernels the layers launch there (short windows), against the reference. The streaming
    kernels at these widths take minutes under the interpreter; their tiles are the ones the small cases use."""
    assert qa.SHORT_WINDOW >= 256
    check_against_reference(1, 300, 128, 1024, 256, True, True, True, False, dtype)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_non_contiguous_inputs_give_the_contiguous_results(causal, kernel_path):
    """All seven tensor inputs and the bool key mask as views non-contiguous in every dimension: the same output and
    gradients as contiguous inputs (a transposed mask was once read as if contiguous: off by 1.25 non-causal)."""
    b, n, s, e = 2, 45, 24, 20
    gen = torch.Generator().manual_seed(3)
    base = [torch.randn(b, n, s, generator=gen) for _ in range(4)] + [torch.randn(b, n, e, generator=gen) * 0.5]
    base = [t.to(DEVICE) for t in base + [torch.randn(b, n, e, generator=gen), torch.randn(32, generator=gen)]]
    mask = (torch.rand(b, n, generator=gen) > 0.3).to(DEVICE)
    grad_out = torch.randn(b, n, e, device=DEVICE)
    kw = dict(group_size=16, causal=causal, t5_scale=1.3)

    def run_views(fn, make_view):
        leaves = [t.detach().clone().requires_grad_() for t in base]
        views = [make_view(t) for t in leaves]
        out = fn(*views[:6], t5_weight=views[6], key_mask=make_view(mask), **kw)
        out.backward(grad_out)
        return out.detach(), [t.grad for t in leaves]

    assert strided(mask).stride(-1) != 1
    out, grads = run_views(op.mixed_chunk_attn_triton, lambda t: t)
    out_v, grads_v = run_views(op.mixed_chunk_attn_triton, strided)
    out_ref, _ = run_views(ref.mixed_chunk_attn, lambda t: t)
    assert_close_scaled(out, out_ref, 1e-5, "contiguous output against the reference")
    torch.testing.assert_close(out_v, out, rtol=1e-6, atol=1e-6)
    for name, g_v, g in zip(INPUTS, grads_v, grads, strict=True):
        torch.testing.assert_close(g_v, g, rtol=1e-6, atol=1e-6, msg=f"grad of {name}")


def test_non_contiguous_cu_seqlens_and_initial_state_give_the_contiguous_results():
    gen = torch.Generator().manual_seed(4)
    n, s, e = 40, 16, 12
    x = [torch.randn(2, n, s, generator=gen) for _ in range(4)] + [
        torch.randn(2, n, e, generator=gen) for _ in range(2)
    ]
    x = [t.to(DEVICE) for t in x]
    packed = [t[:1] for t in x]
    cu = torch.tensor([0, 13, 40], device=DEVICE)
    out = op.mixed_chunk_attn_triton(*packed, group_size=8, causal=True, cu_seqlens=cu)
    out_v = op.mixed_chunk_attn_triton(*packed, group_size=8, causal=True, cu_seqlens=strided(cu))
    torch.testing.assert_close(out_v, out, rtol=0, atol=0)
    state = torch.randn(2, s, e, generator=gen).to(DEVICE)
    kw = dict(group_size=8, causal=True, output_final_state=True)
    out, final = op.mixed_chunk_attn_triton(*x, initial_state=state, **kw)
    out_v, final_v = op.mixed_chunk_attn_triton(*x, initial_state=strided(state), **kw)
    torch.testing.assert_close(out_v, out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(final_v, final, rtol=1e-6, atol=1e-6)


def test_group_state_and_apply_match_einsum():
    gen = torch.Generator().manual_seed(1)
    a, b_ = torch.randn(2, 37, 24, generator=gen), torch.randn(2, 37, 20, generator=gen)
    mask = torch.rand(2, 37, generator=gen) > 0.4
    a, b_, mask = a.to(DEVICE), b_.to(DEVICE), mask.to(DEVICE)
    states = mca_kernels.group_state(a, b_, 16, row_mask=mask)
    pad = torch.nn.functional.pad
    a_masked = a.masked_fill(~mask[..., None], 0)
    expected = torch.einsum(
        "bgtd,bgte->bgde",
        pad(a_masked, (0, 0, 0, 11)).unflatten(1, (3, 16)),
        pad(b_, (0, 0, 0, 11)).unflatten(1, (3, 16)),
    )
    assert_close_scaled(states, expected, 1e-5, "group_state")
    m = torch.randn(2, 3, 20, 24, device=DEVICE)
    y = mca_kernels.group_apply(b_, m, 16, 0.5, row_mask=mask)
    expected = torch.einsum("bgte,bged->bgtd", pad(b_, (0, 0, 0, 11)).unflatten(1, (3, 16)), m).flatten(1, 2)[:, :37]
    expected = expected.masked_fill(~mask[..., None], 0) * 0.5
    assert_close_scaled(y, expected, 1e-5, "group_apply")
    # accumulate: added in place to an existing partial result; rows the mask drops keep their value
    base = torch.randn(2, 37, 24, generator=gen).to(DEVICE)
    into = base.clone()
    y2 = mca_kernels.group_apply(b_, m, 16, 0.5, row_mask=mask, accumulate=into)
    assert y2 is into
    assert_close_scaled(into, base + expected, 1e-5, "group_apply accumulate")
    torch.testing.assert_close(into[~mask], base[~mask], rtol=0, atol=0)
    with pytest.raises(ValueError, match="accumulate must be a contiguous tensor of shape"):
        mca_kernels.group_apply(b_, m, 16, 0.5, accumulate=base.transpose(0, 1).contiguous().transpose(0, 1))
    with pytest.raises(ValueError, match="accumulate must be a contiguous tensor of shape"):
        mca_kernels.group_apply(b_, m, 16, 0.5, accumulate=base[:, :5])


def test_dropout_forward_and_backward_use_the_same_mask(kernel_path):
    b, n, s, e, g, p = 2, 40, 16, 16, 16, 0.3
    gen = torch.Generator().manual_seed(3)
    tensors = [torch.randn(b, n, s, generator=gen) for _ in range(4)] + [torch.randn(b, n, e, generator=gen)]
    tensors = [t.to(DEVICE) for t in tensors + [torch.randn(b, n, e, generator=gen), torch.randn(32, generator=gen)]]
    seed = torch.tensor([99], dtype=torch.int64, device=DEVICE)
    kw = dict(group_size=g, causal=True, t5_scale=1.0, dropout_p=p)
    grad_out = torch.randn(b, n, e, device=DEVICE)
    out, grads = run(op.mixed_chunk_attn_triton, tensors, grad_out, dropout_seed=seed, **kw)
    keep = qa.dropout_keep_mask(seed, b, n, g, p)
    out_ref, grads_ref = run(ref.mixed_chunk_attn, tensors, grad_out, dropout_mask=keep, **kw)
    assert_close_scaled(out, out_ref, 1e-5, "output with dropout")
    assert grads.keys() == grads_ref.keys() == set(INPUTS)
    for name in INPUTS:
        assert_close_scaled(grads[name], grads_ref[name], 1e-5, "grad with dropout")


@pytest.mark.parametrize(
    "kw, n",
    [
        pytest.param(dict(causal=True, shift_tokens=True), 45, id="causal-shift-ragged"),
        pytest.param(dict(causal=False, laplace_attn_fn=True), 40, id="noncausal-laplace"),
        pytest.param(dict(causal=False, reduce_group_non_causal_attn=False), 33, id="noncausal-pergroup"),
    ],
)
def test_flash_layer_on_kernels_matches_upstream_and_runs_them(monkeypatch, kw, n):
    up = pytest.importorskip("flash_pytorch", reason="FLASH-pytorch 0.1.9 is not installed")
    counters = (
        count_launches(monkeypatch, qa, "_quad_attn_fwd_kernel", "_quad_attn_bwd_dqk_kernel")
        | count_launches(
            monkeypatch,
            sw,
            "_quad_weights_kernel",
            "_quad_out_kernel",
            "_quad_dscores_kernel",
            "_quad_tile_product_kernel",
        )
        | count_launches(monkeypatch, mca_kernels, "_group_state_kernel", "_state_scan_kernel", "_group_scan_kernel")
    )
    kw = dict(kw, dim=24, group_size=16, query_key_dim=16)
    theirs = up.FLASH(**kw)
    scramble(theirs)
    ours = ft.FLASH(**kw, backend="triton")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs, ours = theirs.to(DEVICE), ours.to(DEVICE)
    x = torch.randn(2, n, 24, device=DEVICE)
    mask = torch.rand(2, n, device=DEVICE) > 0.25
    x_t, x_o = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_t, out_o = theirs(x_t, mask=mask), ours(x_o, mask=mask)
    assert_close_scaled(out_o, out_t, UPSTREAM_TOL, "output")
    grad = torch.randn_like(out_t)
    out_t.backward(grad)
    out_o.backward(grad)
    assert_close_scaled(x_o.grad, x_t.grad, UPSTREAM_TOL, "input grad")
    for (name, p_t), p_o in zip(theirs.named_parameters(), ours.parameters(), strict=True):
        assert_close_scaled(p_o.grad, p_t.grad, UPSTREAM_TOL, f"grad of {name}")
    # groups of <= qa.SHORT_WINDOW tokens: weights and score gradients stored, none of the streaming kernels
    assert {name: c.launches for name, c in counters.items()} == dict(
        _quad_attn_fwd_kernel=0,
        _quad_attn_bwd_dqk_kernel=0,
        _quad_weights_kernel=1,
        _quad_out_kernel=1,
        _quad_dscores_kernel=1,
        _quad_tile_product_kernel=3,  # dv, dq, dk
        # forward states (kept for the backward, not computed again); backward: dP. Causal: each with its prefix (or
        # adjoint) fused into one scan kernel (few groups), so neither the per-group sums nor the separate scan run
        _group_state_kernel=0 if kw["causal"] else 2,
        _state_scan_kernel=0,
        _group_scan_kernel=2 if kw["causal"] else 0,
    )


def test_flash_transformer_on_kernels_matches_upstream():
    up = pytest.importorskip("flash_pytorch", reason="FLASH-pytorch 0.1.9 is not installed")
    kw = dict(num_tokens=40, dim=32, depth=2, group_size=16, query_key_dim=24, causal=True)
    theirs = up.FLASHTransformer(**kw)
    scramble(theirs, std=0.3)
    ours = ft.FLASHTransformer(**kw, backend="triton")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs, ours = theirs.to(DEVICE), ours.to(DEVICE)
    tokens = torch.randint(0, 40, (2, 37), device=DEVICE)
    out_t, out_o = theirs(tokens), ours(tokens)
    assert_close_scaled(out_o, out_t, UPSTREAM_TOL, "logits")
    out_t.logsumexp(-1).sum().backward()
    out_o.logsumexp(-1).sum().backward()
    for (name, p_t), p_o in zip(theirs.named_parameters(), ours.parameters(), strict=True):
        if p_t.grad is not None:
            assert_close_scaled(p_o.grad, p_t.grad, UPSTREAM_TOL, f"grad of {name}")


def test_autograd_keeps_no_per_group_quadratic_tensor():
    n, g = 96, 32
    layer = ft.FLASH(dim=16, group_size=g, query_key_dim=16, causal=True, backend="triton").to(DEVICE)
    x = torch.randn(2, n, 16, device=DEVICE, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    out.sum().backward()
    assert saved
    assert not any(len(shape) >= 2 and shape[-2:] == (g, g) for shape in saved), saved
    assert all(torch.Size(shape).numel() <= 2 * n * 4 * 16 for shape in saved), saved


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_state_passing_at_a_group_boundary_equals_the_whole(impl):
    """Running n tokens at once equals running the first 2 groups, then the rest from their final state; gradients
    (through the handed-over state) agree too."""
    fn = op.mixed_chunk_attn_triton if impl == "triton" else ref.mixed_chunk_attn
    b, n, s, e, g, cut = 2, 45, 16, 24, 16, 32
    gen = torch.Generator().manual_seed(5)
    base = [torch.randn(b, n, s, generator=gen) for _ in range(4)] + [torch.randn(b, n, e, generator=gen)]
    base = [t.to(DEVICE) for t in base + [torch.randn(b, n, e, generator=gen), torch.randn(32, generator=gen)]]
    mask = (torch.rand(b, n, generator=gen) > 0.2).to(DEVICE)
    kw = dict(group_size=g, causal=True, t5_scale=1.1)
    grad_out = torch.randn(b, n, e, device=DEVICE)

    whole = [t.clone().requires_grad_() for t in base]
    out, final = fn(*whole[:6], t5_weight=whole[6], key_mask=mask, output_final_state=True, **kw)
    (out * grad_out).sum().backward(retain_graph=True)
    final.sum().backward()

    split = [t.clone().requires_grad_() for t in base]
    first = [t[:, :cut] for t in split[:6]]
    second = [t[:, cut:] for t in split[:6]]
    out1, state = fn(*first, t5_weight=split[6], key_mask=mask[:, :cut], output_final_state=True, **kw)
    out2, final2 = fn(
        *second, t5_weight=split[6], key_mask=mask[:, cut:], initial_state=state, output_final_state=True, **kw
    )
    assert_close_scaled(torch.cat((out1, out2), 1), out, 1e-5, "output")
    assert_close_scaled(final2, final, 1e-5, "final state")
    ((torch.cat((out1, out2), 1) * grad_out).sum() + final2.sum()).backward()
    for name, a, b_ in zip(["qq", "qk", "lq", "lk", "v", "gate", "t5"], split, whole, strict=True):
        assert_close_scaled(a.grad, b_.grad, 1e-5, f"grad of {name}")


def test_initial_and_final_state_match_the_reference():
    b, n, s, e, g = 2, 37, 24, 20, 16
    gen = torch.Generator().manual_seed(6)
    base = [torch.randn(b, n, s, generator=gen) for _ in range(4)] + [torch.randn(b, n, e, generator=gen)]
    base += [torch.randn(b, n, e, generator=gen), torch.randn(32, generator=gen), torch.randn(b, s, e, generator=gen)]
    base = [t.to(DEVICE) for t in base]
    grads, outs = [], []
    for fn in (op.mixed_chunk_attn_triton, ref.mixed_chunk_attn):
        leaves = [t.clone().requires_grad_() for t in base]
        out, final = fn(
            *leaves[:6],
            t5_weight=leaves[6],
            initial_state=leaves[7],
            output_final_state=True,
            group_size=g,
            causal=True,
        )
        (out.square().sum() + (final * 0.5).sum()).backward()
        outs.append((out, final))
        grads.append([t.grad for t in leaves])
    assert_close_scaled(outs[0][0], outs[1][0], 1e-5, "output")
    assert_close_scaled(outs[0][1], outs[1][1], 1e-5, "final state")
    assert outs[0][1].dtype == torch.float32
    for name, a, b_ in zip(["qq", "qk", "lq", "lk", "v", "gate", "t5", "initial"], *grads, strict=True):
        assert_close_scaled(a, b_, 1e-5, f"grad of {name}")


def test_state_is_for_causal_attention_only():
    t = torch.randn(1, 8, 16, device=DEVICE)
    for fn in (op.mixed_chunk_attn_triton, ref.mixed_chunk_attn):
        with pytest.raises(ValueError, match="causal attention only"):
            fn(t, t, t, t, t, t, group_size=4, causal=False, output_final_state=True)


@pytest.mark.parametrize(
    "causal, reduce_group, with_state",
    [(True, True, False), (True, True, True), (False, True, False), (False, False, False)],
    ids=["causal", "causal-state", "noncausal-reduce", "noncausal-pergroup"],
)
def test_varlen_packed_batch_matches_a_per_sequence_loop(causal, reduce_group, with_state, kernel_path):
    """Sequences packed along one row with cu_seqlens: groups restart at every sequence and so does the linear
    state; kernels against the reference, which runs one call per sequence."""
    lengths, s, e, g = [5, 37, 16, 1, 23], 16, 24, 16
    n = sum(lengths)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE)
    gen = torch.Generator().manual_seed(8)
    base = [torch.randn(1, n, s, generator=gen) for _ in range(4)] + [torch.randn(1, n, e, generator=gen)]
    base += [torch.randn(1, n, e, generator=gen), torch.randn(32, generator=gen)]
    base += [torch.randn(len(lengths), s, e, generator=gen)] if with_state else []
    base = [t.to(DEVICE) for t in base]
    mask = (torch.rand(1, n, generator=gen) > 0.2).to(DEVICE)
    kw = dict(
        group_size=g,
        causal=causal,
        reduce_group=reduce_group,
        key_mask=mask,
        t5_scale=0.9,
        cu_seqlens=cu_seqlens,
        output_final_state=with_state,
    )
    results = []
    for fn in (op.mixed_chunk_attn_triton, ref.mixed_chunk_attn):
        leaves = [t.clone().requires_grad_() for t in base]
        state = dict(initial_state=leaves[7]) if with_state else {}
        res = fn(*leaves[:6], t5_weight=leaves[6], **state, **kw)
        out, final = res if with_state else (res, None)
        loss = (out * torch.linspace(-1, 1, e, device=DEVICE)).sum() + (final.sum() if with_state else 0)
        loss.backward()
        results.append((out, final, [t.grad for t in leaves]))
    (out, final, grads), (out_ref, final_ref, grads_ref) = results
    assert_close_scaled(out, out_ref, 1e-5, "output")
    if with_state:
        assert final.shape == (len(lengths), s, e)
        assert_close_scaled(final, final_ref, 1e-5, "final states")
    for i, (a, b_) in enumerate(zip(grads, grads_ref, strict=True)):
        assert_close_scaled(a, b_, 1e-5, f"grad of input {i}")


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_flash_transformer_varlen_equals_running_each_sequence_alone(backend, causal):
    lengths = [7, 40, 1, 19]
    kw = dict(num_tokens=30, dim=32, depth=2, group_size=16, query_key_dim=24, causal=causal, backend=backend)
    model = ft.FLASHTransformer(**kw).to(DEVICE)
    scramble(model, std=0.3)
    tokens = [torch.randint(0, 30, (1, n), device=DEVICE) for n in lengths]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE)
    packed = model(torch.cat(tokens, dim=1), cu_seqlens=cu_seqlens)
    alone = torch.cat([model(t) for t in tokens], dim=1)
    assert_close_scaled(packed, alone, UPSTREAM_TOL, "packed logits")
    # int32 offsets, the dtype flash-attn and flash-linear-attention use (token shift once needed int64)
    torch.testing.assert_close(model(torch.cat(tokens, dim=1), cu_seqlens=cu_seqlens.int()), packed, rtol=0, atol=0)
    layer = model.layers[0]
    x = torch.randn(1, sum(lengths), 32, device=DEVICE, requires_grad=True)
    packed = layer(x, cu_seqlens=cu_seqlens)
    packed.square().sum().backward()
    grad_packed = x.grad.clone()
    x.grad = None
    alone = torch.cat([layer(part) for part in x.split(lengths, dim=1)], dim=1)
    alone.square().sum().backward()
    assert_close_scaled(packed, alone, UPSTREAM_TOL, "packed layer output")
    assert_close_scaled(grad_packed, x.grad, UPSTREAM_TOL, "packed layer input grad")


def test_flash_under_autocast_fp16():
    kw = dict(dim=32, group_size=16, query_key_dim=16, causal=True, shift_tokens=True)
    reference = ft.FLASH(**kw, backend="reference").to(DEVICE)
    scramble(reference, std=0.3)
    fused = ft.FLASH(**kw, backend="triton").to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(2, 40, 32, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.float16):
        out_ref, out = reference(x), fused(x)
    assert out.dtype == out_ref.dtype
    assert_close_scaled(out.float(), out_ref.float(), 2e-2, "autocast output")
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fused.parameters() if p.grad is not None)


@pytest.mark.slow
def test_torch_compile_fullgraph_traces_flash():
    kw = dict(dim=16, group_size=8, query_key_dim=16, causal=True, shift_tokens=True)
    reference = ft.FLASH(**kw, backend="reference").to(DEVICE)
    scramble(reference, std=0.3)
    fused = ft.FLASH(**kw, backend="triton").to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.randn(2, 21, 16, device=DEVICE, requires_grad=True)
    out = compiled(x)
    assert_close_scaled(out, reference(x), 1e-5, "compiled output")
    out.sum().backward()
    grad_compiled = x.grad.clone()
    x.grad = None
    reference(x).sum().backward()
    assert_close_scaled(grad_compiled, x.grad, 1e-5, "compiled input grad")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    "kw",
    [dict(causal=True, shift_tokens=True), dict(causal=False, laplace_attn_fn=True)],
    ids=["causal-shift", "noncausal-laplace"],
)
def test_flash_in_half_precision_on_kernels_matches_reference(kw, dtype):
    """``FLASH(...).to(dtype)`` on the kernels: output and every gradient within the dtype-scaled bound of the
    reference in the same dtype (bf16 too under the CPU interpreter)."""
    x = torch.randn(2, 45, 32, device=DEVICE)
    results, names = layer_in_dtypes(
        lambda backend: ft.FLASH(dim=32, group_size=16, query_key_dim=16, **kw, backend=backend), x, dtype, std=0.3
    )
    for name, ours, theirs, ref64 in zip(names, *results.values(), strict=True):
        if ref64 is not None:
            close_to_reference(ours, theirs, ref64.double(), dtype, name)
