"""The training loop: :class:`Trainer` builds the model, optimizer and data stream (restored from a checkpoint on
resume) and runs the steps, evaluations, samples and checkpoints; :func:`train` is the one-call form."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..autoregressive_wrapper import AutoregressiveWrapper
from ..checkpoint import (
    CHECKPOINT_DIR,
    LATEST_NAME,
    CheckpointError,
    atomic_write,
    capture_rng,
    one_line,
    remove_temp_files,
    restore_rng,
    save_checkpoint,
    step_checkpoints,
    to_cpu,
)
from ..data import Corpus, WindowSampler, stream_seed, validation_windows
from ..distributed import context_parallel, suspended, window_slice
from . import sharding
from .config import CHECKPOINT_FORMAT, PROG, TrainConfig, build_model
from .metrics import evaluate, generate_sample, plot_metrics, read_metrics
from .runtime import DistEnv, Progress, StopRequest, autocast, gather, param_digest


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based): linear warm-up, then constant or cosine to 10% at step
    ``schedule_steps`` (0: ``steps``), and 10% after.

    >>> lr_at(TrainConfig(lr=1.0, warmup_steps=10), 5), lr_at(TrainConfig(lr=1.0, steps=100, cosine_decay=True), 100)
    (0.5, 0.1)
    """
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if not cfg.cosine_decay:
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, (cfg.schedule_steps or cfg.steps) - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress))))


class TrainingDiverged(RuntimeError):
    """The training loss or the parameters became non-finite: the run stops without checkpointing them."""


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


