"""Bad input at the public boundary: ValueError/TypeError naming the argument and shapes, before any compute."""

import pytest
import torch

import flash_triton as ft


class Untouched(Exception):
    pass


def forbid_compute(module):
    """Any call of the module's first sub-layer means validation came too late."""

    def hook(*_):
        raise Untouched("compute started before the input was validated")

    first = module.token_emb if isinstance(module, ft.FLASHTransformer) else module.norm
    first.register_forward_pre_hook(hook)
    return module


def gau():
    return forbid_compute(ft.GAU(dim=8, query_key_dim=8))


def flash():
    return forbid_compute(ft.FLASH(dim=8, group_size=4, query_key_dim=8, causal=True))


def lm():
    return forbid_compute(ft.FLASHTransformer(num_tokens=10, dim=8, depth=1, group_size=4, query_key_dim=8))


LONG = ft.MAX_SEQ_LEN + 1


@pytest.mark.parametrize("make", [gau, flash], ids=["GAU", "FLASH"])
@pytest.mark.parametrize(
    "x, kwargs, exc, match",
    [
        pytest.param(
            torch.randn(5, 8), {}, ValueError, r"x must have shape \(batch, seq, 8\), got \(5, 8\)", id="rank"
        ),
        pytest.param(torch.randn(1, 5, 7), {}, ValueError, r"got \(1, 5, 7\)", id="features"),
        pytest.param(torch.randn(1, 0, 8), {}, ValueError, "at least one position", id="empty"),
        pytest.param(torch.zeros(1, 5, 8, dtype=torch.long), {}, TypeError, "floating-point", id="int-x"),
        pytest.param([[0.0] * 8], {}, TypeError, "torch.Tensor", id="list-x"),
        pytest.param(torch.zeros(1, 1, 8).expand(1, LONG, 8), {}, ValueError, "the limit is", id="too-long"),
        pytest.param(
            torch.randn(2, 5, 8),
            {"mask": torch.ones(2, 6, dtype=torch.bool)},
            ValueError,
            r"mask must have shape \(batch, seq\) = \(2, 5\) or \(1, 5\), got \(2, 6\)",
            id="mask-shape",
        ),
        pytest.param(
            torch.randn(2, 5, 8), {"mask": torch.ones(2, 5)}, TypeError, "mask must be a bool", id="mask-dtype"
        ),
    ],
)
def test_layers_reject_bad_input(make, x, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make()(x, **kwargs)


def test_gau_rejects_a_bias_that_does_not_broadcast():
    with pytest.raises(ValueError, match=r"rel_pos_bias must broadcast to \(batch, seq, seq\) = \(2, 5, 5\)"):
        gau()(torch.randn(2, 5, 8), rel_pos_bias=torch.randn(2, 5, 4))
    with pytest.raises(TypeError, match="rel_pos_bias must be a floating-point"):
        gau()(torch.randn(2, 5, 8), rel_pos_bias=torch.ones(5, 5, dtype=torch.long))


@pytest.mark.parametrize(
    "x, kwargs, exc, match",
    [
        pytest.param(torch.tensor([[1, 10]]), {}, ValueError, r"token ids in \[1, 10\], outside \[0, 10\)", id="high"),
        pytest.param(torch.tensor([[-1, 2]]), {}, ValueError, "outside", id="negative"),
        pytest.param(torch.rand(1, 4), {}, TypeError, "integer token ids", id="float-ids"),
        pytest.param(torch.tensor([1, 2]), {}, ValueError, r"x must have shape \(batch, seq\)", id="rank"),
        pytest.param(torch.zeros(1, 1, dtype=torch.long).expand(1, LONG), {}, ValueError, "the limit", id="too-long"),
        pytest.param(torch.tensor([[1, 2]]), {"mask": torch.tensor([[True]])}, ValueError, "mask must have", id="mask"),
        pytest.param(
            torch.tensor([[1, 2]], dtype=torch.uint8), {}, TypeError, "x must hold integer.*uint8", id="uint8"
        ),
    ],
)
def test_transformer_rejects_bad_tokens(x, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        lm()(x, **kwargs)


@pytest.mark.parametrize(
    "make, kwargs, exc, match",
    [
        pytest.param(ft.FLASH, dict(dim=8, group_size=0), ValueError, "group_size must be positive", id="group0"),
        pytest.param(ft.FLASH, dict(dim=8, group_size=2.5), TypeError, "group_size must be an int", id="group-float"),
        pytest.param(ft.FLASH, dict(dim=-8), ValueError, "dim must be positive", id="dim-neg"),
        pytest.param(ft.FLASH, dict(dim=8, query_key_dim=0), ValueError, "query_key_dim", id="qk0"),
        pytest.param(ft.FLASH, dict(dim=8, expansion_factor=0.01), ValueError, "expansion_factor", id="expansion"),
        pytest.param(ft.FLASH, dict(dim=8, dropout=1.0), ValueError, r"dropout must be in \[0, 1\)", id="dropout"),
        pytest.param(
            ft.FLASH,
            dict(dim=8, query_key_dim=8, rotary_pos_emb=ft.RotaryEmbedding(16)),
            ValueError,
            "rotates 16 features but query_key_dim is 8",
            id="rotary-too-wide",
        ),
        pytest.param(ft.GAU, dict(dim=0), ValueError, "dim must be positive", id="gau-dim0"),
        pytest.param(ft.GAU, dict(dim=8, query_key_dim=True), TypeError, "query_key_dim must be an int", id="gau-bool"),
        pytest.param(ft.FLASHTransformer, dict(dim=8, num_tokens=0, depth=1), ValueError, "num_tokens", id="tokens0"),
        pytest.param(ft.FLASHTransformer, dict(dim=8, num_tokens=5, depth=0), ValueError, "depth", id="depth0"),
        pytest.param(ft.FLASHTransformer, dict(dim=9, num_tokens=5, depth=1), ValueError, "dim must be even", id="odd"),
        pytest.param(
            ft.FLASHTransformer,
            dict(dim=8, num_tokens=5, depth=1, query_key_dim=17),
            ValueError,
            "query_key_dim below 32 must be even.*got 17",
            id="odd-qk",
        ),
        pytest.param(ft.RotaryEmbedding, dict(dim=7), ValueError, "dim must be even", id="odd-rotary"),
        pytest.param(
            ft.FLASHTransformer,
            dict(dim=8, num_tokens=5, depth=1, norm_type="rms"),
            ValueError,
            "norm_type must be one of",
            id="norm-type",
        ),
    ],
)
def test_constructors_reject_bad_arguments(make, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make(**kwargs)


def test_generate_rejects_bad_arguments():
    wrapper = ft.AutoregressiveWrapper(ft.FLASHTransformer(num_tokens=10, dim=8, depth=1, group_size=4, causal=True))
    with pytest.raises(ValueError, match="start_tokens must have shape"):
        wrapper.generate(torch.tensor([1, 2]), 3)
    with pytest.raises(ValueError, match="seq_len must be a non-negative int"):
        wrapper.generate(torch.tensor([[1, 2]]), -1)
    with pytest.raises(ValueError, match="temperature must be positive"):
        wrapper.generate(torch.tensor([[1, 2]]), 2, temperature=0.0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be finite"):
            wrapper.generate(torch.tensor([[1, 2]]), 2, temperature=bad)
    for bad, match in ((-0.5, r"in \[0, 1\]"), (1.5, r"in \[0, 1\]"), (float("nan"), "finite")):
        with pytest.raises(ValueError, match=f"filter_thres must be {match}"):
            wrapper.generate(torch.tensor([[1, 2]]), 2, filter_thres=bad)
    with pytest.raises(TypeError, match="filter_thres must be a float"):
        wrapper.generate(torch.tensor([[1, 2]]), 2, filter_thres="0.9")
    assert wrapper.generate(torch.tensor([[1, 2]]), 2, filter_thres=1.0).shape == (1, 2)  # 1 = greedy (top-1)


def test_numpy_integer_arguments_are_accepted_as_upstream_does():
    np = pytest.importorskip("numpy")
    torch.manual_seed(0)
    ours = ft.FLASHTransformer(num_tokens=np.int64(10), dim=np.int64(8), depth=np.int32(1), group_size=np.int64(4))
    torch.manual_seed(0)
    plain = ft.FLASHTransformer(num_tokens=10, dim=8, depth=1, group_size=4)
    x = torch.randint(0, 10, (2, 9))
    torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)
    assert ft.GAU(dim=np.int64(8), query_key_dim=np.int16(8))(torch.randn(1, 3, 8)).shape == (1, 3, 8)


@pytest.mark.parametrize("make", [gau, flash, lm], ids=["GAU", "FLASH", "FLASHTransformer"])
def test_a_mask_of_one_row_broadcasts_over_the_batch(make):
    """(1, seq) masks are accepted as upstream accepts them, and mean the same mask for every row."""
    model = make()
    first = model.token_emb if isinstance(model, ft.FLASHTransformer) else model.norm
    first._forward_pre_hooks.clear()  # compute is wanted here: drop forbid_compute's hook
    x = torch.randint(0, 10, (3, 9)) if isinstance(model, ft.FLASHTransformer) else torch.randn(3, 9, 8)
    mask = torch.rand(1, 9) > 0.3
    torch.testing.assert_close(model(x, mask=mask), model(x, mask=mask.expand(3, 9)), rtol=0, atol=0)


def test_wrapper_loss_rejects_bad_token_sequences():
    wrapper = ft.AutoregressiveWrapper(ft.FLASHTransformer(num_tokens=10, dim=8, depth=1, group_size=4))
    with pytest.raises(ValueError, match=r"token ids in \[1, 10\], outside \[0, 10\)"):
        wrapper(torch.tensor([[1, 2, 10]]))  # only the label (last token) is out of range
    with pytest.raises(ValueError, match=r"seq >= 1, got \(2, 1\)"):
        wrapper(torch.tensor([[1], [2]]))


@pytest.mark.parametrize(
    "cu, x_shape, exc, match",
    [
        pytest.param(torch.tensor([0, 3, 5]), (2, 5, 8), ValueError, "batch must be 1", id="batch2"),
        pytest.param(torch.tensor([0, 3, 6]), (1, 5, 8), ValueError, r"from 0 to the sequence length 5", id="end"),
        pytest.param(torch.tensor([0, 3, 3, 5]), (1, 5, 8), ValueError, "strictly", id="empty-sequence"),
        pytest.param(torch.tensor([0.0, 5.0]), (1, 5, 8), TypeError, "integer offsets", id="float"),
        pytest.param(torch.tensor([[0, 5]]), (1, 5, 8), ValueError, "1-D", id="2d"),
    ],
)
def test_flash_rejects_bad_cu_seqlens(cu, x_shape, exc, match):
    with pytest.raises(exc, match=match):
        flash()(torch.randn(*x_shape), cu_seqlens=cu)


@pytest.mark.parametrize("make", [gau, flash], ids=["GAU", "FLASH"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["fp64", "fp16"])
def test_an_input_of_another_dtype_than_the_module_is_refused_naming_both(make, dtype):
    """Outside autocast (torch failed with "mixed dtype (CPU)" / "mat1 and mat2 must have the same dtype")."""
    with pytest.raises(TypeError, match=f"x is {dtype} but the module takes torch.float32"):
        make()(torch.randn(1, 5, 8, dtype=dtype))


@pytest.mark.parametrize("make", [gau, flash], ids=["GAU", "FLASH"])
def test_autocast_takes_its_own_dtype_and_the_modules(make):
    model = make()
    model.norm._forward_pre_hooks.clear()  # compute is wanted here
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 5, 8)).isfinite().all()
        assert model(torch.randn(1, 5, 8, dtype=torch.bfloat16)).isfinite().all()
        with pytest.raises(TypeError, match="or the autocast dtype torch.bfloat16"):
            model(torch.randn(1, 5, 8, dtype=torch.float64))


def test_a_model_on_the_meta_device_runs_shapes_only():
    """(once: "Cannot copy out of meta tensor" from the token-id range check)"""
    with torch.device("meta"):
        model = ft.FLASHTransformer(num_tokens=10, dim=8, depth=1, group_size=4, query_key_dim=8, causal=True)
        assert model(torch.randint(0, 10, (2, 9))).shape == (2, 9, 10)
