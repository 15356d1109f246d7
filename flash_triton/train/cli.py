"""The command line of the training program (``python -m flash_triton.train``, ``flash-triton-train``): flags,
the checks of everything that can be wrong with the input before anything is written, ``--eval-only``, and
:func:`main`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..autoregressive_wrapper import AutoregressiveWrapper
from ..backend import BackendUnavailableError
from ..checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, one_line
from ..data import Corpus, fingerprint, load_corpus, unigram_entropy, validation_windows
from .config import (
    FIELD_RULES,
    PRECISIONS,
    PRESETS,
    PROG,
    TrainConfig,
    build_model,
    check_same_model,
    check_value,
    config_from_dict,
)
from .loop import TrainingDiverged, lr_at, train
from .metrics import evaluate
from .runtime import DistEnv, autocast, lock_run_dir, release_run_dirs, resolve_device, resolve_precision


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error report (no usage block)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _arg_type(name: str, kind: type, rule: Any) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` checked by :func:`~.config.check_value`'s ``rule``, its message without
    the name (argparse names the flag)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None
        try:
            return check_value(name, value, rule, kind)
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
        epilog=f"presets: {presets}. Exit codes: 0 done or --stop-after, 2 bad input (nothing written), 1 loss or "
        "weights non-finite (nothing non-finite written), 130/143 "
        "stopped by SIGINT/SIGTERM after a checkpoint. Multi-process: torchrun --nproc_per_node N -m "
        "flash_triton.train ...",
    )
    run = p.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(PRESETS), help="configuration preset (default: tiny)")
    run.add_argument(
        "--data",
        help="enwik8 (.gz or raw) or any file; default: this Python's stdlib sources "
        "(on --resume / --eval-only: the checkpoint's data)",
    )
    run.add_argument("--out", help="run directory (default: runs/<preset>)")
    run.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    run.add_argument("--backend", choices=("auto", "triton", "reference"), help="FLASH kernel backend (default: auto)")
    run.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 autocast on GPUs with bf16, else fp16 + grad scaler; fp32 on CPU",
    )
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
        type=_arg_type("stop_after", int, ">0"),
        metavar="STEPS",
        help="stop after this many steps of this invocation, with a checkpoint (exit 0)",
    )
    run.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    run.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each FLASH layer's activations in the backward instead of keeping them (less memory, "
        "about one more forward of compute; the result is exactly the same)",
    )
    run.add_argument(
        "--context-parallel",
        type=_arg_type("context_parallel", int, ">0"),
        default=1,
        metavar="C",
        help="under torchrun: split every sequence over C consecutive processes (context parallelism: each holds "
        "seq_len / C positions, a multiple of group_size; what crosses processes per layer is one state and one "
        "token, whatever the length); data parallelism runs over WORLD_SIZE / C groups (default 1)",
    )
    run.add_argument(
        "--fsdp",
        action="store_true",
        help="under torchrun: shard parameters, gradients and Adam state over the processes with FSDP2 (fully_shard "
        "per FLASH layer; bf16 parameters with float32 gradient reduction under --precision bf16) instead of "
        "replicating them with DistributedDataParallel; checkpoints are gathered to process 0 in the usual format",
    )
    run.add_argument(
        "--save-hf",
        metavar="DIR",
        help="also write the final model as a Hugging Face save_pretrained folder (config.json + model.safetensors; "
        "needs transformers: pip install 'flash-triton[hf]'); DIR must not exist or be empty",
    )

    cfg_group = p.add_argument_group("configuration (default: the preset's value)")
    for f in dataclasses.fields(TrainConfig):
        text, rule = FIELD_RULES[f.name]
        values = ", ".join(f"{name} {getattr(c, f.name)}" for name, c in PRESETS.items())
        flags = ["--" + f.name.replace("_", "-")] + (["--keep"] if f.name == "keep_checkpoints" else [])
        if rule == "bool":
            cfg_group.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=f"{text} ({values})"
            )
        elif isinstance(rule, tuple):
            cfg_group.add_argument(*flags, dest=f.name, choices=rule, help=f"{text} ({values})")
        else:
            cfg_group.add_argument(
                *flags, dest=f.name, type=_arg_type(f.name, type(f.default), rule), help=f"{text} ({values})"
            )
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields given explicitly on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}


def _probe_backend(backend: str | None, device: torch.device, precision: str) -> None:
    """Raise ``BackendUnavailableError`` now (before anything is written) if the backend cannot run here."""
    probe = build_model(TrainConfig(dim=16, depth=1, group_size=4, query_key_dim=8), backend).to(device)
    with torch.no_grad(), autocast(device, precision):
        probe(torch.zeros(1, 8, dtype=torch.long, device=device))


def _check_save_hf(folder: str) -> None:
    """--save-hf: transformers importable and the folder writable as a whole, before anything is written."""
    if not folder.strip():
        raise ValueError("--save-hf must name a folder, got an empty string")
    if importlib.util.find_spec("transformers") is None:
        raise ValueError("--save-hf needs transformers: pip install 'flash-triton[hf]'")
    from ..hf import check_folder

    check_folder("--save-hf", Path(folder))


def _save_hf(out: Path, folder: str) -> None:
    """The run's final checkpoint as a save_pretrained folder."""
    from ..hf import from_training_checkpoint, save_folder

    save_folder(from_training_checkpoint(out / "checkpoint.pt"), Path(folder))
    print(f"wrote the final model to {folder} (Hugging Face save_pretrained: config.json, model.safetensors)")


