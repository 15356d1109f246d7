"""The fused quadratic-attention kernels against the reference: output and every gradient (q, k, v, gate, T5
table, caller bias; and through GAU: input and all parameters), dropout, autocast, torch.compile, memory.

Runs on CUDA when present, else on CPU under TRITON_INTERPRET=1 (set in conftest.py), bf16 included: under the
interpreter the kernels upcast bf16 products to fp32 (its own bf16 tl.dot is wrong, triton-lang/triton#11584), so
the bf16 kernel logic (casts, masks, accumulation) is checked here; the tensor-core products on a GPU."""

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
    deterministic_algorithms,
    layer_in_dtypes,
    output_and_grads,
    scramble,
    strided,
)

triton = pytest.importorskip("triton")
qa = pytest.importorskip("flash_triton.quad_attn.kernels")
sw = pytest.importorskip("flash_triton.quad_attn.short_window")
op = pytest.importorskip("flash_triton.quad_attn.op")

SHORT_KERNELS = ("_quad_weights_kernel", "_quad_out_kernel", "_quad_dscores_kernel", "_quad_tile_product_kernel")
pytestmark = pytest.mark.usefixtures("poison_outputs")


def make_inputs(b, n, s, e, dtype, *, mask, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, n, s, generator=g) for _ in range(2))
    v, gate = (torch.randn(b, n, e, generator=g) for _ in range(2))
    t5 = torch.randn(32, generator=g)
    key_mask = (torch.rand(b, n, generator=g) > 0.3) if mask else None
    rel = {None: None, "nn": torch.randn(n, n, generator=g), "bnn": torch.randn(b, n, n, generator=g)}[bias]
    tensors = dict(q=q, k=k, v=v, gate=gate, t5_weight=t5, bias=rel)
    return {k_: (t.to(DEVICE) if t is not None else None) for k_, t in tensors.items()}, (
        key_mask.to(DEVICE) if key_mask is not None else None
    )


def run(fn, tensors, dtype, grad_out, **kw):
    """Output and the gradients of every tensor input, all inputs cast to ``dtype`` (as ``model.to(dtype)`` would)."""
    return output_and_grads(fn, tensors, grad_out, positional=4, dtype=dtype, **kw)


CASES = [
    # b, n, s, e, window (None = GAU's whole sequence), causal, laplace, mask, bias
    pytest.param(1, 1, 16, 16, None, True, False, False, None, id="b1-n1-gau-causal"),
    pytest.param(2, 63, 24, 40, None, True, False, True, None, id="b2-n63-s24-e40-gau-causal-mask"),
    pytest.param(2, 63, 24, 40, None, False, True, True, "bnn", id="b2-n63-gau-laplace-mask-bias"),
    pytest.param(1, 45, 40, 24, None, True, False, False, "nn", id="b1-n45-gau-causal-bias"),
    pytest.param(2, 70, 24, 20, 16, True, False, True, None, id="b2-n70-w16-causal-mask"),
    pytest.param(1, 70, 16, 33, 32, False, True, False, None, id="b1-n70-w32-laplace"),
    pytest.param(2, 20, 16, 16, 64, True, False, True, None, id="b2-n20-w64-n-lt-window"),
    pytest.param(1, 40, 130, 20, 8, True, False, False, None, id="b1-n40-s130-w8-two-feature-blocks"),
    pytest.param(1, 257, 16, 24, 128, True, False, True, None, id="b1-n257-w128-causal-mask"),
]


@pytest.mark.parametrize("dtype, kernel_path", DTYPE_PATHS, indirect=["kernel_path"])
@pytest.mark.parametrize("b, n, s, e, window, causal, laplace, mask, bias", CASES)
def test_kernel_matches_reference(b, n, s, e, window, causal, laplace, mask, bias, dtype, kernel_path):
    tensors, key_mask = make_inputs(b, n, s, e, dtype, mask=mask, bias=bias)
    w = window or n
    kw = dict(
        scale=1.0 / w,
        window=window,
        causal=causal,
        key_mask=key_mask,
        t5_scale=0.7,
        bias_scale=1.0 / n,
        laplace=laplace,
    )
    grad_out = torch.randn(b, n, e, device=DEVICE)
    out, grads = run(op.quad_attn_triton, tensors, dtype, grad_out, **kw)
    out_ref, grads_ref = run(ref.quad_attn, tensors, dtype, grad_out, **kw)
    out64, grads64 = run(ref.quad_attn, tensors, torch.float64, grad_out, **kw)
    close_to_reference(out, out_ref, out64, dtype, "output")
    assert set(grads) == set(grads64)
    for name in grads:
        close_to_reference(grads[name], grads_ref[name], grads64[name], dtype, f"grad of {name}")


