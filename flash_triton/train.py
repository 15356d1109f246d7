"""Train a byte-level causal FLASH language model: ``python -m flash_triton.train`` / ``flash-triton-train``.

Examples::

    python -m flash_triton.train                                  # tiny preset on the stdlib sources, CPU, ~3 min
    python -m flash_triton.train --preset enwik8 --data enwik8.gz # upstream's enwik8 recipe (wants a GPU)
    python -m flash_triton.train --data notes.txt --steps 200 --out runs/notes

Every evaluation appends one JSON object to ``OUT/metrics.jsonl`` (rewritten at the start of each run); at the end
``OUT/checkpoint.pt`` (model and optimizer state, step, config; readable with ``torch.load(weights_only=True)``)
and ``OUT/config.json`` are written atomically and a generated sample is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from flash_triton import AutoregressiveWrapper, BackendUnavailableError, FLASHTransformer
from flash_triton.data import Corpus, WindowSampler, load_corpus, unigram_entropy, validation_windows

PROG = "flash-triton-train"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Model shape, optimisation and evaluation settings of one training run; the defaults are the tiny preset."""

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
    checkpoint_every: int = 0  # 0: only the final checkpoint
    sample_prompt_len: int = 96
    sample_len: int = 200
    seed: int = 0


PRESETS: dict[str, TrainConfig] = {
    # Shows learning on 2 CPU cores in about 3 minutes.
    "tiny": TrainConfig(),
    # FLASH-pytorch's enwik8 recipe: effective batch 16 x 1024, Adam 2e-4, clip 0.5, 100k steps.
    "enwik8": TrainConfig(
        dim=512, depth=8, group_size=256, query_key_dim=128, seq_len=1024, batch_size=4, grad_accum=4, lr=2e-4,
        warmup_steps=0, cosine_decay=False, grad_clip=0.5, steps=100_000, eval_every=500, eval_windows=128,
        eval_batch_size=8, log_every=50, checkpoint_every=5_000, sample_prompt_len=128, sample_len=512,
    ),
}  # fmt: skip

_OVERRIDES = ("steps", "batch_size", "seq_len", "lr", "eval_every", "seed", "grad_accum", "sample_len")


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


def resolve_device(name: str) -> torch.device:
    """``"auto"`` means CUDA when available, else CPU; an unavailable CUDA device is a ``ValueError``.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"invalid --device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} requested but CUDA is not available")
    return device


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


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via a temporary file in the same directory (flushed and fsynced), then ``os.replace``."""
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


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


