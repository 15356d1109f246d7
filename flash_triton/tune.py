"""Tune the kernels' launch configs on a GPU and write the table the launchers read (:mod:`flash_triton.tuning`).

    python -m flash_triton.tune                          # GPU: FLASH and GAU at the benchmark shapes, bf16
    python -m flash_triton.tune --budget-s 120 --layers flash --dtypes bf16 fp16
    python -m flash_triton.tune --arch 90 --prune-only   # any machine: the candidates that compile spill-free
    python -m flash_triton.tune --arch 90 --list         # the entries and their candidates, nothing compiled

For each layer (the benchmark's: dim 512, query/key 128, value width 1024, causal; FLASH with groups of 256, GAU
over the whole sequence) the launches of one training step are recorded (:func:`flash_triton.tuning.recording`
while :func:`flash_triton.aot.variants` asks every config function): each distinct (kernel, dtype, shape key) is
an entry. Each entry's candidates are its default and its neighbours (every tunable block halved or doubled, the
transposed key-tile kernel's near step included, warps halved or doubled, 1-4 stages, the streaming kernels' T5 band
split on or off), nearest first, at most ``--max-candidates``. A candidate survives when every kernel
variant it changes compiles for the GPU with no spill, shared memory within the architecture's limit and (half
precision) tensor-core products (the AOT check, ``--jobs`` compiles in parallel). On a GPU the surviving candidates
are timed, entry by entry, the longest-running kernels first: one training step of the layer (batch ``--tokens`` /
n) under the CUDA profiler, the entry's kernels' device time summed; each entry keeps the fastest (the ones tuned
before it held at their choice). An entry goes into the table when it beats the default by ``--min-gain`` and the
layer's outputs and gradients with every chosen config match the defaults' (bf16 / fp16 rounding). No new work
starts past ``--budget-s``; what was tuned by then is written (atomically, merged into the table: entries of other
GPUs, dtypes and shapes are kept), each entry with its provenance (device, date, commit, versions, times).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from . import tuning

DIM, S, E, GROUP = 512, 128, 1024, 256  # the benchmark layers' shapes (benchmarks/subjects/_layer.py)
LAYERS = ("flash", "gau")
_CAPS = {  # tunable block -> the key entry whose power of two bounds it
    "BM": "window",
    "BN": "window",
    "BS": "qk",
    "BE": "v",
    "BE_NEAR": "v",
    "BD": "v",
    "BT": "group",
    "BA": "da",
    "BB": "db",
    "BX": "dx",
    "BY": "dy",
}


@dataclasses.dataclass
class Entry:
    """One tunable launch config: a kernel at one shape key, with the compiles and jit functions it changes."""

    layer: str
    kernel: str
    dtype: str
    key: dict
    default: dict
    candidates: list = dataclasses.field(default_factory=list)  # surviving, the default first
    functions: set = dataclasses.field(default_factory=set)  # jit function names whose time it changes
    timed: list = dataclasses.field(default_factory=list)  # (seconds, config)
    best: dict | None = None

    @property
    def ident(self) -> tuple:
        return (self.kernel, self.dtype, tuning.freeze(self.key))


def launch_of(layer: str):
    """The aot.Launch of the layer's training step (no mask, no dropout, no state in or out)."""
    from . import aot

    return aot.Launch(flash=layer == "flash", causal=True, laplace=False, mask=False, train=True, state=False)


def _variants(layer: str, n: int, dtype: str, arch: int) -> list[tuple]:
    from . import aot

    window = GROUP if layer == "flash" else n
    return aot.variants([(window, S, E)], [dtype], [launch_of(layer)], every_path=False, arch=arch)


def _vkey(v: tuple) -> tuple:
    name, fn, dtype, constexprs, options, divisible = v
    return (name, fn, dtype, tuple(sorted(constexprs.items())), tuple(sorted(options.items())), divisible)


def entries(layer: str, n: int, dtype: str, arch: int) -> list[Entry]:
    """The tunable entries of the layer's training step at sequence length ``n``."""
    with tuning.recording() as log:
        _variants(layer, n, dtype, arch)
    out, seen = [], set()
    for kernel, dt, key, default in log:
        e = Entry(layer, kernel, dt, key, {k: v for k, v in default.items() if k in tuning.TUNABLE[kernel]})
        if e.ident not in seen:
            seen.add(e.ident)
            out.append(e)
    return out


