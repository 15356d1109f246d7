"""What the training program measures and shows: validation loss on the fixed windows, generated samples, and the
metrics log with its plot."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from ..autoregressive_wrapper import AutoregressiveWrapper
from ..checkpoint import atomic_write
from ..distributed import window_slice
from .runtime import DistEnv, autocast


def visible(data: bytes) -> str:
    """Decode bytes as UTF-8 (invalid sequences become U+FFFD) with non-printable characters escaped.

    >>> visible(b"ok\\tnew\\nline\\x07\\xff")
    'ok\\tnew\\nline\\\\x07\\ufffd'
    """
    text = data.decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii") for c in text)


@torch.no_grad()
def evaluate(
    wrapper: AutoregressiveWrapper,
    windows: torch.Tensor,
    batch_size: int,
    device: torch.device,
    *,
    precision: str = "fp32",
    dist_env: DistEnv | None = None,
    same_count: bool = False,
) -> float:
    """Mean next-byte cross-entropy (nats) over ``windows``, in eval mode; the training mode is restored.

    Under torchrun each data-parallel rank scores ``windows[dp_rank::dp_size]`` and the sums are all-reduced, so
    every process returns the loss of all windows; with context parallelism each process of a group scores its slice
    of those windows (its share of each window's mean, ``1 / context_parallel`` of the positions). ``same_count``:
    every process runs as many forwards (FSDP gathers each layer's weights from all of them), those short of
    windows one more on a window they do not count.
    """
    dist_env = dist_env or DistEnv()
    cp = dist_env.context_parallel
    was_training = wrapper.training
    wrapper.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with autocast(device, precision):
            chunks = [(c, 1.0) for c in windows[dist_env.dp_rank :: dist_env.dp_size].split(batch_size)]
            if same_count:  # the most any process has: ceil(ceil(windows / dp_size) / batch_size)
                most = math.ceil(math.ceil(len(windows) / dist_env.dp_size) / batch_size)
                chunks += [(windows[:1], 0.0)] * (most - len(chunks))
            for chunk, weight in chunks:
                if cp > 1:
                    chunk = window_slice(chunk, dist_env.cp_rank, cp)
                total += wrapper(chunk.to(device)).double() * (weight * len(chunk) / cp)
    finally:
        wrapper.train(was_training)
    if dist_env.enabled:
        torch.distributed.all_reduce(total)
    return float(total) / len(windows)


def generate_sample(
    wrapper: AutoregressiveWrapper, val: torch.Tensor, prompt_len: int, sample_len: int, device: torch.device
) -> tuple[str, str]:
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


def loss_figure(records: list[dict[str, Any]], title: str = "", start_bpb: float | None = None, entropy_bpb=None):
    """The matplotlib Figure of :func:`plot_metrics` (raises ImportError without matplotlib): train and validation
    bits per byte against step, the validation curve from the step-0 evaluation (``start_bpb``) on, and a line at the
    corpus's unigram entropy (``entropy_bpb``), the figure a model must beat."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["train_loss"] / math.log(2) for r in records], label="train (mean since previous evaluation)")
    val_steps, val = steps, [r["val_bpb"] for r in records]
    if start_bpb is not None:
        val_steps, val = [0, *val_steps], [start_bpb, *val]
    ax.plot(val_steps, val, marker="o", label="validation (fixed windows)")
    if entropy_bpb is not None:
        ax.axhline(entropy_bpb, color="grey", linestyle="--", label=f"unigram entropy (validation) {entropy_bpb:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_metrics(
    metrics_path: Path,
    png_path: Path,
    title: str = "",
    start_bpb: float | None = None,
    entropy_bpb: float | None = None,
) -> bool:
    """Draw :func:`loss_figure` of ``metrics.jsonl`` into ``png_path`` (atomically).

    Returns ``False`` (drawing nothing) when matplotlib is not installed. Uses the Agg canvas directly, so the global
    matplotlib backend is left alone.
    """
    try:
        fig = loss_figure(read_metrics(metrics_path), title, start_bpb, entropy_bpb)
    except ImportError:
        return False
    atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=100))
    return True
