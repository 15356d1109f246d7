"""Parity with FLASH-pytorch 0.1.9 (the compatibility oracle): strict state_dict loads both ways, and the same
outputs and gradients (input and every parameter) in float32 with scrambled weights."""

import pytest
import torch

import flash_triton as ft
from tests._helpers import UPSTREAM_TOL, assert_close_scaled, scramble

up = pytest.importorskip("flash_pytorch", reason="FLASH-pytorch 0.1.9 (the test extra) is not installed")
up_wrapper = pytest.importorskip("flash_pytorch.autoregressive_wrapper")
rotary_up = pytest.importorskip("rotary_embedding_torch")


def twin(up_cls, our_cls, **kw):
    theirs = up_cls(**kw)
    scramble(theirs)
    ours = our_cls(**kw)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return theirs, ours


def compare_forward_backward(theirs, ours, make_inputs, **fwd_kw):
    inputs_t, inputs_o = make_inputs(), make_inputs()
    out_t, out_o = theirs(*inputs_t, **fwd_kw), ours(*inputs_o, **fwd_kw)
    assert_close_scaled(out_o, out_t, UPSTREAM_TOL, "output")
    grad = torch.randn_like(out_t)
    (out_t * grad).sum().backward()
    (out_o * grad).sum().backward()
    for x_t, x_o in zip(inputs_t, inputs_o, strict=True):
        if x_t.requires_grad:
            assert_close_scaled(x_o.grad, x_t.grad, UPSTREAM_TOL, "input grad")
    params_o = dict(ours.named_parameters())
    checked = 0
    for name, p_t in theirs.named_parameters():
        p_o = params_o[name]
        if p_t.grad is None:
            assert p_o.grad is None, name
            continue
        assert_close_scaled(p_o.grad, p_t.grad, UPSTREAM_TOL, f"grad of {name}")
        checked += 1
    assert checked > 0


def float_input(b, n, dim, seed=1):
    def make():
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(b, n, dim, generator=g).requires_grad_(),)

    return make