class Trainer:
    """One run of the training program, as described in :mod:`flash_triton.train`.

    The constructor builds everything and restores a checkpoint's state (``resume``); it writes nothing, so a
    checkpoint whose tensors do not fit the model is a :class:`~flash_triton.checkpoint.CheckpointError` (a
    ``ValueError``) raised before any file changes. :meth:`run` prepares ``out`` and trains.
    """

    def __init__(
        self,
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
        activation_checkpointing: bool = False,
        cp_group: Any = None,
        fsdp: bool = False,
    ) -> None:
        self.cfg, self.corpus, self.device, self.out, self.run_info = cfg, corpus, device, out, run_info
        self.precision, self.resume, self.stop_after, self.control_group = precision, resume, stop_after, control_group
        self.show_progress, self.backend, self.fsdp = progress, backend, fsdp
        self.dist_env = dist_env or DistEnv()
        self.is_main = self.dist_env.is_main

        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, backend)
        self.model.gradient_checkpointing = activation_checkpointing  # exact: layers recomputed in the backward
        self.wrapper = AutoregressiveWrapper(self.model)
        self.cp = self.dist_env.context_parallel
        if self.cp > 1:  # each process of a context-parallel group holds one slice of every sequence
            context_parallel(self.model, cp_group)
        self.start_step = 0
        if resume is not None:
            self.start_step = int(resume["step"])
            try:
                self.model.load_state_dict(resume["model"], strict=True)
            except (RuntimeError, TypeError, KeyError) as err:
                raise CheckpointError(
                    f"checkpoint at step {self.start_step} does not fit the model: {one_line(err)}"
                ) from None
        if fsdp:  # every process holds the same whole model here (seeded init or the checkpoint): shard it, each
            # unit moved to the device as it is sharded (never the whole model there at once)
            param_dtype = torch.bfloat16 if precision == "bf16" else None
            sharding.shard(self.model, list(self.model.layers), device, param_dtype)
        self.wrapper.to(device)  # (under --fsdp: what is not sharded, the rotary frequencies and the buffers)
        self.optimizer = torch.optim.Adam(self.wrapper.parameters(), lr=lr_at(cfg, max(1, self.start_step + 1)))
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        # one batch stream per data-parallel rank: the processes of a context-parallel group read the same batch
        self.sampler = WindowSampler(
            corpus.train, cfg.batch_size, cfg.seq_len, seed=cfg.seed, rank=self.dist_env.dp_rank
        )
        self.notes: list[str] = []
        progress_state = self._restore(resume) if resume is not None else {}
        if resume is None and self.dist_env.rank > 0:
            torch.manual_seed(stream_seed(cfg.seed, self.dist_env.rank, "rng"))  # own dropout stream; init is rank 0's

        self.ddp = None
        if self.dist_env.enabled and not fsdp:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.wrapper, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.forward = self.ddp if self.ddp is not None else self.wrapper
        self.windows = validation_windows(corpus.val, cfg.seq_len, cfg.eval_windows)
        self.metrics_path, self.png_path = out / "metrics.jsonl", out / "loss.png"
        self.saved_config = {**run_info, **dataclasses.asdict(cfg)}
        self.can_plot = True

        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * self.dist_env.dp_size
        # the running train-loss average since the previous evaluation (restored on resume), and the log window's
        self.loss_sum = torch.tensor(float(progress_state.get("loss_sum", 0.0)), device=device)
        self.loss_count = int(progress_state.get("loss_count", 0))
        self.train_time = float(progress_state.get("train_time", 0.0))
        self.elapsed_before = float(progress_state.get("elapsed_s", 0.0))
        self.initial_val_bpb = progress_state.get("initial_val_bpb")  # the step-0 evaluation, for the plot
        self.log_sum, self.log_count, self.log_time = torch.zeros((), device=device), 0, 0.0
        # every step's loss finite so far (on the device: read, with a sync, only where the loop syncs anyway)
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self.session_steps, self.session_time = 0, 0.0
        self.session_start = 0.0
        self.last_saved = self.start_step if resume is not None else -1
        self.last: dict[str, Any] = {}
        self.bar = Progress(cfg.steps, self.start_step, False, quiet=True)

    def _restore(self, resume: dict[str, Any]) -> dict[str, Any]:
        """Load the optimizer, data position, grad scaler and this process's random state; the progress counters."""
        try:
            if self.fsdp:
                sharding.load_optimizer(self.model, self.optimizer, resume["optimizer"])
            else:
                self.optimizer.load_state_dict(resume["optimizer"])
            self.sampler.load_state_dict(resume["sampler"])
        except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as err:
            raise CheckpointError(f"checkpoint at step {self.start_step} cannot be resumed: {one_line(err)}") from None
        if self.precision == "fp16" and resume.get("scaler"):
            self.scaler.load_state_dict(resume["scaler"])
        progress_state = dict(resume.get("progress") or {})
        ranks = resume.get("ranks") or []
        rank, world, cp = self.dist_env.rank, self.dist_env.world_size, self.cp
        saved_cp = int(resume.get("context_parallel", 1))
        if rank < len(ranks) and len(ranks) == world and saved_cp == cp:
            restore_rng(ranks[rank]["rng"], self.device)
            progress_state["loss_sum"] = ranks[rank]["loss_sum"]
        else:  # another process layout: fresh, rank-dependent random streams (the data position is still exact)
            torch.manual_seed(stream_seed(self.cfg.seed, rank, self.start_step))
            # every process's running loss is a share of the same mean: the mean of the saved shares keeps it
            losses = [r["loss_sum"] for r in ranks]
            progress_state["loss_sum"] = sum(losses) / len(losses) if losses else 0.0
            saved_dp = max(1, len(ranks) // saved_cp)
            data = (
                "the same batches (as many data-parallel streams), new dropout streams"
                if saved_dp == self.dist_env.dp_size
                else f"{saved_dp} -> {self.dist_env.dp_size} data-parallel batch streams and new dropout streams, "
                "so the run is no longer identical to an uninterrupted one"
            )
            self.notes.append(
                f"checkpoint from {len(ranks)} process(es) with context parallelism {saved_cp}, resumed on {world} "
                f"with {cp}: {data}"
            )
        return progress_state

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.session_start

    def prepare_out(self) -> None:
        """Process 0: clear temporary files; replace a previous run's files, or on resume drop what came after the
        checkpoint (unloadable newer checkpoints are renamed, later metrics records cut); write config.json."""
        if not self.is_main:
            return
        out, start_step = self.out, self.start_step
        out.mkdir(parents=True, exist_ok=True)
        remove_temp_files(out)
        remove_temp_files(out / CHECKPOINT_DIR)
        if self.resume is None:  # replace a previous (finished, or --overwrite) run's files
            for _, old in step_checkpoints(out):
                old.unlink()
            for name in (LATEST_NAME, "loss.png", "sample.txt"):
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
            atomic_write(self.metrics_path, lambda f: None)
        else:
            for step_no, newer in step_checkpoints(out):  # newer than the one resumed from: failed to load
                if step_no > start_step:
                    newer.rename(newer.with_name(newer.name + ".unreadable"))
                    self.notes.append(f"{newer.name} did not load; kept as {newer.name}.unreadable")
            kept = [json.dumps(r) + "\n" for r in read_metrics(self.metrics_path) if r["step"] <= start_step]
            atomic_write(self.metrics_path, lambda f: f.write("".join(kept).encode()))
        config_json = json.dumps(self.saved_config, indent=2).encode() + b"\n"
        atomic_write(out / "config.json", lambda f: f.write(config_json))

    def announce(self) -> None:
        cfg, device, dist_env = self.cfg, self.device, self.dist_env
        n_params = sum(p.numel() for p in self.model.parameters())
        self.say(
            f"model: FLASHTransformer dim={cfg.dim} depth={cfg.depth} group_size={cfg.group_size} "
            f"query_key_dim={cfg.query_key_dim} seq_len={cfg.seq_len}: {n_params:,} parameters"
        )
        n_threads = torch.get_num_threads()
        threads = f" ({n_threads} thread{'s' if n_threads != 1 else ''})" if device.type == "cpu" else ""
        engine = "FSDP2: fully_shard per FLASH layer" if self.fsdp else "DistributedDataParallel"
        procs = f", {dist_env.world_size} processes ({engine})" if dist_env.enabled else ""
        if self.cp > 1:
            procs += (
                f"; context parallelism {self.cp}: each sequence of {cfg.seq_len} split into {self.cp} slices of "
                f"{cfg.seq_len // self.cp}, {dist_env.dp_size} data-parallel group(s)"
            )
        self.say(f"device: {device}{threads}, precision {self.precision}{procs}")
        self.say(f"validation: {len(self.windows)} fixed windows of {cfg.seq_len} predicted bytes")
        for note in self.notes:
            self.say(f"note: {note}")

    def evaluate(self) -> float:
        return evaluate(
            self.wrapper,
            self.windows,
            self.cfg.eval_batch_size,
            self.device,
            precision=self.precision,
            dist_env=self.dist_env,
            same_count=self.fsdp,
        )

    def check_finite(self, step: int, lr: float, parameters: bool = False) -> None:
        """Raise :class:`TrainingDiverged` once a step's loss (or, with ``parameters``, a parameter) is not finite;
        under torchrun every process agrees (one all-reduce)."""
        ok = self.finite.clone()
        if parameters:  # (this process's shards under --fsdp: the all-reduce below covers the rest)
            ok &= torch.stack([torch.isfinite(sharding.local(p)).all() for p in self.model.parameters()]).all()
        if self.dist_env.enabled:
            flag = ok.to(torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            ok = flag.bool()
        if bool(ok):
            return
        what = "the training loss" if not bool(self.finite) else "a parameter"
        last = (
            f"the last checkpoint (step {self.last_saved}, finite) is intact in {self.out}"
            if self.last_saved >= 0
            else "no checkpoint was written"
        )
        raise TrainingDiverged(
            f"{what} became non-finite by step {step} (learning rate {lr:.3g}); stopped without saving it: {last}. "
            "Lower --lr or set --grad-clip"
        )

    def checkpoint(self, step: int) -> None:
        self.check_finite(step, lr_at(self.cfg, step), parameters=True)  # never write diverged weights
        per_rank = {"rng": capture_rng(self.device), "loss_sum": float(self.loss_sum)}
        ranks = gather(per_rank, self.dist_env, self.control_group)
        if self.fsdp:  # gathered whole to process 0 (a collective), in the unsharded checkpoint's format
            model_state, optim_state = sharding.full_state(self.model, self.optimizer)
        elif self.is_main:
            model_state, optim_state = self.model.state_dict(), self.optimizer.state_dict()
        if self.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "config": self.saved_config,
                "model": to_cpu(model_state),
                "optimizer": to_cpu(optim_state),
                "scaler": self.scaler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "world_size": self.dist_env.world_size,
                "context_parallel": self.cp,
                "fsdp": self.fsdp,
                "ranks": to_cpu(ranks),
                "progress": {
                    "loss_count": self.loss_count,
                    "train_time": self.train_time,
                    "elapsed_s": self.elapsed(),
                    "initial_val_bpb": self.initial_val_bpb,
                },
                "data": self.run_info.get("data_fingerprint"),
            }
            save_checkpoint(self.out, state, step, self.cfg.keep_checkpoints)
        self.last_saved = step

    def whole_sequences(self) -> contextlib.AbstractContextManager[Any]:
        """Context parallelism off (one process decoding a sample alone), else nothing."""
        return suspended(self.model) if self.cp > 1 else contextlib.nullcontext()

    def sampling_wrapper(self) -> AutoregressiveWrapper | None:
        """What decodes samples, on process 0 (None elsewhere): the model itself, or under --fsdp a whole copy
        gathered from the shards (a collective of every process: decoding token by token needs no peers then), on
        process 0's device: the parameters once more there while a sample is decoded. Called inside
        :meth:`write_sample`'s forked RNG (building the copy draws its initial weights)."""
        if not self.fsdp:
            return self.wrapper if self.is_main else None
        state, _ = sharding.full_state(self.model, None)
        if not self.is_main:
            return None
        copy = build_model(self.cfg, self.backend)
        copy.load_state_dict(state, strict=True)
        return AutoregressiveWrapper(copy).to(self.device).eval()

    def write_sample(self, step: int) -> tuple[str, str] | None:
        """Decode and write ``sample.txt`` (process 0); under --fsdp every process calls it (see
        :meth:`sampling_wrapper`)."""
        device, cfg = self.device, self.cfg
        devices = (
            [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        )
        with torch.random.fork_rng(devices=devices):  # the training RNG is untouched (sampling; the --fsdp copy)
            wrapper = self.sampling_wrapper()
            if wrapper is None:
                return None
            with autocast(device, self.precision), self.whole_sequences():
                torch.manual_seed(cfg.seed)  # the same sample for the same weights
                prompt, sample = generate_sample(
                    wrapper, self.corpus.val, cfg.sample_prompt_len, cfg.sample_len, device
                )
        text = f"step {step}\nprompt:\n{prompt}\n{'-' * 40}\n{sample}\n"
        atomic_write(self.out / "sample.txt", lambda f: f.write(text.encode()))
        return prompt, sample

    def train_step(self, step: int) -> float:
        """One optimizer step (``grad_accum`` micro-batches) and its log line; returns the step's learning rate."""
        cfg, device = self.cfg, self.device
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            batch = self.sampler.sample()
            if self.cp > 1:  # this process's slice of every window (and its slice's next tokens)
                batch = window_slice(batch, self.dist_env.cp_rank, self.cp)
            batch = batch.to(device, non_blocking=True)
            no_sync = self.ddp is not None and micro < cfg.grad_accum - 1
            with self.ddp.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[union-attr]
                with autocast(device, self.precision):
                    loss = self.forward(batch)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            step_loss += loss.detach().float() / cfg.grad_accum
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.wrapper.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_sum, self.log_sum = self.loss_sum + step_loss, self.log_sum + step_loss
        self.loss_count, self.log_count = self.loss_count + 1, self.log_count + 1
        self.finite &= torch.isfinite(step_loss)
        logging = step % cfg.log_every == 0 or step == cfg.steps
        if logging:
            self.check_finite(step, lr)
            log_sum = self.log_sum
            if self.dist_env.enabled:  # the mean over every process (context parallel: not process 0's slice alone)
                log_sum = log_sum.clone()
                torch.distributed.all_reduce(log_sum)
                log_sum /= self.dist_env.world_size
            log_loss = float(log_sum) / self.log_count  # synchronises the device
        dt = time.perf_counter() - t0
        self.train_time, self.log_time = self.train_time + dt, self.log_time + dt
        self.session_steps, self.session_time = self.session_steps + 1, self.session_time + dt
        if logging:
            eta = (cfg.steps - step) * self.session_time / self.session_steps
            tokens_per_s = self.log_count * self.tokens_per_step / max(self.log_time, 1e-9)
            self.bar.step(step, log_loss, tokens_per_s, eta, window=self.log_count)
            self.log_sum, self.log_count, self.log_time = torch.zeros((), device=device), 0, 0.0
        else:
            self.bar.step(step, None, None, None)
        return lr

    def evaluate_and_log(self, step: int, lr: float) -> None:
        """Validation loss, one metrics record (and the plot redrawn), and the running train average reset."""
        self.check_finite(step, lr)
        summed = self.loss_sum.detach().clone()
        if self.dist_env.enabled:
            torch.distributed.all_reduce(summed)
        val_loss = self.evaluate()
        self.last = {
            "step": step,
            "train_loss": float(summed) / (self.loss_count * self.dist_env.world_size),
            "val_loss": val_loss,
            "val_bpb": val_loss / math.log(2),
            "lr": lr,
            "tokens": step * self.tokens_per_step,
            "tokens_per_s": self.loss_count * self.tokens_per_step / max(self.train_time, 1e-9),
            "elapsed_s": self.elapsed(),
        }
        if self.is_main:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(self.last) + "\n")
            title = str(self.run_info.get("corpus", ""))
            entropy = self.run_info.get("unigram_bpb_val")
            if self.can_plot and not plot_metrics(
                self.metrics_path, self.png_path, title, self.initial_val_bpb, entropy
            ):
                self.can_plot = False
                self.bar.write("info: matplotlib is not installed: no loss.png")
        self.bar.write(
            f"step {step}: train loss {self.last['train_loss']:.4f} (mean of the {self.loss_count} steps since the "
            f"previous evaluation), val loss {val_loss:.4f}, "
            f"val bpb {self.last['val_bpb']:.4f}, {self.last['tokens_per_s']:,.0f} tok/s"
        )
        self.loss_sum, self.loss_count, self.train_time = torch.zeros((), device=self.device), 0, 0.0

    def stop_signal(self, stop: StopRequest) -> int:
        """The signal that asks the run to stop (0: none); under torchrun every process agrees on it."""
        signum = stop.signum or 0
        if self.dist_env.enabled:  # every process stops at the same step
            flag = torch.tensor([signum], dtype=torch.int64)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.control_group)
            signum = int(flag)
        return signum

    def run(self) -> RunResult:
        """Train from the start (or the resumed step) to the last step, a stop request or ``stop_after``."""
        cfg, out = self.cfg, self.out
        self.prepare_out()
        self.announce()
        self.session_start = time.perf_counter()
        step = self.start_step
        result: RunResult | None = None
        stop = StopRequest()
        try:
            with stop.installed():  # from here on SIGINT/SIGTERM stop the run after the current step, with a checkpoint
                if self.resume is None:
                    val_loss = self.evaluate()
                    self.initial_val_bpb = val_loss / math.log(2)
                    self.say(f"step 0: val loss {val_loss:.4f}, val bpb {self.initial_val_bpb:.4f}")
                else:
                    resumed_from = self.run_info.get("resumed_from", "checkpoint")
                    self.say(f"resumed from step {self.start_step} of {cfg.steps} ({resumed_from})")
                self.bar = Progress(cfg.steps, self.start_step, self.show_progress, quiet=not self.is_main)
                self.wrapper.train()
                for step in range(self.start_step + 1, cfg.steps + 1):
                    lr = self.train_step(step)
                    if step % cfg.eval_every == 0 or step == cfg.steps:
                        self.evaluate_and_log(step, lr)
                    sampling = (self.is_main or self.fsdp) and cfg.sample_len and cfg.sample_every
                    if sampling and step % cfg.sample_every == 0 and step < cfg.steps:
                        self.write_sample(step)
                    if step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                        self.checkpoint(step)

                    signum = self.stop_signal(stop)
                    stop_after = self.stop_after
                    stopping = step < cfg.steps and (signum or (stop_after and step - self.start_step >= stop_after))
                    if stopping:
                        if self.last_saved != step:
                            self.checkpoint(step)
                        self.bar.close()
                        how = (
                            f"by {signal.Signals(signum).name}"
                            if signum
                            else f"after {stop_after} steps (--stop-after)"
                        )
                        self.say(
                            f"stopped {how} at step {step} of {cfg.steps}; checkpoint {out / LATEST_NAME}; "
                            f"continue with --resume --out {out}"
                        )
                        result = RunResult("signal" if signum else "stopped", step, self.last, signum or None)
                        break
        except KeyboardInterrupt:
            self.bar.close()
            last_saved = self.last_saved
            where = (
                f"the last checkpoint (step {last_saved}) is intact" if last_saved >= 0 else "no checkpoint was written"
            )
            print(f"{PROG}: aborted at step {step}; {where}", file=sys.stderr, flush=True)
            raise
        finally:
            self.bar.close()
        if result is not None:
            return result
        return self.finish(step)

    def finish(self, step: int) -> RunResult:
        """After the last step: the processes' parameters compared, the final sample written and printed."""
        cfg, dist_env = self.cfg, self.dist_env
        self.say(
            f"checkpoint: {self.out / LATEST_NAME} (step {step}, "
            f"{time.perf_counter() - self.session_start:.1f} s this session)"
        )
        if self.fsdp:
            self.say(f"fsdp: parameters, gradients and Adam state sharded over {dist_env.world_size} processes")
        elif dist_env.enabled:
            digests = gather(param_digest(self.model), dist_env, self.control_group)
            if len(set(digests)) != 1:
                raise RuntimeError(f"parameters differ between processes after training: {digests}")
            self.say(f"ddp: parameters identical on {dist_env.world_size} processes (sha256 {digests[0][:16]})")
        written = self.write_sample(step) if (self.is_main or self.fsdp) and cfg.sample_len > 0 else None
        if written is not None:
            prompt_text, sample_text = written
            self.say(
                f"\nprompt ({cfg.sample_prompt_len} bytes of validation data):\n{prompt_text}\n"
                f"\nsample ({cfg.sample_len} generated bytes):\n{sample_text}\n"
            )
        return RunResult("done", step, self.last)


def train(*args: Any, **kwargs: Any) -> RunResult:
    """``Trainer(*args, **kwargs).run()``: train, evaluate, checkpoint and sample as described in
    :mod:`flash_triton.train`, with :class:`Trainer`'s arguments.

    ``resume`` is a loaded checkpoint to continue from; ``stop_after`` stops (with a checkpoint) after that many steps
    of this call. Under torchrun the process group must already be initialised; ``control_group`` is a gloo group for
    the small CPU-side exchanges (``None``: the default group). A checkpoint whose tensors do not fit the model is a
    :class:`~flash_triton.checkpoint.CheckpointError` (a ``ValueError``) raised before anything is written.
    """
    return Trainer(*args, **kwargs).run()
