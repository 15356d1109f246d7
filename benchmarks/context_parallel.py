"""Context parallelism's cost, measured side by side in one run (issue 15): a causal FLASH layer's forward +
backward on one process at n tokens against ``--ranks`` gloo processes holding n tokens each (``ranks x n`` in
all), with the bytes every rank sends into the collectives per step, counted in them
(:func:`flash_triton.distributed.communication_bytes`).

    python -m benchmarks.context_parallel                       # n 8192 per rank, 2 ranks, the reference
    python -m benchmarks.context_parallel --n 2048 --steps 3 --json cp.json

The single-process step runs on process 0 while the others wait at a barrier; then every rank runs the
context-parallel step (a barrier before and after, so a step's time is its slowest rank's); the two alternate, one
warm-up each, so a change in the machine's load reaches both. Target (CPU, 2 ranks): the context-parallel step at
most 1.3x the single-process one. The bytes per step do not depend on n: a second, untimed, step at n / 4 checks
it. Each process runs one torch thread (the ranks share the machine's cores).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flash_triton as ft
from flash_triton import distributed as ftd

DIM, S, G = 512, 128, 256  # FLASH's benchmark widths: query/key 128, value 2 x 512, group 256


def build_layer(dim: int, s: int, g: int, backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return ft.FLASH(
        dim=dim,
        group_size=g,
        query_key_dim=s,
        causal=True,
        shift_tokens=True,
        rotary_pos_emb=ft.RotaryEmbedding(min(32, s)),
        backend=backend,
    )


def step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    layer(x).square().mean().backward()


def expected_bytes(b: int, dim: int, s: int, world: int, shift_tokens: bool = True) -> int:
    """What one rank sends per layer step, by construction: the slice length (8 B), its (b, s, e) float32 state and,
    with token shift, one token's shifted half (b, dim / 2) float32 into the all-gathers; the gathered gradients of
    both, (world, ...) each, into the backward's all-reduces. ``e = 2 x dim`` (expansion factor 2)."""
    e = 2 * dim
    state, token = b * s * e * 4, (b * dim // 2 * 4 if shift_tokens else 0)
    return 8 + (state + token) * (1 + world)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        single = build_layer(args.dim, args.query_key_dim, args.group_size, args.backend)
        parallel = ftd.context_parallel(build_layer(args.dim, args.query_key_dim, args.group_size, args.backend))
        gen = torch.Generator().manual_seed(rank)
        x = torch.randn(args.batch, args.n, args.dim, generator=gen, requires_grad=True)
        times: dict[str, list[float]] = {"single": [], "parallel": []}
        sent: list[int] = []
        for i in range(args.steps + 1):  # the first of each: warm-up
            dist.barrier()
            if rank == 0:
                t0 = time.perf_counter()
                step(single, x)
                if i:
                    times["single"].append(time.perf_counter() - t0)
            dist.barrier()
            before = ftd.communication_bytes()
            t0 = time.perf_counter()
            step(parallel, x)
            dist.barrier()
            if i:
                times["parallel"].append(time.perf_counter() - t0)
                sent.append(ftd.communication_bytes() - before)
        short = x[:, : max(args.group_size, args.n // 4 // args.group_size * args.group_size)].detach()
        before = ftd.communication_bytes()
        step(parallel, short.requires_grad_())
        sent_short = ftd.communication_bytes() - before
        result = {"times": times, "sent": sent, "sent_short": sent_short, "n_short": short.shape[1]}
        torch.save(result, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def measure(args: argparse.Namespace) -> dict:
    """Spawn the ranks and collect their timings and byte counts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(args.ranks, port, args, out), nprocs=args.ranks, start_method="spawn")
        ranks = [torch.load(Path(out) / f"{r}.pt", weights_only=False) for r in range(args.ranks)]
    single, parallel = ranks[0]["times"]["single"], ranks[0]["times"]["parallel"]
    return {
        "n_per_rank": args.n,
        "ranks": args.ranks,
        "batch": args.batch,
        "dim": args.dim,
        "query_key_dim": args.query_key_dim,
        "group_size": args.group_size,
        "backend": args.backend,
        "single_ms": [1e3 * t for t in single],
        "parallel_ms": [1e3 * t for t in parallel],
        "ratio_of_medians": statistics.median(parallel) / statistics.median(single),
        "ratio_of_minima": min(parallel) / min(single),
        "bytes_sent_per_step": [r["sent"][0] for r in ranks],
        "bytes_sent_every_step_equal": all(len(set(r["sent"])) == 1 for r in ranks),
        "bytes_sent_at_n_short": [r["sent_short"] for r in ranks],
        "n_short": ranks[0]["n_short"],
        "bytes_expected": expected_bytes(args.batch, args.dim, args.query_key_dim, args.ranks),
    }


def report(r: dict) -> str:
    med = statistics.median
    rows = [
        f"context parallelism, causal FLASH layer fwd+bwd (dim {r['dim']}, query/key {r['query_key_dim']}, group "
        f"{r['group_size']}, batch {r['batch']}, {r['backend']}), one torch thread per process:",
        "",
        "| run | median ms | min ms | bytes sent per rank per step |",
        "| --- | --- | --- | --- |",
        f"| one process, n = {r['n_per_rank']} | {med(r['single_ms']):.1f} | {min(r['single_ms']):.1f} | 0 |",
        f"| {r['ranks']} ranks, n = {r['ranks']} x {r['n_per_rank']} | {med(r['parallel_ms']):.1f} | "
        f"{min(r['parallel_ms']):.1f} | {', '.join(f'{b:,}' for b in r['bytes_sent_per_step'])} |",
        "",
        f"ratio {r['ratio_of_medians']:.2f}x of the medians ({r['ratio_of_minima']:.2f}x of the minima); target "
        f"<= 1.3x on 2 ranks. Bytes per step at n = {r['n_short']} per rank: "
        f"{', '.join(f'{b:,}' for b in r['bytes_sent_at_n_short'])} (independent of n); by construction "
        f"{r['bytes_expected']:,}.",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.context_parallel", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8192, help="tokens per rank (a multiple of --group-size)")
    p.add_argument("--ranks", type=int, default=2, help="context-parallel processes (gloo)")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each kind (after one warm-up)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument("--query-key-dim", type=int, default=S)
    p.add_argument("--group-size", type=int, default=G)
    p.add_argument("--backend", choices=("reference", "triton"), default="reference")
    p.add_argument("--json", help="also write the measurements to this file")
    args = p.parse_args(argv)
    if args.n < args.group_size or args.n % args.group_size or args.ranks < 2 or args.steps < 1:
        p.error("need --n a positive multiple of --group-size, --ranks >= 2 and --steps >= 1")
    result = measure(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
