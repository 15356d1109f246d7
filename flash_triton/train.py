"""Train a byte-level causal FLASH language model: ``python -m flash_triton.train`` / ``flash-triton-train``.

Examples::

    python -m flash_triton.train                                   # tiny preset on the stdlib sources, CPU, ~3 min
    python -m flash_triton.train --preset enwik8 --data enwik8.gz  # upstream's enwik8 recipe (wants a GPU)
    python -m flash_triton.train --out runs/tiny --resume          # continue runs/tiny from its latest checkpoint
    python -m flash_triton.train --eval-only runs/tiny/checkpoint.pt
    torchrun --nproc_per_node 8 -m flash_triton.train --preset enwik8 --data enwik8.gz   # one process per GPU

**Configuration.** ``--preset`` (``tiny``, the CPU default; ``enwik8``, FLASH-pytorch's recipe) sets every field of
:class:`TrainConfig`; each field has a flag that overrides it (``--dim``, ``--seq-len``, ``--grad-accum``,
``--shift-tokens/--no-shift-tokens``, ...; see ``--help``). The effective configuration, with the run's data,
precision and process count, is saved as ``OUT/config.json`` and inside every checkpoint.

**Data and validation.** See :mod:`flash_triton.data`: enwik8 is split as upstream (first 90M bytes train, next 5M
validate). Validation loss is reported in bits per byte (= bits per character for enwik8's byte-level protocol) over
``eval_windows`` fixed, non-overlapping windows of ``seq_len + 1`` bytes spread evenly over the validation split
(:func:`flash_triton.data.validation_windows`): numbers are comparable across runs with the same data, ``seq_len`` and
``eval_windows``. ``--eval-only CHECKPOINT`` rebuilds the model from the checkpoint's configuration, evaluates these
windows (data: ``--data``, else the data the checkpoint was trained on), prints the result and writes nothing.

**Outputs in OUT** (only process 0 writes): ``config.json``; ``metrics.jsonl``, one JSON object per evaluation (step,
train and validation loss, val bpb, lr, tokens, tokens/s, elapsed s); ``loss.png``, train and validation curves,
redrawn at each evaluation (when matplotlib is installed); ``sample.txt``, the latest generated sample (every
``sample_every`` steps and at the end); ``checkpoints/step_XXXXXXX.pt`` every ``checkpoint_every`` steps, at the end
and on interruption, the newest ``keep_checkpoints`` kept; ``checkpoint.pt``, the newest of them (a hard link). All are
written atomically (temporary file, fsync, rename), checkpoints as described in :mod:`flash_triton.checkpoint`; a
SIGKILL at any moment loses at most the steps since the last checkpoint and never leaves an unreadable one.

**Resume.** ``--resume`` continues the run in OUT from its newest loadable checkpoint: model, optimizer, grad scaler,
step, every process's random states, data position and the running train-loss average are restored, so an
interrupted and resumed run computes exactly what an uninterrupted one does (bit for bit in fp32 on the CPU).
``metrics.jsonl`` keeps its records up to the checkpoint's step and is appended to. The configuration comes from the
checkpoint; flags override it, except that a different model shape is an error. ``--resume`` with no checkpoint in
OUT is an error (exit 2). A run without ``--resume`` refuses to replace an unfinished run in OUT (one whose newest
checkpoint is before its last step) unless ``--overwrite`` is given; a finished run is replaced. ``--stop-after N``
stops after N steps of this invocation with a checkpoint (a time-sliced job: repeat the command with ``--resume``).

**Signals.** SIGINT or SIGTERM (also from ``torchrun``) finishes the current step, writes a checkpoint and exits with
128 + the signal number (130 for SIGINT, 143 for SIGTERM), so that a job script can tell that the run did not finish;
a second SIGINT aborts at once (the last checkpoint stays intact).

**Precision.** ``--precision auto`` trains in bf16 autocast on a GPU that supports it, in fp16 autocast with a
gradient scaler on one that does not, and in fp32 on the CPU; ``fp32``, ``bf16`` and ``fp16`` force a mode
(parameters and optimizer state stay fp32). Evaluation runs under the same autocast.

**Multiple processes.** Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains a DistributedDataParallel
replica (NCCL on GPUs, each process on ``cuda:LOCAL_RANK``; gloo on the CPU) on its own data stream (global batch =
processes x batch_size x grad_accum); validation windows are shared out and the losses summed; at the end the
processes check that their parameters are identical.

**Exit codes.** 0: finished, or stopped by ``--stop-after``; 2: bad input (unknown preset or flag value, missing,
unreadable or too short data, a checkpoint that does not load or comes from another model shape, nothing to resume):
one line on stderr starting with ``flash-triton-train: error:``, and nothing in OUT written; 130/143: stopped by
SIGINT/SIGTERM after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from flash_triton import AutoregressiveWrapper, BackendUnavailableError, FLASHTransformer
from flash_triton.checkpoint import (
    CHECKPOINT_DIR,
    LATEST_NAME,
    CheckpointError,
    atomic_write,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    remove_temp_files,
    restore_rng,
    save_checkpoint,
    step_checkpoints,
    to_cpu,
)
from flash_triton.data import (
    Corpus,
    WindowSampler,
    fingerprint,
    load_corpus,
    stream_seed,
    unigram_entropy,
    validation_windows,
)

__all__ = [
    "PRESETS", "TrainConfig", "RunResult", "DistEnv", "build_model", "build_parser", "config_from_dict", "evaluate",
    "lr_at", "main", "resolve_device", "resolve_precision", "train", "atomic_write",
]  # fmt: skip

PROG = "flash-triton-train"
CHECKPOINT_FORMAT = 2
#: Fields that fix the model's parameter shapes: a checkpoint loads only into the same values.
MODEL_FIELDS = (
    "dim", "depth", "group_size", "query_key_dim", "expansion_factor", "norm_type", "shift_tokens", "laplace_attn_fn",
)  # fmt: skip
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NORM_TYPES = ("scalenorm", "layernorm")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Model shape, optimisation, evaluation and checkpoint settings of one run; the defaults are the tiny preset.

    Invalid values raise ``ValueError`` naming the field (see ``FIELD_RULES``).
    """

    dim: int = 192
    depth: int = 3
    group_size: int = 128
    query_key_dim: int = 96
    expansion_factor: float = 2.0
    attn_dropout: float = 0.0
    norm_type: str = "scalenorm"
    shift_tokens: bool = True
    laplace_attn_fn: bool = False
    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    warmup_steps: int = 20
    cosine_decay: bool = True  # decay the lr to 10% of its peak over the run (else constant after warm-up)
    grad_clip: float = 0.5
    steps: int = 400
    eval_every: int = 100
    eval_windows: int = 64  # fixed validation windows per evaluation (see data.validation_windows)
    eval_batch_size: int = 16
    log_every: int = 10
    checkpoint_every: int = 100  # 0: only at the end and on interruption
    keep_checkpoints: int = 3
    sample_every: int = 0  # 0: only at the end
    sample_prompt_len: int = 96
    sample_len: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = check_field(f.name, value)
            if checked is not value:
                object.__setattr__(self, f.name, checked)