def candidates(entry: Entry, limit: int) -> list[dict]:
    """The default, then its neighbours nearest first (fewest values changed, then smallest change): each block
    halved or doubled within [16, the key's width rounded up to a power of two] (a scan's token step also divides
    the group), warps halved or doubled within 2..16, stages 1..4, a flag (``T5_BAND``) either way; the default's
    flags as the kernel runs them (``T5_BAND`` on where the launcher leaves it out); the transposed key-tile kernel
    (a default with ``BE_NEAR``) varies ``BE_NEAR`` and not ``T5_BAND`` (it always splits)."""
    default = {**{k: v for k, v in tuning.FLAGS.items() if k in tuning.TUNABLE[entry.kernel]}, **entry.default}
    options = []
    near = "BE_NEAR" in entry.default
    for k in tuning.TUNABLE[entry.kernel]:
        if k not in default or (near and k in tuning.NOT_NEAR):
            continue
        v = default[k]
        if k in tuning.FLAGS:
            vals = [v, not v]
        elif k == "num_warps":
            vals = [w for w in (v // 2, v, v * 2) if 2 <= w <= 16]
        elif k == "num_stages":
            vals = [1, 2, 3, 4]
        else:
            cap = max(16, 1 << max(0, math.ceil(math.log2(entry.key[_CAPS[k]]))))
            vals = [b for b in (v // 2, v, v * 2) if 16 <= b <= cap]
            if entry.kernel == "group_scan" and k == "BT":
                vals = [b for b in vals if entry.key["group"] % b == 0]
        options.append((k, sorted(set(vals) | {v})))

    def distance(cfg: dict) -> tuple:
        changed = [k for k in cfg if cfg[k] != default[k]]
        return (len(changed), sum(1 if k in tuning.FLAGS else abs(math.log2(cfg[k] / default[k])) for k in changed))

    keys = [k for k, _ in options]
    cfgs = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(v for _, v in options))]
    cfgs.sort(key=distance)
    # a flag at the kernel's own default stays out of a config that did not set it (the first is the default itself)
    return [{k: v for k, v in c.items() if k in entry.default or v != tuning.FLAGS.get(k)} for c in cfgs[:limit]]


def _compile_ok(job: tuple) -> tuple[bool, str]:
    from . import aot

    r = aot.check(*job)
    if r.error:
        return False, r.error
    if r.spill_bytes or r.shared > aot.SMEM_LIMIT[r.arch] or not r.tensor_cores_ok:
        return False, f"spill {r.spill_bytes} B, shared {r.shared} B, tensor cores {r.mma or 'none'}"
    return True, f"{r.registers} registers, shared {r.shared} B"


def affected(entry: Entry, cands: list[dict], n: int, arch: int) -> list[tuple[dict, list]]:
    """(candidate, the compiles it changes) for each neighbour of ``entry`` that changes any (one equal to the
    default after the launcher's clamps changes none and is dropped); records the jit functions they compile to.
    Python only: nothing is compiled."""
    base = {_vkey(v) for v in _variants(entry.layer, n, entry.dtype, arch)}
    out = []
    for cfg in cands[1:]:
        with tuning.override({entry.ident: cfg}):
            new = [v for v in _variants(entry.layer, n, entry.dtype, arch) if _vkey(v) not in base]
        if new:
            out.append((cfg, new))
            entry.functions |= {v[1] for v in new}
    return out


def prune(entry: Entry, changed: list[tuple[dict, list]], arch: int, jobs: int, log=print) -> None:
    """``entry.candidates``: the default, then each neighbour of ``changed`` (:func:`affected`) whose every
    changed compile passes (see the module doc)."""
    work = [
        (i, (name, fn, dt, c, arch, opts, True, div))
        for i, (_, new) in enumerate(changed)
        for name, fn, dt, c, opts, div in new
    ]
    verdict: dict[int, list] = {}
    if jobs <= 1 or len(work) <= 1:
        results = [_compile_ok(w) for _, w in work]
    else:
        with ProcessPoolExecutor(min(jobs, len(work))) as pool:
            results = list(pool.map(_compile_ok, [w for _, w in work]))
    for (i, _), res in zip(work, results, strict=True):
        verdict.setdefault(i, []).append(res)
    entry.candidates = [{k: entry.default[k] for k in entry.default}]
    for i, (cfg, _) in enumerate(changed):
        ok = all(good for good, _ in verdict[i])
        why = "; ".join(sorted({msg for good, msg in verdict[i] if not good})) or "compiles clean"
        log(f"  {'keep' if ok else 'drop'} {_fmt(cfg)}: {why}")
        if ok:
            entry.candidates.append(cfg)


def _fmt(cfg: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items())


def tune_entries(
    entries_: list[Entry], measure, deadline: float, min_gain: float, log=print, chosen: dict | None = None
) -> dict:
    """Coordinate descent: for each entry in order, time each candidate (``measure(overrides)`` -> {jit function:
    seconds}) with the entries before it (and those of ``chosen``) at their choice; keep the fastest if it beats
    the default by ``min_gain``. Returns the overrides chosen ({entry ident: config}), ``chosen``'s included."""
    chosen = dict(chosen or {})
    for entry in entries_:
        for cfg in entry.candidates:
            if time.monotonic() > deadline:
                log(f"[tune] budget spent: {entry.kernel} stops after {len(entry.timed)} candidates")
                break
            try:
                times = measure({**chosen, entry.ident: cfg})
            except Exception as exc:  # a launch that fails on this GPU (resources) rules the candidate out
                log(f"  {_fmt(cfg)}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                continue
            t = sum(times.get(f, 0.0) for f in entry.functions)
            entry.timed.append((t, cfg))
            log(f"  {entry.kernel} {_fmt(cfg)}: {t * 1e6:.1f} us")
        if not entry.timed or entry.timed[0][1] != entry.candidates[0]:
            continue  # the default was not timed: nothing to compare with
        default_t = entry.timed[0][0]
        best_t, best = min(entry.timed, key=lambda tc: tc[0])
        if best != entry.candidates[0] and best_t < default_t * (1 - min_gain):
            entry.best = best
            chosen[entry.ident] = best
    return chosen


def _layer_step(layer: str, n: int, batch: int, dtype: torch.dtype, device: torch.device):
    import flash_triton as ft

    kw = dict(dim=DIM, query_key_dim=S, expansion_factor=E / DIM, causal=True)
    if layer == "flash":
        kw["group_size"] = GROUP
    torch.manual_seed(0)
    model = getattr(ft, "FLASH" if layer == "flash" else "GAU")(**kw, backend="triton").to(device, dtype)
    x = torch.randn(batch, n, DIM, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn_like(x)

    def step():
        x.grad = None
        model.zero_grad(set_to_none=True)
        model(x).backward(dy)
        return [x.grad, *(p.grad for p in model.parameters() if p.grad is not None)]

    return step


def kernel_times(step, reps: int = 3) -> dict[str, float]:
    """{kernel name: device seconds per step} of ``step`` under the CUDA profiler (after one untimed call)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None)
        us = ev.cuda_time_total if us is None else us
        out[ev.key] = out.get(ev.key, 0.0) + us * 1e-6 / reps
    return out


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def write_table(path: Path, new: list[dict]) -> None:
    """Merge ``new`` entries into the table at ``path`` (same arch, kernel, dtype and key replaced) atomically."""
    data = {"format": tuning.FORMAT, "entries": []}
    if path.exists():
        data = json.loads(path.read_text())
    ident = lambda e: (e["arch"], e["kernel"], e["dtype"], tuning.freeze(e["key"]))  # noqa: E731
    replaced = {ident(e) for e in new}
    data["entries"] = [e for e in data["entries"] if ident(e) not in replaced] + new
    data["entries"].sort(key=lambda e: (e["arch"], e["kernel"], e["dtype"], json.dumps(e["key"], sort_keys=True)))
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flash_triton.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", nargs="+", choices=LAYERS, default=list(LAYERS))
    p.add_argument("--dtypes", nargs="+", choices=("bf16", "fp16"), default=["bf16"])
    p.add_argument("--n", type=int, default=8192, help="sequence length (default 8192)")
    p.add_argument("--tokens", type=int, default=32768, help="tokens per step: batch = tokens // n (default 32768)")
    p.add_argument("--arch", type=int, default=None, help="compute capability (default: the CUDA device's)")
    p.add_argument("--kernels", nargs="+", default=None, help="only these tunable kernels")
    p.add_argument("--max-candidates", type=int, default=16, help="per entry, the default included (default 16)")
    p.add_argument("--budget-s", type=float, default=600.0, help="start no new work past this (default 600)")
    p.add_argument("--min-gain", type=float, default=0.03, help="keep a config only this much faster (default 3%%)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles for the pruning")
    p.add_argument("--out", type=Path, default=tuning.TABLE, help=f"table to merge into (default {tuning.TABLE})")
    p.add_argument("--prune-only", action="store_true", help="compile and prune, time nothing (any machine)")
    p.add_argument("--list", action="store_true", help="print the entries and their candidates, compile nothing")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        p.error("unset TRITON_INTERPRET: the tuner compiles for a GPU and times there")
    for name in ("n", "tokens", "max_candidates"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    timing = not (args.prune_only or args.list)
    cuda = torch.cuda.is_available()
    if timing and not cuda:
        p.error("timing needs a CUDA GPU; on this machine use --prune-only or --list (with --arch)")
    if args.arch is None:
        if not cuda:
            p.error("--arch is required without a CUDA GPU")
        major, minor = torch.cuda.get_device_capability()
        args.arch = major * 10 + minor
    from . import aot

    if args.arch not in aot.SMEM_LIMIT:
        p.error(f"--arch {args.arch}: not one the AOT check knows ({sorted(aot.SMEM_LIMIT)})")
    if args.kernels:
        unknown = sorted(set(args.kernels) - set(tuning.TUNABLE))
        if unknown:
            p.error(f"--kernels: unknown {unknown} (tunable: {sorted(tuning.TUNABLE)})")
    start = time.monotonic()
    deadline = start + args.budget_s
    batch = max(1, args.tokens // args.n)
    written = []
    for layer, dtype_name in itertools.product(args.layers, args.dtypes):
        dtype = aot.TORCH_DTYPES[dtype_name]
        todo = [
            e for e in entries(layer, args.n, dtype_name, args.arch) if not args.kernels or e.kernel in args.kernels
        ]
        print(f"[tune] {layer} {dtype_name} n {args.n} batch {batch} sm_{args.arch}: {len(todo)} entries", flush=True)
        changed = {id(e): affected(e, candidates(e, args.max_candidates), args.n, args.arch) for e in todo}
        if args.list:
            for e in todo:
                print(f"[tune] {e.kernel} {e.dtype} {e.key}: default {_fmt(e.default)}")
                for cfg, new in changed[id(e)]:
                    print(f"  {_fmt(cfg)} ({len(new)} compiles)")
            continue
        step = None
        if timing:
            step = _layer_step(layer, args.n, batch, dtype, torch.device("cuda"))
            with tuning.recording() as asked:  # what the step launches (the AOT launch list holds every path)
                step()
            launched = {(k, d, tuning.freeze(key)) for k, d, key, _ in asked}
            skipped = [e.kernel for e in todo if e.ident not in launched]
            todo = [e for e in todo if e.ident in launched]
            print(f"[tune] not launched by this step, not tuned: {skipped or 'none'}", flush=True)
            base = kernel_times(step)
            # the longest-running first: the defaults' device time of the functions each entry changes
            todo.sort(key=lambda e: -sum(t for k, t in base.items() if any(fn in k for fn in e.functions)))

        def measure(overrides, step=step, todo=todo):
            with tuning.override(overrides):
                times = kernel_times(step)
            fns = set().union(*(e.functions for e in todo))
            return {fn: sum(t for k, t in times.items() if fn in k) for fn in fns}

        chosen: dict = {}
        for e in todo:  # each entry pruned, then timed, before the next: a budget cut leaves whole entries
            if time.monotonic() > deadline:
                print(f"[tune] budget spent before {e.kernel}", flush=True)
                break
            print(f"[tune] {e.kernel} {e.dtype} {e.key}: default {_fmt(e.default)}", flush=True)
            prune(e, changed[id(e)], args.arch, args.jobs)
            if timing and len(e.candidates) > 1:
                chosen = tune_entries([e], measure, deadline, args.min_gain, chosen=chosen)
        if not timing:
            continue
        if chosen:  # the chosen configs must reproduce the defaults' outputs and gradients
            ref = [t.float().clone() for t in step()]
            with tuning.override(chosen):
                got = [t.float().clone() for t in step()]
            worst = max(((a - b).norm() / b.norm().clamp_min(1e-6)).item() for a, b in zip(got, ref, strict=True))
            tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
            print(f"[tune] chosen configs vs defaults: largest relative difference {worst:.2e} (limit {tol})")
            if not worst <= tol:
                print("[tune] the chosen configs change the results: nothing written for this layer", file=sys.stderr)
                continue
        stamp = dict(
            device=torch.cuda.get_device_name(),
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            commit=_git_commit(),
            torch=torch.__version__,
            triton=__import__("triton").__version__,
            layer=layer,
            n=args.n,
            batch=batch,
        )
        for e in todo:
            if e.best is None:
                continue
            default_t = e.timed[0][0]
            best_t = min(t for t, _ in e.timed)
            written.append(
                dict(
                    arch=args.arch,
                    kernel=e.kernel,
                    dtype=e.dtype,
                    key=e.key,
                    config=e.best,
                    provenance=dict(stamp, default_us=round(default_t * 1e6, 1), tuned_us=round(best_t * 1e6, 1)),
                )
            )
            print(f"[tune] {e.kernel} {e.key}: {_fmt(e.best)} {default_t * 1e6:.1f} -> {best_t * 1e6:.1f} us")
        if written:  # after each layer and dtype: a run stopped later keeps what it finished
            write_table(args.out, written)
            tuning.reload()
    if timing:
        print(f"[tune] {len(written)} entries written to {args.out} in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