@pytest.mark.parametrize("deterministic", [False, True], ids=["", "deterministic"])
@pytest.mark.parametrize("dtype", [torch.bfloat16], ids=["bf16"])  # fp16 compiles to the same tiles
def test_streaming_forward_in_its_hopper_tiles_matches_reference(monkeypatch, dtype, deterministic):
    """The half-precision streaming forward's sm_90 tiles (128-row query tiles, 256-wide value blocks, the
    query/key width in one 128-wide block, 8 warps; split at the T5 band when causal without a key mask), dv's
    (transposed tiles of Aᵀ, 128 key rows in 32-row query steps), the transposed dk / dkq (128 key rows, 64-wide steps
    over the value width) and the deterministic pass's dq (64 x 64), which the
    launcher picks only on a GPU of compute capability 9.0: forced here by reporting that capability, at a value width
    past two blocks (the third partial), query/key width padded from 100 to 128, causal, masked keys (the deterministic
    run: none); output and every gradient against the reference."""
    monkeypatch.setattr(qa, "SHORT_WINDOW", 0)
    monkeypatch.setattr(qa, "device_arch", lambda device: 90)
    picked, launch_config = [], qa.launch_config

    def spy(kind, *args, **kwargs):
        picked.append((kind, launch_config(kind, *args, **kwargs)))
        return picked[-1][1]

    monkeypatch.setattr(qa, "launch_config", spy)
    b, n, s, e = 1, 136, 100, 520  # two query tiles of 128 rows, the second partial
    tensors, key_mask = make_inputs(b, n, s, e, dtype, mask=not deterministic, bias=None)
    kw = dict(scale=1.0 / n, window=None, causal=True, key_mask=key_mask, t5_scale=0.7, bias_scale=1.0 / n)
    grad_out = torch.randn(b, n, e, device=DEVICE)
    with deterministic_algorithms(deterministic):
        out, grads = run(op.quad_attn_triton, tensors, dtype, grad_out, **kw)
    dq = [cfg for kind, cfg in picked if kind == "dq"]
    assert bool(dq) == deterministic and all((c["BM"], c["BN"]) == (64, 64) for c in dq), dq
    fwd = [cfg for kind, cfg in picked if kind == "fwd"]
    assert fwd and all((c["BM"], c["BE"], c["BS"], c["S_BLOCKS"], c["num_warps"]) == (128, 256, 128, 1, 8) for c in fwd)
    assert all(("T5_BAND" in c) == (key_mask is not None) for c in fwd), fwd  # split: causal, no key mask
    dv = [cfg for kind, cfg in picked if kind == "dv"]
    # (n 136: 128 key rows over transposed tiles, the second partial; 32-row query steps, the fifth partial)
    assert dv and all((c["BM"], c["BN"], c.get("TRANSPOSED")) == (32, 128, True) for c in dv), dv
    # dk (dq added atomically, or the deterministic pass's dk): the transposed kernel, 128 key rows, 64-wide steps
    # over the value width (at e 520 the ninth partial), 32-wide near steps with dq added
    key_tiles = [(kind, cfg) for kind, cfg in picked if kind in qa.TRANSPOSED_KEY_TILES]
    assert key_tiles and all(c["BN"] == 128 and c["BM_NEAR"] == 16 and c["BE"] == 64 for _, c in key_tiles)
    assert all(c["BE_NEAR"] == (32 if kind == "dkq" else 128) for kind, c in key_tiles), key_tiles
    out_ref, grads_ref = run(ref.quad_attn, tensors, dtype, grad_out, **kw)
    out64, grads64 = run(ref.quad_attn, tensors, torch.float64, grad_out, **kw)
    close_to_reference(out, out_ref, out64, dtype, "output")
    for name in grads64:
        close_to_reference(grads[name], grads_ref[name], grads64[name], dtype, f"grad of {name}")
    # elsewhere (sm_80, the interpreter: arch None), with dropout, in float32, with FLASH's linear half (its state
    # tile would not fit in shared memory), past one 128-wide query/key block, and at value widths within the
    # default block: the tiles that compile everywhere
    cases = [(80, dtype, False, 128, 1024, False), (None, dtype, False, 128, 1024, False)]
    cases += [(90, dtype, True, 128, 1024, False), (90, torch.float32, False, 128, 1024, False)]
    cases += [
        (90, dtype, False, 128, 1024, True),
        (90, dtype, False, 200, 1024, False),
        (90, dtype, False, 64, 48, False),
    ]
    for arch, dt, dropout, qk, v, lin in cases:
        cfg = launch_config("fwd", 8192, qk, v, dt, dropout, arch, lin=lin)
        assert cfg["BE"] <= 256 and cfg["num_warps"] <= 8, (arch, dt, dropout, qk, v, lin)
    # dv: transposed 128-key tiles on sm_90 without dropout (FLASH's linear half changes only the forward), 64 x 64
    # tiles of A with a caller's bias (the transposed ones spilled)
    dv90 = launch_config("dv", 8192, 128, 1024, dtype, False, 90, lin=True)
    assert (dv90["BM"], dv90["BN"], dv90["TRANSPOSED"]) == (32, 128, True)
    dv90 = launch_config("dv", 8192, 128, 1024, dtype, False, 90, lin=True, bias=True)
    assert (dv90["BM"], dv90["BN"], "TRANSPOSED" in dv90) == (64, 64, False)
    assert launch_config("dq", 8192, 128, 1024, dtype, False, 90, bias=True)["BM"] == 32  # (spilled with a bias)
    for arch, dt, dropout in [(80, dtype, False), (None, dtype, False), (90, dtype, True), (90, torch.float32, False)]:
        dv = launch_config("dv", 8192, 128, 1024, dt, dropout, arch)
        assert (dv["BM"], dv["BN"], "TRANSPOSED" in dv) == (32, 64 if dt == dtype else 32, False), (arch, dt, dropout)
    # the transposed key tiles: sm_90, half precision, without dropout or a caller's bias, query/key width <= 128
    for kind in qa.TRANSPOSED_KEY_TILES:
        assert launch_config(kind, 8192, 128, 1024, dtype, False, 90)["BN"] == 128
        others = [(80, dtype, False, False, 128), (None, dtype, False, False, 128), (90, dtype, True, False, 128)]
        others += [(90, dtype, False, True, 128), (90, torch.float32, False, False, 128)]
        others += [(90, dtype, False, False, 200)]
        for arch, dt, dropout, bias, qk in others:
            cfg = launch_config(kind, 8192, qk, 1024, dt, dropout, arch, bias=bias)
            assert "BM_NEAR" not in cfg and cfg["BN"] <= 32, (kind, arch, dt, dropout, bias, qk)


