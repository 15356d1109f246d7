"""Incremental decoding (issue 6): prefill + cached steps equal the full-sequence forward at every position; the
cached generate() samples what upstream's algorithm samples; caches reorder and move; bad caches are refused."""

import copy
import dataclasses
import pickle

import pytest
import torch

import flash_triton as ft
from flash_triton import reference

G = 8


def make_model(seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    cfg = dict(num_tokens=61, dim=32, depth=2, group_size=G, query_key_dim=16, causal=True)
    cfg.update(kw)
    model = ft.FLASHTransformer(**cfg).eval().to(dtype)
    with torch.no_grad():  # scramble the parameters that start at constants (gamma/beta, norms, T5 table)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def decode(model, tokens, prompt_len, steps):
    """Logits of ``tokens`` by a prefill of ``prompt_len`` tokens, then chunks of the sizes in ``steps`` (cycled)."""
    logits, cache = model(tokens[:, :prompt_len], return_cache=True)
    outs, pos, i = [logits], prompt_len, 0
    while pos < tokens.shape[1]:
        m = min(steps[i % len(steps)], tokens.shape[1] - pos)
        logits, cache = model(tokens[:, pos : pos + m], cache=cache, return_cache=True)
        assert cache.position == pos + m
        outs.append(logits)
        pos, i = pos + m, i + 1
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("shift_tokens", [True, False])
@pytest.mark.parametrize("laplace", [False, True])
def test_teacher_forced_steps_equal_full_forward_for_every_prompt_residue(shift_tokens, laplace):
    model = make_model(shift_tokens=shift_tokens, laplace_attn_fn=laplace, backend="reference")
    tokens = torch.randint(0, 61, (2, 3 * G + 5))
    with torch.no_grad():
        full = model(tokens)
        for prompt_len in range(1, 2 * G + 1):  # every residue modulo g, below and above one group
            stepped, cache = decode(model, tokens, prompt_len, [1])
            torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4, msg=f"prompt {prompt_len}")
            assert cache.position == tokens.shape[1]
            for layer in cache.layers:  # the buffers hold the incomplete group only
                assert layer.quad_k.shape[1] == layer.v.shape[1] == tokens.shape[1] % G
                assert layer.state.dtype == torch.float32


@pytest.mark.parametrize("steps", [[2, 3], [G - 1, 1], [G, 1], [2 * G + 3]])
def test_multi_token_steps_across_group_boundaries(steps):
    """Steps of several tokens, spanning group boundaries, shorter and longer than a group (both step paths)."""
    model = make_model(seed=1, backend="reference")
    tokens = torch.randint(0, 61, (3, 5 * G + 1))
    with torch.no_grad():
        full = model(tokens)
        for prompt_len in (1, G - 1, G, G + 3):
            stepped, _ = decode(model, tokens, prompt_len, steps)
            torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4)


def test_long_prompt_prefill_then_steps():
    """A prompt of many groups goes through the op in one call; the state is the sum of all completed groups."""
    model = make_model(seed=2, depth=1, backend="reference")
    tokens = torch.randint(0, 61, (1, 12 * G + 3))
    with torch.no_grad():
        full = model(tokens)
        stepped, _ = decode(model, tokens, 11 * G + 6, [1])
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4)


def test_decoding_on_the_kernels_equals_the_reference_forward():
    """backend="triton" (the interpreter on CPU): prefill and steps run the fused op over the window."""
    model = make_model(seed=3, backend="triton")
    tokens = torch.randint(0, 61, (2, 2 * G + 4))
    with torch.no_grad():
        full = model(tokens)
        ref_model = make_model(seed=3, backend="reference")
        torch.testing.assert_close(ref_model(tokens), full, rtol=1e-4, atol=1e-4)
        stepped, _ = decode(model, tokens, G + 3, [1, 4])
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4)


def test_flash_layer_cache_with_rotary_embedding_torch():
    """The layer API on its own, with rotary-embedding-torch's module (positions continue through ``offset``)."""
    rotary_embedding_torch = pytest.importorskip("rotary_embedding_torch")
    torch.manual_seed(4)
    layer = ft.FLASH(
        dim=24,
        group_size=G,
        query_key_dim=16,
        causal=True,
        shift_tokens=True,
        backend="reference",
        rotary_pos_emb=rotary_embedding_torch.RotaryEmbedding(dim=8),
    ).eval()
    x = torch.randn(2, 3 * G + 2, 24)
    with torch.no_grad():
        full = layer(x)
        out, cache = layer(x[:, :5], return_cache=True)
        outs = [out]
        for t in range(5, x.shape[1]):
            out, cache = layer(x[:, t : t + 1], cache=cache, return_cache=True)
            outs.append(out)
    assert isinstance(cache, ft.FLASHLayerCache) and cache.position == x.shape[1]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-4, atol=1e-4)


