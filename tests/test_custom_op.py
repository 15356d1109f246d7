"""The named argument contract of the custom ops (flash_triton.common.custom_op.Contract): every argument by name,
tensors and scalars told apart by annotation, gradients returned in argument order, misnamed arguments refused."""

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from flash_triton.common.custom_op import Contract


def _toy(x: Tensor, mask: Tensor | None, scale: float, causal: bool, flag: bool = False) -> Tensor:
    return x


def test_contract_reads_names_tensors_and_scalars_from_the_signature():
    c = Contract(_toy)
    assert c.names == ("x", "mask", "scale", "causal", "flag")
    assert c.tensors == ("x", "mask")
    assert c.scalars == ("scale", "causal", "flag")


def test_bind_names_positional_and_keyword_arguments_with_defaults():
    c = Contract(_toy)
    x = torch.zeros(2)
    assert c.bind((x, None, 0.5), {"causal": True}) == dict(x=x, mask=None, scale=0.5, causal=True, flag=False)
    with pytest.raises(TypeError):
        c.bind((x,), {"unknown": 1})


def test_grads_are_in_argument_order_and_unknown_names_are_refused():
    c = Contract(_toy)
    g = torch.ones(2)
    assert c.grads(x=g) == (g, None, None, None, None)
    with pytest.raises(TypeError, match="unknown arguments"):
        c.grads(y=g)


def test_needs_grad_and_pick_by_name():
    c = Contract(_toy)
    ctx = SimpleNamespace(needs_input_grad=(True, False, False, False, False))
    assert c.needs_grad(ctx) == dict(x=True, mask=False, scale=False, causal=False, flag=False)
    picked = c.pick(dict(x=1, mask=2, scale=3, other=9), causal=True, flag=False)
    assert picked == dict(x=1, mask=2, scale=3, causal=True, flag=False)
    with pytest.raises(TypeError, match=r"missing arguments \['causal', 'flag'\]"):
        c.pick(dict(x=1, mask=2, scale=3))


def test_the_ops_contracts_agree_with_their_backward_ops():
    """What the forward saves and passes on by name is exactly what each backward op takes."""
    pytest.importorskip("triton")
    from flash_triton.mixed_chunk_attn import op as mca
    from flash_triton.quad_attn import op as qa

    assert qa.FWD.tensors == ("q", "k", "v", "gate", "key_mask", "t5_weight", "bias", "seed")
    # FLASH's backward also takes the state the groups read, a forward output that setup_context saves
    for mod, from_backward in (
        (qa, {"dy", "need_dt5", "need_dbias"}),
        (mca, {"dy", "d_final", "need_dt5", "read_state"}),
    ):
        # every backward argument comes from the forward's inputs or outputs or is supplied by the backward itself
        assert set(mod.BWD.names) - set(mod.FWD.names) == from_backward
        assert set(mod.BWD.scalars) - from_backward <= set(mod.FWD.scalars)
