"""Crash-safe, code-free checkpoints for the training program (``flash_triton.train``).

Layout of a run directory ``OUT``::

    OUT/checkpoints/step_0000100.pt   one file per save; the newest ``keep`` (by step) are kept
    OUT/checkpoint.pt                 the newest checkpoint: a hard link to its step file (a copy where the file
                                      system has no hard links)

Write protocol (:func:`save_checkpoint`): the step file is written to a hidden temporary file in the same directory,
flushed and fsynced, renamed over its final name, and the directory fsynced; only then is ``OUT/checkpoint.pt``
replaced the same way (link to a temporary name, rename, fsync), and only after that are older step files deleted.
A process killed at any moment therefore leaves every checkpoint name pointing at a complete file (a killed write
leaves at most a hidden ``.*.tmp`` file, which :func:`remove_temp_files` deletes on the next run), and
:func:`latest_checkpoint` returns the newest checkpoint that loads.

Files hold only tensors and plain Python values (dicts, lists, tuples, numbers, strings, ``None``) and are read with
``torch.load(weights_only=True)``: loading a checkpoint never runs code from it.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

CHECKPOINT_DIR = "checkpoints"
LATEST_NAME = "checkpoint.pt"
REQUIRED_KEYS = ("model", "step", "config")
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe (needs code to load) or not a training checkpoint."""


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and deletions in it survive a crash (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via a hidden temporary file in its directory (flushed, fsynced), ``os.replace``, fsync the dir.

    Readers see either the old file or the complete new one, never a partial file.

    >>> p = Path(tempfile.mkdtemp()) / "x.txt"; atomic_write(p, lambda f: f.write(b"hi")); p.read_bytes()
    b'hi'
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates the file private (0600)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete the hidden ``.*.tmp`` files that an interrupted :func:`atomic_write` may leave; return them."""
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


def step_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the step files in ``out/checkpoints``, newest (highest step) first."""
    directory = out / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found, reverse=True)


def one_line(err: BaseException, limit: int = 300) -> str:
    """The error's message on one line (whitespace collapsed; its type's name when empty), cut at ``limit``
    characters: for one-line error reports."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a training checkpoint onto the CPU with ``torch.load(weights_only=True)``.

    Raises :class:`CheckpointError` (a ``ValueError``) with a one-line message naming the file when it is missing,
    unreadable, truncated, would need code to load, or lacks the keys of a training checkpoint (or their types).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {str(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle that needs code (refused by weights_only), I/O error, ...
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: {type(err).__name__}: {one_line(err, 200)}"
        ) from err
    if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(obj, dict) or k not in obj]
        raise CheckpointError(
            f"{str(path)!r} is not a flash_triton training checkpoint (missing: {', '.join(missing)})"
        )
    step, config, data = obj["step"], obj["config"], obj.get("data")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or not isinstance(config, dict):
        raise CheckpointError(f"{str(path)!r} is malformed: step {step!r}, config of type {type(config).__name__}")
    if data is not None and not (isinstance(data, dict) and {"train_bytes", "val_bytes", "sha256"} <= data.keys()):
        raise CheckpointError(f"{str(path)!r} is malformed: data fingerprint {data!r}")
    return obj


@dataclass
class Found:
    """The newest loadable checkpoint of a run directory and the newer step files that failed to load."""

    path: Path
    checkpoint: dict[str, Any]
    unreadable: list[Path] = field(default_factory=list)


def latest_checkpoint(out: Path) -> Found | None:
    """The newest checkpoint of ``out`` that loads (step files newest first, then ``checkpoint.pt``), or ``None``.

    ``checkpoint.pt`` wins over the step files only when it holds a higher step (a run directory written before step
    files existed, or a copy that a crash left newer than its step file).
    """
    unreadable: list[Path] = []
    best: Found | None = None
    for _, path in step_checkpoints(out):
        try:
            best = Found(path, load_checkpoint(path), unreadable)
            break
        except CheckpointError:
            unreadable.append(path)
    latest = out / LATEST_NAME
    if latest.is_file() and not (best is not None and os.path.samefile(latest, best.path)):
        try:
            ckpt = load_checkpoint(latest)
        except CheckpointError:
            ckpt = None
        if ckpt is not None and (best is None or int(ckpt["step"]) > int(best.checkpoint["step"])):
            best = Found(latest, ckpt, unreadable)
    return best


def _link_latest(src: Path, latest: Path) -> None:
    """Point ``latest`` at ``src`` atomically: a hard link under a temporary name renamed over it (else a copy)."""
    tmp = latest.parent / f".{latest.name}.{os.getpid()}.link.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here: copy (atomically)
        with src.open("rb") as source:
            atomic_write(latest, lambda f: shutil.copyfileobj(source, f, 1 << 20))
        return
    try:
        os.replace(tmp, latest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(latest.parent)


def save_checkpoint(out: Path, state: dict[str, Any], step: int, keep: int) -> Path:
    """Write ``state`` as ``out/checkpoints/step_<step>.pt``, point ``out/checkpoint.pt`` at it, keep the newest
    ``keep`` step files; crash-safe at every point (see the module docstring). Returns the step file's path."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = out / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:07d}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    _link_latest(path, out / LATEST_NAME)
    stale = step_checkpoints(out)[keep:]
    for _, old in stale:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    if stale:
        fsync_dir(directory)
    return path


def to_cpu(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor detached and moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def capture_rng(device: torch.device) -> dict[str, Any]:
    """The random states that training draws from (Python, torch CPU, the CUDA device's), as plain values/tensors."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Restore states saved by :func:`capture_rng` (a CUDA state only onto a CUDA device)."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