#: Per field: (help text, rule). Rules: ">0", ">=0", "[0,1)", "any" (ints), "bool", or a tuple of choices.
FIELD_RULES: dict[str, tuple[str, Any]] = {
    "dim": ("model width (even)", ">0"),
    "depth": ("number of FLASH layers", ">0"),
    "group_size": ("tokens per attention group", ">0"),
    "query_key_dim": ("width of the shared query/key projection", ">0"),
    "expansion_factor": ("value and gate width as a multiple of dim", ">0"),
    "attn_dropout": ("attention dropout probability", "[0,1)"),
    "norm_type": ("normalisation", NORM_TYPES),
    "shift_tokens": ("token shift: half the features come from the previous position", "bool"),
    "laplace_attn_fn": ("laplace attention function instead of relu squared", "bool"),
    "seq_len": ("bytes per training sequence and per validation window", ">0"),
    "batch_size": ("sequences per micro-batch, per process", ">0"),
    "grad_accum": ("micro-batches per optimizer step", ">0"),
    "lr": ("peak learning rate (Adam)", ">0"),
    "warmup_steps": ("linear warm-up steps", ">=0"),
    "cosine_decay": ("cosine decay of the lr to 10%% of its peak over the run", "bool"),
    "grad_clip": ("gradient-norm clip (0: none)", ">=0"),
    "steps": ("optimizer steps of the whole run", ">0"),
    "eval_every": ("evaluate every this many steps (and at the end)", ">0"),
    "eval_windows": ("fixed validation windows per evaluation (capped at what the split holds)", ">0"),
    "eval_batch_size": ("validation windows per forward pass", ">0"),
    "log_every": ("log line every this many steps", ">0"),
    "checkpoint_every": ("checkpoint every this many steps (0: only at the end and on interruption)", ">=0"),
    "keep_checkpoints": ("step checkpoints kept in OUT/checkpoints", ">0"),
    "sample_every": ("write a generated sample every this many steps (0: only at the end)", ">=0"),
    "sample_prompt_len": ("prompt bytes, taken from the validation split, for samples", ">0"),
    "sample_len": ("bytes generated per sample (0: no samples)", ">=0"),
    "seed": ("random seed: initialisation, data streams, dropout", "any"),
}


def check_field(name: str, value: Any) -> Any:
    """Validate (and for float fields, coerce ints to float) one ``TrainConfig`` value; ``ValueError`` otherwise.

    >>> check_field("lr", 1), check_field("norm_type", "layernorm")
    (1.0, 'layernorm')
    """
    rule = FIELD_RULES[name][1]
    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
    if rule == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool, got {value!r}")
        return value
    if isinstance(rule, tuple):
        if value not in rule:
            raise ValueError(f"{name} must be one of {', '.join(rule)}; got {value!r}")
        return value
    kind = type(default)
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise ValueError(f"{name} must be {'an int' if kind is int else 'a number'}, got {value!r}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if rule == ">0" and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if rule == ">=0" and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if rule == "[0,1)" and not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


PRESETS: dict[str, TrainConfig] = {
    # Shows learning on 2 CPU cores in about 3 minutes.
    "tiny": TrainConfig(),
    # FLASH-pytorch's enwik8 recipe: effective batch 16 x 1024, Adam 2e-4, clip 0.5, 100k steps.
    "enwik8": TrainConfig(
        dim=512, depth=8, group_size=256, query_key_dim=128, seq_len=1024, batch_size=4, grad_accum=4, lr=2e-4,
        warmup_steps=0, cosine_decay=False, grad_clip=0.5, steps=100_000, eval_every=500, eval_windows=128,
        eval_batch_size=8, log_every=50, checkpoint_every=1_000, keep_checkpoints=3, sample_every=5_000,
        sample_prompt_len=128, sample_len=512,
    ),
}  # fmt: skip


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a ``TrainConfig`` from a dict such as ``checkpoint["config"]``, ignoring keys it does not know.

    >>> config_from_dict({"dim": 64, "preset": "tiny"}).dim
    64
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names})


