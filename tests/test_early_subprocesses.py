"""The runner behind ``early_subprocess`` (tests/_early.py): commands run one after another in the background, each
with its own empty work directory and the environment of the moment it was built; a failing builder, a missing
program and a timeout are results the waiting test reports; stopping kills a running command and removes the work
directories; the foreground fallback gives the same outcome."""

import os
import signal
import sys
import time

from tests._early import Command, EarlyRunner, builder_of, run_now


def _printer(text: str, sleep: float = 0.0, timeout: float = 60):
    code = f"import os, sys, time; time.sleep({sleep}); print({text!r}, os.environ.get('EARLY_PROBE'), sys.argv[1])"

    def build(workdir, jobs):
        return Command([sys.executable, "-c", code, f"{jobs}:{len(os.listdir(workdir))}"], timeout=timeout)

    return build


def test_commands_run_in_order_with_their_environment_at_build_time(monkeypatch):
    first, second = _printer("first", sleep=0.2), _printer("second")
    monkeypatch.setenv("EARLY_PROBE", "built")
    runner = EarlyRunner([first, second], jobs=3)
    monkeypatch.setenv("EARLY_PROBE", "changed later")  # a test's monkeypatch after collection must not leak
    runner.start()
    try:
        a, b = runner.result(first), runner.result(second)
        assert (a.returncode, a.stdout.split()) == (0, ["first", "built", "3:0"])  # jobs passed, workdir empty
        assert (b.returncode, b.stdout.split()) == (0, ["second", "built", "3:0"])
        assert a.workdir != b.workdir and a.workdir.is_dir() and runner.has(first) and not runner.has(_printer("x"))
    finally:
        runner.stop()
    assert not a.workdir.exists()  # removed at the session's end


def test_failures_are_results_for_the_waiting_test():
    def broken(workdir, jobs):
        raise RuntimeError("no such tool")

    def missing(workdir, jobs):
        return Command(["/nonexistent/flash_triton_tool"])

    slow = _printer("never", sleep=30, timeout=0.5)
    runner = EarlyRunner([broken, missing, slow], jobs=1)
    runner.start()
    try:
        got = runner.result(broken)
        assert got.returncode is None and "RuntimeError: no such tool" in got.stderr
        got = runner.result(missing)
        assert got.returncode is None and "FileNotFoundError" in got.stderr
        got = runner.result(slow)
        assert got.returncode is None and "killed after 0.5 s" in got.stderr
    finally:
        runner.stop()


def test_stop_kills_the_running_command_and_starts_no_other():
    slow, after = _printer("slow", sleep=60), _printer("after")
    runner = EarlyRunner([slow, after], jobs=1)
    runner.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    runner.stop()
    assert time.monotonic() - t0 < 10
    assert runner.result(slow).returncode == -signal.SIGKILL
    assert runner.result(after).returncode is None and "stopped before" in runner.result(after).stderr


def test_the_foreground_fallback_gives_every_core(tmp_path):
    got = run_now(_printer("now"), tmp_path)
    assert got.returncode == 0 and got.stdout.split() == ["now", "None", f"{os.cpu_count() or 1}:0"]
    got = run_now(_printer("late", sleep=30, timeout=0.5), tmp_path)
    assert got.returncode is None and "killed after 0.5 s" in got.stderr


def test_the_waiting_tests_run_after_the_others(request):
    """conftest.py moves every test that waits for an early command (marked, or using a fixture of its module's
    ``EARLY_FIXTURES``) behind the others of the session: in a run of the whole suite, every test of the four
    checks (the benchmark suite's render tests, which use its fixture, included) behind the rest."""
    waits = [builder_of(item) is not None for item in request.session.items]
    assert waits == sorted(waits)
    if len(request.session.items) > 700:  # the whole suite
        tail = [item.name for item, w in zip(request.session.items, waits, strict=True) if w]
        assert "test_render_puts_two_runs_side_by_side" in tail and "test_quick_profile_compiles" in " ".join(tail)
        assert "test_kernels_compile_for_sm80_and_sm90_without_spills" in tail