def test_four_warp_tiles_where_eight_computed_each_product_more_than_once():
    """launch_config's 4-warp rules (each from the compiled SASS: at 8 warps these tiles' products were computed
    1.1-3.65 times over, at 4 once, spill-free on both stacks in every flag set the layers launch): the half
    32 x 32 dk and dq without a caller's bias in one query/key block, everywhere but where sm_90 takes its own
    tiles; dk with dq added only with dropout off sm_90 at query/key width 65-128; the half forward with dropout up
    to width 128. Everything else keeps its warps."""
    half, f32 = torch.bfloat16, torch.float32

    def warps(kind, arch, dropout=False, qk=128, dtype=half, bias=False):
        return qa.launch_config(kind, 8192, qk, 1024, dtype, dropout, arch, bias=bias)["num_warps"]

    for kind in ("dk", "dq"):
        for arch, dropout in [(80, False), (80, True), (None, False), (None, True), (90, True)]:
            assert warps(kind, arch, dropout) == 4, (kind, arch, dropout)
        assert warps(kind, 80, bias=True) == warps(kind, 80, qk=200) == 8, kind  # (spilled at 4)
        assert warps(kind, 90, dtype=f32) == warps(kind, 80, dtype=f32) == qa.TILES[(kind, "fp32", False)][4]
    assert warps("dq", 90) == 8  # sm_90's own 64 x 64 dq
    assert warps("dkq", 80, True) == warps("dkq", 86, True) == 4
    for arch, dropout, qk in [(80, False, 128), (90, True, 128), (None, True, 128), (80, True, 64), (80, True, 200)]:
        assert warps("dkq", arch, dropout, qk) == 8, (arch, dropout, qk)
    for arch in (80, 90, None):
        assert warps("fwd", arch, True) == 4 and warps("fwd", arch, True, qk=200) == 8, arch
        assert warps("fwd", arch, True, dtype=f32) == 8, arch
    assert warps("fwd", 80) == warps("fwd", 90) == 8