def build_model(cfg: TrainConfig, backend: str | None = None) -> FLASHTransformer:
    """The byte-level causal ``FLASHTransformer`` (256 tokens) described by ``cfg``.

    >>> model = build_model(TrainConfig(dim=32, depth=1, group_size=16, query_key_dim=16))
    >>> model(torch.zeros(1, 10, dtype=torch.long)).shape
    torch.Size([1, 10, 256])
    """
    extra = {} if backend is None else {"backend": backend}
    return FLASHTransformer(
        num_tokens=256, dim=cfg.dim, depth=cfg.depth, causal=True, group_size=cfg.group_size,
        query_key_dim=cfg.query_key_dim, expansion_factor=cfg.expansion_factor, attn_dropout=cfg.attn_dropout,
        norm_type=cfg.norm_type, shift_tokens=cfg.shift_tokens, laplace_attn_fn=cfg.laplace_attn_fn, **extra,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """This process's place in a ``torchrun`` launch (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); unset: one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

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

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

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


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based): linear warm-up, then constant or cosine to 10%.

    >>> lr_at(TrainConfig(lr=1.0, warmup_steps=10), 5), lr_at(TrainConfig(lr=1.0, steps=100, cosine_decay=True), 100)
    (0.5, 0.1)
    """
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if not cfg.cosine_decay:
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def visible(data: bytes) -> str:
    """Decode bytes as UTF-8 (invalid sequences become U+FFFD) with non-printable characters escaped.

    >>> visible(b"ok\\tnew\\nline\\x07\\xff")
    'ok\\tnew\\nline\\\\x07\\ufffd'
    """
    text = data.decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii") for c in text)


def _format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@torch.no_grad()
def evaluate(
    wrapper: AutoregressiveWrapper,
    windows: torch.Tensor,
    batch_size: int,
    device: torch.device,
    *,
    precision: str = "fp32",
    dist_env: DistEnv | None = None,
) -> float:
    """Mean next-byte cross-entropy (nats) over ``windows``, in eval mode; the training mode is restored.

    Under torchrun each process scores ``windows[rank::world_size]`` and the sums are all-reduced, so every process
    returns the loss of all windows.
    """
    dist_env = dist_env or DistEnv()
    was_training = wrapper.training
    wrapper.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with autocast(device, precision):
            for chunk in windows[dist_env.rank :: dist_env.world_size].split(batch_size):
                total += wrapper(chunk.to(device)).double() * len(chunk)
    finally:
        wrapper.train(was_training)
    if dist_env.enabled:
        torch.distributed.all_reduce(total)
    return float(total) / len(windows)


def generate_sample(wrapper: AutoregressiveWrapper, val: torch.Tensor, prompt_len: int, sample_len: int,
                    device: torch.device) -> tuple[str, str]:  # fmt: skip
    """Sample ``sample_len`` bytes after a ``prompt_len``-byte prompt from the start of the validation data.

    The prompt starts after the first newline (when there is one early on) so that it begins on a line. Returns the
    prompt and the sample as printable text (see :func:`visible`); sampling uses the global torch RNG.
    """
    head = val[:4096]
    newlines = (head == ord("\n")).nonzero()
    offset = int(newlines[0]) + 1 if len(newlines) and int(newlines[0]) < len(head) // 2 else 0
    offset = min(offset, max(0, len(val) - prompt_len))
    prompt = val[offset : offset + prompt_len].long()[None].to(device)
    sample = wrapper.generate(prompt, sample_len, temperature=1.0, filter_thres=0.9)
    return visible(bytes(prompt[0].tolist())), visible(bytes(sample[0].tolist()))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (lines that do not parse, such as one cut by a crash, are skipped)."""
    records = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("step"), int):
                    records.append(record)
    return records


def plot_metrics(metrics_path: Path, png_path: Path, title: str = "") -> bool:
    """Draw train and validation bits per byte against step from ``metrics.jsonl`` into ``png_path`` (atomically).

    Returns ``False`` (drawing nothing) when matplotlib is not installed. Uses the Agg canvas directly, so the global
    matplotlib backend is left alone.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    records = read_metrics(metrics_path)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["train_loss"] / math.log(2) for r in records], label="train (mean since previous evaluation)")
    ax.plot(steps, [r["val_bpb"] for r in records], marker="o", label="validation (fixed windows)")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=100))
    return True


