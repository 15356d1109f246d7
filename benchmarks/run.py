"""flash_triton's benchmark suite: every provider side by side in one run, every row with its provenance.

    python -m benchmarks.run                     # GPU: the full sweep (n 1k..128k, FLASH layer to 1M), bf16
    python -m benchmarks.run --quick             # GPU: the core table in under 4 minutes on an H100
    python -m benchmarks.run --device cpu        # CPU figures: reference vs FLASH-pytorch vs torch.compile
    python -m benchmarks.run --list              # subjects and providers

Providers (``--providers``): ``triton`` (the kernels; CUDA only), ``reference`` (the pure-PyTorch path, eager),
``compile`` (torch.compile of the reference), ``upstream`` (FLASH-pytorch 0.1.9 eager; rows say "not installed"
without it), ``transformer++`` (SDPA causal multi-head attention, flash backend on CUDA in half precision, +
SwiGLU FFN in the layers and the model), ``projections`` (the GAU / FLASH layer with its attention core replaced by
the identity: the norm, projections and residual every layer ratio stands on).
Subjects (``--subjects``): see ``benchmarks/subjects/__init__.py``.
Modes: ``fwd`` (no autograd) and ``fwd+bwd``; dtypes: bf16 / fp16 / fp32.

Sweeps. "tokens": n from ``--n`` at constant tokens per batch (batch = ``--tokens`` // n); "batch1": batch 1 at the
lengths of ``--batch1-n`` (and, for subjects with ``LONG = True``, of ``--long-n``: up to 1M tokens on a GPU). A
shape in both sweeps is measured once. Rows a provider cannot run (out of memory, an estimate over the memory
available, a time predicted over ``--row-limit-s``, the run's ``--budget-s`` spent, the kernels' 32-bit
offsets, a compile failure, a missing package) are kept, with an ``error`` saying why; the sweep goes on.

Outputs, under ``--out`` (default ``runs/bench-<device>``): ``results.json`` (``{"run": provenance, "rows": [...]}``;
each row carries the provenance too: device, versions, commit, date, dtype, shapes, ceilings), ``results.md``
(every table), ``summary.md`` (every provider side by side; also printed last), ``plots/*.png`` (time vs n
log-log with the linear-scaling guide, memory vs n, speed-up vs n; skipped with one line without matplotlib).
Metrics: see :mod:`benchmarks.common` (timers, memory) and :mod:`benchmarks.formulas` (FLOPs, bytes, roofline).

Adding a subject (the interface)
--------------------------------
A subject is a module ``benchmarks/subjects/<module>.py`` registered by one line ``"<name>": "<module>"`` in
``SUBJECTS`` of ``benchmarks/subjects/__init__.py``. It defines:

- ``NAME: str``: the registry name, written into every row's ``subject``;
- ``TITLE: str``: one line for the tables (widths, causal, ...);
- ``PROVIDERS: tuple[str, ...]``: the providers it can measure (a subset of those above);
- ``NOT_APPLICABLE: dict[str, str]`` (optional): provider -> why it has no rows here (printed under the table);
- ``LONG: bool`` (optional, default False): also measure the ``--long-n`` batch-1 lengths;
- ``run(ctx: benchmarks.common.Context) -> list[dict]``: the rows. For each shape of ``ctx.shapes_for(LONG)``
  ((n, batch) pairs), each mode of ``ctx.modes`` and each provider of ``ctx.providers_for(PROVIDERS)``, append
  ``ctx.measure(subject=NAME, provider=..., mode=..., n=..., batch=..., shape={widths}, flops=..., bytes_moved=...,
  build=..., mem_bytes=None, note=None)``. ``build()`` returns the zero-argument step to time (it makes the inputs;
  models come from ``ctx.once(key, factory)``, memoised per subject) and may raise ``common.Skip("why")`` or
  ``common.Unavailable("why")``. FLOPs and bytes come from formulas written out in ``benchmarks/formulas.py``
  (add the subject's there, with a brute-force check in ``tests/test_benchmarks.py``). ``ctx`` also gives
  ``device``, ``dtype`` / ``dtype_name`` / ``itemsize``, ``quick``, ``model_depth`` and ``sync()``.
  ``ctx.measure`` times the step, measures its memory, applies the guards, catches every exception into the row's
  ``error``, adds the provenance and the roofline fraction; the runner adds the pairwise speed-ups, the sweeps, the
  tables and the plots. ``mode`` is one of ``ctx.modes`` or a label of the subject's own (decoding: "decode").
  A subject whose "n" means something else (decoding: the context length, one new token per step) states it in
  ``TITLE`` and ``shape``, and may pick its sizes from ``ctx.shapes_for()`` (e.g. each distinct n at batch 1);
  rows join the sweeps, hence the plots, by their (n, batch).

CPU runs: ``--device cpu`` took 38 minutes once on the project's 2-core machine (``--threads 1``, otherwise idle; 16
of them were torch.compile compiling); ``--quick --device cpu`` took about 3 minutes there idle and 10.5 on a loaded
machine, so ``--quick`` has a time budget on every device (240 s on CPU, 200 s on CUDA: rows past it are kept, each
saying so); ``--render RESULTS_JSON`` rewrites the tables and plots
of an earlier run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from . import report
from .common import (
    DTYPES,
    MODES,
    PROVIDER_INFO,
    PROVIDERS,
    Context,
    apply_roofline,
    combine_ceilings,
    measure_ceilings,
    process_max_rss_mib,
    provenance,
)
from .subjects import SUBJECTS, load

POW2 = [2**k for k in range(10, 18)]  # 1k .. 128k
DEFAULTS = {
    # device, quick -> sizes and limits
    ("cuda", False): dict(
        n=POW2, tokens=131072, batch1_n=POW2, long_n=[2**18, 2**19, 2**20], row_limit_s=20.0, budget_s=None
    ),
    ("cuda", True): dict(
        n=[2048, 8192, 16384], tokens=32768, batch1_n=[8192, 131072], long_n=[], row_limit_s=10.0, budget_s=200.0
    ),
    ("cpu", False): dict(
        n=[1024, 2048, 4096], tokens=4096, batch1_n=[1024, 4096], long_n=[16384], row_limit_s=60.0, budget_s=None
    ),
    ("cpu", True): dict(n=[256, 1024], tokens=1024, batch1_n=[2048], long_n=[], row_limit_s=20.0, budget_s=240.0),
}
QUICK_COMPILE_SUBJECTS = ("flash-layer",)  # --quick: torch.compile (minutes of compiling) only where a target needs it


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="flash_triton benchmark suite: every provider side by side, rows with provenance.",
        epilog="Sizes default by device and --quick; see the module docstring (python -m pydoc benchmarks.run).",
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: cuda when available")
    p.add_argument("--quick", action="store_true", help="the core table only: fewer sizes, a time budget")
    p.add_argument(
        "--subjects",
        nargs="+",
        choices=[*SUBJECTS, "all"],
        default=["all"],
        metavar="SUBJECT",
        help=f"of {', '.join(SUBJECTS)} (default: all)",
    )
    p.add_argument(
        "--providers",
        nargs="+",
        choices=PROVIDERS,
        metavar="PROVIDER",
        help=f"of {', '.join(PROVIDERS)} (default: all that run on the device)",
    )
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="default: both")
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=DTYPES,
        metavar="DTYPE",
        help="of bf16, fp16, fp32 (default: bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument("--n", nargs="+", type=positive_int, help="lengths of the constant-tokens sweep")
    p.add_argument("--tokens", type=positive_int, help="tokens per batch of that sweep (batch = tokens // n)")
    p.add_argument("--batch1-n", nargs="*", type=positive_int, help="lengths of the batch-1 sweep")
    p.add_argument("--long-n", nargs="*", type=positive_int, help="extra batch-1 lengths for long subjects")
    p.add_argument("--model-depth", type=positive_int, help="layers of the model-step subject (default: 8, CPU 2)")
    p.add_argument("--row-limit-s", type=positive_float, help="skip rows predicted to take longer per row")
    p.add_argument("--budget-s", type=positive_float, help="skip the remaining rows once this much time is spent")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, help="output directory (default: runs/bench-<device>)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG")
    p.add_argument("--list", action="store_true", help="list subjects and providers and exit")
    p.add_argument(
        "--render",
        type=Path,
        nargs="+",
        metavar="RESULTS_JSON",
        help="measure nothing: write the tables and plots of an earlier run's results.json (into --out, "
        "default: its folder), e.g. where the GPU machine had no matplotlib; several: their rows side by side "
        "(runs of one script on one device, e.g. gpu_check.sh's baselines and benchmark)",
    )
    return p


def resolve(args: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[str, dict]:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    d = dict(DEFAULTS[(device, args.quick)])
    for key in ("n", "tokens", "batch1_n", "long_n", "row_limit_s", "budget_s"):
        if getattr(args, key) is not None:
            d[key] = getattr(args, key)
    return device, d


def sweep_shapes(cfg: dict) -> tuple[list[tuple[int, int]], list[tuple[int, int]], dict]:
    """(shapes, long shapes, sweep labels per shape), in increasing n² x batch (the guards extrapolate upward)."""
    labels: dict[tuple[int, int], list[str]] = {}
    for n in cfg["n"]:
        labels.setdefault((n, max(1, cfg["tokens"] // n)), []).append("tokens")
    for n in cfg["batch1_n"]:
        labels.setdefault((n, 1), []).append("batch1")
    long = [(n, 1) for n in cfg["long_n"] if (n, 1) not in labels]
    for shape in long:
        labels[shape] = ["batch1"]

    def order(s):
        return sorted(s, key=lambda nb: (nb[0] * nb[0] * nb[1], nb[0]))

    return order([s for s in labels if s not in long]), order(long), labels


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.list:
        for name in SUBJECTS:
            m = load(name)
            print(f"{name:12s} {m.TITLE}; providers: {', '.join(m.PROVIDERS)}")
        for name, desc in PROVIDER_INFO.items():
            print(f"  {name:14s} {desc}")
        return 0
    if args.render:
        return render(args.render, args.out or args.render[0].parent, plots=not args.no_plots)
    device, cfg = resolve(args, p)
    if args.threads:
        torch.set_num_threads(args.threads)
    subjects = list(SUBJECTS) if "all" in args.subjects else list(dict.fromkeys(args.subjects))
    dtypes = args.dtypes or (["bf16"] if device == "cuda" else ["fp32"])
    explicit_providers = args.providers is not None
    providers = tuple(args.providers or PROVIDERS)
    skipped_providers = {}
    if device == "cpu" and not explicit_providers:
        providers = tuple(x for x in providers if x != "triton")
        skipped_providers["triton"] = "the kernels need a CUDA device (on CPU only the slow Triton interpreter runs)"
    if "compile" in providers:
        from torch import _dynamo

        # many shapes per compiled function: never fall back to eager silently after the default 8 recompiles
        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
        if hasattr(_dynamo.config, "accumulated_cache_size_limit"):
            _dynamo.config.accumulated_cache_size_limit = max(_dynamo.config.accumulated_cache_size_limit, 512)
    shapes, long_shapes, _labels = sweep_shapes(cfg)
    out_dir = args.out or Path("runs") / f"bench-{device}"
    start = time.monotonic()
    meta = provenance(device)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"[bench] {meta['device']} | torch {meta['torch']} triton {meta['triton']} | commit {meta['commit']}")
    if device == "cpu":
        kernels = "triton: the CPU interpreter, not a speed" if "triton" in providers else "no kernels"
        print(f"[bench] CPU figures: the reference path, FLASH-pytorch, torch.compile, Transformer++ ({kernels})")
    print(f"[bench] shapes (n, batch): {shapes}" + (f"; long subjects also {long_shapes}" if long_shapes else ""))
    run_meta = dict(
        meta,
        command=command,
        config=cfg,
        subjects=subjects,
        providers=list(providers),
        providers_skipped=skipped_providers,
        ceilings={},
    )
    rows: list[dict] = []
    gc.freeze()  # what exists now lives to the end: keep it out of the per-row collections (each ~0.1 s otherwise)
    depth = args.model_depth or (8 if device == "cuda" else 2)
    for dtype_name in dtypes:
        ctx = Context(
            device=device,
            dtype_name=dtype_name,
            modes=tuple(args.modes),
            providers=providers,
            shapes=shapes,
            long_shapes=long_shapes,
            meta=meta,
            ceilings={},
            quick=args.quick,
            model_depth=depth,
            row_limit_s=cfg["row_limit_s"],
            budget_s=cfg["budget_s"],
            deadline=start + cfg["budget_s"] if cfg["budget_s"] else math.inf,
        )
        samples = [measure_ceilings(device, ctx.dtype, ctx.bench, args.quick)]
        run_meta["ceilings"][dtype_name] = ctx.ceilings = combine_ceilings(samples)
        print(
            f"[bench] {dtype_name} ceilings: matmul {samples[0]['matmul_tflops']:.2f} TFLOP/s, "
            f"copy {samples[0]['copy_gbps']:.1f} GB/s (measured again after each subject; the best counts)"
        )
        for name in subjects:
            module = load(name)
            ctx.providers = providers
            if args.quick and not explicit_providers and name not in QUICK_COMPILE_SUBJECTS and "compile" in providers:
                ctx.providers = tuple(x for x in providers if x != "compile")
                if "compile" in module.PROVIDERS:  # said in the tables, not left as an empty cell
                    run_meta.setdefault("not_run", {})[name] = {
                        "compile": f"--quick compiles only {', '.join(QUICK_COMPILE_SUBJECTS)} (minutes per subject)"
                    }
            ctx.long_shapes = long_shapes if getattr(module, "LONG", False) else []
            print(f"[bench] {name}: {module.TITLE}")
            try:
                rows += module.run(ctx)
            finally:
                ctx.reset()
            # around the rows: a busy machine during the first measurement must not put rows above 100%
            samples.append(measure_ceilings(device, ctx.dtype, ctx.bench, args.quick))
            run_meta["ceilings"][dtype_name] = ctx.ceilings = combine_ceilings(samples)
            for r in rows:
                if r["dtype"] == dtype_name:
                    apply_roofline(r, ctx.ceilings)
            finish(rows, run_meta, start, cfg)
            write_json(out_dir, run_meta, rows, partial=True)  # what a killed run leaves: see --render
    finish(rows, run_meta, start, cfg)
    write_json(out_dir, run_meta, rows, partial=False)
    ok = sum(1 for r in rows if r.get("ms"))
    print(f"[bench] {ok}/{len(rows)} rows timed in {run_meta['wall_s']:.0f} s; wrote {out_dir}/results.json")
    return write_reports(rows, run_meta, out_dir, plots=not args.no_plots)


def finish(rows: list[dict], run_meta: dict, start: float, cfg: dict) -> None:
    """The sweeps each row belongs to, the pairwise speed-ups, the run's end state."""
    labels = sweep_shapes(cfg)[2]
    for r in rows:
        r["sweeps"] = [r["sweep"]] if "sweep" in r else labels.get((r["n"], r["batch"]), [])
    report.add_ratios(rows)
    run_meta["wall_s"] = time.monotonic() - start
    run_meta["process_max_rss_mib"] = process_max_rss_mib()
    if run_meta["device_kind"] == "cpu":
        run_meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]


