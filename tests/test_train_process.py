"""The training program as separate processes: SIGTERM/SIGINT, SIGKILL at random moments and in the middle of
checkpoint writes (then ``--resume``, compared with an uninterrupted run), and a 2-process gloo ``torchrun``.

Every process here runs on one thread (``OMP_NUM_THREADS=1`` in the children, ``torch.set_num_threads(1)`` for the
in-process runs they are compared with), so that results are bit-for-bit comparable across processes.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flash_triton import checkpoint as ckpt_mod
from flash_triton import train as train_mod
from tests._helpers import (
    MICRO,
    assert_same_training_state,
    config_flags,
    load,
    one_torch_thread,
    read_metrics,
    write_text_corpus,
)

ROOT = Path(__file__).resolve().parents[1]
#: 32 steps, a checkpoint every 4 (the newest one kept), evaluations every 6 (so a kill often leaves a metrics record
#: newer than the newest checkpoint, which a resume must drop), dropout so that the random state matters.
KILL_FLAGS = config_flags(
    MICRO, steps=32, eval_every=6, checkpoint_every=4, keep_checkpoints=1, attn_dropout=0.1, sample_len=8
)


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("data") / "corpus.txt")


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, data_file: Path) -> Path:
    """The uninterrupted run of ``KILL_FLAGS`` (one thread): its run directory."""
    out = tmp_path_factory.mktemp("straight") / "run"
    with one_torch_thread():
        assert train_mod.main([*KILL_FLAGS, "--data", str(data_file), "--out", str(out), "--no-progress"]) == 0
    return out


def start(args: list[str], log: Path, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    command = prefix or [sys.executable, "-m", "flash_triton.train"]
    with log.open("wb") as f:
        return subprocess.Popen([*command, *args], cwd=ROOT, env=child_env(), stdout=f, stderr=subprocess.STDOUT)


def wait_for(condition, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"training exited with {proc.returncode} too early:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting:\n{log.read_text()}")
        time.sleep(0.01)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it (torchrun's workers do not share its process group), at once:
    the descendants are listed first, so none of them sees its parent die."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        found.append(parent)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):  # (the task ended meanwhile)
                todo += [int(c) for c in (task / "children").read_text().split()]
    for p in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def newest_step(out: Path) -> int:
    steps = ckpt_mod.step_checkpoints(out)
    return steps[0][0] if steps else 0


def assert_matches_straight(out: Path, straight: Path) -> None:
    assert_same_training_state(load(straight / "checkpoint.pt"), load(out / "checkpoint.pt"))
    keys = ("step", "train_loss", "val_loss", "lr", "tokens")
    assert [[m[k] for k in keys] for m in read_metrics(out)] == [[m[k] for k in keys] for m in read_metrics(straight)]
    assert (out / "sample.txt").read_bytes() == (straight / "sample.txt").read_bytes()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits(signum: int, tmp_path: Path, data_file: Path) -> None:
    out = tmp_path / "run"
    flags = [
        *config_flags(MICRO, steps=100_000, eval_every=5, checkpoint_every=0, sample_len=0),
        "--data",
        str(data_file),
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = start(flags, tmp_path / "log")
    wait_for(
        lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0, proc, tmp_path / "log"
    )
    assert newest_step(out) == 0  # checkpoint_every 0: nothing saved yet
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 128 + signum
    log = (tmp_path / "log").read_text()
    name = signal.Signals(signum).name
    assert f"{name} received" in log and f"stopped by {name} at step" in log
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    step = ckpt["step"]
    assert step >= 5 and newest_step(out) == step
    assert f"at step {step} of 100000" in log
    assert train_mod.main(["--out", str(out), "--resume", "--stop-after", "2"]) == 0
    assert load(out / "checkpoint.pt")["step"] == step + 2


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(
    tmp_path: Path, data_file: Path, straight: Path, one_thread: None
) -> None:
    out = tmp_path / "run"
    flags = [*KILL_FLAGS, "--data", str(data_file), "--out", str(out), "--no-progress"]
    rng = random.Random(7)
    for attempt in range(2):
        log = tmp_path / f"log{attempt}"
        before = newest_step(out)
        target = before + rng.choice([4, 8])
        proc = start(flags + (["--resume"] if attempt else []), log)
        wait_for(lambda target=target: newest_step(out) >= target, proc, log)
        time.sleep(rng.uniform(0.0, 0.05))  # a random moment of the next few steps (training or checkpointing)
        proc.kill()
        assert proc.wait(timeout=30) == -signal.SIGKILL, log.read_text()
        # Whatever the moment, the newest checkpoint loads safely (weights_only) and every kept step file is complete;
        # checkpoint.pt may lag its step file by one save if the kill fell between the two renames.
        found = ckpt_mod.latest_checkpoint(out)
        assert found is not None and found.unreadable == [] and before < found.checkpoint["step"] < 32
        if (out / "checkpoint.pt").exists():
            assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] in (found.checkpoint["step"], before)
    assert train_mod.main([*flags, "--resume"]) == 0
    assert_matches_straight(out, straight)
    assert not list(out.rglob(".*"))  # temporary files of killed writes are cleaned up


DRIVER = """
import io, os, pathlib, signal, sys
import torch
from flash_triton.train import main

