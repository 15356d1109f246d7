"""Where and how the training program runs: the torchrun process layout, the device and precision, the exchanges
between processes, the progress display and the stop signals."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .config import PRECISIONS, PROG


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """This process's place in a ``torchrun`` launch (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); unset: one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: ranks that split each sequence (``--context-parallel``): consecutive ranks form one context-parallel group,
    #: and data parallelism runs over the ``world_size // context_parallel`` groups
    context_parallel: int = 1

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> DistEnv:
        """Read torchrun's variables; ``ValueError`` when they are not consistent integers.

        >>> DistEnv.from_environ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}).enabled
        True
        """
        env = os.environ if environ is None else environ
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError as err:
            raise ValueError(f"invalid torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK): {err}") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(f"invalid torchrun environment: WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}")
        return cls(rank, world, local)

    def split(self, context_parallel: int) -> DistEnv:
        """This layout with ``context_parallel`` ranks per sequence; ``ValueError`` unless it divides the world.

        >>> DistEnv(rank=3, world_size=4).split(2).dp_rank, DistEnv(rank=3, world_size=4).split(2).cp_rank
        (1, 1)
        """
        if context_parallel > 1 and self.world_size % context_parallel:
            raise ValueError(
                f"--context-parallel {context_parallel} must divide the number of processes (WORLD_SIZE "
                f"{self.world_size}): start torchrun with --nproc_per_node a multiple of {context_parallel}"
            )
        return dataclasses.replace(self, context_parallel=context_parallel)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def dp_size(self) -> int:
        """Data-parallel width: how many different batches one step reads."""
        return self.world_size // self.context_parallel

    @property
    def dp_rank(self) -> int:
        """Which batch stream this process reads (the ranks of one context-parallel group read the same)."""
        return self.rank // self.context_parallel

    @property
    def cp_rank(self) -> int:
        """Which slice of each sequence this process holds (0 without context parallelism)."""
        return self.rank % self.context_parallel

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, dist_env: DistEnv | None = None) -> torch.device:
    """``"auto"`` means CUDA when available, else CPU; an unavailable CUDA device is a ``ValueError``.

    Under torchrun, ``cuda`` means ``cuda:LOCAL_RANK``.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    dist_env = dist_env or DistEnv()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"invalid --device {name!r}: {err}") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r} requested but CUDA is not available")
        if dist_env.enabled:
            if device.index is not None:
                raise ValueError(f"--device {name!r}: under torchrun pass --device cuda (rank N uses cuda:LOCAL_RANK)")
            device = torch.device("cuda", dist_env.local_rank)
    return device


def _bf16_supported() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no including_emulation argument
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(name: str, device: torch.device) -> str:
    """The training precision: ``auto`` is bf16 on a CUDA device with native bf16, fp16 on other CUDA devices, fp32
    on the CPU; an explicit ``bf16`` on a CUDA device without bf16 is a ``ValueError``.

    >>> resolve_precision("auto", torch.device("cpu")), resolve_precision("bf16", torch.device("cpu"))
    ('fp32', 'bf16')
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if _bf16_supported() else "fp16"
    if name == "bf16" and device.type == "cuda" and not _bf16_supported():
        raise ValueError("--precision bf16: this GPU has no native bfloat16; use fp16 (with a grad scaler) or auto")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of a precision (``fp32``: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


MIN_BAR_COLUMNS = 40


class Progress:
    """A tqdm bar (loss, bpb, tok/s in the postfix; tqdm's own ETA) on a terminal, else plain log lines with an ETA;
    silent on processes other than 0."""

    def __init__(self, total: int, initial: int, enabled: bool, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.bar = None
        # a terminal that reports no usable width (0 columns: tqdm would draw nothing at all): plain lines
        if (
            enabled
            and not quiet
            and sys.stderr.isatty()
            and shutil.get_terminal_size((0, 0)).columns >= MIN_BAR_COLUMNS
        ):
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def step(
        self, step: int, loss: float | None, tokens_per_s: float | None, eta_s: float | None, window: int = 1
    ) -> None:
        """``loss``: the mean train loss of the last ``window`` steps (the log window), labelled so."""
        if self.quiet:
            return
        label = f"train loss (last {window} steps)" if window > 1 else "train loss (this step)"
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                postfix = {
                    f"loss/{window}": f"{loss:.3f}",
                    "bpb": f"{loss / math.log(2):.3f}",
                    "tok/s": f"{tokens_per_s:,.0f}",
                }
                self.bar.set_postfix(postfix, refresh=False)
        elif loss is not None:
            eta = "" if eta_s is None else f"  eta {format_duration(eta_s)}"
            self.write(
                f"step {step}/{self.total}  {label} {loss:.4f}  bpb {loss / math.log(2):.4f}  "
                f"tok/s {tokens_per_s:,.0f}{eta}"
            )

    def write(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopRequest:
    """SIGINT/SIGTERM handlers that ask the training loop to stop after the current step (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            print(
                f"{PROG}: {signal.Signals(signum).name} received: finishing this step, writing a checkpoint and "
                f"exiting (SIGINT again aborts without saving)",
                file=sys.stderr,
                flush=True,
            )

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield self
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)


def param_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gather(obj: Any, dist_env: DistEnv, group: Any) -> list[Any]:
    """Every process's ``obj`` (a list indexed by rank) through the CPU control group."""
    if not dist_env.enabled:
        return [obj]
    gathered: list[Any] = [None] * dist_env.world_size
    torch.distributed.all_gather_object(gathered, obj, group=group)
    return gathered


# ---------------------------------------------------------------------------------------------------------------
# one writer per run directory

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no advisory locks; runs there are not protected from a second writer
    fcntl = None

_held: dict[str, int] = {}  # run directory -> descriptor holding its lock, for this process


def _lock_holder(path: Path) -> str:
    """The pid holding a flock on ``path``, from /proc/locks (Linux), else "unknown"."""
    try:
        ino = os.stat(path).st_ino
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(ino):
                    return fields[4]
    except OSError:
        pass
    return "unknown"


def lock_run_dir(out: Path) -> None:
    """Take the run directory's exclusive lock for the rest of this process's life (idempotent): a flock on the
    directory itself, so nothing is written, and the OS drops it when the process dies (SIGKILL leaves no stale
    lock). Raises ValueError naming the process that holds it."""
    key = str(out.resolve())
    if fcntl is None or key in _held:
        return
    fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(
            f"--out {str(out)!r} is in use by another training (pid {_lock_holder(out)}): one run writes to a "
            "directory at a time; wait for it to end or choose another --out"
        ) from None
    _held[key] = fd


def release_run_dirs() -> None:
    """Drop every run-directory lock this process holds (the end of :func:`~flash_triton.train.main`)."""
    while _held:
        os.close(_held.popitem()[1])
