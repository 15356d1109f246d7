"""The reference functions against literal per-token loops written from the math in DESIGN.md §1, and
``torch.autograd.gradcheck`` in float64."""

import math

import pytest
import torch

from flash_triton import reference as ref
from tests._helpers import assert_close_scaled


def act(x, laplace):
    if laplace:
        return 0.5 * (1 + math.erf((x - math.sqrt(0.5)) / (math.sqrt(1 / (4 * math.pi)) * math.sqrt(2))))
    return max(x, 0.0) ** 2


def bucket(rel, causal, num_buckets=32, max_distance=128):
    """Scalar T5 bucket of key_pos - query_pos, written from the formula."""
    n, ret = -rel, 0
    if not causal:
        num_buckets //= 2
        ret = num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(large, num_buckets - 1)


def loop_quad(q, k, v, *, scale, window, causal, mask, t5, t5_scale, laplace):
    """out[b, i] = sum over keys j in i's window of act(scale q_i.k_j + t5_scale t5[bucket]) v_j."""
    b_, n, _ = q.shape
    out = torch.zeros(b_, n, v.shape[-1], dtype=torch.float64)
    for b in range(b_):
        for i in range(n):
            start = (i // window) * window
            for j in range(start, min(start + window, n)):
                if (causal and j > i) or (mask is not None and not mask[b, j]):
                    continue
                s = scale * float(q[b, i] @ k[b, j])
                if t5 is not None:
                    s += t5_scale * float(t5[bucket(j - i, causal)])
                out[b, i] += act(s, laplace) * v[b, j].double()
    return out


def loop_linear(lin_q, lin_k, v, *, g, causal, reduce_group, mask):
    b_, n, _ = lin_q.shape
    out = torch.zeros(b_, n, v.shape[-1], dtype=torch.float64)
    for b in range(b_):
        for i in range(n):
            for j in range(n):
                if mask is not None and not mask[b, j]:
                    continue
                if causal:
                    use, div = j // g < i // g, g  # strictly earlier groups only (exclusive prefix)
                else:
                    use, div = reduce_group or j // g == i // g, n
                if use:
                    out[b, i] += float(lin_q[b, i] @ lin_k[b, j]) / div * v[b, j].double()
    return out


CASES = [
    pytest.param(dict(n=1, g=4, causal=True), id="n1"),
    pytest.param(dict(n=11, g=4, causal=True), id="n11-g4-causal"),
    pytest.param(dict(n=11, g=4, causal=False), id="n11-g4"),
    pytest.param(dict(n=12, g=4, causal=False, reduce_group=False), id="n12-g4-pergroup"),
    pytest.param(dict(n=9, g=16, causal=True, laplace=True), id="n-lt-g-laplace"),
    pytest.param(dict(n=10, g=3, causal=False, laplace=True, reduce_group=False), id="g3-laplace-pergroup"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_mixed_chunk_attn_matches_loops(case, masked):
    n, g, causal = case["n"], case["g"], case["causal"]
    laplace, reduce_group = case.get("laplace", False), case.get("reduce_group", True)
    b, s, e = 2, 5, 3
    qq, qk, lq, lk = (torch.randn(b, n, s) for _ in range(4))
    v, gate = torch.randn(b, n, e), torch.randn(b, n, e)
    t5 = torch.randn(32)
    mask = (torch.rand(b, n) > 0.3) if masked else None
    out = ref.mixed_chunk_attn(
        qq,
        qk,
        lq,
        lk,
        v,
        gate,
        group_size=g,
        causal=causal,
        key_mask=mask,
        t5_weight=t5,
        t5_scale=1.7,
        laplace=laplace,
        reduce_group=reduce_group,
    )
    quad = loop_quad(qq, qk, v, scale=1 / g, window=g, causal=causal, mask=mask, t5=t5, t5_scale=1.7, laplace=laplace)
    lin = loop_linear(lq, lk, v, g=g, causal=causal, reduce_group=reduce_group, mask=mask)
    assert_close_scaled(out.double(), gate.double() * (quad + lin), 1e-5, "mixed chunk attention")


@pytest.mark.parametrize("causal", [False, True])
def test_quad_attn_whole_sequence_with_bias_matches_loop(causal):
    b, n, s, e = 2, 13, 6, 4
    q, k, v = torch.randn(b, n, s), torch.randn(b, n, s), torch.randn(b, n, e)
    t5, bias = torch.randn(32), torch.randn(b, n, n)
    mask = torch.rand(b, n) > 0.3
    out = ref.quad_attn(
        q, k, v, scale=1 / n, causal=causal, key_mask=mask, t5_weight=t5, t5_scale=0.9, bias=bias, bias_scale=1 / n
    )
    expected = loop_quad(q, k, v, scale=1 / n, window=n, causal=causal, mask=mask, t5=t5, t5_scale=0.9, laplace=False)
    # the bias term, added literally
    for bi in range(b):
        for i in range(n):
            expected[bi, i] = 0
            for j in range(n):
                if (causal and j > i) or not mask[bi, j]:
                    continue
                sc = float(q[bi, i] @ k[bi, j]) / n + 0.9 * float(t5[bucket(j - i, causal)]) + float(bias[bi, i, j]) / n
                expected[bi, i] += act(sc, False) * v[bi, j].double()
    assert_close_scaled(out.double(), expected, 1e-5, "GAU attention")


@pytest.mark.parametrize("causal", [False, True])
def test_t5_bucket_matches_formula(causal):
    rel = torch.arange(-300, 301)
    got = ref.t5_relative_position_bucket(rel, causal=causal)
    assert got.tolist() == [bucket(r, causal) for r in rel.tolist()]
    assert got.min() >= 0 and got.max() <= 31


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 16), (32, 8), (2, 128), (8, 3)])
def test_t5_bucket_refuses_a_table_it_cannot_index(causal, num_buckets, max_distance):
    # below this rule the logarithmic branch divides by log(max_distance / max_exact) <= 0: indices off the table
    with pytest.raises(ValueError, match=f"num_buckets={num_buckets}, max_distance={max_distance}"):
        ref.t5_relative_position_bucket(
            torch.arange(-40, 41), causal=causal, num_buckets=num_buckets, max_distance=max_distance
        )
    with pytest.raises(ValueError, match="max_distance"):
        q, k, v = (torch.randn(1, 8, 4) for _ in range(3))
        t5 = torch.randn(num_buckets)
        ref.quad_attn(q, k, v, scale=1.0, causal=causal, t5_weight=t5, t5_max_distance=max_distance)