@torch.no_grad()
def evaluate(wrapper: AutoregressiveWrapper, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean next-byte cross-entropy (nats) over ``windows``, in eval mode; the training mode is restored."""
    was_training = wrapper.training
    wrapper.eval()
    total = 0.0
    for chunk in windows.split(batch_size):
        total += float(wrapper(chunk.to(device))) * len(chunk)
    wrapper.train(was_training)
    return total / len(windows)


def generate_sample(wrapper: AutoregressiveWrapper, val: torch.Tensor, prompt_len: int, sample_len: int,
                    device: torch.device) -> tuple[str, str]:  # fmt: skip
    """Sample ``sample_len`` bytes after a ``prompt_len``-byte prompt from the start of the validation data.

    The prompt starts after the first newline (when there is one early on) so that it begins on a line. Returns the
    prompt and the sample as printable text (see :func:`visible`); sampling uses the global (seeded) torch RNG.
    """
    head = val[:4096]
    newlines = (head == ord("\n")).nonzero()
    offset = int(newlines[0]) + 1 if len(newlines) and int(newlines[0]) < len(head) // 2 else 0
    offset = min(offset, max(0, len(val) - prompt_len))
    prompt = val[offset : offset + prompt_len].long()[None].to(device)
    sample = wrapper.generate(prompt, sample_len, temperature=1.0, filter_thres=0.9)
    return visible(bytes(prompt[0].tolist())), visible(bytes(sample[0].tolist()))


class _Progress:
    """A tqdm bar with ``loss`` and ``tok/s`` in its postfix, or plain log lines when tqdm is unavailable."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)

    def step(self, step: int, loss: float | None, tokens_per_s: float | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix({"loss": f"{loss:.3f}", "tok/s": f"{tokens_per_s:,.0f}"}, refresh=False)
        elif loss is not None:
            self.write(f"step {step}/{self.total}  loss {loss:.4f}  tok/s {tokens_per_s:,.0f}")

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(cfg: TrainConfig, corpus: Corpus, device: torch.device, out: Path, run_info: dict[str, Any],
          backend: str | None = None, progress: bool = True) -> dict[str, float]:  # fmt: skip
    """Train, evaluate, checkpoint and sample as described in the module docstring; return the last metrics."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    saved_config = {**run_info, **dataclasses.asdict(cfg)}
    atomic_write(out / "config.json", lambda f: f.write(json.dumps(saved_config, indent=2).encode() + b"\n"))
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")

    model = build_model(cfg, backend)
    wrapper = AutoregressiveWrapper(model).to(device)
    optimizer = torch.optim.Adam(wrapper.parameters(), lr=lr_at(cfg, 1))
    sampler = WindowSampler(corpus.train, cfg.batch_size, cfg.seq_len, seed=cfg.seed)
    windows = validation_windows(corpus.val, cfg.seq_len, cfg.eval_windows)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: FLASHTransformer dim={cfg.dim} depth={cfg.depth} group_size={cfg.group_size} "
          f"query_key_dim={cfg.query_key_dim} seq_len={cfg.seq_len}: {n_params:,} parameters")  # fmt: skip
    print(f"device: {device}" + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""))
    print(f"validation: {len(windows)} fixed windows of {cfg.seq_len} predicted bytes", flush=True)

    def checkpoint(step: int) -> None:
        state = {"model": _to_cpu(model.state_dict()), "optimizer": _to_cpu(optimizer.state_dict()),
                 "step": step, "config": saved_config}  # fmt: skip
        atomic_write(out / "checkpoint.pt", lambda f: torch.save(state, f))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    start = time.perf_counter()
    val_loss = evaluate(wrapper, windows, cfg.eval_batch_size, device)
    print(f"step 0: val loss {val_loss:.4f}, val bpb {val_loss / math.log(2):.4f}", flush=True)
    bar = _Progress(cfg.steps, progress)
    loss_sum, loss_count, log_sum, log_count = torch.zeros((), device=device), 0, torch.zeros((), device=device), 0
    train_time = log_time = 0.0
    last: dict[str, float] = {}
    step = 0
    try:
        wrapper.train()
        for step in range(1, cfg.steps + 1):
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            step_loss = torch.zeros((), device=device)
            for _ in range(cfg.grad_accum):
                loss = wrapper(sampler.sample().to(device, non_blocking=True))
                (loss / cfg.grad_accum).backward()
                step_loss += loss.detach() / cfg.grad_accum
            torch.nn.utils.clip_grad_norm_(wrapper.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum, log_sum = loss_sum + step_loss, log_sum + step_loss
            loss_count, log_count = loss_count + 1, log_count + 1
            logging = step % cfg.log_every == 0 or step == cfg.steps
            if logging:
                log_loss = float(log_sum) / log_count  # synchronises the device
            dt = time.perf_counter() - t0
            train_time, log_time = train_time + dt, log_time + dt
            if logging:
                bar.step(step, log_loss, log_count * tokens_per_step / max(log_time, 1e-9))
                log_sum, log_count, log_time = torch.zeros((), device=device), 0, 0.0
            else:
                bar.step(step, None, None)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                sync()
                val_loss = evaluate(wrapper, windows, cfg.eval_batch_size, device)
                last = {"step": step, "train_loss": float(loss_sum) / loss_count, "val_loss": val_loss,
                        "val_bpb": val_loss / math.log(2),
                        "tokens_per_s": loss_count * tokens_per_step / max(train_time, 1e-9),
                        "elapsed_s": time.perf_counter() - start}  # fmt: skip
                with metrics_path.open("a") as f:
                    f.write(json.dumps(last) + "\n")
                bar.write(f"step {step}: train loss {last['train_loss']:.4f}, val loss {val_loss:.4f}, "
                          f"val bpb {last['val_bpb']:.4f}, {last['tokens_per_s']:,.0f} tok/s")  # fmt: skip
                loss_sum, loss_count, train_time = torch.zeros((), device=device), 0, 0.0
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps:
                checkpoint(step)
    except KeyboardInterrupt:
        bar.close()
        checkpoint(step)
        print(f"interrupted at step {step}; checkpoint written to {out / 'checkpoint.pt'}", file=sys.stderr)
        raise
    bar.close()
    checkpoint(cfg.steps)
    print(f"checkpoint: {out / 'checkpoint.pt'} ({time.perf_counter() - start:.1f} s since start)", flush=True)

    if cfg.sample_len > 0:
        prompt_text, sample_text = generate_sample(wrapper, corpus.val, cfg.sample_prompt_len, cfg.sample_len, device)
        atomic_write(out / "sample.txt", lambda f: f.write(f"{prompt_text}\n{'-' * 40}\n{sample_text}\n".encode()))
        print(f"\nprompt ({cfg.sample_prompt_len} bytes of validation data):\n{prompt_text}\n"
              f"\nsample ({cfg.sample_len} generated bytes):\n{sample_text}\n", flush=True)  # fmt: skip
    return last


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of :func:`main`."""

    def positive(kind: type, allow_zero: bool = False) -> Callable[[str], Any]:
        def parse(text: str) -> Any:
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None
            if value < 0 or (value == 0 and not allow_zero):
                raise argparse.ArgumentTypeError(f"must be {'>=' if allow_zero else '>'} 0, got {text}")
            return value

        return parse

    presets = "; ".join(
        f"{name}: dim {c.dim}, depth {c.depth}, group {c.group_size}, seq {c.seq_len}, batch {c.batch_size}x"
        f"{c.grad_accum}, lr {c.lr:g}, {c.steps:,} steps"
        for name, c in PRESETS.items()
    )
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train a byte-level causal FLASH transformer. Training flags default to the preset's values.",
        epilog=f"presets: {presets}",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="configuration preset (default: tiny)")
    p.add_argument("--data", help="enwik8 (.gz or raw) or any text file; default: this Python's stdlib sources")
    p.add_argument("--out", help="output directory (default: runs/<preset>)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--backend", choices=("auto", "triton", "reference"), help="FLASH kernel backend (default: auto)")
    p.add_argument("--steps", type=positive(int), help="optimizer steps")
    p.add_argument("--batch-size", type=positive(int), help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=positive(int), help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=positive(int), help="bytes per training sequence")
    p.add_argument("--lr", type=positive(float), help="peak learning rate")
    p.add_argument("--eval-every", type=positive(int), help="evaluate every this many steps (and at the end)")
    p.add_argument("--sample-len", type=positive(int, allow_zero=True), help="bytes to generate at the end (0: none)")
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a tqdm progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the training program; returns the exit code (2 for bad arguments or data).

    >>> main(["--preset", "nope"])  # argparse prints the error to stderr
    2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports the error itself
        return exc.code if isinstance(exc.code, int) else 2
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    cfg = dataclasses.replace(PRESETS[args.preset], **overrides)
    out = Path(args.out if args.out is not None else Path("runs") / args.preset)
    try:
        device = resolve_device(args.device)
        corpus = load_corpus(args.data)
        corpus.check_fits(cfg.seq_len)
        out.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    h_train, h_val = unigram_entropy(corpus.train), unigram_entropy(corpus.val)
    print(f"corpus: {corpus.name}")
    print(f"split: {len(corpus.train):,} train bytes, {len(corpus.val):,} validation bytes ({corpus.split})")
    print(f"unigram entropy: {h_train:.4f} bits/byte (train), {h_val:.4f} bits/byte (validation)", flush=True)
    run_info = {"preset": args.preset, "data": args.data, "unigram_bpb_train": h_train, "unigram_bpb_val": h_val}
    try:
        last = train(cfg, corpus, device, out, run_info, backend=args.backend, progress=not args.no_progress)
    except BackendUnavailableError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if last:
        print(f"final val bpb {last['val_bpb']:.4f} vs unigram entropy {h_val:.4f} bits/byte (validation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
