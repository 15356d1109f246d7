"""Context parallelism (issue 15) on the CPU with gloo: 2 and 4 processes spawned here, each holding a slice of
the sequence; outputs and every gradient against the single-process run, on both backends, with token shift,
RoPE and the sinusoidal positions; a ragged slice refused by every rank."""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flash_triton as ft
from flash_triton import distributed as ftd
from flash_triton import ops
from tests._helpers import scramble

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

B, S, E = 2, 8, 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _op_inputs(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, n, S)] * 4 + [(B, n, E)] * 2
    return [torch.randn(*shape, generator=g) for shape in shapes]


def _lm(seed: int, **kw) -> ft.FLASHTransformer:
    torch.manual_seed(seed)
    model = ft.FLASHTransformer(num_tokens=30, dim=16, depth=2, group_size=4, query_key_dim=8, causal=True, **kw)
    scramble(model)
    return model


def _worker(rank: int, world: int, port: int, out: str, cases: list[tuple]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = {}
    try:
        for case in cases:
            kind, name = case[0], case[1]
            try:
                results[name] = _run_case(rank, world, *case)
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
                if kind != "ragged":
                    raise
    finally:
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.destroy_process_group()


def _run_case(rank, world, kind, name, n, g, backend, seed):
    lo, hi = rank * n // world, (rank + 1) * n // world
    if kind == "op":
        full = _op_inputs(n, seed)
        mine = [t[:, lo:hi].clone().requires_grad_() for t in full]
        mask = torch.rand(B, n, generator=torch.Generator().manual_seed(seed + 1)) > 0.2
        out = ftd.mixed_chunk_attn(*mine, group_size=g, key_mask=mask[:, lo:hi], backend=backend)
        out.square().sum().backward()
        return {"out": out.detach(), "grads": [t.grad for t in mine]}
    if kind == "lm":
        model = ftd.context_parallel(_lm(seed, backend=backend))
        x = torch.randint(0, 30, (B, n), generator=torch.Generator().manual_seed(seed + 2))
        out = model(x[:, lo:hi])
        out.square().sum().backward()
        return {"out": out.detach(), "grads": {k: p.grad for k, p in model.named_parameters() if p.grad is not None}}
    if kind == "comm":  # bytes sent per FLASH-layer step at two lengths: independent of n
        layer = ftd.context_parallel(ft.FLASH(dim=16, group_size=g, query_key_dim=8, causal=True, shift_tokens=True))
        sent = []
        for length in (n, 4 * n):
            x = torch.randn(B, length // world, 16, requires_grad=True)
            before = ftd.communication_bytes()
            layer(x).sum().backward()
            sent.append(ftd.communication_bytes() - before)
        model = ftd.context_parallel(_lm(seed))  # depth 2: its slices checked once per forward, not per layer
        x = torch.randint(0, 30, (B, n // world))
        before = ftd.communication_bytes()
        model(x).sum().backward()
        return {"sent": sent, "sent_lm": ftd.communication_bytes() - before}
    if kind == "ragged":  # rank 0 holds one token too many: every rank must refuse, none may hang
        m = hi - lo + (1 if rank == 0 else 0)
        ftd.mixed_chunk_attn(*[t[:, :m] for t in _op_inputs(n, seed)], group_size=g, backend=backend)
        return {}
    raise AssertionError(kind)


def _spawn(world: int, cases: list[tuple], tmp_path: Path) -> list[dict]:
    mp.start_processes(
        _worker, args=(world, _free_port(), str(tmp_path), cases), nprocs=world, join=True, start_method="spawn"
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _single(kind, n, g, backend, seed):
    if kind == "op":
        full = [t.requires_grad_() for t in _op_inputs(n, seed)]
        mask = torch.rand(B, n, generator=torch.Generator().manual_seed(seed + 1)) > 0.2
        out = ops.mixed_chunk_attn(*full, group_size=g, causal=True, key_mask=mask, backend=backend)
        out.square().sum().backward()
        return out.detach(), [t.grad for t in full]
    model = _lm(seed, backend=backend)
    x = torch.randint(0, 30, (B, n), generator=torch.Generator().manual_seed(seed + 2))
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()), msg=what)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_context_parallel_equals_single_process(world, tmp_path):
    # 2 ranks: both backends and group sizes; 4 ranks (4 processes on this 2-core machine): the reference
    backends = ["reference", "triton"] if world == 2 else ["reference"]
    cases = [("op", f"op-g{g}-{be}", world * 2 * g, g, be, g) for g in (4, 8) for be in backends]
    cases += [("lm", f"lm-{be}", world * 8, 4, be, 7) for be in backends]
    cases.append(("ragged", "ragged", world * 4, 4, "reference", 3))
    cases.append(("comm", "comm", world * 8, 4, "reference", 0))
    ranks = _spawn(world, cases, tmp_path)
    for kind, name, n, g, backend, seed in cases:
        if kind == "ragged":
            for r in ranks:
                assert "every rank's slice must be a positive multiple of group_size 4" in r[name]["error"], r[name]
            continue
        if kind == "comm":
            # forward: the slice length (8 B), the state (b, s, e) fp32, the shifted token (b, dim / 2) fp32;
            # backward: the gathered gradients of both, (world, ...) each
            state, token = B * 8 * 32 * 4, B * 8 * 4  # FLASH(dim 16): s = query_key_dim 8, e = 2 * 16 = 32
            expected = 8 + state + token + world * (state + token)
            for r in ranks:
                assert r[name]["sent"] == [expected, expected], (r[name], expected)
                # the LM (dim 16, depth 2): one length check for the whole forward, then each layer's state and
                # token as above
                assert r[name]["sent_lm"] == 8 + 2 * (expected - 8), (r[name], expected)
            continue
        for r in ranks:
            assert "error" not in r[name], r[name].get("trace")
        out, grads = _single(kind, n, g, backend, seed)
        _close(torch.cat([r[name]["out"] for r in ranks], dim=1), out, f"{name}: output")
        if kind == "op":  # each input's gradient: the ranks' slices, concatenated
            for i, grad in enumerate(grads):
                _close(torch.cat([r[name]["grads"][i] for r in ranks], dim=1), grad, f"{name}: input {i} grad")
        else:  # parameters: the ranks' gradients summed (what data parallelism's all-reduce does)
            assert set(ranks[0][name]["grads"]) == set(grads)
            for key, grad in grads.items():
                _close(sum(r[name]["grads"][key] for r in ranks), grad, f"{name}: {key} grad")


def test_context_parallel_needs_an_initialised_process_group_and_causal_layers():
    if dist.is_initialized():
        pytest.skip("a process group exists in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        ftd.context_parallel(_lm(0))