def _load_data(data: str | None, cfg: TrainConfig) -> Corpus:
    """The corpus; its errors name --data when the user gave one."""
    try:
        corpus = load_corpus(data)
        corpus.check_fits(cfg.seq_len)
    except ValueError as err:
        raise ValueError(f"--data: {err}" if data is not None else str(err)) from None
    return corpus


def _eval_only(args: argparse.Namespace, dist_env: DistEnv) -> int:
    if dist_env.enabled:
        raise ValueError("--eval-only runs in one process: start it without torchrun")
    path = Path(args.eval_only)
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"--eval-only: {err}") from None
    saved = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    try:
        base = PRESETS[args.preset] if args.preset else config_from_dict(saved)
        cfg = dataclasses.replace(base, **overrides_from_args(args))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {str(path)!r} holds an invalid configuration: {err}") from None
    check_same_model(cfg, saved, path)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    data = args.data if args.data is not None else saved.get("data_path", saved.get("data"))
    corpus = _load_data(data, cfg)
    model = build_model(cfg, args.backend)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except (RuntimeError, TypeError, KeyError) as err:
        raise ValueError(f"checkpoint {str(path)!r} does not fit its model configuration: {one_line(err)}") from None
    windows = validation_windows(corpus.val, cfg.seq_len, cfg.eval_windows)
    wrapper = AutoregressiveWrapper(model).to(device)
    val_loss = evaluate(wrapper, windows, cfg.eval_batch_size, device, precision=precision)
    print(f"checkpoint: {path} (step {ckpt['step']})")
    print(
        f"corpus: {corpus.name}, validation split ({corpus.split}): {len(windows)} fixed windows of "
        f"{cfg.seq_len} predicted bytes, precision {precision}"
    )
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


