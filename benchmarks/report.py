"""From rows to results: pairwise speed-ups, the Markdown tables, the summary, and the PNG plots."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from .common import PROVIDER_INFO, PROVIDERS

GROUP_KEY = ("subject", "dtype", "mode", "n", "batch")
COLORS = {
    "triton": "tab:red",
    "reference": "tab:blue",
    "compile": "tab:orange",
    "upstream": "tab:green",
    "transformer++": "tab:gray",
    "projections": "tab:purple",
}


def add_ratios(rows: list[dict]) -> None:
    """Give every timed row ``speedup_over[other] = other's ms / this ms`` for each other provider timed on the
    same (subject, dtype, mode, n, batch) in this run (> 1: this one is faster)."""
    groups = defaultdict(list)
    for r in rows:
        if r.get("ms"):
            groups[tuple(r[k] for k in GROUP_KEY)].append(r)
    for r in rows:
        r["speedup_over"] = {}
        if not r.get("ms"):
            continue
        for other in groups[tuple(r[k] for k in GROUP_KEY)]:
            if other is not r:
                r["speedup_over"][other["provider"]] = other["ms"] / r["ms"]


def lead_provider(rows: list[dict]) -> str | None:
    """The provider the others are compared with: the kernels where any of their rows ran, else the reference."""
    ran = {r["provider"] for r in rows if r.get("ms")}
    for p in ("triton", "reference", *PROVIDERS):
        if p in ran:
            return p
    return None


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def _order(rows):
    known = {p: i for i, p in enumerate(PROVIDERS)}
    return sorted(rows, key=lambda r: (r["n"], r["batch"], known.get(r["provider"], 99), r["provider"]))


def _sweep_label(r) -> str:
    return ", ".join(r.get("sweeps", []))


def header(run: dict) -> list[str]:
    cpu = run["device_kind"] == "cpu"
    lines = []
    if run.get("partial"):
        lines += ["**Partial run**: it was stopped before its end; these are the subjects it finished.", ""]
    if cpu:
        kernels = (
            "The triton rows ran the kernels under the Triton CPU interpreter: a check of the path, not a speed."
            if "triton" in run.get("providers", ())
            else "The Triton kernels do not run here (on CPU only under the Triton interpreter, far too slow to time)."
        )
        lines.append(
            f"**CPU figures.** {kernels} These rows time the reference path, FLASH-pytorch, torch.compile and "
            "Transformer++ on the CPU. Other processes share the machine: see the load averages."
        )
        lines.append("")
    lines += [
        f"- device: {run['device']}",
        f"- date: {run['date']}; commit {run['commit']}"
        + (" (`+dirty`: uncommitted changes)" if str(run["commit"]).endswith("+dirty") else ""),
        f"- torch {run['torch']}, triton {run['triton']}, flash_triton {run['flash_triton']}, "
        f"FLASH-pytorch {run['flash_pytorch']}, python {run['python']}",
    ]
    for dtype, c in run["ceilings"].items():
        lines.append(
            f"- ceilings measured in this run, {dtype}: matmul {c['matmul_shape']} {c['matmul_tflops']:.2f} TFLOP/s"
            f"{_spread(c, 'matmul_tflops', 2)}; copy of {c['copy_mib']:.0f} MiB {c['copy_gbps']:.1f} GB/s "
            f"(read + write){_spread(c, 'copy_gbps', 1)}"
        )
    if cpu:
        lines.append(
            f"- load average (1, 5, 15 min) at start {run.get('loadavg_start')}, at end {run.get('loadavg_end')}; "
            f"{run.get('torch_threads')} torch threads"
        )
    lines.append(f"- command: `{run['command']}`; wall time {run.get('wall_s', 0):.0f} s")
    lines.append("")
    mem = (
        "peak RSS rise during one step (sampled every 0.5 ms)"
        if cpu
        else "peak memory allocated by one step above what existed before it (torch.cuda.max_memory_allocated)"
    )
    lines += [
        "Columns: median time over many calls [20th, 80th percentile]; TFLOP/s and GB/s from the FLOP and byte "
        "formulas in `benchmarks/formulas.py`; roofline: the floor max(FLOPs / matmul rate, bytes / copy rate) "
        "as a fraction of the measured time, with the best rates this run measured (achieved rates of one large "
        "matmul and one large copy, not the device's peak: a step whose data stays in cache can beat the copy rate, "
        f'and its cell says "over the ceiling"); memory: {mem}; speed-up: each other provider\'s time over this '
        "one's, same run, same shape (> 1: this one is faster).",
        "",
        "Providers: " + "; ".join(f"**{p}**: {d}" for p, d in PROVIDER_INFO.items()) + ".",
        "",
    ]
    return lines


def _spread(ceilings: dict, key: str, digits: int) -> str:
    """ ", best of N measurements (spread lo-hi)" when the run measured the ceiling more than once."""
    samples = ceilings.get(f"{key}_samples") or []
    if len(samples) < 2:
        return ""
    lo, hi = min(samples), max(samples)
    return f", best of {len(samples)} measurements around the rows (spread {lo:.{digits}f}-{hi:.{digits}f})"


def _roofline_cell(fraction: float) -> str:
    return f"{100 * fraction:.0f}%" + (" (over the ceiling)" if fraction > 1.0 else "")


def markdown(rows: list[dict], run: dict, subjects: dict) -> str:
    """The full tables: one per (subject, dtype, mode)."""
    cpu = run["device_kind"] == "cpu"
    out = [f"# flash_triton benchmarks — {'CPU' if cpu else run['device']}", ""]
    out += header(run)
    mem_col = "peak RSS rise MiB" if cpu else "peak MiB"
    tables = defaultdict(list)
    for r in rows:
        tables[(r["subject"], r["dtype"], r["mode"])].append(r)
    for (subject, dtype, mode), group in tables.items():
        info = subjects.get(subject, {})
        out.append(f"## {info.get('title', subject)} — {dtype}, {mode}")
        out.append("")
        na = info.get("not_applicable") or {}
        if na:
            out.append("Not in this table: " + "; ".join(f"{p} ({why})" for p, why in na.items()) + ".")
            out.append("")
        out.append(
            f"| n | batch | sweep | provider | ms [p20, p80] | TFLOP/s | GB/s | roofline | {mem_col} | "
            "speed-up over the others | note |"
        )
        out.append("| " + " | ".join(["---"] * 11) + " |")
        for r in _order(group):
            if r.get("ms"):
                t = f"{_fmt(r['ms'])} [{_fmt(r['ms_p20'])}, {_fmt(r['ms_p80'])}]"
                ratios = ", ".join(f"{p} {v:.2f}x" for p, v in sorted(r["speedup_over"].items()))
                cells = [
                    t,
                    _fmt(r["tflops"], 2),
                    _fmt(r["gbps"], 1),
                    _roofline_cell(r["roofline_fraction"]),
                    _fmt(r.get("peak_mib"), 1),
                    ratios or "—",
                    r.get("note", ""),
                ]
            else:
                cells = ["—", "—", "—", "—", "—", "—", r.get("error", "")]
            out.append(f"| {r['n']} | {r['batch']} | {_sweep_label(r)} | {r['provider']} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def _short_error(err: str) -> str:
    if err.startswith("out of memory"):
        return "OOM"
    if err.startswith("32-bit"):
        return "32-bit offsets"
    if err.startswith("skipped"):
        return "skipped"
    if err.startswith("not installed"):
        return "not installed"
    return "error"


def summary(rows: list[dict], run: dict) -> str:
    """One compact table of every provider side by side: median ms, and for the others their time over the
    lead provider's (the kernels on a GPU, the reference path on CPU)."""
    lead = lead_provider(rows)
    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in rows)]
    providers += sorted({r["provider"] for r in rows} - set(providers))
    title = "CPU" if run["device_kind"] == "cpu" else run["device"]
    out = [
        f"Summary — {title}{' (partial run)' if run.get('partial') else ''}, {run['date']}, commit {run['commit']}. "
        "Each cell: median ms; in brackets, that time "
        f"over {lead}'s in the same row (how many times faster {lead} is).",
        "",
        "| subject | dtype | mode | n | batch | " + " | ".join(providers) + " |",
        "| " + " | ".join(["---"] * (5 + len(providers))) + " |",
    ]
    groups = defaultdict(dict)
    for r in rows:
        groups[tuple(r[k] for k in GROUP_KEY)][r["provider"]] = r
    not_run = run.get("not_run", {})
    for key, by_provider in groups.items():
        base = by_provider.get(lead, {}).get("ms")
        cells = []
        for p in providers:
            r = by_provider.get(p)
            if r is None:  # left out of this run (see the note below the table), or not a provider of the subject
                cells.append("not run" if p in not_run.get(key[0], {}) else "—")
            elif r.get("ms"):
                ratio = f" ({r['ms'] / base:.2f}x)" if base and p != lead else ""
                cells.append(_fmt(r["ms"]) + ratio)
            else:
                cells.append(_short_error(r.get("error", "")))
        out.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    reasons = sorted({(p, why) for by_p in not_run.values() for p, why in by_p.items()})
    if groups:
        out.append("")
        out.append("—: no row (the subject has no such provider, or `--providers` left it out; see results.md).")
        out += [f"not run: {p} on {', '.join(s for s in not_run if p in not_run[s])}: {why}." for p, why in reasons]
    return "\n".join(out) + "\n"


