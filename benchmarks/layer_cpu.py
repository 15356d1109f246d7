"""FLASH layer forward+backward on CPU: flash_triton's reference path vs FLASH-pytorch 0.1.9, side by side.

    python -m benchmarks.layer_cpu [--n 1024 2048] [--repeats 5]

Median wall time of several runs after a warm-up, same weights, same inputs, same thread count. This measures
the reference path (no kernels run on CPU); GPU figures come from the kernel benchmarks.
"""

import argparse
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone

import torch

import flash_triton as ft


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fwd_bwd(layer, x):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        import flash_pytorch
    except ImportError:
        print("FLASH-pytorch 0.1.9 is not installed (pip install FLASH-pytorch==0.1.9); nothing to compare against")
        return 1

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, commit {commit or 'unknown'}, {datetime.now(timezone.utc):%Y-%m-%d}"
    )
    print(f"FLASH layer fwd+bwd, causal, fp32, dim {args.dim}, group {args.group_size}, batch 1")
    print("| n | FLASH-pytorch 0.1.9 (ms) | flash_triton reference (ms) | ratio |")
    print("| --- | --- | --- | --- |")
    for n in args.n:
        kw = dict(dim=args.dim, group_size=args.group_size, query_key_dim=128, causal=True)
        theirs = flash_pytorch.FLASH(**kw)
        ours = ft.FLASH(**kw, backend="reference")
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(1, n, args.dim)
        t_up = median_time(fwd_bwd(theirs, x), args.repeats) * 1e3
        t_ref = median_time(fwd_bwd(ours, x), args.repeats) * 1e3
        print(f"| {n} | {t_up:.1f} | {t_ref:.1f} | {t_up / t_ref:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