phase, calls = sys.argv[1], [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if phase == "mid-write":  # the 2nd checkpoint's data half written to its temporary file
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            die()
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
elif phase == "after-rename":  # the 2nd step file in place, checkpoint.pt not yet pointed at it
    real_replace = os.replace
    def replace(src, dst, **kwargs):
        real_replace(src, dst, **kwargs)
        if os.path.basename(dst).startswith("step_"):
            calls[0] += 1
            if calls[0] == 2:
                die()
    os.replace = replace
elif phase == "during-prune":  # checkpoint.pt updated, the older step file being deleted
    real_unlink = pathlib.Path.unlink
    def unlink(self, *args, **kwargs):
        if self.name.startswith("step_"):
            die()
        return real_unlink(self, *args, **kwargs)
    pathlib.Path.unlink = unlink
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("phase", "latest_step"), [("mid-write", 4), ("after-rename", 8), ("during-prune", 8)])
def test_sigkill_during_checkpoint_write(
    phase: str, latest_step: int, tmp_path: Path, data_file: Path, straight: Path, one_thread: None
) -> None:
    out = tmp_path / "run"
    flags = [*KILL_FLAGS, "--data", str(data_file), "--out", str(out), "--no-progress"]
    proc = start([phase, *flags], tmp_path / "log", prefix=[sys.executable, "-c", DRIVER])
    assert proc.wait(timeout=120) == -signal.SIGKILL, (tmp_path / "log").read_text()
    found = ckpt_mod.latest_checkpoint(out)
    assert found is not None and found.checkpoint["step"] == latest_step
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == (8 if phase == "during-prune" else 4)
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert bool(leftovers) == (phase == "mid-write")  # only the killed write's temporary file
    assert train_mod.main([*flags, "--resume"]) == 0
    assert_matches_straight(out, straight)
    assert not list(out.rglob(".*"))


#: the multi-process runs: 6 steps, evaluations at 3 and 6 over 5 windows in batches of 2 (so the two processes run
#: 2 and 1 batches: --fsdp pads the second), checkpoints at 2, 4 and 6 (the newest two kept), samples at 2, 4 and 6
DIST_FLAGS = [
    *config_flags(
        MICRO,
        steps=6,
        eval_every=3,
        eval_windows=5,
        eval_batch_size=2,
        checkpoint_every=2,
        keep_checkpoints=2,
        sample_len=8,
        sample_every=2,
    ),
    "--device",
    "cpu",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]