@pytest.mark.parametrize(
    "causal, laplace, bias, dropout, deterministic",
    [
        pytest.param(True, False, None, False, False, id="causal"),
        pytest.param(False, True, "bnn", True, True, id="laplace-bias-dropout-deterministic"),
    ],
)
def test_transposed_key_tiles_match_reference(monkeypatch, causal, laplace, bias, dropout, deterministic):
    """The key-tile backward over transposed (key, query) tiles, ``_quad_attn_bwd_dk_kernel`` (sm_90's dk and dk with
    dq added: 128 key rows; queries within max_distance of the key tile in 16-row steps that sum the score gradients
    per T5 bucket, the others in 32-row steps that add the tile's sum to the one bucket of its clamped relative
    position), forced in float32 (exact products) with every flag it takes, including those sm_90 does not pick it
    for (dropout, a caller's bias): n 200, max_distance 20, so that key tiles see queries before, within and after
    their near band, non-causal ones on both sides; masked keys. Output and every gradient against the reference
    (dropout through the kernels' own keep-mask). dv too over transposed tiles (``TRANSPOSED``: Aᵀ = act(k qᵀ),
    sm_90's dv without dropout or a caller's bias: 128 key rows, 32-row query steps), its loop split at the T5 band."""
    monkeypatch.setattr(qa, "SHORT_WINDOW", 0)
    picked, launch_config = [], qa.launch_config

    def transposed(kind, *args, **kwargs):
        cfg = launch_config(kind, *args, **kwargs)
        if kind in qa.TRANSPOSED_KEY_TILES:
            cfg = dict(cfg, BM=32, BN=128, BE=16, BM_NEAR=16, BE_NEAR=32)
        if kind == "dv":
            cfg = dict(cfg, BM=32, BN=128, BE=16, TRANSPOSED=True, T5_BAND=True)
        picked.append(kind)
        return cfg

    monkeypatch.setattr(qa, "launch_config", transposed)
    counters = count_launches(monkeypatch, qa, "_quad_attn_bwd_dk_kernel", "_quad_attn_bwd_dqk_kernel")
    b, n, s, e, p = 2, 200, 24, 24, 0.25
    tensors, key_mask = make_inputs(b, n, s, e, torch.float32, mask=True, bias=bias)
    # scores of order one (scale s^-1/2), so that the far buckets' pairs have score gradients to sum
    kw = dict(scale=s**-0.5, window=None, causal=causal, key_mask=key_mask, t5_scale=0.7, t5_max_distance=20)
    kw.update(bias_scale=0.5, laplace=laplace, dropout_p=p if dropout else 0.0)
    seed = torch.tensor([1234], dtype=torch.int64, device=DEVICE)
    grad_out = torch.randn(b, n, e, device=DEVICE)
    with deterministic_algorithms(deterministic):
        out, grads = run(op.quad_attn_triton, tensors, torch.float32, grad_out, dropout_seed=seed, **kw)
    assert counters["_quad_attn_bwd_dk_kernel"].launches == 1, picked
    assert counters["_quad_attn_bwd_dqk_kernel"].launches == (1 if deterministic else 0)  # dq over query tiles
    keep = qa.dropout_keep_mask(seed, b, n, n, p) if dropout else None
    out_ref, grads_ref = run(ref.quad_attn, tensors, torch.float32, grad_out, dropout_mask=keep, **kw)
    assert_close_scaled(out, out_ref, 1e-5, "output")
    assert grads.keys() == grads_ref.keys() and {"q", "k", "t5_weight"} <= grads.keys()
    for name in grads:
        assert_close_scaled(grads[name], grads_ref[name], 1e-5, f"grad of {name}")


@pytest.mark.parametrize(
    "causal, deterministic, band, p",
    [(False, False, True, 0.0), (True, True, True, 0.0), (False, True, False, 0.0), (True, False, True, 0.2)],
    ids=["noncausal", "causal-deterministic", "noncausal-deterministic-unsplit", "causal-dropout"],
)
def test_t5_outside_the_near_band_is_one_term_per_side(monkeypatch, causal, deterministic, band, p):
    """The streaming kernels (forward, dv, dk with dq added, or dk and dq in two passes) split their loops at the
    T5 band (``t5_band``): tiles at least max_distance before or after every position of the program's tile add
    the table's end as one scalar and (key tiles) sum the score gradients into that end's bucket; only the band
    gathers per score. n 150, max_distance 20, so that most programs see tiles before, within and after their band
    (non-causal on both sides; one sided causal); masked keys; output and every gradient, the T5 weights' included,
    against the reference. Swapping the two ends, or summing a side into the other's bucket, fails it. The split is
    forced on (``T5_BAND``: launch_config leaves it off where the split spilled: float32, sm_90's streaming forward
    unless causal without a key mask, the forward with dropout off sm_90, dk with dq added under dropout, sm_90's dv
    with a caller's bias, sm_90's two-stage dq; forced on here with dropout too), or off: the one loop that gathers
    everywhere."""
    bf16 = (8192, 128, 1024, torch.bfloat16)
    fwd90 = qa.launch_config("fwd", *bf16, False, 90)
    assert (fwd90["BM"], fwd90["num_warps"], fwd90["T5_BAND"]) == (128, 8, False)
    # sm_90's forward splits when causal without a key mask (the split spilled in the other builds under triton 3.9)
    assert "T5_BAND" not in qa.launch_config("fwd", *bf16, False, 90, causal=True)
    assert qa.launch_config("fwd", *bf16, False, 90, mask=True, causal=True)["T5_BAND"] is False
    assert "T5_BAND" not in qa.launch_config("fwd", *bf16, False, 80)
    assert qa.launch_config("fwd", *bf16, True, 80)["T5_BAND"] is False
    assert qa.launch_config("dkq", *bf16, True, 80)["T5_BAND"] is False
    assert qa.launch_config("dv", 8192, 128, 1024, torch.float32, False, 80)["T5_BAND"] is False
    assert "T5_BAND" not in qa.launch_config("dv", *bf16, False, 90)
    assert qa.launch_config("dv", *bf16, False, 90, bias=True)["T5_BAND"] is False
    assert "T5_BAND" not in qa.launch_config("dv", *bf16, False, 90, mask=True)  # (transposed tiles: split)
    assert "T5_BAND" not in qa.launch_config("dv", *bf16, False, 80, bias=True, mask=True)
    assert qa.launch_config("dq", *bf16, False, 90)["T5_BAND"] is False
    assert "T5_BAND" not in qa.launch_config("dq", *bf16, False, 80)
    monkeypatch.setattr(qa, "SHORT_WINDOW", 0)
    launch_config = qa.launch_config
    monkeypatch.setattr(qa, "launch_config", lambda *a, **k: dict(launch_config(*a, **k), T5_BAND=band))
    counters = count_launches(monkeypatch, qa, "_quad_attn_fwd_kernel", "_quad_attn_bwd_dqk_kernel")
    b, n, s, e = 2, 150, 24, 24
    tensors, key_mask = make_inputs(b, n, s, e, torch.float32, mask=True, bias=None)
    kw = dict(scale=s**-0.5, window=None, causal=causal, key_mask=key_mask, t5_scale=0.7, t5_max_distance=20)
    kw.update(dropout_p=p)
    seed = torch.tensor([7], dtype=torch.int64, device=DEVICE)
    grad_out = torch.randn(b, n, e, device=DEVICE)
    with deterministic_algorithms(deterministic):
        out, grads = run(op.quad_attn_triton, tensors, torch.float32, grad_out, dropout_seed=seed, **kw)
    assert counters["_quad_attn_fwd_kernel"].launches == 1
    assert counters["_quad_attn_bwd_dqk_kernel"].launches == (2 if deterministic else 1)
    keep = qa.dropout_keep_mask(seed, b, n, n, p) if p else None
    out_ref, grads_ref = run(ref.quad_attn, tensors, torch.float32, grad_out, dropout_mask=keep, **kw)
    assert_close_scaled(out, out_ref, 1e-5, "output")
    assert grads.keys() == grads_ref.keys() and {"q", "k", "v", "gate", "t5_weight"} <= grads.keys()
    for name in grads:
        assert_close_scaled(grads[name], grads_ref[name], 1e-5, f"grad of {name}")