def key_mask(b, n, seed=2):
    mask = torch.rand(b, n, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask[:, 0] = True
    return mask


GAU_CASES = [
    pytest.param(dict(dim=24, query_key_dim=16), 1, False, id="n1"),
    pytest.param(dict(dim=24, query_key_dim=16), 37, False, id="n37"),
    pytest.param(dict(dim=24, query_key_dim=16, causal=True), 37, True, id="n37-causal-mask"),
    pytest.param(dict(dim=40, query_key_dim=24, expansion_factor=1.5), 64, True, id="n64-mask-e60"),
    pytest.param(dict(dim=24, query_key_dim=16, laplace_attn_fn=True, causal=True), 33, False, id="laplace-causal"),
    pytest.param(dict(dim=24, query_key_dim=8, add_residual=False, norm_klass=ft.ScaleNorm), 20, True, id="scalenorm"),
]


@pytest.mark.parametrize("kw, n, masked", GAU_CASES)
def test_gau_matches_upstream(kw, n, masked):
    up_kw = dict(kw, norm_klass=up.flash_pytorch.ScaleNorm) if kw.get("norm_klass") is ft.ScaleNorm else kw
    theirs = up.GAU(**up_kw)
    scramble(theirs)
    ours = ft.GAU(**kw)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    mask = key_mask(2, n) if masked else None
    compare_forward_backward(theirs, ours, float_input(2, n, kw["dim"]), mask=mask)


def test_gau_rel_pos_bias_argument_matches_upstream():
    theirs, ours = twin(up.GAU, ft.GAU, dim=16, query_key_dim=8, causal=True)
    bias = torch.randn(2, 21, 21)
    compare_forward_backward(theirs, ours, float_input(2, 21, 16), rel_pos_bias=bias)


FLASH_CASES = [
    pytest.param(dict(causal=True), 1, False, id="n1-causal"),
    pytest.param(dict(causal=True), 5, True, id="n-lt-g-causal-mask"),
    pytest.param(dict(causal=True), 64, False, id="multiple-causal"),
    pytest.param(dict(causal=True, shift_tokens=True), 45, True, id="ragged-causal-shift-mask"),
    pytest.param(dict(causal=True, laplace_attn_fn=True), 45, False, id="ragged-causal-laplace"),
    pytest.param(dict(causal=False), 45, True, id="ragged-noncausal-reduce-mask"),
    pytest.param(dict(causal=False, reduce_group_non_causal_attn=False), 45, False, id="ragged-noncausal-pergroup"),
    pytest.param(
        dict(causal=False, reduce_group_non_causal_attn=False, laplace_attn_fn=True), 32, True, id="pergroup-lap"
    ),
    pytest.param(dict(causal=True, norm_klass="scalenorm", shift_tokens=True), 33, False, id="scalenorm-shift"),
    pytest.param(dict(causal=True, rotary=True), 45, True, id="rotary-causal-mask"),
    pytest.param(dict(causal=False, rotary=True, expansion_factor=1.25), 29, False, id="rotary-noncausal-e20"),
]


@pytest.mark.parametrize("kw, n, masked", FLASH_CASES)
def test_flash_matches_upstream(kw, n, masked):
    kw = dict(kw, dim=16, group_size=16, query_key_dim=24)
    up_kw, our_kw = dict(kw), dict(kw)
    if kw.pop("norm_klass", None) == "scalenorm":
        up_kw["norm_klass"], our_kw["norm_klass"] = up.flash_pytorch.ScaleNorm, ft.ScaleNorm
    if up_kw.pop("rotary", False):
        our_kw.pop("rotary")
        up_kw["rotary_pos_emb"] = rotary_up.RotaryEmbedding(dim=16)
        our_kw["rotary_pos_emb"] = ft.RotaryEmbedding(dim=16)
    theirs = up.FLASH(**up_kw)
    scramble(theirs)
    ours = ft.FLASH(**our_kw)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    mask = key_mask(2, n) if masked else None
    compare_forward_backward(theirs, ours, float_input(2, n, 16), mask=mask)


@pytest.mark.parametrize(
    "kw, n",
    [
        pytest.param(dict(causal=True), 50, id="causal-default"),
        pytest.param(dict(causal=True, norm_type="layernorm", shift_tokens=False, query_key_dim=40), 32, id="ln-qk40"),
        pytest.param(dict(causal=False, laplace_attn_fn=True), 19, id="noncausal-laplace"),
        pytest.param(dict(causal=False, reduce_group_non_causal_attn=False, group_size=8), 30, id="noncausal-pergroup"),
    ],
)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_flash_transformer_matches_upstream(kw, n, masked):
    kw = dict(dict(num_tokens=50, dim=32, depth=2, group_size=16, query_key_dim=24), **kw)
    theirs, ours = twin(up.FLASHTransformer, ft.FLASHTransformer, **kw)
    tokens = torch.randint(0, 50, (2, n))
    mask = key_mask(2, n) if masked else None
    compare_forward_backward(theirs, ours, lambda: (tokens,), mask=mask)


def test_upstream_checkpoint_round_trip(tmp_path):
    """A state_dict saved from an upstream model loads into ours strictly and gives the same logits."""
    kw = dict(num_tokens=256, dim=48, depth=3, group_size=32, query_key_dim=64, causal=True)
    theirs = up.FLASHTransformer(**kw)
    scramble(theirs)
    torch.save(theirs.state_dict(), tmp_path / "upstream.pt")
    ours = ft.FLASHTransformer(**kw)
    ours.load_state_dict(torch.load(tmp_path / "upstream.pt", weights_only=True), strict=True)
    x = torch.randint(0, 256, (1, 70))
    assert_close_scaled(ours(x), theirs(x), UPSTREAM_TOL, "logits")


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_masks_match_upstream_under_the_same_seed(causal):
    """Training-mode dropout draws from torch's RNG in upstream's order and shapes, so seeded runs agree."""
    theirs, ours = twin(up.GAU, ft.GAU, dim=16, query_key_dim=8, causal=causal, dropout=0.3)
    x = torch.randn(2, 19, 16)
    torch.manual_seed(7)
    a = theirs(x)
    torch.manual_seed(7)
    b = ours(x)
    assert_close_scaled(b, a, UPSTREAM_TOL, "GAU with dropout")
    theirs, ours = twin(up.FLASH, ft.FLASH, dim=16, group_size=8, query_key_dim=8, causal=causal, dropout=0.3)
    torch.manual_seed(7)
    a = theirs(x)
    torch.manual_seed(7)
    b = ours(x)
    assert_close_scaled(b, a, UPSTREAM_TOL, "FLASH with dropout")


@pytest.mark.parametrize("causal", [False, True])
def test_t5_buckets_match_upstream(causal):
    rel = torch.arange(-600, 600)
    for buckets, dist in ((32, 128), (16, 64), (8, 20)):
        ref = up.flash_pytorch.T5RelativePositionBias._relative_position_bucket(rel, causal, buckets, dist)
        ours = ft.T5RelativePositionBias._relative_position_bucket(rel, causal, buckets, dist)
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("dim", [8, 16, 32])
def test_rotary_matches_rotary_embedding_torch(dim):
    theirs, ours = rotary_up.RotaryEmbedding(dim=dim), ft.RotaryEmbedding(dim=dim)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    t = torch.randn(2, 300, 40)
    assert_close_scaled(ours.rotate_queries_or_keys(t), theirs.rotate_queries_or_keys(t), UPSTREAM_TOL, "rotated")


def test_autoregressive_wrapper_loss_matches_upstream():
    kw = dict(num_tokens=64, dim=32, depth=1, group_size=8, query_key_dim=16, causal=True)
    theirs, ours = twin(up.FLASHTransformer, ft.FLASHTransformer, **kw)
    x = torch.randint(0, 64, (3, 30))
    loss_t = up_wrapper.AutoregressiveWrapper(theirs)(x)
    loss_o = ft.AutoregressiveWrapper(ours)(x)
    assert_close_scaled(loss_o, loss_t, UPSTREAM_TOL, "loss")


def test_flash_accepts_rotary_embedding_torch_module():
    """Drop-in code that builds FLASH with rotary-embedding-torch's RotaryEmbedding keeps working."""
    kw = dict(dim=16, group_size=8, query_key_dim=24, causal=True)
    theirs = up.FLASH(**kw, rotary_pos_emb=rotary_up.RotaryEmbedding(dim=16))
    scramble(theirs)
    ours = ft.FLASH(**kw, rotary_pos_emb=rotary_up.RotaryEmbedding(dim=16))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    compare_forward_backward(theirs, ours, float_input(2, 21, 16))
