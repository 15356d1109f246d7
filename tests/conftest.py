"""Test set-up. Triton's CPU interpreter must be chosen before triton is imported, so it is set here, first,
where no CUDA device exists."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":
    # @triton.jit reads TRITON_INTERPRET when a kernel module is imported: import them now, so a test that sets
    # TRITON_INTERPRET=0 for a while (tests/test_backend.py) and happens to be the first importer cannot leave
    # compiled-mode kernels that the interpreter later refuses to call ("Cannot call @triton.jit'd outside of the
    # scope of a kernel": a failure that depended on which test files ran, and in which order)
    import contextlib

    with contextlib.suppress(Exception):  # no or a broken triton: the tests that need it say so themselves
        import flash_triton.mixed_chunk_attn.op  # noqa: F401
        import flash_triton.quad_attn.op  # noqa: F401


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poison_outputs(monkeypatch):
    """Every buffer the kernels write is filled with NaN first, so an element no program writes fails loudly."""
    jit = pytest.importorskip("flash_triton.common.jit")
    monkeypatch.setattr(jit, "POISON_OUTPUTS", True)


@pytest.fixture
def one_thread():
    """torch on one CPU thread during the test (micro models gain nothing from more, and stay fast on a busy
    machine)."""
    from tests._helpers import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(params=["short", "streaming"])
def kernel_path(request, monkeypatch):
    """The two kernel sets, forward and backward: "short" (windows of at most qa.SHORT_WINDOW tokens: the weights
    and score gradients of each tile computed once and stored) and "streaming" (longer windows: the scores
    recomputed tile by tile, nothing of size W x W stored), forced here for every window."""
    if request.param == "streaming":
        monkeypatch.setattr(pytest.importorskip("flash_triton.quad_attn.kernels"), "SHORT_WINDOW", 0)
    return request.param