def test_step_op_equals_the_window_rows_of_the_full_op():
    torch.manual_seed(5)
    b, L, m, s, e = 2, 2 * G + 3, 5, 6, 7
    qq, qk, lq, lk = (torch.randn(b, L, s, dtype=torch.float64) for _ in range(4))
    v, gate = torch.randn(b, L, e, dtype=torch.float64), torch.randn(b, L, e, dtype=torch.float64)
    state = torch.randn(b, s, e, dtype=torch.float64)
    t5 = dict(t5_weight=torch.randn(32, dtype=torch.float64), t5_scale=0.7, t5_max_distance=128)
    full = reference.mixed_chunk_attn(qq, qk, lq, lk, v, gate, group_size=G, causal=True, initial_state=state, **t5)
    step = reference.mixed_chunk_attn_step(qq[:, -m:], lq[:, -m:], gate[:, -m:], qk, lk, v, state, group_size=G, **t5)
    torch.testing.assert_close(step, full[:, -m:], rtol=1e-10, atol=1e-10)
    op = ft.ops.mixed_chunk_attn_step(
        qq[:, -m:], lq[:, -m:], gate[:, -m:], qk, lk, v, state, group_size=4, backend="reference", **t5
    )  # m >= g: the op over the window
    ref4 = reference.mixed_chunk_attn(qq, qk, lq, lk, v, gate, group_size=4, causal=True, initial_state=state, **t5)
    torch.testing.assert_close(op, ref4[:, -m:], rtol=1e-10, atol=1e-10)


def test_cached_generate_samples_what_the_upstream_algorithm_samples():
    """Same seed, same samples (float64, so the two algorithms' probabilities agree far below sampling noise)."""
    model = ft.AutoregressiveWrapper(make_model(seed=6, dtype=torch.float64, backend="reference"))
    prompt = torch.randint(0, 61, (3, 5))
    torch.manual_seed(7)
    cached = model.generate(prompt, 2 * G + 3, temperature=0.8, filter_thres=0.5, use_cache=True)
    torch.manual_seed(7)
    upstream = model.generate(prompt, 2 * G + 3, temperature=0.8, filter_thres=0.5, use_cache=False)
    torch.manual_seed(7)
    default = model.generate(prompt, 2 * G + 3, temperature=0.8, filter_thres=0.5)
    assert cached.shape == (3, 2 * G + 3)
    assert torch.equal(cached, upstream) and torch.equal(cached, default)


def test_cached_generate_with_eos():
    model = ft.AutoregressiveWrapper(make_model(seed=8, backend="reference"), pad_value=0)
    prompt = torch.randint(1, 61, (2, 3))
    torch.manual_seed(9)
    free = model.generate(prompt, 40, filter_thres=0.0)
    eos = int(free[0, 4])  # a token row 0 produces at step 5
    torch.manual_seed(9)
    out = model.generate(prompt, 40, eos_token=eos, filter_thres=0.0, use_cache=True)
    first = (out[0] == eos).nonzero()[0, 0]
    assert first <= 4 and (out[0, first + 1 :] == 0).all()


def test_cache_reorder_and_move():
    model = make_model(seed=10, backend="reference")
    tokens = torch.randint(0, 61, (3, 2 * G + 2))
    with torch.no_grad():
        _, cache = model(tokens[:, : G + 3], return_cache=True)
        assert cache.batch_size == 3 and cache.dtype == torch.float32 and cache.device.type == "cpu"
        order = torch.tensor([2, 0])
        swapped = cache.reorder(order)
        assert swapped.batch_size == 2
        logits, _ = model(tokens[order, G + 3 :], cache=swapped.to("cpu"), return_cache=True)
        torch.testing.assert_close(logits, model(tokens[order])[:, G + 3 :], rtol=1e-4, atol=1e-4)
    assert cache.batch_size == 3  # reorder returns a new cache


