"""Test set-up. Triton's CPU interpreter must be chosen before triton is imported, so it is set here, first,
where no CUDA device exists."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":
    # @triton.jit reads TRITON_INTERPRET when a kernel module is imported: import them now, so a test that sets
    # TRITON_INTERPRET=0 for a while (tests/test_backend.py) and happens to be the first importer cannot leave
    # compiled-mode kernels that the interpreter later refuses to call ("Cannot call @triton.jit'd outside of the
    # scope of a kernel": a failure that depended on which test files ran, and in which order)
    import contextlib

    with contextlib.suppress(Exception):  # no or a broken triton: the tests that need it say so themselves
        import flash_triton.mixed_chunk_attn.op  # noqa: F401
        import flash_triton.quad_attn.op  # noqa: F401


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poison_outputs(monkeypatch):
    """Every buffer the kernels write is filled with NaN first, so an element no program writes fails loudly."""
    jit = pytest.importorskip("flash_triton.common.jit")
    monkeypatch.setattr(jit, "POISON_OUTPUTS", True)


@pytest.fixture
def one_thread():
    """torch on one CPU thread during the test (micro models gain nothing from more, and stay fast on a busy
    machine)."""
    from tests._helpers import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(params=["short", "streaming"])
def kernel_path(request, monkeypatch):
    """The two kernel sets, forward and backward: "short" (windows of at most qa.SHORT_WINDOW tokens: the weights
    and score gradients of each tile computed once and stored) and "streaming" (longer windows: the scores
    recomputed tile by tile, nothing of size W x W stored), forced here for every window."""
    if request.param == "streaming":
        monkeypatch.setattr(pytest.importorskip("flash_triton.quad_attn.kernels"), "SHORT_WINDOW", 0)
    return request.param


# ------------------------------------------------------------------------------------------------------------------
# subprocess checks started early (tests/_early.py): marked tests run last, their commands start when collection ends

_EARLY = pytest.StashKey()


def _early_builder(item):
    from tests._early import builder_of

    return builder_of(item)


def _will_run(item) -> bool:
    """Not skipped by a skip / skipif mark (a GPU machine must not start the GPU script's no-GPU plumbing check)."""
    try:
        from _pytest.skipping import evaluate_skip_marks
    except ImportError:  # pytest moved it: start nothing early; the tests then run their commands themselves
        return False
    return evaluate_skip_marks(item) is None


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: only the tests that will run
def pytest_collection_modifyitems(config, items):
    items[:] = [i for i in items if _early_builder(i) is None] + [i for i in items if _early_builder(i) is not None]


def pytest_collection_finish(session):
    from tests._early import EarlyRunner

    builders = list(dict.fromkeys(_early_builder(i) for i in session.items if _early_builder(i) and _will_run(i)))
    if builders and not session.config.option.collectonly:
        cores = os.cpu_count() or 1
        alone = all(_early_builder(i) is not None for i in session.items)
        runner = EarlyRunner(builders, jobs=cores if alone else max(1, cores - 1))  # one core left to the tests
        session.config.stash[_EARLY] = runner
        runner.start()


def pytest_sessionfinish(session):
    runner = session.config.stash.get(_EARLY, None)
    if runner is not None:
        runner.stop()


@pytest.fixture(scope="session")
def early_subprocess(request, tmp_path_factory):
    """``early_subprocess(builder)``: the ``Finished`` outcome of a builder's command (tests/_early.py), started
    when collection ended, or now, in the foreground, when it was not."""
    from tests._early import run_now

    runner = request.config.stash.get(_EARLY, None)

    def get(builder):
        if runner is not None and runner.has(builder):
            return runner.result(builder)
        return run_now(builder, tmp_path_factory.mktemp("early"))

    return get