class _Progress:
    """A tqdm bar (loss, bpb, tok/s in the postfix; tqdm's own ETA) on a terminal, else plain log lines with an ETA;
    silent on processes other than 0."""

    def __init__(self, total: int, initial: int, enabled: bool, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.bar = None
        if enabled and not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def step(self, step: int, loss: float | None, tokens_per_s: float | None, eta_s: float | None) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                postfix = {"loss": f"{loss:.3f}", "bpb": f"{loss / math.log(2):.3f}", "tok/s": f"{tokens_per_s:,.0f}"}
                self.bar.set_postfix(postfix, refresh=False)
        elif loss is not None:
            eta = "" if eta_s is None else f"  eta {_format_duration(eta_s)}"
            self.write(
                f"step {step}/{self.total}  loss {loss:.4f}  bpb {loss / math.log(2):.4f}  "
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


class _StopRequest:
    """SIGINT/SIGTERM handlers that ask the training loop to stop after the current step (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            print(f"{PROG}: {signal.Signals(signum).name} received: finishing this step, writing a checkpoint and "
                  f"exiting (SIGINT again aborts without saving)", file=sys.stderr, flush=True)  # fmt: skip

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopRequest]:
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


@dataclasses.dataclass
class RunResult:
    """How :func:`train` ended: ``status`` is ``"done"``, ``"stopped"`` (``stop_after``) or ``"signal"``."""

    status: str
    step: int
    metrics: dict[str, Any]
    signum: int | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.status == "signal" and self.signum else 0


def _param_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _gather(obj: Any, dist_env: DistEnv, group: Any) -> list[Any]:
    """Every process's ``obj`` (a list indexed by rank) through the CPU control group."""
    if not dist_env.enabled:
        return [obj]
    gathered: list[Any] = [None] * dist_env.world_size
    torch.distributed.all_gather_object(gathered, obj, group=group)
    return gathered


def train(
    cfg: TrainConfig,
    corpus: Corpus,
    device: torch.device,
    out: Path,
    run_info: dict[str, Any],
    backend: str | None = None,
    progress: bool = True,
    *,
    precision: str = "fp32",
    resume: dict[str, Any] | None = None,
    stop_after: int | None = None,
    dist_env: DistEnv | None = None,
    control_group: Any = None,
) -> RunResult:
    """Train, evaluate, checkpoint and sample as described in the module docstring.

    ``resume`` is a loaded checkpoint to continue from; ``stop_after`` stops (with a checkpoint) after that many steps
    of this call. Under torchrun the process group must already be initialised; ``control_group`` is a gloo group for
    the small CPU-side exchanges (``None``: the default group). A checkpoint whose tensors do not fit the model is a
    :class:`~flash_triton.checkpoint.CheckpointError` (a ``ValueError``) raised before anything is written.
    """
    dist_env = dist_env or DistEnv()
    is_main = dist_env.is_main

    def say(message: str) -> None:
        if is_main:
            print(message, flush=True)

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, backend)
    wrapper = AutoregressiveWrapper(model)
    start_step = 0
    if resume is not None:
        start_step = int(resume["step"])
        try:
            model.load_state_dict(resume["model"], strict=True)
        except (RuntimeError, TypeError, KeyError) as err:
            raise CheckpointError(
                f"checkpoint at step {start_step} does not fit the model: {_first_line(err)}"
            ) from None
    wrapper.to(device)
    optimizer = torch.optim.Adam(wrapper.parameters(), lr=lr_at(cfg, max(1, start_step + 1)))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    sampler = WindowSampler(corpus.train, cfg.batch_size, cfg.seq_len, seed=cfg.seed, rank=dist_env.rank)
    progress_state: dict[str, Any] = {}
    notes: list[str] = []
    if resume is not None:
        try:
            optimizer.load_state_dict(resume["optimizer"])
            sampler.load_state_dict(resume["sampler"])
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint at step {start_step} cannot be resumed: {_first_line(err)}") from None
        if precision == "fp16" and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        progress_state = dict(resume.get("progress") or {})
        ranks = resume.get("ranks") or []
        if dist_env.rank < len(ranks) and len(ranks) == dist_env.world_size:
            restore_rng(ranks[dist_env.rank]["rng"], device)
            progress_state["loss_sum"] = ranks[dist_env.rank]["loss_sum"]
        else:  # another process count: fresh, rank-dependent random streams (the data position is still exact)
            torch.manual_seed(stream_seed(cfg.seed, dist_env.rank, start_step))
            losses = [r["loss_sum"] for r in ranks]
            progress_state["loss_sum"] = sum(losses) / len(losses) if losses else 0.0
            notes.append(f"checkpoint from {len(ranks)} process(es), resumed on {dist_env.world_size}: new random "
                         "streams, so the run is no longer identical to an uninterrupted one")  # fmt: skip
    elif dist_env.rank > 0:
        torch.manual_seed(stream_seed(cfg.seed, dist_env.rank, "rng"))  # own dropout stream; init is rank 0's

    ddp = None
    if dist_env.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(wrapper, device_ids=[device.index] if device.type == "cuda" else None)
    forward = ddp if ddp is not None else wrapper
    windows = validation_windows(corpus.val, cfg.seq_len, cfg.eval_windows)

    metrics_path, png_path = out / "metrics.jsonl", out / "loss.png"
    saved_config = {**run_info, **dataclasses.asdict(cfg)}
    can_plot = True
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_temp_files(out)
        remove_temp_files(out / CHECKPOINT_DIR)
        if resume is None:  # replace a previous (finished, or --overwrite) run's files
            for _, old in step_checkpoints(out):
                old.unlink()
            for name in (LATEST_NAME, "loss.png", "sample.txt"):
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
            atomic_write(metrics_path, lambda f: None)
        else:
            for step_no, newer in step_checkpoints(out):  # newer than the one resumed from: failed to load
                if step_no > start_step:
                    newer.rename(newer.with_name(newer.name + ".unreadable"))
                    notes.append(f"{newer.name} did not load; kept as {newer.name}.unreadable")
            kept = [json.dumps(r) + "\n" for r in read_metrics(metrics_path) if r["step"] <= start_step]
            atomic_write(metrics_path, lambda f: f.write("".join(kept).encode()))
        atomic_write(out / "config.json", lambda f: f.write(json.dumps(saved_config, indent=2).encode() + b"\n"))

    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: FLASHTransformer dim={cfg.dim} depth={cfg.depth} group_size={cfg.group_size} "
        f"query_key_dim={cfg.query_key_dim} seq_len={cfg.seq_len}: {n_params:,} parameters")  # fmt: skip
    n_threads = torch.get_num_threads()
    threads = f" ({n_threads} thread{'s' if n_threads != 1 else ''})" if device.type == "cpu" else ""
    procs = f", {dist_env.world_size} processes (DistributedDataParallel)" if dist_env.enabled else ""
    say(f"device: {device}{threads}, precision {precision}{procs}")
    say(f"validation: {len(windows)} fixed windows of {cfg.seq_len} predicted bytes")
    for note in notes:
        say(f"note: {note}")

    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * dist_env.world_size
    loss_sum = torch.tensor(float(progress_state.get("loss_sum", 0.0)), device=device)
    loss_count = int(progress_state.get("loss_count", 0))
    train_time = float(progress_state.get("train_time", 0.0))
    elapsed_before = float(progress_state.get("elapsed_s", 0.0))
    session_start = time.perf_counter()
    last_saved = start_step if resume is not None else -1
    last: dict[str, Any] = {}

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - session_start

    def checkpoint(step: int) -> None:
        nonlocal last_saved
        per_rank = {"rng": capture_rng(device), "loss_sum": float(loss_sum)}
        ranks = _gather(per_rank, dist_env, control_group)
        if is_main:
            state = {
                "format": CHECKPOINT_FORMAT, "step": step, "config": saved_config, "model": to_cpu(model.state_dict()),
                "optimizer": to_cpu(optimizer.state_dict()), "scaler": scaler.state_dict(),
                "sampler": sampler.state_dict(), "world_size": dist_env.world_size, "ranks": to_cpu(ranks),
                "progress": {"loss_count": loss_count, "train_time": train_time, "elapsed_s": elapsed()},
                "data": run_info.get("data_fingerprint"),
            }  # fmt: skip
            save_checkpoint(out, state, step, cfg.keep_checkpoints)
        last_saved = step

    def write_sample(step: int) -> tuple[str, str]:
        devices = (
            [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        )
        with torch.random.fork_rng(devices=devices), autocast(device, precision):
            torch.manual_seed(cfg.seed)  # the same sample for the same weights, and the training RNG is untouched
            prompt, sample = generate_sample(wrapper, corpus.val, cfg.sample_prompt_len, cfg.sample_len, device)
        text = f"step {step}\nprompt:\n{prompt}\n{'-' * 40}\n{sample}\n"
        atomic_write(out / "sample.txt", lambda f: f.write(text.encode()))
        return prompt, sample

    bar = _Progress(cfg.steps, start_step, False, quiet=True)
    log_sum, log_count, log_time = torch.zeros((), device=device), 0, 0.0
    session_steps, session_time = 0, 0.0
    step = start_step
    result: RunResult | None = None
    stop = _StopRequest()
    try:
        with stop.installed():  # from here on SIGINT/SIGTERM stop the run after the current step, with a checkpoint
            if resume is None:
                val_loss = evaluate(wrapper, windows, cfg.eval_batch_size, device, precision=precision,
                                    dist_env=dist_env)  # fmt: skip
                say(f"step 0: val loss {val_loss:.4f}, val bpb {val_loss / math.log(2):.4f}")
            else:
                say(f"resumed from step {start_step} of {cfg.steps} ({run_info.get('resumed_from', 'checkpoint')})")
            bar = _Progress(cfg.steps, start_step, progress, quiet=not is_main)
            wrapper.train()
            for step in range(start_step + 1, cfg.steps + 1):
                t0 = time.perf_counter()
                lr = lr_at(cfg, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                step_loss = torch.zeros((), device=device)
                for micro in range(cfg.grad_accum):
                    batch = sampler.sample().to(device, non_blocking=True)
                    no_sync = ddp is not None and micro < cfg.grad_accum - 1
                    with ddp.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[union-attr]
                        with autocast(device, precision):
                            loss = forward(batch)
                        scaler.scale(loss / cfg.grad_accum).backward()
                    step_loss += loss.detach().float() / cfg.grad_accum
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(wrapper.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                loss_sum, log_sum = loss_sum + step_loss, log_sum + step_loss
                loss_count, log_count = loss_count + 1, log_count + 1
                logging = step % cfg.log_every == 0 or step == cfg.steps
                if logging:
                    log_loss = float(log_sum) / log_count  # synchronises the device
                dt = time.perf_counter() - t0
                train_time, log_time = train_time + dt, log_time + dt
                session_steps, session_time = session_steps + 1, session_time + dt
                if logging:
                    eta = (cfg.steps - step) * session_time / session_steps
                    bar.step(step, log_loss, log_count * tokens_per_step / max(log_time, 1e-9), eta)
                    log_sum, log_count, log_time = torch.zeros((), device=device), 0, 0.0
                else:
                    bar.step(step, None, None, None)

                if step % cfg.eval_every == 0 or step == cfg.steps:
                    summed = loss_sum.detach().clone()
                    if dist_env.enabled:
                        torch.distributed.all_reduce(summed)
                    val_loss = evaluate(wrapper, windows, cfg.eval_batch_size, device, precision=precision,
                                        dist_env=dist_env)  # fmt: skip
                    last = {"step": step, "train_loss": float(summed) / (loss_count * dist_env.world_size),
                            "val_loss": val_loss, "val_bpb": val_loss / math.log(2), "lr": lr,
                            "tokens": step * tokens_per_step,
                            "tokens_per_s": loss_count * tokens_per_step / max(train_time, 1e-9),
                            "elapsed_s": elapsed()}  # fmt: skip
                    if is_main:
                        with metrics_path.open("a") as f:
                            f.write(json.dumps(last) + "\n")
                        if can_plot and not plot_metrics(metrics_path, png_path, str(run_info.get("corpus", ""))):
                            can_plot = False
                            bar.write("info: matplotlib is not installed: no loss.png")
                    bar.write(f"step {step}: train loss {last['train_loss']:.4f}, val loss {val_loss:.4f}, "
                              f"val bpb {last['val_bpb']:.4f}, {last['tokens_per_s']:,.0f} tok/s")  # fmt: skip
                    loss_sum, loss_count, train_time = torch.zeros((), device=device), 0, 0.0
                if (
                    is_main
                    and cfg.sample_len
                    and cfg.sample_every
                    and step % cfg.sample_every == 0
                    and step < cfg.steps
                ):
                    write_sample(step)
                if step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    checkpoint(step)

                signum = stop.signum or 0
                if dist_env.enabled:  # every process stops at the same step
                    flag = torch.tensor([signum], dtype=torch.int64)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=control_group)
                    signum = int(flag)
                stopping = step < cfg.steps and (signum or (stop_after and step - start_step >= stop_after))
                if stopping:
                    if last_saved != step:
                        checkpoint(step)
                    bar.close()
                    how = f"by {signal.Signals(signum).name}" if signum else f"after {stop_after} steps (--stop-after)"
                    say(f"stopped {how} at step {step} of {cfg.steps}; checkpoint {out / LATEST_NAME}; "
                        f"continue with --resume --out {out}")  # fmt: skip
                    result = RunResult("signal" if signum else "stopped", step, last, signum or None)
                    break
    except KeyboardInterrupt:
        bar.close()
        where = f"the last checkpoint (step {last_saved}) is intact" if last_saved >= 0 else "no checkpoint was written"
        print(f"{PROG}: aborted at step {step}; {where}", file=sys.stderr, flush=True)
        raise
    finally:
        bar.close()
    if result is not None:
        return result

    say(f"checkpoint: {out / LATEST_NAME} (step {step}, {time.perf_counter() - session_start:.1f} s this session)")
    if dist_env.enabled:
        digests = _gather(_param_digest(model), dist_env, control_group)
        if len(set(digests)) != 1:
            raise RuntimeError(f"parameters differ between processes after training: {digests}")
        say(f"ddp: parameters identical on {dist_env.world_size} processes (sha256 {digests[0][:16]})")
    if is_main and cfg.sample_len > 0:
        prompt_text, sample_text = write_sample(step)
        say(f"\nprompt ({cfg.sample_prompt_len} bytes of validation data):\n{prompt_text}\n"
            f"\nsample ({cfg.sample_len} generated bytes):\n{sample_text}\n")  # fmt: skip
    return RunResult("done", step, last)


def _first_line(err: BaseException, limit: int = 300) -> str:
    """The error's message on one line (whitespace collapsed), cut at ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error report (no usage block)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _field_type(name: str, kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None
        try:
            return check_field(name, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).replace(f"{name} ", "", 1)) from None

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of :func:`main`: run flags plus one flag per :class:`TrainConfig` field."""
    presets = "; ".join(
        f"{name}: dim {c.dim}, depth {c.depth}, group {c.group_size}, seq {c.seq_len}, batch {c.batch_size}x"
        f"{c.grad_accum}, lr {c.lr:g}, {c.steps:,} steps"
        for name, c in PRESETS.items()
    )
    p = _Parser(
        prog=PROG,
        description="Train a byte-level causal FLASH transformer, with crash-safe checkpoints and exact resume. "
        "Configuration flags default to the preset's values (on --resume, to the checkpoint's).",
        epilog=f"presets: {presets}. Exit codes: 0 done or --stop-after, 2 bad input (nothing written), 130/143 "
        "stopped by SIGINT/SIGTERM after a checkpoint. Multi-process: torchrun --nproc_per_node N -m "
        "flash_triton.train ...",
    )
    run = p.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(PRESETS), help="configuration preset (default: tiny)")
    run.add_argument("--data", help="enwik8 (.gz or raw) or any file; default: this Python's stdlib sources "
                     "(on --resume / --eval-only: the checkpoint's data)")  # fmt: skip
    run.add_argument("--out", help="run directory (default: runs/<preset>)")
    run.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    run.add_argument("--backend", choices=("auto", "triton", "reference"), help="FLASH kernel backend (default: auto)")
    run.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="auto: bf16 autocast on GPUs with bf16, else fp16 + grad scaler; fp32 on CPU")  # fmt: skip
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT from its newest loadable checkpoint (error if there is none)",
    )
    mode.add_argument(
        "--eval-only",
        metavar="CHECKPOINT",
        help="evaluate a checkpoint on the fixed validation windows, print bits per byte, write nothing",
    )
    mode.add_argument("--overwrite", action="store_true", help="replace an unfinished run in OUT instead of refusing")
    run.add_argument(
        "--stop-after",
        type=_positive_int,
        metavar="STEPS",
        help="stop after this many steps of this invocation, with a checkpoint (exit 0)",
    )
    run.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")

    cfg_group = p.add_argument_group("configuration (default: the preset's value)")
    for f in dataclasses.fields(TrainConfig):
        text, rule = FIELD_RULES[f.name]
        values = ", ".join(f"{name} {getattr(c, f.name)}" for name, c in PRESETS.items())
        flags = ["--" + f.name.replace("_", "-")] + (["--keep"] if f.name == "keep_checkpoints" else [])
        if rule == "bool":
            cfg_group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                   help=f"{text} ({values})")  # fmt: skip
        elif isinstance(rule, tuple):
            cfg_group.add_argument(*flags, dest=f.name, choices=rule, help=f"{text} ({values})")
        else:
            cfg_group.add_argument(*flags, dest=f.name, type=_field_type(f.name, type(f.default)),
                                   help=f"{text} ({values})")  # fmt: skip
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid int: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields given explicitly on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}


