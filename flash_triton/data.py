"""Byte-level corpora, batch sampling and validation windows for the training program.

A corpus is a pair of ``uint8`` tensors (train and validation split) of raw bytes; every byte is a token, so the
vocabulary is 256 and a loss in nats converts to bits per byte by dividing by ``ln 2``.

Splits:

- **enwik8**: a file whose name is ``enwik8`` (optionally with further suffixes and/or ``.gz``) holding at least
  95,000,000 bytes (after decompression) is split as upstream FLASH-pytorch does: the first 90,000,000 bytes train,
  the next 5,000,000 validate, anything after that is unused.
- **any other file** (``.gz`` is decompressed, detected by its magic bytes): the last 5% (``VAL_FRACTION``) validates,
  the rest trains.
- **no file**: the running Python's standard-library ``.py`` sources (see :func:`stdlib_corpus`), capped at
  ``STDLIB_CAP_BYTES`` (4 MB) so that start-up is fast, then split like any other file.

Training batches (:class:`WindowSampler`) are counter-based: batch ``i`` of process ``rank`` depends only on
``(seed, rank, i)``, so a run resumes at the exact data position from one integer, and each process of a
multi-process run reads its own stream. Validation (:func:`validation_windows`) uses a fixed set of windows, the same
in every run with the same corpus, ``seq_len`` and window count, so that bits per byte are comparable across runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ENWIK8_TRAIN_BYTES = 90_000_000
ENWIK8_VAL_BYTES = 5_000_000
VAL_FRACTION = 0.05
STDLIB_CAP_BYTES = 4_000_000
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests"})
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Corpus:
    """A byte corpus split into train and validation parts (both 1-D ``torch.uint8`` tensors)."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    split: str

    def check_fits(self, seq_len: int) -> None:
        """Raise ``ValueError`` unless both splits hold at least one window of ``seq_len + 1`` bytes.

        >>> Corpus("x", torch.zeros(10, dtype=torch.uint8), torch.zeros(10, dtype=torch.uint8), "").check_fits(9)
        """
        need = seq_len + 1
        if len(self.train) < need or len(self.val) < need:
            raise ValueError(
                f"corpus {self.name} is too short: train split {len(self.train):,} bytes, validation split "
                f"{len(self.val):,} bytes ({self.split}); each needs at least seq_len + 1 = {need:,} bytes"
            )


def _to_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the bytes of ``path``, gunzipped when the file starts with the gzip magic bytes.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for a directory, an unreadable file or a
    corrupt gzip stream; every message names the path.

    >>> import tempfile, gzip; p = Path(tempfile.mkdtemp()) / "a.gz"; _ = p.write_bytes(gzip.compress(b"hi"))
    >>> read_bytes(p)
    b'hi'
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"data path is a directory, not a file: {str(path)!r}")
    try:
        with path.open("rb") as f:
            raw = _read_capped(f, path, "")
    except OSError as err:
        raise ValueError(f"cannot read data file {str(path)!r}: {err.strerror or err}") from err
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            return _read_capped(f, path, " once decompressed")
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot decompress gzip data file {str(path)!r} ({len(raw):,} bytes): {err}") from err


# the most data bytes read (or decompressed): a device such as /dev/zero, or a gzip bomb, is refused instead of
# filling the memory
MAX_DATA_BYTES = 2**32


def _read_capped(f, path: Path, what: str) -> bytes:
    data = f.read(MAX_DATA_BYTES + 1)
    if len(data) > MAX_DATA_BYTES:
        raise ValueError(f"data file {str(path)!r} is larger than {MAX_DATA_BYTES:,} bytes{what} (the limit)")
    return data


def is_enwik8_name(path: str | os.PathLike[str]) -> bool:
    """Whether a file name looks like enwik8 (``enwik8``, ``enwik8.gz``, ``enwik8.txt``; case-insensitive).

    >>> is_enwik8_name("data/enwik8.gz"), is_enwik8_name("enwik9"), is_enwik8_name("my_enwik8")
    (True, False, False)
    """
    return Path(path).name.lower().split(".")[0] == "enwik8"


