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