def _keep_schedule(cfg: TrainConfig, saved: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """On resume with other --steps and no --schedule-steps: the cosine decay keeps the span it had (the lr goes on
    at its floor past it) instead of being stretched, which would raise the lr again mid-run."""
    old_steps = saved.get("steps")
    if "schedule_steps" in overrides or not isinstance(old_steps, int) or old_steps == cfg.steps:
        return cfg
    span = int(saved.get("schedule_steps") or old_steps)
    return dataclasses.replace(cfg, schedule_steps=span) if cfg.cosine_decay else cfg


def _check_context_parallel(cfg: TrainConfig, cp: int) -> None:
    """Every slice of a training or validation window a whole number of groups."""
    if cp > 1 and cfg.seq_len % (cp * cfg.group_size):
        raise ValueError(
            f"--context-parallel {cp} splits each sequence on group boundaries: --seq-len ({cfg.seq_len}) must be a "
            f"multiple of {cp} x --group-size ({cfg.group_size}) = {cp * cfg.group_size}"
        )


def _prepare(args: argparse.Namespace, dist_env: DistEnv) -> _Plan | int:
    """Check everything that can be wrong with the input before anything is written; returns an exit code instead of
    a plan when there is nothing to do."""
    device = resolve_device(args.device, dist_env)
    precision = resolve_precision(args.precision, device)
    if args.fsdp and precision == "fp16":
        raise ValueError(
            "--fsdp with fp16: the grad scaler's overflow check would see only this process's gradient shards; "
            "use --precision bf16 on GPUs that have it, else fp32"
        )
    overrides = overrides_from_args(args)
    preset = args.preset or "tiny"
    if args.out is not None and not args.out.strip():
        raise ValueError("--out must name a run directory, got an empty string")
    if args.save_hf is not None:
        _check_save_hf(args.save_hf)
    out = Path(args.out if args.out is not None else Path("runs") / preset)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and dist_env.is_main:  # before reading it: a run still writing there is the error to report
        lock_run_dir(out)
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
            raise ValueError(
                f"checkpoint {str(found.path)!r} has no resume state ({', '.join(missing)}): it was "
                "written by an older version; start a new run"
            )
        try:
            base = PRESETS[args.preset] if args.preset else config_from_dict(saved)
            cfg = dataclasses.replace(base, **overrides)
            cfg = _keep_schedule(cfg, saved, overrides)
        except (TypeError, ValueError) as err:
            raise ValueError(f"checkpoint {str(found.path)!r} holds an invalid configuration: {err}") from None
        check_same_model(cfg, saved, found.path)
        preset = args.preset or str(saved.get("preset", preset))
        if data is None:
            data = saved.get("data_path", saved.get("data"))
    else:
        cfg = dataclasses.replace(PRESETS[preset], **overrides)
        if found is not None and not args.overwrite:
            saved = found.checkpoint["config"] if isinstance(found.checkpoint["config"], dict) else {}
            step, total = int(found.checkpoint["step"]), saved.get("steps")
            if isinstance(total, int) and step < total:
                raise ValueError(
                    f"{str(out)!r} holds an unfinished run (checkpoint at step {step} of {total}): pass "
                    "--resume to continue it, --overwrite to replace it, or another --out"
                )
    _check_context_parallel(cfg, dist_env.context_parallel)
    try:  # shape errors (odd dim, ...) now, and a width this machine cannot hold
        build_model(TrainConfig(**{**dataclasses.asdict(cfg), "depth": 1}))
    except (RuntimeError, MemoryError) as err:  # torch's allocation failure
        raise ValueError(f"cannot build one layer of the model (dim {cfg.dim}): {one_line(err)}") from None
    corpus = _load_data(data, cfg)
    data_fp = fingerprint(corpus)
    if resume is not None and resume.get("data") and resume["data"] != data_fp:
        raise ValueError(
            f"--resume: the data ({corpus.name}: {data_fp['train_bytes']:,} + {data_fp['val_bytes']:,} "
            f"bytes, sha256 {data_fp['sha256'][:12]}) differs from the checkpoint's "
            f"({resume['data']['train_bytes']:,} + {resume['data']['val_bytes']:,} bytes, sha256 "
            f"{resume['data']['sha256'][:12]}); pass the same --data"
        )
    _probe_backend(args.backend, device, precision)
    h_train, h_val = unigram_entropy(corpus.train), unigram_entropy(corpus.val)
    run_info = {
        "preset": preset,
        "data": data,
        "data_path": None if data is None else str(Path(data).resolve()),
        "corpus": corpus.name,
        "data_fingerprint": data_fp,
        "unigram_bpb_train": h_train,
        "unigram_bpb_val": h_val,
        "precision": precision,
        "backend": args.backend,
        "world_size": dist_env.world_size,
        "context_parallel": dist_env.context_parallel,
    }
    if resume is not None:
        run_info["resumed_from"] = str(found.path)  # type: ignore[union-attr]
        if int(resume["step"]) >= cfg.steps:
            if dist_env.is_main:
                print(
                    f"{out}: the run is complete (step {resume['step']} of {cfg.steps}); nothing to do "
                    "(raise --steps to train further)"
                )
            return 0
        changed = [
            f"{k} {v!r} -> {getattr(cfg, k)!r}"
            for k, v in resume["config"].items()
            if k in FIELD_RULES and v != getattr(cfg, k) and (k != "schedule_steps" or k in overrides)
        ]
        if changed and dist_env.is_main:
            print(f"note: changed on resume: {', '.join(changed)}")
            old_steps = resume["config"].get("steps")
            if cfg.cosine_decay and "schedule_steps" not in overrides and old_steps != cfg.steps:
                span = cfg.schedule_steps
                print(
                    f"note: the cosine decay keeps its span of {span} steps (the lr is at its floor "
                    f"{lr_at(cfg, span):.3g} from step {span}); --schedule-steps {cfg.steps} stretches it to the new "
                    "--steps instead (the lr then rises again)"
                )
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
    try:
        return _main(argv)
    finally:
        release_run_dirs()


def _main(argv: list[str] | None) -> int:
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
            for flag, value in (("--stop-after", args.stop_after), ("--save-hf", args.save_hf)):
                if value is not None:
                    raise ValueError(f"{flag} does not apply to --eval-only (it trains no steps)")
            if args.context_parallel != 1 or args.fsdp:
                flag = "--fsdp" if args.fsdp else "--context-parallel"
                raise ValueError(f"{flag} does not apply to --eval-only (it runs in one process)")
            return _eval_only(args, dist_env)
        dist_env = dist_env.split(args.context_parallel)
        if args.fsdp and not dist_env.enabled:
            raise ValueError("--fsdp shards the model over torchrun processes: start it with torchrun")
        plan = _prepare(args, dist_env)
    except (OSError, ValueError) as err:  # CheckpointError is a ValueError
        return _error(one_line(err) if isinstance(err, CheckpointError) else str(err), dist_env)
    except BackendUnavailableError as err:
        return _error(str(err), dist_env)
    except KeyboardInterrupt:  # Ctrl-C while loading: nothing written yet
        return 130
    if isinstance(plan, int):
        return plan
    if dist_env.is_main:  # held until the program ends: a second writer (or a --resume) is refused meanwhile
        try:
            plan.out.mkdir(parents=True, exist_ok=True)
            lock_run_dir(plan.out)
        except (OSError, ValueError) as err:
            return _error(str(err), dist_env)

    control_group = cp_group = None
    if dist_env.enabled:
        import torch.distributed as dist

        if plan.device.type == "cuda":
            torch.cuda.set_device(plan.device)
            dist.init_process_group("nccl", device_id=plan.device)
            control_group = dist.new_group(backend="gloo")
        else:
            dist.init_process_group("gloo")
        if dist_env.context_parallel > 1:  # groups of consecutive ranks; every process creates all, keeps its own
            cp_group, _ = dist.new_subgroups(group_size=dist_env.context_parallel)
    try:
        result = train(
            plan.cfg,
            plan.corpus,
            plan.device,
            plan.out,
            plan.run_info,
            backend=args.backend,
            progress=not args.no_progress,
            precision=plan.precision,
            resume=plan.resume,
            stop_after=args.stop_after,
            dist_env=dist_env,
            control_group=control_group,
            activation_checkpointing=args.activation_checkpointing,
            cp_group=cp_group,
            fsdp=args.fsdp,
        )
        if dist_env.enabled:  # every rank (all finish, or stop, at the same step: stop_signal) past its last
            # collective before any tears its connections down: a gloo rank that left first aborted its peer's exit
            # on a loaded machine, after a finished run once and after --stop-after once (FSDP with context parallelism)
            dist.barrier(group=control_group)
    except (CheckpointError, BackendUnavailableError) as err:  # raised before anything is written
        return _error(str(err), dist_env)
    except TrainingDiverged as err:  # nothing non-finite written; the last checkpoint stays the latest
        _error(str(err), dist_env)
        return 1
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:  # the checkpoints written so far stay valid
        cpu_allocator = "can't allocate memory" in str(err)  # the CPU allocator's RuntimeError
        if isinstance(err, RuntimeError) and not isinstance(err, torch.OutOfMemoryError) and not cpu_allocator:
            raise  # anything else is a bug: its traceback
        _error(f"out of memory: {one_line(err)} (lower --batch-size or --seq-len, or raise --grad-accum)", dist_env)
        return 1
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
    if result.status != "done" and dist_env.is_main and args.save_hf is not None:
        print(f"note: --save-hf: the run stopped before its end; nothing written to {args.save_hf}")
    if result.status == "done" and dist_env.is_main and args.save_hf is not None:
        try:
            _save_hf(plan.out, args.save_hf)
        except (OSError, ValueError) as err:  # the run itself is complete and its checkpoint stays
            _error(f"--save-hf: {err}", dist_env)
            return 1
    return result.exit_code