def split_tail(data: bytes, val_fraction: float = VAL_FRACTION) -> tuple[bytes, bytes]:
    """Split ``data`` into (train, validation) with the last ``val_fraction`` (rounded up) as validation.

    >>> split_tail(b"0123456789", 0.2)
    (b'01234567', b'89')
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = math.ceil(len(data) * val_fraction)
    return data[: len(data) - n_val], data[len(data) - n_val :]


def stdlib_corpus(cap: int = STDLIB_CAP_BYTES) -> bytes:
    """Concatenate the standard library's ``.py`` files of the running Python, at most ``cap`` bytes.

    The walk is deterministic: top-down from ``sysconfig.get_paths()['stdlib']``, files of a directory in sorted
    order before its sorted subdirectories; ``site-packages``, ``dist-packages``, ``__pycache__``, ``test`` and
    ``tests`` directories are skipped, as is any file that cannot be read. Files are joined with a newline and the
    result is cut at ``cap`` bytes.

    >>> len(stdlib_corpus(cap=1000))
    1000
    """
    root = sysconfig.get_paths()["stdlib"]
    parts: list[bytes] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                content = Path(dirpath, name).read_bytes()
            except OSError:
                continue
            parts.append(content + b"\n")
            total += len(content) + 1
            if total >= cap:
                return b"".join(parts)[:cap]
    return b"".join(parts)


def load_corpus(
    path: str | os.PathLike[str] | None = None,
    *,
    stdlib_cap: int = STDLIB_CAP_BYTES,
    val_fraction: float = VAL_FRACTION,
    enwik8_train_bytes: int = ENWIK8_TRAIN_BYTES,
    enwik8_val_bytes: int = ENWIK8_VAL_BYTES,
) -> Corpus:
    """Load a byte corpus and split it (see the module docstring for the rules).

    >>> corpus = load_corpus(stdlib_cap=20_000)
    >>> len(corpus.train) + len(corpus.val), corpus.train.dtype
    (20000, torch.uint8)
    """
    if path is None:
        data = stdlib_corpus(stdlib_cap)
        if not data:
            raise ValueError(f"no readable .py files under {sysconfig.get_paths()['stdlib']!r}")
        train, val = split_tail(data, val_fraction)
        name = f"python {sysconfig.get_python_version()} stdlib sources (first {len(data):,} bytes)"
        return Corpus(name, _to_tensor(train), _to_tensor(val), f"last {val_fraction:.0%} validation")
    data = read_bytes(path)
    if is_enwik8_name(path) and len(data) >= enwik8_train_bytes + enwik8_val_bytes:
        train = data[:enwik8_train_bytes]
        val = data[enwik8_train_bytes : enwik8_train_bytes + enwik8_val_bytes]
        split = f"enwik8 split: first {enwik8_train_bytes:,} train, next {enwik8_val_bytes:,} validation"
    else:
        train, val = split_tail(data, val_fraction)
        split = f"last {val_fraction:.0%} validation"
    return Corpus(f"{str(path)!r} ({len(data):,} bytes)", _to_tensor(train), _to_tensor(val), split)


def unigram_entropy(data: torch.Tensor | bytes) -> float:
    """Shannon entropy of the byte histogram of ``data``, in bits per byte (0.0 for empty data).

    >>> unigram_entropy(b"abab"), unigram_entropy(bytes(range(256)))
    (1.0, 8.0)
    """
    if isinstance(data, bytes | bytearray):
        data = _to_tensor(bytes(data))
    if data.numel() == 0:
        return 0.0
    counts = torch.bincount(data.flatten().long(), minlength=256).double()
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * probs.log2()).sum())


def stream_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from ``parts`` (BLAKE2b of their ``repr``): independent, reproducible streams.

    >>> stream_seed(0, 1, 2) == stream_seed(0, 1, 2) != stream_seed(0, 2, 1)
    True
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def fingerprint(corpus: Corpus) -> dict[str, Any]:
    """Split sizes and the SHA-256 of train then validation bytes: identifies the data a checkpoint was trained on."""
    digest = hashlib.sha256()
    for part in (corpus.train, corpus.val):
        digest.update(part.contiguous().numpy().tobytes())
    return {"train_bytes": len(corpus.train), "val_bytes": len(corpus.val), "sha256": digest.hexdigest()}


class WindowSampler:
    """Endless random batches of byte windows, ``(batch_size, seq_len + 1)`` ``int64``; counter-based and resumable.

    Batch number ``position`` of process ``rank`` has window starts drawn uniformly (over every position where a full
    window fits) from a generator seeded with ``stream_seed(seed, rank, position)``: the same ``(seed, rank,
    position)`` always gives the same batch, different ranks read different streams, and ``position`` (the number of
    batches drawn so far, see :meth:`state_dict`) is the whole state needed to resume.

    >>> s = WindowSampler(torch.arange(100, dtype=torch.uint8), batch_size=2, seq_len=4, seed=0)
    >>> batch = next(iter(s)); batch.shape, bool((batch[:, 1:] - batch[:, :-1] == 1).all()), s.position
    (torch.Size([2, 5]), True, 1)
    """

    def __init__(
        self, data: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, position: int = 0
    ) -> None:
        if len(data) < seq_len + 1:
            raise ValueError(f"data of {len(data):,} bytes is shorter than one window of seq_len + 1 = {seq_len + 1}")
        if batch_size < 1 or seq_len < 1 or rank < 0 or position < 0:
            raise ValueError(
                f"need batch_size >= 1, seq_len >= 1, rank >= 0, position >= 0; got {batch_size}, {seq_len}, {rank}, "
                f"{position}"
            )
        self.data = data
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.position = position
        self._generator = torch.Generator()
        self._offsets = torch.arange(seq_len + 1)

    def sample(self) -> torch.Tensor:
        """Draw the batch at the current position (on the CPU) and advance by one."""
        self._generator.manual_seed(stream_seed(self.seed, self.rank, self.position))
        high = len(self.data) - self.seq_len  # exclusive bound of valid starts
        starts = torch.randint(0, high, (self.batch_size,), generator=self._generator)
        self.position += 1
        return self.data[starts[:, None] + self._offsets].long()

    def state_dict(self) -> dict[str, int]:
        """``{"position": batches drawn}``; plain ints, safe for ``torch.load(weights_only=True)``."""
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict` (the seed and rank are the constructor's)."""
        position = state["position"]
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ValueError(f"sampler position must be an int >= 0, got {position!r}")
        self.position = position

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.sample()