def _through_views(fn, tensors: dict, grad_out, make_view, **kw):
    """``fn`` on ``make_view`` of every tensor input (mask included), and the gradients of the leaves behind them."""
    leaves = {k: t.detach().clone().requires_grad_(t.is_floating_point()) for k, t in tensors.items()}
    views = {k: make_view(t) for k, t in leaves.items()}
    out = fn(views.pop("q"), views.pop("k"), views.pop("v"), views.pop("gate"), **views, **kw)
    out.backward(grad_out)
    return out.detach(), {k: t.grad for k, t in leaves.items() if t.requires_grad}


@pytest.mark.parametrize("window, causal", [(None, False), (None, True), (16, True)], ids=["gau", "gau-causal", "w16"])
def test_non_contiguous_inputs_give_the_contiguous_results(window, causal, kernel_path):
    """Every tensor the kernels read (q, k, v, gate, the T5 table, the bias and the bool key mask) as a view that is
    non-contiguous in every dimension: the same output and gradients as contiguous inputs (a transposed mask was
    once read as if contiguous, silently wrong)."""
    b, n, s, e = 2, 37, 24, 20
    tensors, key_mask = make_inputs(b, n, s, e, torch.float32, mask=True, bias="bnn" if window is None else None)
    tensors = {k: t for k, t in tensors.items() if t is not None} | dict(key_mask=key_mask)
    assert not strided(key_mask).is_contiguous() and strided(key_mask).stride(-1) != 1
    kw = dict(scale=1.0 / n, window=window, causal=causal, t5_scale=0.7, bias_scale=0.5)
    grad_out = torch.randn(b, n, e, device=DEVICE)
    out, grads = _through_views(op.quad_attn_triton, tensors, grad_out, lambda t: t, **kw)
    out_v, grads_v = _through_views(op.quad_attn_triton, tensors, grad_out, strided, **kw)
    out_ref, _ = _through_views(ref.quad_attn, tensors, grad_out, lambda t: t, **kw)
    assert_close_scaled(out, out_ref, 1e-5, "contiguous output against the reference")
    torch.testing.assert_close(out_v, out, rtol=1e-6, atol=1e-6)
    assert (
        grads_v.keys() == grads.keys() == {"q", "k", "v", "gate", "t5_weight"} | ({"bias"} if window is None else set())
    )
    for name in grads:
        torch.testing.assert_close(grads_v[name], grads[name], rtol=1e-6, atol=1e-6, msg=f"grad of {name}")


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16], ids=lambda d: {torch.float32: "fp32", torch.bfloat16: "bf16"}[d]
)
@pytest.mark.parametrize("causal, bias", [(True, None), (False, "bnn")], ids=["causal", "bias"])
def test_streaming_backward_deterministic_pass_matches_the_atomic_one(monkeypatch, causal, bias, dtype):
    """The streaming backward adds dq in from its key tiles with float32 atomics (dy vᵀ and the scores computed once
    for dq and dk); under ``torch.use_deterministic_algorithms`` a query-tile pass computes dq in a fixed order
    instead. Both match the reference, each other to float32 summation order, and the deterministic pass repeats
    itself bit for bit."""
    monkeypatch.setattr(qa, "SHORT_WINDOW", 0)
    b, n, s, e = 2, 45, 24, 40
    tensors, key_mask = make_inputs(b, n, s, e, dtype, mask=True, bias=bias)
    kw = dict(scale=1.0 / n, window=None, causal=causal, key_mask=key_mask, t5_scale=0.7, bias_scale=1.0 / n)
    grad_out = torch.randn(b, n, e, device=DEVICE)
    counters = count_launches(monkeypatch, qa, "_quad_attn_bwd_dqk_kernel")
    _, atomic = run(op.quad_attn_triton, tensors, dtype, grad_out, **kw)
    assert counters["_quad_attn_bwd_dqk_kernel"].launches == 1  # dk, with dq added in
    with deterministic_algorithms(True):
        _, fixed = run(op.quad_attn_triton, tensors, dtype, grad_out, **kw)
        _, again = run(op.quad_attn_triton, tensors, dtype, grad_out, **kw)
    assert counters["_quad_attn_bwd_dqk_kernel"].launches == 1 + 2 * 2  # then dk and dq, twice
    _, grads_ref = run(ref.quad_attn, tensors, dtype, grad_out, **kw)
    _, grads64 = run(ref.quad_attn, tensors, torch.float64, grad_out, **kw)
    assert atomic.keys() == fixed.keys() == grads64.keys() and "q" in atomic
    for name in atomic:
        assert torch.equal(fixed[name], again[name]), f"deterministic grad of {name} changed between runs"
        close_to_reference(atomic[name], grads_ref[name], grads64[name], dtype, f"atomic-dq grad of {name}")
        close_to_reference(fixed[name], grads_ref[name], grads64[name], dtype, f"deterministic grad of {name}")
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: one rounding of a float32 sum in another order
    assert_close_scaled(atomic["q"], fixed["q"], tol, "dq, atomic against deterministic")