def test_bad_caches_are_refused_before_any_compute():
    model = make_model(seed=11, backend="reference")
    other = make_model(seed=11, backend="reference")
    tokens = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        _, cache = model(tokens, return_cache=True)
    calls = []
    model.token_emb.register_forward_pre_hook(lambda *a: calls.append(1))
    one = tokens[:, :1]
    bad = [
        (dict(cache=cache), other, one, "another module"),
        (dict(cache=cache), model, tokens[:1, :1], "batch size 2"),
        (dict(cache=dataclasses.replace(cache, dtype=torch.float64)), model, one, "dtype"),
        (dict(cache=cache.to("meta")), model, one, r"cache.to\(device\)"),
        (dict(cache=cache, mask=torch.ones(2, 1, dtype=torch.bool)), model, one, "mask"),
        (dict(cache=cache.layers[0]), model, one, "FLASHCache"),
        (dict(cache=dataclasses.replace(cache, position=ft.MAX_SEQ_LEN)), model, one, "limit"),
        (dict(return_cache=True, cu_seqlens=torch.tensor([0, 4, 10])), model, tokens[:1], "cu_seqlens"),
    ]
    for kwargs, net, x, message in bad:
        with pytest.raises((ValueError, TypeError), match=message):
            net(x, **kwargs)
    assert not calls

    noncausal = make_model(seed=11, causal=False, backend="reference")
    with pytest.raises(ValueError, match="causal"):
        noncausal(tokens, return_cache=True)
    dropout = make_model(seed=11, attn_dropout=0.1, backend="reference").train()
    with pytest.raises(ValueError, match="eval"):
        dropout(tokens, return_cache=True)
    with pytest.raises(ValueError, match="causal"):
        ft.AutoregressiveWrapper(noncausal).generate(tokens, 2, use_cache=True)
    with pytest.raises(ValueError, match="extra forward arguments"):
        ft.AutoregressiveWrapper(model).generate(tokens, 2, use_cache=True, mask=torch.ones(2, 10, dtype=torch.bool))
    assert not noncausal.supports_cache and model.supports_cache


def _edit_in_place(model):
    with torch.no_grad():
        next(model.layers[0].parameters()).add_(0.1)


def _optimizer_step(model):
    model(torch.randint(0, 61, (1, 4))).square().mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.load_state_dict(make_model(seed=13, backend="reference").state_dict()),
        _edit_in_place,
        _optimizer_step,
        lambda m: m.load_state_dict(m.state_dict()),  # the same values: refused all the same (the check is cheap)
    ],
    ids=["load_state_dict", "in-place", "optimizer-step", "load-same"],
)
def test_a_cache_is_refused_once_the_weights_change(change):
    """A cache made before load_state_dict, an in-place edit or an optimizer step is refused with a clear error
    (once a cached step silently differed from the full forward by 2.5); a fresh cache works."""
    model = make_model(seed=12, backend="reference")
    tokens = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        _, cache = model(tokens, return_cache=True)
        _, layer_cache = model.layers[0](torch.randn(2, 10, 32), return_cache=True)
    change(model)
    with torch.no_grad(), pytest.raises(ValueError, match="made with other weights.*load_state_dict"):
        model(tokens[:, :1], cache=cache)
    with torch.no_grad(), pytest.raises(ValueError, match="made with other weights"):
        model.layers[0](torch.randn(2, 1, 32), cache=layer_cache)
    with torch.no_grad():
        _, fresh = model(tokens, return_cache=True)
        logits, _ = model(tokens[:, :1], cache=fresh, return_cache=True)
        full = model(torch.cat([tokens, tokens[:, :1]], dim=1))[:, -1:]
    torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"])
def test_a_copy_of_the_module_refuses_the_original_cache(copier):
    """A deepcopy or unpickled copy carries the original's id but its own weights, which may change: refused (once
    accepted, and off by 0.68 after the copy's weights changed)."""
    model = make_model(seed=14, backend="reference")
    tokens = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        _, cache = model(tokens, return_cache=True)
        twin = copier(model)
        with pytest.raises(ValueError, match="copy of the module"):
            twin(tokens[:, :1], cache=cache)
        model(tokens[:, :1], cache=cache)  # the original still takes it


def test_non_causal_generate_keeps_the_upstream_algorithm():
    noncausal = ft.AutoregressiveWrapper(make_model(seed=12, causal=False, backend="reference"))
    assert noncausal.generate(torch.randint(0, 61, (1, 4)), 3).shape == (1, 3)
