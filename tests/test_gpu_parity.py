"""bf16 parity of the kernels with the reference at the production shapes, on a GPU only (``benchmarks/gpu_check.sh``
runs this file first): FLASH's core (query/key 128, value 1024, groups of 256, causal, T5 bias) at n 8192 (batch 2)
and n 2^20 (batch 1: the long-context path, 4,096 groups), and GAU's core (whole sequence, causal) at n 8192. The
output and every input's gradient on the kernels are compared with the reference in float32 on the same bf16
inputs, within twice the reference's own bf16 error plus the bf16 floor (the rule of tests/_helpers.py)."""

import pytest
import torch

from flash_triton import reference as ref
from tests._helpers import ATOL, output_and_grads

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="production shapes: a CUDA device only"),
]
S, E, G = 128, 1024, 256


def _inputs(widths: dict, b: int, n: int, seed: int = 0) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    out = {
        name: torch.randn(b, n, w, device="cuda", generator=gen) * (0.5 if name == "v" else 1.0)
        for name, w in widths.items()
    }
    out["t5_weight"] = torch.randn(32, device="cuda", generator=gen)
    return out


def _check(name: str, ours: torch.Tensor, same_dtype: torch.Tensor, exact: torch.Tensor) -> None:
    """|ours - exact| <= 2 |torch bf16 - exact| + bf16 floor, relative to the exact value's magnitude."""
    assert ours.dtype == torch.bfloat16 and torch.isfinite(ours).all(), name
    scale = max(1.0, exact.abs().max().item())
    bound = 2 * (same_dtype.float() - exact).abs().max().item() + ATOL[torch.bfloat16] * scale
    err = (ours.float() - exact).abs().max().item()
    assert err <= bound, f"{name}: max error {err:.3e} > {bound:.3e}"


def _parity(fn_ours, fn_ref, tensors: dict, positional: int, e: int, **kw) -> None:
    b, n = next(iter(tensors.values())).shape[:2]
    grad = torch.randn(b, n, e, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    ours = output_and_grads(fn_ours, tensors, grad, positional=positional, dtype=torch.bfloat16, **kw)
    same = output_and_grads(fn_ref, tensors, grad, positional=positional, dtype=torch.bfloat16, **kw)
    exact = output_and_grads(
        fn_ref,
        {k: t.to(torch.bfloat16).float() for k, t in tensors.items()},
        grad.to(torch.bfloat16).float(),
        positional=positional,
        **kw,
    )
    _check("output", ours[0], same[0], exact[0])
    for name in exact[1]:
        _check(f"grad of {name}", ours[1][name], same[1][name], exact[1][name])
    torch.cuda.empty_cache()


@pytest.mark.parametrize("b, n", [(2, 8192), (1, 2**20)], ids=["n8192", "n1M"])
def test_flash_core_bf16_at_production_shapes(b, n):
    from flash_triton.mixed_chunk_attn import op

    tensors = _inputs(dict(quad_q=S, quad_k=S, lin_q=S, lin_k=S, v=E, gate=E), b, n)
    kw = dict(group_size=G, causal=True, t5_scale=1.0)
    _parity(op.mixed_chunk_attn_triton, ref.mixed_chunk_attn, tensors, 6, E, **kw)


def test_gau_core_bf16_at_production_shape():
    from flash_triton.quad_attn import op

    n = 8192
    tensors = _inputs(dict(q=S, k=S, v=E, gate=E), 1, n)
    kw = dict(scale=1.0 / n, window=None, causal=True, t5_scale=1.0 / n)
    _parity(op.quad_attn_triton, ref.quad_attn, tensors, 4, E, **kw)