@pytest.mark.parametrize(
    "deterministic, s, bias",
    [(False, 130, None), (True, 130, None), (True, 24, "bnn")],
    ids=["atomic", "deterministic", "deterministic-bias"],
)
def test_streaming_backward_with_dropout_over_several_query_key_blocks(monkeypatch, deterministic, s, bias):
    """Half precision with dropout past one 128-wide query/key block: dk and dq (the deterministic pass) step the
    width in 64-wide blocks (two 128-wide ones spilled: dq on sm_90, dk under triton 3.7.1 and 3.8), dk with dq
    added in 128-wide ones. Query/key width 130: three 64-wide blocks, the third partial; and a caller's bias in one
    block. Output and every gradient against the reference fed the kernels' own keep-mask."""
    monkeypatch.setattr(qa, "SHORT_WINDOW", 0)
    picked, launch_config = [], qa.launch_config

    def spy(kind, *args, **kwargs):
        picked.append((kind, launch_config(kind, *args, **kwargs)))
        return picked[-1][1]

    monkeypatch.setattr(qa, "launch_config", spy)
    dtype, (b, n, e, p) = torch.bfloat16, (1, 40, 40, 0.25)
    tensors, key_mask = make_inputs(b, n, s, e, dtype, mask=True, bias=bias)
    seed = torch.tensor([77], dtype=torch.int64, device=DEVICE)
    kw = dict(scale=s**-0.5, window=None, causal=True, key_mask=key_mask, t5_scale=0.7, dropout_p=p)
    kw.update(bias_scale=0.5)
    grad_out = torch.randn(b, n, e, device=DEVICE)
    with deterministic_algorithms(deterministic):
        out, grads = run(op.quad_attn_triton, tensors, dtype, grad_out, dropout_seed=seed, **kw)
    blocks = {kind: (c["BS"], c["S_BLOCKS"], c["BE"]) for kind, c in picked if kind in ("dk", "dq", "dkq")}
    expected = {"dk": (64, 3, 64), "dq": (64, 3, 64)} if deterministic else {"dkq": (128, 2, 64)}
    assert blocks == (expected if bias is None else {"dk": (32, 1, 64), "dq": (32, 1, 64)}), blocks
    # without dropout dq takes 64-wide blocks past one 128-wide block too (72 B spilled on sm_80 under 3.8), dk not
    for arch in (80, 90, None):
        assert qa.launch_config("dq", 8192, 200, 1024, dtype, False, arch)["BS"] == 64, arch
        assert qa.launch_config("dk", 8192, 200, 1024, dtype, False, arch)["BS"] == 128, arch
    keep = qa.dropout_keep_mask(seed, b, n, n, p)
    out_ref, grads_ref = run(ref.quad_attn, tensors, dtype, grad_out, dropout_mask=keep, **kw)
    out64, grads64 = run(ref.quad_attn, tensors, torch.float64, grad_out, dropout_mask=keep, **kw)
    close_to_reference(out, out_ref, out64, dtype, "output")
    assert grads.keys() == grads64.keys() and "q" in grads
    for name in grads:
        close_to_reference(grads[name], grads_ref[name], grads64[name], dtype, f"grad of {name}")