@pytest.mark.parametrize("causal", [False, True])
def test_t5_bucket_at_the_smallest_allowed_distance_stays_in_the_table(causal):
    got = ref.t5_relative_position_bucket(torch.arange(-300, 301), causal=causal, num_buckets=32, max_distance=17)
    assert got.min() >= 0 and got.max() <= 31


def test_rotary_rotates_pairs_by_position_angles():
    inv_freq = torch.tensor([1.0, 0.1])
    t = torch.randn(1, 3, 6)
    out = ref.apply_rotary(t, ref.rotary_angles(torch.arange(3.0), inv_freq))
    for pos in range(3):
        for pair, f in enumerate(inv_freq.tolist()):
            c, s = math.cos(pos * f), math.sin(pos * f)
            x0, x1 = t[0, pos, 2 * pair].item(), t[0, pos, 2 * pair + 1].item()
            assert out[0, pos, 2 * pair].item() == pytest.approx(x0 * c - x1 * s, abs=1e-6)
            assert out[0, pos, 2 * pair + 1].item() == pytest.approx(x1 * c + x0 * s, abs=1e-6)
    assert torch.equal(out[..., 4:], t[..., 4:])  # features past rot_dim pass through


def f64(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("laplace", [False, True], ids=["relu2", "laplace"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_gradcheck_mixed_chunk_attn(causal, laplace):
    b, n, s, e, g = 1, 7, 3, 2, 3
    mask = torch.tensor([[True, True, False, True, True, True, False]])
    t5 = f64(32)

    def fn(qq, qk, lq, lk, v, gate, t5):
        return ref.mixed_chunk_attn(
            qq,
            qk,
            lq,
            lk,
            v,
            gate,
            group_size=g,
            causal=causal,
            key_mask=mask,
            t5_weight=t5,
            t5_scale=0.7,
            laplace=laplace,
        )

    args = (f64(b, n, s), f64(b, n, s), f64(b, n, s), f64(b, n, s), f64(b, n, e), f64(b, n, e), t5)
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("reduce_group", [False, True])
def test_gradcheck_chunk_linear_attn_noncausal(reduce_group):
    fn = lambda q, k, v: ref.chunk_linear_attn(q, k, v, group_size=3, causal=False, reduce_group=reduce_group)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (f64(2, 8, 3), f64(2, 8, 3), f64(2, 8, 2)))


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_quad_attn_with_bias(causal):
    n = 6
    mask = torch.tensor([[True, False, True, True, True, True]])

    def fn(q, k, v, gate, t5, bias):
        return ref.quad_attn(
            q,
            k,
            v,
            gate,
            scale=1 / n,
            causal=causal,
            key_mask=mask,
            t5_weight=t5,
            t5_scale=2.0 / n,
            bias=bias,
            bias_scale=1 / n,
        )

    assert torch.autograd.gradcheck(fn, (f64(1, n, 4), f64(1, n, 4), f64(1, n, 3), f64(1, n, 3), f64(32), f64(n, n)))


def test_gradcheck_rotary():
    angles = ref.rotary_angles(torch.arange(5.0, dtype=torch.float64), torch.tensor([1.0, 0.3], dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda t: ref.apply_rotary(t, angles), (f64(2, 5, 7),))


def test_gradcheck_chunk_linear_attn_with_state():
    def fn(q, k, v, s0):
        out, final = ref.chunk_linear_attn(
            q, k, v, group_size=3, causal=True, initial_state=s0, output_final_state=True
        )
        return out, final

    assert torch.autograd.gradcheck(fn, (f64(2, 8, 3), f64(2, 8, 3), f64(2, 8, 2), f64(2, 3, 2)))