def torchrun(args: list[str], timeout: float = 300) -> str:
    """Run the training program as 2 gloo processes; returns the log (the exit code must be 0). On a timeout every
    process of the launch is killed (a hung collective would otherwise keep the workers)."""
    proc = subprocess.Popen(
        [*TORCHRUN, "-m", "flash_triton.train", *args, "--no-progress"],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        log, _ = proc.communicate()
        pytest.fail(f"torchrun timed out after {timeout} s:\n{log}")
    assert proc.returncode == 0, log
    return log


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, data_file: Path) -> tuple[Path, str]:
    """``DIST_FLAGS`` on 2 processes with DistributedDataParallel: the run directory and the log."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, torchrun([*DIST_FLAGS, "--data", str(data_file), "--out", str(out)])


def test_torchrun_two_gloo_processes(
    tmp_path: Path, data_file: Path, ddp_run: tuple[Path, str], one_thread: None
) -> None:
    out, log = ddp_run
    flags = [*DIST_FLAGS, "--data", str(data_file), "--no-progress"]
    single = tmp_path / "single"
    assert "2 processes (DistributedDataParallel)" in log
    assert "ddp: parameters identical on 2 processes" in log  # checked by all-gathering a digest at the end
    assert log.count("step 0: val loss") == 1 and log.count("final val bpb") == 1  # only rank 0 reports
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [3, 6]  # only rank 0 writes
    assert metrics[-1]["tokens"] == 6 * MICRO.batch_size * MICRO.seq_len * 2
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and ckpt["config"]["world_size"] == 2 and len(ckpt["ranks"]) == 2
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000004.pt", "step_0000006.pt"]
    # Each rank reads its own data stream: had both read rank 0's, the averaged gradients would equal one process's
    # and the parameters would be bit-identical to a single-process run.
    assert train_mod.main([*flags, "--out", str(single)]) == 0
    single_model = load(single / "checkpoint.pt")["model"]
    assert any(not torch.equal(t, single_model[k]) for k, t in ckpt["model"].items())
    # The single process's own result is reproduced by its evaluation of the DDP checkpoint's weights.
    assert train_mod.main(["--eval-only", str(out / "checkpoint.pt")]) == 0


def test_fsdp_trains_as_ddp_and_resumes_exactly_after_sigkill(
    tmp_path: Path, data_file: Path, ddp_run: tuple[Path, str]
) -> None:
    """--fsdp on 2 gloo processes: losses, weights and Adam state equal DistributedDataParallel's up to float
    rounding (the checkpoint gathered to process 0 in the same format; evaluations with one batch more on one
    process; samples decoded from a gathered copy mid-run); killed (SIGKILL, every process) after a checkpoint and
    resumed with --fsdp, it ends bit-identical to the uninterrupted --fsdp run."""
    flags = [*DIST_FLAGS, "--data", str(data_file), "--fsdp"]
    straight, killed = tmp_path / "fsdp", tmp_path / "killed"
    log = torchrun([*flags, "--out", str(straight)])
    assert "2 processes (FSDP2: fully_shard per FLASH layer)" in log
    assert "fsdp: parameters, gradients and Adam state sharded over 2 processes" in log
    assert "returned a view" not in log and log.count("final val bpb") == 1
    got, want = load(straight / "checkpoint.pt"), load(ddp_run[0] / "checkpoint.pt")
    assert got["fsdp"] is True and want["fsdp"] is False and got["step"] == want["step"] == 6
    for name, tensor in want["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]
    assert got["optimizer"]["state"].keys() == want["optimizer"]["state"].keys()
    for index, state in want["optimizer"]["state"].items():
        for key, tensor in state.items():
            torch.testing.assert_close(got["optimizer"]["state"][index][key], tensor, rtol=1e-5, atol=1e-7)
    for a, b in zip(read_metrics(straight), read_metrics(ddp_run[0]), strict=True):
        assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)

    log_path = tmp_path / "killed.log"
    launcher = [*TORCHRUN, "-m", "flash_triton.train"]
    proc = start([*flags, "--out", str(killed), "--no-progress"], log_path, prefix=launcher)
    try:
        wait_for(lambda: newest_step(killed) >= 2, proc, log_path)
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=60)
    killed_at = newest_step(killed)
    assert killed_at < 6, "the run ended before the kill: nothing was resumed"
    log = torchrun([*flags, "--out", str(killed), "--resume"])
    assert f"resumed from step {killed_at} of 6" in log
    assert_matches_straight(killed, straight)


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_torchrun_context_parallel_trains_as_one_process_and_resumes_on_one(
    engine: str, tmp_path: Path, data_file: Path, one_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each sequence split over 2 gloo processes (--context-parallel 2, one data-parallel group; replicated by DDP,
    or sharded over both by --fsdp): the same batches, losses (each step's logged loss too: the mean over the
    processes, not process 0's slice) and weights as one process, up to float rounding; its checkpoint resumes on one
    process (another C), and the result still equals the uninterrupted single-process run."""
    out, single = tmp_path / "cp", tmp_path / "single"
    # depth 2 and token shift: the state and the shifted token cross the processes in every layer
    flags = [
        *config_flags(
            MICRO, depth=2, steps=6, eval_every=3, checkpoint_every=3, sample_len=8, shift_tokens=True, log_every=1
        ),
        "--data",
        str(data_file),
        "--device",
        "cpu",
        "--no-progress",
    ]
    sharded = ["--fsdp"] if engine == "fsdp" else []
    log = torchrun([*flags, *sharded, "--context-parallel", "2", "--stop-after", "3", "--out", str(out)])
    assert "context parallelism 2: each sequence of 32 split into 2 slices of 16, 1 data-parallel group(s)" in log
    assert ("FSDP2" in log) == (engine == "fsdp")
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["context_parallel"] == 2 and ckpt["world_size"] == 2
    assert ckpt["fsdp"] == (engine == "fsdp")
    assert read_metrics(out)[0]["tokens"] == 3 * MICRO.batch_size * MICRO.seq_len  # one batch stream, not two

    capsys.readouterr()
    assert train_mod.main([*flags, "--out", str(single)]) == 0
    step_losses = re.compile(r"step (\d)/6  train loss \(this step\) ([\d.]+)")
    logged, logged_single = dict(step_losses.findall(log)), dict(step_losses.findall(capsys.readouterr().out))
    assert sorted(logged) == ["1", "2", "3"] and len(logged_single) == 6
    assert all(abs(float(logged[k]) - float(logged_single[k])) <= 2e-4 for k in logged), (logged, logged_single)
    assert train_mod.main([*flags, "--out", str(out), "--resume"]) == 0  # one process, no context parallelism
    cp_metrics, one_metrics = read_metrics(out), read_metrics(single)
    assert [m["step"] for m in cp_metrics] == [m["step"] for m in one_metrics] == [3, 6]
    for got, want in zip(cp_metrics, one_metrics, strict=True):
        for key in ("train_loss", "val_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (key, got, want)
        assert got["tokens"] == want["tokens"]
    got_model, want_model = load(out / "checkpoint.pt")["model"], load(single / "checkpoint.pt")["model"]
    for name, want in want_model.items():
        torch.testing.assert_close(got_model[name], want, rtol=1e-5, atol=1e-5, msg=name)