def test_dropout_keep_mask_statistics_and_determinism():
    p = 0.3
    seed = torch.tensor([123], dtype=torch.int64, device=DEVICE)
    keep = qa.dropout_keep_mask(seed, 2, 200, 100, p)
    assert keep.shape == (2, 2, 100, 100)
    frac = keep.float().mean().item()
    assert abs(frac - (1 - p)) < 0.01, frac  # 40k draws: the standard error is ~0.0023
    assert torch.equal(keep, qa.dropout_keep_mask(seed, 2, 200, 100, p))
    other = qa.dropout_keep_mask(seed + 1, 2, 200, 100, p)
    agreement = (keep == other).float().mean().item()
    assert abs(agreement - (p * p + (1 - p) ** 2)) < 0.02  # independent draws agree at the chance rate
    # windows and batch rows draw different masks
    assert (keep[0, 0] != keep[0, 1]).any() and (keep[0, 0] != keep[1, 0]).any()


@pytest.mark.parametrize("window, causal", [(None, True), (16, False)], ids=["gau-causal", "w16"])
def test_dropout_forward_and_backward_use_the_same_mask(window, causal, kernel_path):
    """The kernel's forward and backward regenerate one keep-mask: feeding that mask to the reference reproduces
    the output and every gradient."""
    b, n, s, e, p = 2, 37, 16, 24, 0.25
    tensors, key_mask = make_inputs(b, n, s, e, torch.float32, mask=True, bias=None)
    seed = torch.tensor([2024], dtype=torch.int64, device=DEVICE)
    w = window or n
    kw = dict(scale=1.0 / w, window=window, causal=causal, key_mask=key_mask, t5_scale=0.7, dropout_p=p)
    grad_out = torch.randn(b, n, e, device=DEVICE)
    out, grads = run(op.quad_attn_triton, tensors, torch.float32, grad_out, dropout_seed=seed, **kw)
    keep = qa.dropout_keep_mask(seed, b, n, w, p)
    out_ref, grads_ref = run(ref.quad_attn, tensors, torch.float32, grad_out, dropout_mask=keep, **kw)
    assert_close_scaled(out, out_ref, 1e-5, "output with dropout")
    for name in grads:
        assert_close_scaled(grads[name], grads_ref[name], 1e-5, f"grad of {name} with dropout")
    no_drop, _ = run(op.quad_attn_triton, tensors, torch.float32, grad_out, **dict(kw, dropout_p=0.0))
    assert not torch.allclose(out, no_drop)  # dropout did something


def scrambled_gau(**kw):
    model = ft.GAU(backend="reference", **kw)
    scramble(model)
    twin = ft.GAU(backend="triton", **kw)
    twin.load_state_dict(model.state_dict())
    return model.to(DEVICE), twin.to(DEVICE)


@pytest.mark.parametrize(
    "kw, n, masked, bias",
    [
        pytest.param(dict(dim=24, query_key_dim=16, causal=True), 33, True, False, id="causal-mask"),
        pytest.param(dict(dim=40, query_key_dim=24, laplace_attn_fn=True), 50, False, True, id="laplace-bias"),
        pytest.param(dict(dim=24, query_key_dim=8, causal=True, norm_klass=ft.ScaleNorm), 1, False, False, id="n1"),
    ],
)
def test_gau_on_triton_matches_reference_and_runs_the_kernels(monkeypatch, kw, n, masked, bias):
    counters = count_launches(
        monkeypatch, qa, "_quad_attn_fwd_kernel", "_quad_attn_bwd_dv_kernel", "_quad_attn_bwd_dqk_kernel"
    ) | count_launches(monkeypatch, sw, *SHORT_KERNELS)
    reference, fused = scrambled_gau(**kw)
    x = torch.randn(2, n, kw["dim"], device=DEVICE)
    mask = (torch.rand(2, n, device=DEVICE) > 0.3) if masked else None
    rel = torch.randn(n, n, device=DEVICE, requires_grad=True) if bias else None
    outs, grads = [], []
    for model in (reference, fused):
        xi = x.clone().requires_grad_()
        out = model(xi, rel_pos_bias=rel, mask=mask)
        leaves = [xi, *model.parameters()] + ([rel] if bias else [])
        grads.append(torch.autograd.grad(out, leaves, torch.ones_like(out) * 0.1))
        outs.append(out)
    assert_close_scaled(outs[1], outs[0], 1e-5, "GAU output")
    names = ["x", *(name for name, _ in reference.named_parameters())] + (["rel_pos_bias"] if bias else [])
    for name, g_fused, g_ref in zip(names, grads[1], grads[0], strict=True):
        assert_close_scaled(g_fused, g_ref, 1e-5, f"grad of {name}")
    # windows of n <= qa.SHORT_WINDOW: weights and score gradients stored, none of the streaming kernels
    assert {name: c.launches for name, c in counters.items()} == dict(
        _quad_attn_fwd_kernel=0,
        _quad_attn_bwd_dv_kernel=0,
        _quad_attn_bwd_dqk_kernel=0,
        _quad_weights_kernel=1,
        _quad_out_kernel=1,
        _quad_dscores_kernel=1,
        _quad_tile_product_kernel=3,  # dv, dq, dk
    )