def plots(rows: list[dict], out_dir: Path) -> list[Path] | str:
    """One PNG per (subject, dtype, sweep) with at least two lengths: a row per mode with time vs n (log-log,
    with the linear-scaling guide: time proportional to the tokens processed, from the lead provider's first
    point), memory vs n, and the lead provider's speed-up over each other provider vs n. Returns the paths, or
    why no plot was made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return "plots skipped: matplotlib is not installed (pip install matplotlib)"
    out_dir.mkdir(parents=True, exist_ok=True)
    lead = lead_provider(rows)
    mem_label = "peak RSS rise" if rows and rows[0]["device_kind"] == "cpu" else "peak memory"
    paths = []
    figures = defaultdict(list)
    for r in rows:
        for sweep in r.get("sweeps", []):
            figures[(r["subject"], r["dtype"], sweep)].append(r)
    for (subject, dtype, sweep), group in figures.items():
        if len({r["n"] for r in group}) < 2:
            continue  # one length: nothing to plot against n
        modes = [m for m in ("fwd", "fwd+bwd") if any(r["mode"] == m for r in group)]
        modes += sorted({r["mode"] for r in group} - set(modes))
        fig, axes = plt.subplots(len(modes), 3, figsize=(15, 4.2 * len(modes)), squeeze=False)
        for i, mode in enumerate(modes):
            sel = [r for r in group if r["mode"] == mode and r.get("ms")]
            by_p = defaultdict(list)
            for r in sorted(sel, key=lambda r: r["n"]):
                by_p[r["provider"]].append(r)
            ax_t, ax_m, ax_s = axes[i]
            for p, rs in by_p.items():
                ns = [r["n"] for r in rs]
                ax_t.plot(ns, [r["ms"] for r in rs], "o-", label=p, color=COLORS.get(p))
                mem = [(r["n"], r["peak_mib"]) for r in rs if r.get("peak_mib") is not None and r["peak_mib"] > 0]
                if mem:
                    ax_m.plot(*zip(*mem, strict=True), "o-", label=p, color=COLORS.get(p))
            if by_p.get(lead):
                first = by_p[lead][0]
                ns = sorted({r["n"] for r in sel})
                tokens = {r["n"]: r["tokens"] for r in sel}
                guide = [first["ms"] * tokens[n] / first["tokens"] for n in ns]
                ax_t.plot(ns, guide, "k--", lw=1, label=f"linear scaling (from {lead})")
                base = {r["n"]: r["ms"] for r in by_p[lead]}
                for p, rs in by_p.items():
                    if p == lead:
                        continue
                    pts = [(r["n"], r["ms"] / base[r["n"]]) for r in rs if r["n"] in base]
                    if pts:
                        ax_s.plot(*zip(*pts, strict=True), "o-", label=f"{lead} over {p}", color=COLORS.get(p))
                ax_s.axhline(1.0, color="k", lw=0.8)
            batches = {"batch1": "batch 1", "context": "per token, batch 1, n = context"}.get(
                sweep, "constant tokens per batch"
            )
            ax_t.set(ylabel="median ms", title=f"{subject} {dtype} {mode}: time ({batches})")
            ax_m.set(ylabel="MiB", title=f"{mem_label} of one step")
            ax_s.set(ylabel="speed-up (x)", title=f"speed-up of {lead} (their time / its time)")
            for ax in (ax_t, ax_m, ax_s):
                _log_axes(ax, sorted({r["n"] for r in group}), ticker)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8)
        fig.subplots_adjust(
            left=0.06, right=0.99, bottom=0.13 / len(modes), top=1 - 0.08 / len(modes), wspace=0.25, hspace=0.35
        )
        path = out_dir / f"{subject}-{dtype}-{sweep}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def _n_label(n: int) -> str:
    for unit, size in (("M", 2**20), ("k", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _log_axes(ax, ns: list[int], ticker) -> None:
    """Log-log axes with the measured lengths as x ticks and plain numbers on y (minor ticks labelled only when
    the axis spans less than a decade)."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ns, [_n_label(n) for n in ns])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("n (tokens per sequence)")
    lo, hi = ax.get_ylim()
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if hi / max(lo, 1e-30) < 10 else ticker.NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