def _check_same_model(cfg: TrainConfig, saved: dict[str, Any], source: Path) -> None:
    saved_cfg = config_from_dict(saved)
    diffs = [f"{name} {getattr(saved_cfg, name)!r} (checkpoint) != {getattr(cfg, name)!r} (requested)"
             for name in MODEL_FIELDS if getattr(saved_cfg, name) != getattr(cfg, name)]  # fmt: skip
    if diffs:
        raise ValueError(f"checkpoint {str(source)!r} is from another model configuration: {'; '.join(diffs)}")


def _probe_backend(backend: str | None, device: torch.device, precision: str) -> None:
    """Raise ``BackendUnavailableError`` now (before anything is written) if the backend cannot run here."""
    probe = build_model(TrainConfig(dim=16, depth=1, group_size=4, query_key_dim=8), backend).to(device)
    with torch.no_grad(), autocast(device, precision):
        probe(torch.zeros(1, 8, dtype=torch.long, device=device))


def _load_data(data: str | None, cfg: TrainConfig) -> Corpus:
    corpus = load_corpus(data)
    corpus.check_fits(cfg.seq_len)
    return corpus


def _eval_only(args: argparse.Namespace, dist_env: DistEnv) -> int:
    if dist_env.enabled:
        raise ValueError("--eval-only runs in one process: start it without torchrun")
    path = Path(args.eval_only)
    ckpt = load_checkpoint(path)
    saved = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    try:
        base = PRESETS[args.preset] if args.preset else config_from_dict(saved)
        cfg = dataclasses.replace(base, **overrides_from_args(args))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {str(path)!r} holds an invalid configuration: {err}") from None
    _check_same_model(cfg, saved, path)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    data = args.data if args.data is not None else saved.get("data_path", saved.get("data"))
    corpus = _load_data(data, cfg)
    model = build_model(cfg, args.backend)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except (RuntimeError, TypeError, KeyError) as err:
        raise ValueError(f"checkpoint {str(path)!r} does not fit its model configuration: {_first_line(err)}") from None
    windows = validation_windows(corpus.val, cfg.seq_len, cfg.eval_windows)
    wrapper = AutoregressiveWrapper(model).to(device)
    val_loss = evaluate(wrapper, windows, cfg.eval_batch_size, device, precision=precision)
    print(f"checkpoint: {path} (step {ckpt['step']})")
    print(f"corpus: {corpus.name}, validation split ({corpus.split}): {len(windows)} fixed windows of "
          f"{cfg.seq_len} predicted bytes, precision {precision}")  # fmt: skip
    print(f"val loss {val_loss:.4f} nats/byte, val bpb {val_loss / math.log(2):.4f}", flush=True)
    return 0


