"""The benchmark suite (``python -m benchmarks.run``): it runs end to end on CPU at tiny sizes and writes rows with
their provenance, consistent speed-ups, the Markdown tables and PNG plots; its guards turn failures into rows; its
FLOP formulas equal a brute-force count of the products the reference path executes."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import flash_triton as ft
from benchmarks import formulas, report
from benchmarks.baselines import TransformerPP, TransformerPPLM
from benchmarks.common import PROVIDERS, Context, Skip, cpu_bench, cpu_step_memory
from benchmarks.run import main, sweep_shapes
from benchmarks.subjects import SUBJECTS, load
from flash_triton import reference as ref
from tests._early import Command

REPO = Path(__file__).resolve().parents[1]
PROVENANCE = {"device", "device_kind", "torch", "triton", "flash_triton", "flash_pytorch", "commit", "date"}
ROW_FIELDS = {"subject", "provider", "mode", "dtype", "n", "batch", "tokens", "shape", "flops", "bytes"}
CEILINGS = {"matmul_tflops", "copy_gbps"}
TIMED_FIELDS = {"ms", "ms_p20", "ms_p80", "reps", "first_call_s", "peak_mib", "tflops", "gbps", "floor_ms"}
TINY = ["--quick", "--device", "cpu", "--n", "128", "256", "--tokens", "256", "--batch1-n", "256", "--budget-s", "900"]
TINY += ["--model-depth", "1", "--threads", "1", "--providers", "reference", "upstream", "transformer++", "projections"]
TINY += ["hf"]


def _run_suite(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "benchmarks.run", *args, "--out", str(out)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _tiny_suite(workdir, jobs) -> Command:
    """One tiny ``--quick --device cpu`` run of every subject, as a user would type it (``--threads 1``)."""
    return Command([sys.executable, "-m", "benchmarks.run", *TINY, "--out", str(workdir)], None, REPO, 600)


# every test that uses cpu_suite waits for the one child process, started when collection ends (tests/_early.py)
EARLY_FIXTURES = {"cpu_suite": _tiny_suite}


@pytest.fixture(scope="module")
def cpu_suite(early_subprocess):
    res = early_subprocess(_tiny_suite)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.workdir, res.stdout, json.loads((res.workdir / "results.json").read_text())


@pytest.mark.slow
def test_cpu_run_writes_rows_with_provenance(cpu_suite):
    _out, _stdout, data = cpu_suite
    rows, run = data["rows"], data["run"]
    assert run["device_kind"] == "cpu" and run["device"].startswith("CPU")
    assert run["providers"] == ["reference", "upstream", "transformer++", "projections", "hf"]
    assert set(run["ceilings"]) == {"fp32"} and run["ceilings"]["fp32"]["matmul_tflops"] > 0
    # measured before the first subject and after each; every row's floor uses the best of them
    samples = run["ceilings"]["fp32"]["matmul_tflops_samples"]
    assert len(samples) == len(SUBJECTS) + 1 and run["ceilings"]["fp32"]["matmul_tflops"] == max(samples)
    assert all(r["matmul_tflops"] == max(samples) for r in rows)
    assert len(run["loadavg_start"]) == 3 and len(run["loadavg_end"]) == 3
    assert {r["subject"] for r in rows} == set(SUBJECTS)
    for r in rows:
        missing = (PROVENANCE | ROW_FIELDS | CEILINGS | {"loadavg_1min", "sweeps"}) - set(r)
        assert not missing, (r["subject"], r["provider"], missing)
        assert r["dtype"] == "fp32" and r["device_kind"] == "cpu"
        assert r["tokens"] == r["n"] * r["batch"] and r["flops"] > 0 and r["bytes"] > 0
        if r["provider"] in ("upstream", "hf") and r.get("error"):
            assert r["error"].startswith("not installed")  # FLASH-pytorch / transformers absent: a row that says so
            continue
        assert not r.get("error"), r
        assert not TIMED_FIELDS - set(r), TIMED_FIELDS - set(r)
        assert 0 < r["ms_p20"] <= r["ms"] <= r["ms_p80"] and r["reps"] >= 3
        assert r["tflops"] == pytest.approx(r["flops"] / (r["ms"] * 1e-3) / 1e12)
        floor = max(r["flops"] / (r["matmul_tflops"] * 1e12), r["bytes"] / (r["copy_gbps"] * 1e9))
        assert r["floor_ms"] == pytest.approx(floor * 1e3)
        assert r["roofline_fraction"] == pytest.approx(r["floor_ms"] / r["ms"])
    # every subject's table compares its providers in the same run; upstream has no separate attention op
    for subject in set(SUBJECTS) - {"decode"}:
        for mode in ("fwd", "fwd+bwd"):
            got = {r["provider"] for r in rows if r["subject"] == subject and r["mode"] == mode and r.get("ms")}
            assert {"reference", "transformer++"} <= got, (subject, mode, got)
            # the identity-core baseline: the layers only
            assert ("projections" in got) == (subject in ("flash-layer", "gau-layer")), (subject, mode, got)
    assert not any(r["provider"] == "upstream" for r in rows if r["subject"] in ("quad-attn", "mixed-chunk-attn"))
    # the sweeps: constant tokens (128 x 2, 256 x 1) and batch 1 (256), the shared shape measured once
    shapes = {(r["n"], r["batch"]): r["sweeps"] for r in rows if r["subject"] != "decode"}
    assert shapes == {(128, 2): ["tokens"], (256, 1): ["tokens", "batch1"]}
    # decoding: one token at each context length of the run, per token, cached (reference) vs FLASH-pytorch
    decode = [r for r in rows if r["subject"] == "decode"]
    assert {(r["n"], r["batch"], r["mode"], r["provider"]) for r in decode} == {
        (n, 1, "fwd", p) for n in (128, 256) for p in ("reference", "upstream", "hf")
    }
    for r in decode:
        assert r["sweeps"] == ["context"] and r["shape"]["context"] == r["n"]
        if r["provider"] in ("reference", "hf"):
            assert r["shape"]["tokens_per_call"] == 256  # one call generates a whole group; the row is per token
            assert r["flops"] == formulas.decode_flops(512, 128, 1024, 256, 256, 1)


@pytest.mark.slow
def test_cpu_run_ratios_are_consistent(cpu_suite):
    rows = cpu_suite[2]["rows"]
    by_group = {}
    for r in rows:
        if r.get("ms"):
            by_group.setdefault((r["subject"], r["mode"], r["n"], r["batch"]), {})[r["provider"]] = r
    pairs = 0
    for group in by_group.values():
        for a, ra in group.items():
            assert set(ra["speedup_over"]) == set(group) - {a}
            for b, rb in group.items():
                if a != b:
                    assert ra["speedup_over"][b] == pytest.approx(rb["ms"] / ra["ms"])
                    assert ra["speedup_over"][b] * rb["speedup_over"][a] == pytest.approx(1.0)
                    pairs += 1
    assert pairs >= 2 * len(by_group)


@pytest.mark.slow
def test_cpu_run_writes_markdown_and_prints_the_summary_last(cpu_suite):
    out, stdout, data = cpu_suite
    md = (out / "results.md").read_text()
    assert "**CPU figures.**" in md and data["run"]["commit"] in md and "load average" in md
    for name in SUBJECTS:
        assert load(name).TITLE in md
    assert "| n | batch | sweep | provider | ms [p20, p80] |" in md
    summary = (out / "summary.md").read_text()
    lines = [line for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    groups = {(r["subject"], r["mode"], r["n"], r["batch"]) for r in data["rows"]}
    assert len(lines) == 1 + len(groups)  # header + one line per (subject, mode, shape), every provider a column
    assert lines[0].startswith(
        "| subject | dtype | mode | n | batch | reference | upstream | transformer++ | projections |"
    )
    assert stdout.rstrip().endswith(summary.rstrip())


@pytest.mark.slow
def test_cpu_run_plots_open(cpu_suite):
    image = pytest.importorskip("matplotlib.image", reason="matplotlib is not installed")
    out = cpu_suite[0]
    pngs = sorted((out / "plots").glob("*.png"))
    # batch1 has one length: no plot; decoding has its own sweep over the context length
    assert {p.name for p in pngs} == {f"{s}-fp32-tokens.png" for s in set(SUBJECTS) - {"decode"}} | {
        "decode-fp32-context.png"
    }
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
        pixels = image.imread(p)
        assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 600


@pytest.mark.slow
def test_render_rewrites_the_tables_from_the_json(cpu_suite, tmp_path, capsys):
    out = cpu_suite[0]
    assert main(["--render", str(out / "results.json"), "--out", str(tmp_path), "--no-plots"]) == 0
    assert (tmp_path / "results.md").read_text() == (out / "results.md").read_text()
    assert (tmp_path / "summary.md").read_text() == (out / "summary.md").read_text()
    assert capsys.readouterr().out.rstrip().endswith((out / "summary.md").read_text().rstrip())
    assert main(["--render", str(tmp_path / "missing.json")]) == 2


@pytest.mark.slow
def test_render_labels_a_partial_run(cpu_suite, tmp_path, capsys):
    data = cpu_suite[2]
    partial = {"run": dict(data["run"], partial=True), "rows": [r for r in data["rows"] if r["subject"] == "quad-attn"]}
    (tmp_path / "results.json").write_text(json.dumps(partial))
    assert main(["--render", str(tmp_path / "results.json"), "--no-plots"]) == 0
    assert "**Partial run**" in (tmp_path / "results.md").read_text()
    assert "(partial run)" in (tmp_path / "summary.md").read_text()
    assert not data["run"]["partial"]


def test_plots_without_matplotlib_say_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert report.plots([], tmp_path).startswith("plots skipped: matplotlib is not installed")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_times_the_kernels(tmp_path):
    args = ["--device", "cuda", "--quick", "--n", "512", "1024", "--tokens", "1024", "--batch1-n", "--dtypes", "bf16"]
    args += ["--subjects", "quad-attn", "mixed-chunk-attn", "flash-layer", "--providers", "triton", "reference"]
    _run_suite(tmp_path, *args, "--no-plots")
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    for r in rows:
        assert not r.get("error"), r
        assert r["device_kind"] == "cuda" and "peak_allocated_mib" in r
    assert {r["provider"] for r in rows} == {"triton", "reference"}


# ---------------------------------------------------------------------------------------------------------------
# the command line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n", "0"], "expected a positive integer, got 0"),
        (["--tokens", "many"], "expected a positive integer, got 'many'"),
        (["--subjects", "nope"], "invalid choice: 'nope'"),
        (["--providers", "flash-attn"], "invalid choice: 'flash-attn'"),
        (["--dtypes", "fp8"], "invalid choice: 'fp8'"),
        (["--budget-s", "-1"], "expected a positive number"),
    ],
)
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_device_cuda_without_cuda_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda"])
    assert exc.value.code == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_list_names_every_subject_and_provider(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in SUBJECTS:
        assert name in out
    for provider in ("triton", "reference", "compile", "upstream", "transformer++", "projections"):
        assert provider in out


@pytest.mark.parametrize("layer", ["GAU", "FLASH"])
def test_the_projections_baseline_is_the_layer_with_an_identity_core(layer):
    """The "projections" provider's layer: output = to_out(v * gate) + x, its core never called, every projection
    in the graph (q and k get a zero gradient, so the query/key projection's backward runs); the core is back
    afterwards."""
    from benchmarks.subjects import _layer

    torch.manual_seed(0)
    kw = dict(dim=32, query_key_dim=16, expansion_factor=2, causal=True) | (
        {"group_size": 8} if layer == "FLASH" else {}
    )
    model = getattr(ft, layer)(**kw, backend="reference")
    x = torch.randn(2, 24, 32, requires_grad=True)
    real = model(x)
    with _layer.identity_core():
        out = model(x)
    v, gate = model.to_hidden(model.norm(x)).chunk(2, dim=-1)
    torch.testing.assert_close(out, model.to_out(v * gate) + x)
    params = [p for p in model.parameters() if p.requires_grad]
    with _layer.identity_core():  # every parameter is in the graph (the benchmark differentiates them all)
        grads = torch.autograd.grad(model(x).sum(), [x, *params])
    by_name = dict(zip([n for n, p in model.named_parameters() if p.requires_grad], grads[1:], strict=True))
    assert not by_name["to_qk.0.weight"].any() and by_name["to_hidden.0.weight"].abs().sum() > 0
    torch.testing.assert_close(model(x), real)  # restored


def test_cpu_quick_has_a_time_budget_and_the_dirty_legend_only_when_dirty():
    """--quick promises a time budget on every device; results.md explains "+dirty" only for a dirty checkout."""
    from benchmarks.run import DEFAULTS

    assert all(DEFAULTS[(device, True)]["budget_s"] for device in ("cpu", "cuda"))
    run = dict(device="CPU", date="d", torch="t", triton="tr", flash_triton="f", flash_pytorch="u", python="p")
    run.update(command="python -m benchmarks.run", wall_s=1.0)
    for commit, legend in (("abc1234", False), ("abc1234+dirty", True)):
        md = report.markdown([], dict(run, commit=commit, ceilings={}, device_kind="cuda"), {})
        assert ("`+dirty`: uncommitted changes" in md) == legend, md


def test_summary_says_why_a_cell_is_empty():
    """A provider left out of the run for a subject (--quick drops torch.compile outside flash-layer) reads "not
    run", with the reason under the table; one without a row for another reason reads "—", explained there too."""
    base = dict(dtype="bf16", mode="fwd", n=1024, batch=1, speedup_over={})
    rows = [
        dict(base, subject="quad-attn", provider="triton", ms=1.0),
        dict(base, subject="decode", provider="triton", ms=2.0),
        dict(base, subject="flash-layer", provider="compile", ms=3.0),
    ]
    run = dict(device="GPU", device_kind="cuda", date="d", commit="c", not_run={"quad-attn": {"compile": "why"}})
    text = report.summary(rows, run)
    table = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert table["quad-attn"].endswith("| 1.000 | not run |") and table["decode"].endswith("| 2.000 | — |")
    assert "not run: compile on quad-attn: why." in text and "—: no row (the subject has no such provider" in text


def test_sweeps_share_shapes_and_run_smallest_first():
    cfg = dict(n=[1024, 4096, 16384], tokens=16384, batch1_n=[4096, 16384], long_n=[65536, 16384])
    shapes, long, labels = sweep_shapes(cfg)
    assert shapes == [(1024, 16), (4096, 1), (4096, 4), (16384, 1)]
    assert long == [(65536, 1)]
    assert labels[(16384, 1)] == ["tokens", "batch1"] and labels[(4096, 1)] == ["batch1"]
    assert labels[(65536, 1)] == ["batch1"]


def test_subjects_follow_the_interface():
    for name in SUBJECTS:
        m = load(name)
        assert name == m.NAME and m.TITLE and callable(m.run)
        assert set(m.PROVIDERS) <= set(PROVIDERS)
        assert not set(getattr(m, "NOT_APPLICABLE", {})) & set(m.PROVIDERS)


# ---------------------------------------------------------------------------------------------------------------
# rows: timing, memory, guards, errors


def _ctx(**kw) -> Context:
    base = dict(
        device="cpu",
        dtype_name="fp32",
        modes=("fwd",),
        providers=("reference",),
        shapes=[(8, 1)],
        long_shapes=[],
        meta={"device": "test"},
        ceilings={"matmul_tflops": 1.0, "copy_gbps": 10.0},
        quick=True,
        log=lambda _: None,
    )
    return Context(**(base | kw))


def _measure(ctx, build, n=8, flops=1e6, **kw):
    return ctx.measure(
        subject="s",
        provider="reference",
        mode="fwd",
        n=n,
        batch=1,
        shape={},
        flops=flops,
        bytes_moved=1e6,
        build=build,
        **kw,
    )


def test_cpu_timer_reports_ordered_quantiles():
    res = cpu_bench(lambda: time.sleep(0.002), target_s=0.02, min_reps=5, warmup_s=0.0)
    assert res["reps"] >= 5 and 2.0 <= res["ms_p20"] <= res["ms"] <= res["ms_p80"]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_cpu_step_memory_sees_an_allocation():
    def step():
        x = torch.ones(16 * 2**20)  # 64 MiB, touched
        time.sleep(0.02)
        del x

    assert cpu_step_memory(step) >= 48
    assert cpu_step_memory(lambda: None) < 16


def test_a_row_is_timed_with_its_roofline():
    a = torch.randn(64, 64)
    row = _measure(_ctx(), lambda: lambda: a @ a, flops=2 * 64**3)
    assert "error" not in row and row["ms"] > 0 and row["first_call_s"] >= 0
    floor_s = max(2 * 64**3 / 1e12, 1e6 / 10e9)
    assert row["roofline_fraction"] == pytest.approx(floor_s / (row["ms"] * 1e-3))
    assert row["device"] == "test" and row["matmul_tflops"] == 1.0


def test_the_ceilings_are_the_best_measurement_and_rows_are_refloored_with_them():
    """A busy machine during the first ceiling measurement once put rows above 100% of the roofline."""
    from benchmarks.common import apply_roofline, combine_ceilings

    slow = {"matmul_tflops": 1.0, "copy_gbps": 10.0, "matmul_shape": "8x8x8", "copy_mib": 1.0}
    fast = dict(slow, matmul_tflops=4.0, copy_gbps=5.0)
    both = combine_ceilings([slow, fast])
    assert both["matmul_tflops"] == 4.0 and both["copy_gbps"] == 10.0
    assert both["matmul_tflops_samples"] == [1.0, 4.0] and both["copy_gbps_samples"] == [10.0, 5.0]
    row = {"ms": 1.0, "flops": 2e9, "bytes": 1e6}
    apply_roofline(row, slow)
    assert row["roofline_fraction"] == pytest.approx(2.0)  # 2 ms floor at 1 TFLOP/s, measured 1 ms
    apply_roofline(row, both)
    assert row["roofline_fraction"] == pytest.approx(0.5) and row["matmul_tflops"] == 4.0
    md = report.header(dict(_RUN_FOR_HEADER, ceilings={"fp32": both}))
    text = "\n".join(md)
    assert "4.00 TFLOP/s, best of 2 measurements around the rows (spread 1.00-4.00)" in text
    assert report._roofline_cell(1.2) == "120% (over the ceiling)" and report._roofline_cell(0.5) == "50%"


_RUN_FOR_HEADER = dict(
    device="test",
    device_kind="cuda",
    date="d",
    commit="c",
    torch="t",
    triton="t",
    flash_triton="f",
    flash_pytorch="u",
    python="p",
    command="c",
    wall_s=1.0,
)


def test_failures_become_rows_and_the_sweep_goes_on():
    ctx = _ctx()

    def raises(exc):
        def build():
            raise exc

        return build

    wrap = ValueError("v of shape (1, 2097152, 1024) has in-row offsets up to 2147483648, past the kernels' 32-bit")
    assert _measure(ctx, raises(wrap))["error"].startswith("32-bit offsets: v of shape")
    assert _measure(ctx, raises(Skip("not installed (pip install x)")))["error"] == "not installed (pip install x)"
    assert _measure(ctx, raises(RuntimeError("boom\nmore")))["error"] == "RuntimeError: boom"
    oom = _measure(ctx, raises(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")))
    assert oom["error"] == "out of memory" and oom["ms"] is None
    # a larger size of the same (subject, provider, mode) after an OOM is skipped
    again = _measure(ctx, lambda: lambda: None, n=16, flops=2e6)
    assert again["error"].startswith("skipped: out of memory already at n=8")


def test_guards_skip_rows_that_would_not_fit():
    ctx = _ctx(row_limit_s=1.0)
    slow = _measure(ctx, lambda: lambda: time.sleep(0.01), flops=1e6)
    assert slow["ms"] >= 10
    # 1000x the FLOPs of a 10 ms row: ~10 s per call, over the 1 s limit
    big = _measure(ctx, lambda: pytest.fail("built"), n=16, flops=1e9)
    assert big["error"].startswith("skipped: predicted ~") and "per-row limit of 1 s" in big["error"]
    # the predicted figure is the row's (over the limit), each call's alongside it
    row_s, call_s = (float(x) for x in re.findall(r"~([0-9.]+) s", big["error"])[:2])
    assert row_s > 1.0 and row_s == pytest.approx(6 * call_s, rel=0.05)
    bigger = _measure(ctx, lambda: pytest.fail("built"), n=32, flops=1e10)  # predicted from the row that ran
    assert bigger["error"].startswith("skipped: predicted ~") and "scaled from n=8" in bigger["error"]
    huge = _measure(ctx, lambda: pytest.fail("built"), mem_bytes=2.0**60)
    assert huge["error"].startswith("skipped: needs ~") and "GiB available" in huge["error"]
    late = _measure(_ctx(deadline=0.0, budget_s=5.0), lambda: pytest.fail("built"))
    assert late["error"] == "skipped: the run's time budget (5 s) is spent"


def test_a_failed_build_is_memoised():
    ctx, calls = _ctx(), []

    def factory():
        calls.append(1)
        raise RuntimeError("compile failed")

    for _ in range(2):
        row = _measure(ctx, lambda: ctx.once("model", factory))
        assert row["error"] == "RuntimeError: compile failed"
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------------------------
# FLOP formulas against a brute-force count: torch's FLOP counter over the reference path (every matrix product
# it executes, forward and backward), and literal loops over the attended pairs for the causal halving


def _count(fn, *inputs):
    """(forward FLOPs, backward FLOPs: gradients of every input that requires them) of the products ``fn()``
    executes."""
    with FlopCounterMode(display=False) as fwd:
        out = fn()
    if out.dim():
        out = out.float().square().sum()
    with FlopCounterMode(display=False) as bwd:
        torch.autograd.grad(out, [t for t in inputs if t.requires_grad])
    return fwd.get_total_flops(), bwd.get_total_flops()


def _leaves(*shapes):
    return [torch.randn(*s, requires_grad=True) for s in shapes]


def test_quad_attn_flops_match_a_brute_force_count():
    n, s, e = 12, 3, 5
    q, k, v, gate = _leaves((1, n, s), (1, n, s), (1, n, e), (1, n, e))
    fwd, bwd = _count(lambda: ref.quad_attn(q, k, v, gate, scale=0.1, causal=True), q, k, v, gate)
    # the reference computes every pair and masks afterwards: the non-causal count
    assert fwd == formulas.quad_attn_flops(n, s, e, causal=False, backward=False)
    assert fwd + bwd == formulas.quad_attn_flops(n, s, e, causal=False, backward=True)
    pairs = sum(1 for i in range(n) for j in range(n) if j <= i)  # the pairs a causal query attends to
    exact = pairs * (2 * s + 2 * e)
    assert abs(formulas.quad_attn_flops(n, s, e, causal=True, backward=False) - exact) <= n * (2 * s + 2 * e)


def test_mixed_chunk_attn_flops_match_a_brute_force_count():
    n, s, e, g = 16, 3, 5, 4
    heads = _leaves(*[(1, n, s)] * 4)
    v, gate = _leaves((1, n, e), (1, n, e))
    fwd, bwd = _count(lambda: ref.mixed_chunk_attn(*heads, v, gate, group_size=g, causal=True), *heads, v, gate)
    full_quad = formulas.quad_flops(n, g, s, e, causal=False)
    assert fwd == full_quad + formulas.linear_flops(n, s, e)
    assert fwd == formulas.mixed_chunk_attn_flops(n, s, e, g, causal=False, backward=False)
    assert fwd + bwd == formulas.mixed_chunk_attn_flops(n, s, e, g, causal=False, backward=True)
    pairs = sum(1 for i in range(n) for j in range(n) if i // g == j // g and j <= i)
    lin = sum(2 * s * e + 2 * s * e for _ in range(n))  # each token: lin_kᵀ v into a state, lin_q · state out
    exact = pairs * 2 * (s + e) + lin
    approx = formulas.mixed_chunk_attn_flops(n, s, e, g, causal=True, backward=False)
    assert abs(approx - exact) <= n * 2 * (s + e)  # the formula halves g² where the count has g (g + 1) / 2


def test_layer_flops_match_a_brute_force_count():
    n, dim, s, e, g = 16, 8, 4, 12, 4
    flash = ft.FLASH(dim=dim, group_size=g, query_key_dim=s, expansion_factor=e / dim, causal=True, backend="reference")
    x = torch.randn(1, n, dim, requires_grad=True)
    params = list(flash.parameters())
    fwd, bwd = _count(lambda: flash(x), x, *params)
    assert fwd == formulas.flash_flops(n, dim, s, e, g, causal=False, backward=False)
    assert fwd + bwd == formulas.flash_flops(n, dim, s, e, g, causal=False, backward=True)
    gau = ft.GAU(dim=dim, query_key_dim=s, expansion_factor=e / dim, causal=True, backend="reference")
    fwd, bwd = _count(lambda: gau(x), x, *gau.parameters())
    assert fwd == formulas.gau_flops(n, dim, s, e, causal=False, backward=False)
    assert fwd + bwd == formulas.gau_flops(n, dim, s, e, causal=False, backward=True)


def test_transformer_flops_match_a_brute_force_count():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n, dim, hidden, heads = 16, 8, 12, 2
    layer = TransformerPP(dim, heads, hidden)
    x = torch.randn(1, n, dim, requires_grad=True)
    with sdpa_kernel(SDPBackend.MATH):  # the math backend is plain matrix products, which the counter sees
        fwd, bwd = _count(lambda: layer(x), x, *layer.parameters())
        q, k, v = _leaves(*[(1, heads, n, dim // heads)] * 3)
        sdpa = _count(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v)
    assert fwd == formulas.transformer_flops(n, dim, hidden, causal=False, backward=False)
    assert fwd + bwd == formulas.transformer_flops(n, dim, hidden, causal=False, backward=True)
    assert sdpa[0] == formulas.sdpa_flops(n, dim, causal=False, backward=False)
    assert sum(sdpa) == formulas.sdpa_flops(n, dim, causal=False, backward=True)
    attn_pairs = n * (n + 1) // 2
    exact = 2 * n * dim * 4 * dim + attn_pairs * 2 * 2 * dim + 2 * n * dim * 2 * hidden + 2 * n * hidden * dim
    assert abs(formulas.transformer_flops(n, dim, hidden, causal=True, backward=False) - exact) <= n * 4 * dim


def test_model_flops_match_a_brute_force_count():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n, dim, s, e, g, vocab, depth = 16, 8, 4, 16, 4, 11, 2
    tokens = torch.randint(0, vocab, (1, n))
    model = ft.FLASHTransformer(
        num_tokens=vocab,
        dim=dim,
        depth=depth,
        group_size=g,
        query_key_dim=s,
        expansion_factor=e / dim,
        causal=True,
        backend="reference",
    )
    fwd, bwd = _count(lambda: model(tokens), *model.parameters())
    layer = formulas.flash_flops(n, dim, s, e, g, causal=False, backward=False)
    assert fwd == formulas.model_flops(layer, n, dim, vocab, depth, backward=False)
    assert fwd + bwd == formulas.model_flops(layer, n, dim, vocab, depth, backward=True)
    tpp = TransformerPPLM(vocab, dim, depth, heads=2, hidden=e)
    with sdpa_kernel(SDPBackend.MATH):
        fwd, bwd = _count(lambda: tpp(tokens), *tpp.parameters())
    layer = formulas.transformer_flops(n, dim, e, causal=False, backward=False)
    assert fwd + bwd == formulas.model_flops(layer, n, dim, vocab, depth, backward=True)


def test_decode_flops_match_a_brute_force_count():
    """A whole group of cached steps (every in-group position once) executes exactly g x decode_flops."""
    dim, s, e, g, vocab, depth = 8, 4, 12, 4, 11, 2
    model = ft.FLASHTransformer(
        num_tokens=vocab,
        dim=dim,
        depth=depth,
        group_size=g,
        query_key_dim=s,
        expansion_factor=e / dim,
        causal=True,
        backend="reference",
    ).eval()
    tokens = torch.randint(0, vocab, (1, 3 * g))
    with torch.no_grad():
        _, cache = model(tokens[:, : g + 1], return_cache=True)  # mid-group: the cycle crosses a group boundary
        with FlopCounterMode(display=False) as counter:
            for t in range(g + 1, 2 * g + 1):
                _, cache = model(tokens[:, t : t + 1], cache=cache, return_cache=True)
    # exact, but for the step with a single key: torch runs its attention-times-v product (2 e per layer) as an
    # element-wise multiply, which the counter does not see
    assert g * formulas.decode_flops(dim, s, e, g, vocab, depth) - counter.get_total_flops() == depth * 2 * e


def test_quad_attn_bytes_count_every_tensor_in_and_out():
    n, s, e, g, p = 40, 3, 5, 8, 4
    q, k, v, gate = _leaves((1, n, s), (1, n, s), (1, n, e), (1, n, e))
    out = ref.quad_attn(q, k, v, gate, scale=0.1, causal=True)
    io = sum(t.nbytes for t in (q, k, v, gate, out))
    assert formulas.quad_attn_bytes(n, s, e, p, backward=False) == io
    grads = sum(t.nbytes for t in (q, k, v, gate))
    assert formulas.quad_attn_bytes(n, s, e, p, backward=True) == io + (io - out.nbytes) + out.nbytes + grads
    heads = [torch.randn(1, n, s) for _ in range(4)]
    states = 2 * 4 * (n // g) * s * e  # one fp32 s x e state per group, written and read
    io = sum(t.nbytes for t in heads) + 3 * v.nbytes
    assert formulas.mixed_chunk_attn_bytes(n, s, e, g, p, backward=False) == io + states
    assert formulas.sdpa_bytes(n, 2 * s, p, backward=False) == 4 * n * 2 * s * p


@pytest.mark.slow
def test_render_puts_two_runs_side_by_side(cpu_suite, tmp_path):
    """gpu_check.sh's baselines and benchmark are two runs: rendered together, each row gets the other run's
    providers in its ratios; runs of another device are refused."""
    data = cpu_suite[2]
    first = {
        "run": dict(data["run"], providers=["upstream"]),
        "rows": [r for r in data["rows"] if r["provider"] == "upstream"],
    }
    second = {
        "run": dict(data["run"], providers=["reference"]),
        "rows": [r for r in data["rows"] if r["provider"] == "reference"],
    }
    for name, part in (("a.json", first), ("b.json", second)):
        (tmp_path / name).write_text(json.dumps(part))
    out = tmp_path / "merged"
    assert main(["--render", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out), "--no-plots"]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert merged["run"]["providers"] == ["upstream", "reference"] and len(merged["run"]["merged_from"]) == 2
    timed_up = [r for r in merged["rows"] if r["provider"] == "upstream" and r.get("ms")]
    if importlib.util.find_spec("flash_pytorch"):  # its rows compare with the reference of the other run
        assert timed_up and all("reference" in r["speedup_over"] for r in timed_up)
    (tmp_path / "c.json").write_text(json.dumps({"run": dict(data["run"], device="another"), "rows": []}))
    assert main(["--render", str(tmp_path / "a.json"), str(tmp_path / "c.json"), "--out", str(out)]) == 2


def _gpu_check_here(workdir, jobs) -> Command:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OUT=str(workdir / "out"), TOTAL_S="150", KERNEL_TESTS_MIN="100000", PYTHON=sys.executable)
    return Command(["bash", "benchmarks/gpu_check.sh"], env, REPO, 300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the script's plumbing on a machine without a GPU")
@pytest.mark.early_subprocess.with_args(_gpu_check_here)
def test_gpu_check_script_runs_every_step_and_reports_each(early_subprocess):
    """benchmarks/gpu_check.sh here (no GPU; about 25 s): every step runs with arguments its program accepts (each
    stops at the missing GPU, not at its command line), and the summary lists each step's result (the last step,
    the kernel tests, held back by KERNEL_TESTS_MIN)."""
    res = early_subprocess(_gpu_check_here)
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.workdir / "out"
    summary = (out / "summary.md").read_text()
    for step in (
        "CUDA visible to torch | FAILED",
        "bf16 parity at production shapes | ok",
        "baselines",
        "tuning",
        "quick benchmark sweep (tuned)",
        "side-by-side tables",
        "2 GPUs: context parallel + FSDP2 on NCCL | not run | 0 s | 0 GPU(s) visible",
        "kernel tests (CUDA) | not run",
    ):
        assert step in summary, (step, summary)
    assert "skipped" in (out / "parity.log").read_text()  # collected, and skipped without a GPU
    for log in ("baselines.log", "bench.log"):
        assert "no CUDA device is available" in (out / log).read_text(), log
    assert "timing needs a CUDA GPU" in (out / "tune.log").read_text()
    assert json.loads((out / "tuned_configs.json").read_text())["format"] == 1


def test_activation_memory_is_per_token_and_checkpointing_keeps_the_layer_inputs():
    """benchmarks.activation_memory (issue 15's memory model): saved bytes per token do not depend on n (no n x n
    tensor saved, parameters left out), and activation checkpointing keeps about one dim-wide input per layer."""
    from benchmarks import activation_memory as am

    small, large = am.measure("reference", 256), am.measure("reference", 512)
    for key in ("layer", "lm0", "lm1"):
        assert small[key] == pytest.approx(large[key], rel=0.05), key
    # without checkpointing: at least the two layers' own activations; with it: far less than one layer's
    assert large["lm0"] > 2 * large["layer"] > 0
    assert 2 * am.DIM * 4 <= large["lm1"] < large["layer"] / 2


def test_context_parallel_benchmark_counts_the_bytes_of_its_construction(tmp_path, capsys):
    """benchmarks.context_parallel (issue 15's speed report): both kinds of step timed, and the bytes every rank
    sends per step counted in the collectives equal the construction's, at n and at n / 4."""
    from benchmarks import context_parallel as cpb

    flags = ["--n", "64", "--group-size", "16", "--dim", "16", "--query-key-dim", "8", "--steps", "1", "--batch", "2"]
    assert cpb.main([*flags, "--json", str(tmp_path / "cp.json")]) == 0
    result = json.loads((tmp_path / "cp.json").read_text())
    expected = cpb.expected_bytes(2, 16, 8, 2)
    assert expected == 8 + (2 * 8 * 32 * 4 + 2 * 8 * 4) * 3  # the state (b, s, e) and the shifted token, 3 times
    assert result["bytes_sent_per_step"] == result["bytes_sent_at_n_short"] == [expected, expected]
    assert result["n_short"] == 16 and result["bytes_sent_every_step_equal"]
    assert len(result["single_ms"]) == len(result["parallel_ms"]) == 1 and result["ratio_of_medians"] > 0
    assert "| 2 ranks, n = 2 x 64 |" in capsys.readouterr().out
