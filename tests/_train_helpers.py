"""Helpers shared by the training-program tests (``test_train.py``, ``test_train_process.py``)."""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from flash_triton import train as train_mod

PROG = train_mod.PROG

#: A model and run small enough that 30 steps take about a second on one CPU core.
MICRO = train_mod.TrainConfig(
    dim=64, depth=1, group_size=16, query_key_dim=16, seq_len=32, batch_size=8, lr=5e-3, steps=30, eval_every=10,
    eval_windows=8, eval_batch_size=8, log_every=5, sample_prompt_len=16, sample_len=8,
)  # fmt: skip


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