def test_gau_on_triton_matches_upstream():
    up = pytest.importorskip("flash_pytorch", reason="FLASH-pytorch 0.1.9 is not installed")
    theirs = up.GAU(dim=32, query_key_dim=24, causal=True)
    scramble(theirs)
    ours = ft.GAU(dim=32, query_key_dim=24, causal=True, backend="triton")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs, ours = theirs.to(DEVICE), ours.to(DEVICE)
    x = torch.randn(2, 41, 32, device=DEVICE)
    mask = torch.rand(2, 41, device=DEVICE) > 0.2
    out_t, out_o = theirs(x, mask=mask), ours(x, mask=mask)
    assert_close_scaled(out_o, out_t, UPSTREAM_TOL, "output")
    out_t.square().sum().backward()
    out_o.square().sum().backward()
    for (name, p_t), p_o in zip(theirs.named_parameters(), ours.parameters(), strict=True):
        assert_close_scaled(p_o.grad, p_t.grad, UPSTREAM_TOL, f"grad of {name}")


def test_autograd_keeps_nothing_quadratic():
    n = 128
    _, fused = scrambled_gau(dim=16, query_key_dim=16, causal=True)
    x = torch.randn(1, n, 16, device=DEVICE, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fused(x, mask=torch.ones(1, n, dtype=torch.bool, device=DEVICE))
    out.sum().backward()
    assert saved, "nothing was saved: the hook did not see the graph"
    assert all(torch.Size(shape).numel() < n * n for shape in saved), saved


def test_gau_under_autocast_fp16():
    reference, fused = scrambled_gau(dim=32, query_key_dim=16, causal=True)
    x = torch.randn(2, 30, 32, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.float16):
        out_ref, out = reference(x), fused(x)
    assert out.dtype == out_ref.dtype
    assert_close_scaled(out.float(), out_ref.float(), 2e-2, "autocast output")
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fused.parameters())


def test_explicit_bias_needs_the_whole_sequence_window():
    t = torch.randn(1, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="only supported with window=None"):
        op.quad_attn_triton(t, t, t, scale=1.0, window=4, bias=torch.randn(8, 8, device=DEVICE))


@pytest.mark.slow
def test_torch_compile_fullgraph_traces_gau():
    reference, fused = scrambled_gau(dim=16, query_key_dim=16, causal=True)
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.randn(2, 24, 16, device=DEVICE, requires_grad=True)
    out = compiled(x)
    assert_close_scaled(out, reference(x), 1e-5, "compiled output")
    out.sum().backward()
    grad_compiled = x.grad.clone()
    x.grad = None
    reference(x).sum().backward()
    assert_close_scaled(grad_compiled, x.grad, 1e-5, "compiled input grad")


@pytest.mark.parametrize("layer", ["GAU", "FLASH"])
@pytest.mark.parametrize("grad", [True, False], ids=["traced-with-grad", "traced-under-no-grad"])
def test_torch_jit_trace_of_the_kernel_path(layer, grad):
    """torch.jit.trace checks its trace by tracing again under no_grad: the layers' kernel path records the same
    graph either way (the pre-gate output is kept whenever tracing), and the traced module gives the eager module's
    output and input gradient."""
    kw = dict(dim=16, query_key_dim=16, causal=True) | ({"group_size": 8} if layer == "FLASH" else {})
    model = getattr(ft, layer)(backend="triton", **kw).to(DEVICE)
    scramble(model)
    x = torch.randn(2, 20, 16, device=DEVICE)
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(model, x)  # raises TracingCheckError when the two traces differ
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [traced(xs[0]), model(xs[1])]
    assert_close_scaled(outs[0], outs[1], 1e-6, "traced output")
    for out in outs:
        out.pow(2).sum().backward()
    assert_close_scaled(xs[0].grad, xs[1].grad, 1e-5, "traced input grad")


def test_rows_past_32_bit_offsets_are_refused_with_the_numbers():
    # meta tensors carry shapes and strides without memory: row stride 256 x 2**24 rows passes 2**31
    big = torch.empty(1, 2**24, 256, device="meta")
    small = torch.empty(1, 2**24, 16, device="meta")
    with pytest.raises(ValueError, match="32-bit limit"):
        qa.quad_attn_fwd(
            small,
            small,
            big,
            None,
            None,
            None,
            None,
            None,
            scale=1.0,
            t5_scale=1.0,
            t5_max_distance=128,
            bias_scale=1.0,
            window=64,
            causal=True,
            laplace=False,
            dropout_p=0.0,
            store_pre=False,
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_gau_in_half_precision_on_kernels_matches_reference(causal, dtype):
    """``GAU(...).to(dtype)`` on the kernels: output and every gradient within the dtype-scaled bound of the
    reference in the same dtype (bf16 too under the CPU interpreter)."""
    x = torch.randn(2, 37, 32, device=DEVICE)
    results, names = layer_in_dtypes(
        lambda backend: ft.GAU(dim=32, query_key_dim=16, causal=causal, backend=backend), x, dtype
    )
    for name, ours, theirs, ref64 in zip(names, *results.values(), strict=True):
        if ref64 is not None:
            close_to_reference(ours, theirs, ref64.double(), dtype, name)