def validation_windows(data: torch.Tensor, seq_len: int, max_windows: int) -> torch.Tensor:
    """Fixed validation windows, ``(n, seq_len + 1)`` ``int64``: evenly spaced over ``data``, deterministic.

    ``n = min(max_windows, len(data) // (seq_len + 1))`` (at least 1) windows start at ``linspace(0, len(data) -
    seq_len - 1, n)``, rounded down, so they never overlap, cover the whole split from its first to its last byte, and
    are the same in every run with the same corpus, ``seq_len`` and ``max_windows``. Each window scores its last
    ``seq_len`` bytes given the bytes before them in the window (no context from outside the window). For enwik8 with
    ``seq_len=1024`` and 128 windows that is 131,072 predicted bytes spread over the 5,000,000 validation bytes; a
    ``max_windows`` of at least 4,878 takes every non-overlapping window of the split.

    >>> validation_windows(torch.arange(10, dtype=torch.uint8), seq_len=2, max_windows=2).tolist()
    [[0, 1, 2], [7, 8, 9]]
    """
    need = seq_len + 1
    if len(data) < need:
        raise ValueError(f"validation data of {len(data):,} bytes is shorter than one window of {need} bytes")
    n = max(1, min(max_windows, len(data) // need))
    starts = torch.linspace(0, len(data) - need, n, dtype=torch.float64).floor().long()
    return data[starts[:, None] + torch.arange(need)].long()
