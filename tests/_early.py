"""Subprocess checks started when collection ends, so they run beside the rest of the suite.

Most of the suite is one pytest process running the CPU interpreter: one core busy, the other idle. The slowest
checks are child processes that compile for the GPU or run a whole program (the quick GPU-compile check, the
static profile, the benchmark suite, the GPU script's plumbing). A test marked
``@pytest.mark.early_subprocess.with_args(cmd)`` (``with_args``: a lone function argument would be taken for the
decorated test) names a command builder ``cmd(workdir, jobs) -> Command``; so does a module's ``EARLY_FIXTURES``
(fixture name -> builder) for every test that uses one of those fixtures (a test that waited for such a fixture in
its place would hold the others back until the command ended). ``conftest.py`` moves those tests to the end of the
run and starts their commands, one after another, in a background thread as soon as collection ends; the test (or
its fixture) asks the ``early_subprocess`` fixture for its command's result and waits for it. Nothing about the
check changes: the same command, the same assertions, only an earlier start. Run alone, a check gets every core;
beside other tests, every core but one (``jobs``: one on a 2-core machine)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path


@dataclasses.dataclass
class Command:
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: str | Path | None = None
    timeout: float = 900


@dataclasses.dataclass
class Finished:
    """A command's outcome: ``returncode`` None when it timed out or the run stopped first; ``workdir`` is an empty
    directory the command was given (for its TMPDIR or output), kept until the session ends."""

    returncode: int | None
    stdout: str
    stderr: str
    workdir: Path


Builder = Callable[[Path, int], Command]


def builder_of(item) -> Builder | None:
    """The builder a collected test waits for: its ``early_subprocess`` mark's, else that of the first fixture it
    uses that its module lists in ``EARLY_FIXTURES``; None for the others."""
    marker = item.get_closest_marker("early_subprocess")
    if marker is not None:
        return marker.args[0]
    fixtures = getattr(getattr(item, "module", None), "EARLY_FIXTURES", {})
    return next((b for name, b in fixtures.items() if name in getattr(item, "fixturenames", ())), None)


class EarlyRunner:
    """Runs the builders' commands one at a time in a daemon thread; ``result(builder)`` waits for one."""

    def __init__(self, builders: list[Builder], jobs: int):
        self._builders = list(builders)
        self._root = Path(tempfile.mkdtemp(prefix="flash_triton_early_"))
        self._done = {b: threading.Event() for b in self._builders}
        self._results: dict[Builder, Finished] = {}
        # the commands are built here, in the main thread before any test runs: a test that changes os.environ
        # for a while (monkeypatch) cannot leak into a child started later
        self._commands: dict[Builder, tuple[Command, Path]] = {}
        for i, builder in enumerate(self._builders):
            workdir = self._root / str(i) / "work"
            workdir.mkdir(parents=True)
            try:
                cmd = builder(workdir, jobs)
            except Exception as exc:  # a builder that fails is the test's failure, reported there
                self._finish(builder, Finished(None, "", f"{type(exc).__name__}: {exc}", workdir))
                continue
            env = dict(os.environ) if cmd.env is None else cmd.env
            self._commands[builder] = (dataclasses.replace(cmd, env=env), workdir)
        self._proc: subprocess.Popen | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run_all, name="early-subprocesses", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def has(self, builder: Builder) -> bool:
        return builder in self._done

    def result(self, builder: Builder) -> Finished:
        self._done[builder].wait()
        return self._results[builder]

    def stop(self) -> None:
        """Kill a running command (an aborted session: ``-x``, Ctrl-C) and remove every work directory."""
        with self._lock:
            self._stopped = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        shutil.rmtree(self._root, ignore_errors=True)

    def _finish(self, builder: Builder, result: Finished) -> None:
        self._results[builder] = result
        self._done[builder].set()

    def _run_all(self) -> None:
        for builder, (cmd, workdir) in self._commands.items():
            try:
                result = self._run_one(cmd, workdir)
            except Exception as exc:  # e.g. a command that does not exist: the test's failure, reported there
                result = Finished(None, "", f"{type(exc).__name__}: {exc}", workdir)
            self._finish(builder, result)

    def _run_one(self, cmd: Command, workdir: Path) -> Finished:
        out_path, err_path = workdir.parent / "stdout", workdir.parent / "stderr"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            with self._lock:
                if self._stopped:
                    return Finished(None, "", "the test session stopped before this command started", workdir)
                self._proc = subprocess.Popen(cmd.argv, env=cmd.env, cwd=cmd.cwd, stdout=out, stderr=err, text=True)
            try:
                rc = self._proc.wait(timeout=cmd.timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                rc = None
                err.write(f"\n[early_subprocess] killed after {cmd.timeout} s\n")
        return Finished(rc, out_path.read_text(), err_path.read_text(), workdir)


def run_now(builder: Builder, workdir: Path) -> Finished:
    """The same command run in the foreground with every core (a marked test whose command was not started)."""
    cmd = builder(workdir, os.cpu_count() or 1)
    try:
        proc = subprocess.run(cmd.argv, env=cmd.env, cwd=cmd.cwd, capture_output=True, text=True, timeout=cmd.timeout)
    except subprocess.TimeoutExpired as exc:  # its captured output may come back as bytes
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (exc.stdout, exc.stderr))
        return Finished(None, out, f"{err}\n[early_subprocess] killed after {cmd.timeout} s", workdir)
    return Finished(proc.returncode, proc.stdout, proc.stderr, workdir)