def write_json(out_dir: Path, run_meta: dict, rows: list[dict], partial: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_meta["partial"] = partial
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps({"run": run_meta, "rows": rows}, indent=1, default=str))
    tmp.replace(out_dir / "results.json")


def write_reports(rows: list[dict], run_meta: dict, out_dir: Path, plots: bool) -> int:
    """results.md, summary.md and the plots into ``out_dir``; prints the summary last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subject_info = {}
    for name in dict.fromkeys(r["subject"] for r in rows):
        module = load(name) if name in SUBJECTS else None
        subject_info[name] = {
            "title": getattr(module, "TITLE", name),
            "not_applicable": {**getattr(module, "NOT_APPLICABLE", {}), **run_meta.get("not_run", {}).get(name, {})},
        }
    (out_dir / "results.md").write_text(report.markdown(rows, run_meta, subject_info))
    summary = report.summary(rows, run_meta)
    (out_dir / "summary.md").write_text(summary)
    if plots:
        made = report.plots(rows, out_dir / "plots")
        plot_note = made if isinstance(made, str) else f"{len(made)} plots in {out_dir / 'plots'}"
    else:
        plot_note = "plots skipped: --no-plots"
    print(f"[bench] wrote {out_dir}/results.md, summary.md; {plot_note}")
    print()
    print(summary)
    return 0


def render(results_jsons: list[Path], out_dir: Path, plots: bool) -> int:
    """The tables and plots of earlier runs, from their results.json: one run, or several on the same device whose
    rows are put side by side (the run's header is the last one's, naming them all; a row measured in two of them
    is kept from the later)."""
    rows, metas = {}, []
    for path in results_jsons:
        try:
            data = json.loads(path.read_text())
            run_rows, run_meta = data["rows"], data["run"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"--render: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        if metas and run_meta.get("device") != metas[0].get("device"):
            print(
                f"--render: {path} was measured on {run_meta.get('device')!r}, {results_jsons[0]} on "
                f"{metas[0].get('device')!r}: rows of different devices are not compared",
                file=sys.stderr,
            )
            return 2
        metas.append(run_meta)
        for r in run_rows:
            rows[tuple(r.get(k) for k in ("subject", "provider", "mode", "dtype", "n", "batch"))] = r
    run_meta, rows = dict(metas[-1]), list(rows.values())
    if len(results_jsons) > 1:  # the ratios across the runs, and their rows in one results.json
        run_meta["merged_from"] = [str(p) for p in results_jsons]
        run_meta["providers"] = list(dict.fromkeys(p for m in metas for p in m.get("providers", [])))
        report.add_ratios(rows)
        write_json(out_dir, run_meta, rows, partial=any(m.get("partial") for m in metas))
    return write_reports(rows, run_meta, out_dir, plots)


if __name__ == "__main__":
    raise SystemExit(main())