@dataclasses.dataclass
class _Plan:
    cfg: TrainConfig
    corpus: Corpus
    device: torch.device
    precision: str
    out: Path
    run_info: dict[str, Any]
    resume: dict[str, Any] | None


def _prepare(args: argparse.Namespace, dist_env: DistEnv) -> _Plan | int:
    """Check everything that can be wrong with the input before anything is written; returns an exit code instead of
    a plan when there is nothing to do."""
    device = resolve_device(args.device, dist_env)
    precision = resolve_precision(args.precision, device)
    overrides = overrides_from_args(args)
    preset = args.preset or "tiny"
    out = Path(args.out if args.out is not None else Path("runs") / preset)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    found = latest_checkpoint(out) if out.is_dir() else None
    resume = None
    data = args.data
    if args.resume:
        if found is None:
            raise ValueError(f"--resume: no loadable checkpoint in {str(out)!r} (start without --resume)")
        resume = found.checkpoint
        saved = resume["config"] if isinstance(resume["config"], dict) else {}
        missing = [k for k in ("optimizer", "sampler", "ranks", "progress") if k not in resume]
        if missing:
            raise ValueError(f"checkpoint {str(found.path)!r} has no resume state ({', '.join(missing)}): it was "
                             "written by an older version; start a new run")  # fmt: skip
        try:
            base = PRESETS[args.preset] if args.preset else config_from_dict(saved)
            cfg = dataclasses.replace(base, **overrides)
        except (TypeError, ValueError) as err:
            raise ValueError(f"checkpoint {str(found.path)!r} holds an invalid configuration: {err}") from None
        _check_same_model(cfg, saved, found.path)
        preset = args.preset or str(saved.get("preset", preset))
        if data is None:
            data = saved.get("data_path", saved.get("data"))
    else:
        cfg = dataclasses.replace(PRESETS[preset], **overrides)
        if found is not None and not args.overwrite:
            saved = found.checkpoint["config"] if isinstance(found.checkpoint["config"], dict) else {}
            step, total = int(found.checkpoint["step"]), saved.get("steps")
            if isinstance(total, int) and step < total:
                raise ValueError(f"{str(out)!r} holds an unfinished run (checkpoint at step {step} of {total}): pass "
                                 "--resume to continue it, --overwrite to replace it, or another --out")  # fmt: skip
    build_model(TrainConfig(**{**dataclasses.asdict(cfg), "depth": 1}))  # shape errors (odd dim, ...) now
    corpus = _load_data(data, cfg)
    data_fp = fingerprint(corpus)
    if resume is not None and resume.get("data") and resume["data"] != data_fp:
        raise ValueError(f"--resume: the data ({corpus.name}: {data_fp['train_bytes']:,} + {data_fp['val_bytes']:,} "
                         f"bytes, sha256 {data_fp['sha256'][:12]}) differs from the checkpoint's "
                         f"({resume['data']['train_bytes']:,} + {resume['data']['val_bytes']:,} bytes, sha256 "
                         f"{resume['data']['sha256'][:12]}); pass the same --data")  # fmt: skip
    _probe_backend(args.backend, device, precision)
    h_train, h_val = unigram_entropy(corpus.train), unigram_entropy(corpus.val)
    run_info = {
        "preset": preset, "data": data, "data_path": None if data is None else str(Path(data).resolve()),
        "corpus": corpus.name, "data_fingerprint": data_fp, "unigram_bpb_train": h_train, "unigram_bpb_val": h_val,
        "precision": precision, "backend": args.backend, "world_size": dist_env.world_size,
    }  # fmt: skip
    if resume is not None:
        run_info["resumed_from"] = str(found.path)  # type: ignore[union-attr]
        if int(resume["step"]) >= cfg.steps:
            if dist_env.is_main:
                print(f"{out}: the run is complete (step {resume['step']} of {cfg.steps}); nothing to do "
                      "(raise --steps to train further)")  # fmt: skip
            return 0
        changed = [f"{k} {v!r} -> {getattr(cfg, k)!r}" for k, v in resume["config"].items()
                   if k in FIELD_RULES and v != getattr(cfg, k)]  # fmt: skip
        if changed and dist_env.is_main:
            print(f"note: changed on resume: {', '.join(changed)}")
    if dist_env.is_main:
        print(f"corpus: {corpus.name}")
        print(f"split: {len(corpus.train):,} train bytes, {len(corpus.val):,} validation bytes ({corpus.split})")
        print(f"unigram entropy: {h_train:.4f} bits/byte (train), {h_val:.4f} bits/byte (validation)", flush=True)
        if found is not None and resume is None:
            print(f"note: replacing the previous run in {out} (checkpoint at step {found.checkpoint['step']})")
    return _Plan(cfg, corpus, device, precision, out, run_info, resume)


