"""The gate's backward kernel (``dy = d_out * gate``, ``dgate = d_out * o_pre`` in one pass) against torch's
element-wise products: bitwise, since both round each product once from float32 to nearest even (bfloat16 too
under the CPU interpreter, whose own cast truncates: ``flash_triton.common.jit.rounded``), on strided and
broadcast inputs. CUDA when present, else the CPU interpreter."""

import pytest
import torch

from tests._helpers import DEVICE, DTYPE_IDS

pytest.importorskip("triton")
gate_mod = pytest.importorskip("flash_triton.common.gate")

pytestmark = pytest.mark.usefixtures("poison_outputs")


@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=list(DTYPE_IDS.values()))
@pytest.mark.parametrize("b, n, e", [(2, 7, 33), (1, 40, 16), (3, 1, 300)], ids=["odd", "one-block", "two-e-blocks"])
def test_gate_backward_is_torchs_products(b, n, e, dtype):
    """The gate as a view of a wider projection (row stride 2e, as GAU's chunked hidden), o_pre contiguous, d_out
    both contiguous and broadcast (the gradient of ``out.sum()``): results equal torch's to the bit, in torch's
    result dtype; without o_pre only dy."""
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(b, n, 2 * e, generator=gen).to(DEVICE, dtype)
    gate = hidden[..., e:]  # non-contiguous rows
    o_pre = torch.randn(b, n, e, generator=gen).to(DEVICE, dtype)
    for d_out in (
        torch.randn(b, n, e, generator=gen).to(DEVICE, dtype),
        torch.ones((), device=DEVICE, dtype=dtype).expand(b, n, e),
    ):
        dy, dgate = gate_mod.gate_backward(d_out, gate, o_pre)
        assert dy.dtype == dgate.dtype == dtype and dy.is_contiguous() and dgate.is_contiguous()
        assert torch.equal(dy, d_out * gate) and torch.equal(dgate, d_out * o_pre)
        dy_only, none = gate_mod.gate_backward(d_out, gate, None)
        assert none is None and torch.equal(dy_only, dy)
        dy_op, dgate_op = gate_mod.gate_backward_op(d_out, gate, o_pre)
        assert torch.equal(dy_op, dy) and torch.equal(dgate_op, dgate)
        _, empty = gate_mod.gate_backward_op(d_out, gate, None)
        assert empty.numel() == 0


def test_gate_backward_rejects_unequal_shapes_and_handles_empty():
    d_out = torch.randn(2, 5, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"gate \(2, 5, 7\)"):
        gate_mod.gate_backward(d_out, torch.randn(2, 5, 7, device=DEVICE), None)
    empty = torch.randn(2, 0, 8, device=DEVICE)
    dy, dgate = gate_mod.gate_backward(empty, empty, empty)
    assert dy.shape == dgate.shape == (2, 0, 8)
