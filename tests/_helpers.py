"""Helpers shared by every test module, imported one way: ``from tests._helpers import ...``. Fixtures live in
``conftest.py`` (the interpreter switch, the seed, NaN-poisoned kernel outputs, one torch thread)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from flash_triton import train as train_mod

#: where the tests run: CUDA when present, else the CPU (the kernels under TRITON_INTERPRET=1)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
#: (dtype, kernel path) pairs of the kernel parity tests, for ``parametrize(..., indirect=["kernel_path"])`` (the
#: fixture in conftest.py): every dtype on the short-window kernels, and the streaming ones in fp32 and bf16 (fp16
#: compiles to bf16's half-precision code)
DTYPE_PATHS = [
    pytest.param(dtype, path, id=f"{DTYPE_IDS[dtype]}-{path}")
    for path in ("short", "streaming")
    for dtype in (torch.float32, torch.float16, torch.bfloat16)
    if not (path == "streaming" and dtype == torch.float16)
]
#: float32 parity with FLASH-pytorch 0.1.9, relative to the largest reference magnitude
UPSTREAM_TOL = 2e-5


# ------------------------------------------------------------------------------------------------------------------
# numerics: one tolerance rule, a gradient-collecting runner, scrambled weights, kernel launch counts


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
    flash-attention's tests use, so the tolerance follows the dtype's own rounding. The dtype-scaled form of
    :func:`assert_close_scaled`."""
    assert ours.dtype == same_dtype_ref.dtype, what
    assert torch.isfinite(ours).all(), f"{what}: non-finite values (an unwritten element?)"
    scale = max(1.0, ref64.abs().max().item())
    torch_err = (same_dtype_ref.double() - ref64).abs().max().item()
    tol = (2 * torch_err + ATOL[dtype] * scale) / scale
    assert_close_scaled(ours.double(), ref64, tol, f"{what} (torch {dtype}: {torch_err:.3e})")


def scramble(model: torch.nn.Module, std: float = 0.5) -> None:
    """Random weights everywhere but rotary frequencies (the default init leaves gamma ~ 0.02 and beta = 0,
    which would hide mistakes)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("freqs"):
                p.copy_(torch.randn_like(p) * std)


def strided(t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` in a view that is non-contiguous in every dimension (dimensions stored in reverse order,
    with a gap between elements of the innermost one); differentiable with respect to ``t``."""
    rev = tuple(range(t.dim() - 1, -1, -1))
    big = torch.zeros(*t.shape[::-1], 2, dtype=t.dtype, device=t.device)
    big[..., 0] = t.permute(rev)
    return big[..., 0].permute(rev)


class LaunchCounter:
    """Stands in for a jitted Triton kernel and counts its launches (``kernel[grid](...)``)."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def count_launches(monkeypatch, module, *names: str) -> dict[str, LaunchCounter]:
    """Replace the named kernels of ``module`` with launch counters (undone after the test), keyed by name."""
    counters = {name: LaunchCounter(getattr(module, name)) for name in names}
    for name, counter in counters.items():
        monkeypatch.setattr(module, name, counter)
    return counters


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


def output_and_grads(
    fn: Callable,
    tensors: dict[str, torch.Tensor | None],
    grad_out: torch.Tensor,
    *,
    positional: int,
    dtype: torch.dtype | None = None,
    **kw: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``fn`` on fresh leaf copies of ``tensors`` (cast to ``dtype`` when given, as ``model.to(dtype)`` would; None
    passed as None), the first ``positional`` of them positionally and the rest by name, plus ``kw``; backward with
    ``grad_out``. Returns the detached output and the gradient of every tensor input by name."""
    leaves = {
        name: t.detach().to(dtype or t.dtype).clone().requires_grad_() for name, t in tensors.items() if t is not None
    }
    names = list(tensors)
    args = [leaves.get(name) for name in names[:positional]]
    out = fn(*args, **{name: leaves.get(name) for name in names[positional:]}, **kw)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), {name: t.grad for name, t in leaves.items()}


# ------------------------------------------------------------------------------------------------------------------
# the training program


PROG = train_mod.PROG

#: A model and run small enough that 30 steps take about a second on one CPU core.
MICRO = train_mod.TrainConfig(
    dim=64,
    depth=1,
    group_size=16,
    query_key_dim=16,
    seq_len=32,
    batch_size=8,
    lr=5e-3,
    steps=30,
    eval_every=10,
    eval_windows=8,
    eval_batch_size=8,
    log_every=5,
    sample_prompt_len=16,
    sample_len=8,
)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one CPU thread inside the block (bit-for-bit comparable with ``OMP_NUM_THREADS=1`` children, and
    fast for micro models on a busy machine); the previous count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(enabled)`` inside the block (the kernels' deterministic backward pass, or
    the atomic one); the previous setting, warn-only included, restored after."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def config_flags(cfg: train_mod.TrainConfig = MICRO, **changes: Any) -> list[str]:
    """Command-line flags that set every field of ``cfg`` (with ``changes`` applied): no preset needed."""
    cfg = dataclasses.replace(cfg, **changes)
    flags: list[str] = []
    for f in dataclasses.fields(cfg):
        name, value = f.name.replace("_", "-"), getattr(cfg, f.name)
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags += [f"--{name}", str(value)]
    return flags


def write_text_corpus(path: Path, lines: int = 2000) -> Path:
    """About 40 kB of seeded, repetitive English-like text: easy to learn quickly."""
    rng = random.Random(1)
    subjects, verbs, objects = ["the cat", "a dog", "my friend"], ["sees", "likes", "eats"], ["fish.", "the ball."]
    path.write_text(
        "".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}\n" for _ in range(lines))
    )
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_one_error_line(err: str, *fragments: str) -> None:
    """``err`` is exactly one line ``flash-triton-train: error: ...`` containing every fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert lines[0].startswith(f"{PROG}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two checkpoints hold bit-identical model parameters and optimizer state at the same step."""
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"parameter {name} differs"
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for key, value in state_a[index].items():
            assert torch.equal(value, state_b[index][key]), f"optimizer state {index}.{key} differs"
    assert a["sampler"] == b["sampler"]


def read_metrics(out: Path) -> list[dict[str, float]]:
    """Every record of ``out/metrics.jsonl`` (each line must parse)."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