def _error(message: str, dist_env: DistEnv) -> int:
    prefix = f"[rank {dist_env.rank}] " if dist_env.enabled else ""
    print(f"{PROG}: error: {prefix}{message}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the training program; returns the exit code (see the module docstring).

    >>> main(["--preset", "nope"])  # the error line goes to stderr
    2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports the error itself (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        dist_env = DistEnv.from_environ()
    except ValueError as err:
        return _error(str(err), DistEnv())
    try:
        if args.eval_only is not None:
            return _eval_only(args, dist_env)
        plan = _prepare(args, dist_env)
    except (OSError, ValueError) as err:  # CheckpointError is a ValueError
        return _error(_first_line(err) if isinstance(err, CheckpointError) else str(err), dist_env)
    except BackendUnavailableError as err:
        return _error(str(err), dist_env)
    except KeyboardInterrupt:  # Ctrl-C while loading: nothing written yet
        return 130
    if isinstance(plan, int):
        return plan

    control_group = None
    if dist_env.enabled:
        import torch.distributed as dist

        if plan.device.type == "cuda":
            torch.cuda.set_device(plan.device)
            dist.init_process_group("nccl", device_id=plan.device)
            control_group = dist.new_group(backend="gloo")
        else:
            dist.init_process_group("gloo")
    try:
        result = train(plan.cfg, plan.corpus, plan.device, plan.out, plan.run_info, backend=args.backend,
                       progress=not args.no_progress, precision=plan.precision, resume=plan.resume,
                       stop_after=args.stop_after, dist_env=dist_env, control_group=control_group)  # fmt: skip
    except (CheckpointError, BackendUnavailableError) as err:  # raised before anything is written
        return _error(str(err), dist_env)
    except KeyboardInterrupt:
        return 130
    finally:
        if dist_env.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if result.status == "done" and result.metrics and dist_env.is_main:
        h_val = plan.run_info["unigram_bpb_val"]
        print(f"final val bpb {result.metrics['val_bpb']:.4f} vs unigram entropy {h_val:.4f} bits/byte (validation)")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
