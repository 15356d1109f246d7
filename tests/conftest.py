"""Test set-up. Triton's CPU interpreter must be chosen before triton is imported, so it is set here, first,
where no CUDA device exists."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    """max |actual - expected| <= tol * max(1, max |expected|), with shapes and dtypes equal."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert torch.isfinite(expected).all(), f"{what}: non-finite reference"
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    bound = tol * max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
    assert err <= bound, f"{what}: max abs error {err:.3e} > {bound:.3e}"


# absolute floor of the dtype-scaled bound below, per dtype (relative to the reference's magnitude)
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def close_to_reference(ours, same_dtype_ref, ref64, dtype, what):
    """|ours - ref64| <= 2 |torch in the same dtype - ref64| + atol (scaled by the reference's magnitude): the bound
    flash-attention's tests use, so the tolerance follows the dtype's own rounding."""
    assert ours.dtype == same_dtype_ref.dtype, what
    assert torch.isfinite(ours).all(), f"{what}: non-finite values (an unwritten element?)"
    scale = max(1.0, ref64.abs().max().item())
    err = (ours.double() - ref64).abs().max().item()
    torch_err = (same_dtype_ref.double() - ref64).abs().max().item()
    bound = 2 * torch_err + ATOL[dtype] * scale
    assert err <= bound, f"{what}: error {err:.3e} > bound {bound:.3e} (torch {dtype}: {torch_err:.3e})"


def scramble(model: torch.nn.Module, std: float = 0.5) -> None:
    """Random weights everywhere but rotary frequencies (the default init leaves gamma ~ 0.02 and beta = 0,
    which would hide mistakes)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("freqs"):
                p.copy_(torch.randn_like(p) * std)


class LaunchCounter:
    """Stands in for a jitted Triton kernel and counts its launches (``kernel[grid](...)``)."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def layer_in_dtypes(make, x: torch.Tensor, dtype: torch.dtype, std: float = 0.5):
    """A layer's output, input gradient and parameter gradients in ``dtype`` on the kernels and on the reference,
    and in float64 on the reference, all with the same scrambled weights: ``(results, names)`` with results keyed
    "triton", "reference", "fp64", each ``[output, grad of x, grad of every parameter...]``."""
    base = make("reference")
    scramble(base, std)
    grad_seed = torch.Generator().manual_seed(1)
    results, grad_out = {}, None
    for key, backend, dt in (
        ("triton", "triton", dtype),
        ("reference", "reference", dtype),
        ("fp64", "reference", torch.float64),
    ):
        model = make(backend)
        model.load_state_dict(base.state_dict())
        model = model.to(x.device, dt)
        xi = x.detach().to(dt).requires_grad_()
        out = model(xi)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=grad_seed).to(x.device)
        grads = torch.autograd.grad(out, [xi, *model.parameters()], grad_out.to(dt), allow_unused=True)
        results[key] = [out.detach(), *grads]
    names = ["output", "grad of x", *(f"grad of {name}" for name, _ in base.named_parameters())]
    return results, names
