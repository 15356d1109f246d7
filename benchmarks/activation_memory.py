"""Activation memory per token of FLASH, measured from the tensors autograd saves (``saved_tensors_hooks``), and
what it implies at 80 GB per GPU (issue 15's memory model).

    python -m benchmarks.activation_memory            # the benchmark widths, both backends (triton: interpreter)

Counts every storage saved for backward once (views share it), leaving out the input (the previous layer saves it)
and the parameters.
Measured in float32 on the CPU; the bf16 figures assume every saved activation in bf16 (half the bytes) except the
float32 linear-state prefixes, which are O(n / g) and counted as measured: an estimate, labelled so.
"""

from __future__ import annotations

import argparse
import math
import os

import torch

import flash_triton as ft

DIM, S, E, G, VOCAB = 512, 128, 1024, 256, 256
GPU_BYTES = 80e9


def saved_bytes_per_token(model: torch.nn.Module, x: torch.Tensor, tokens: int) -> float:
    """Bytes autograd saves for backward in ``model(x)``, per token: each storage once, leaving out ``x``'s own and
    the parameters (a linear layer saves its weight: memory the model has anyway)."""
    seen: dict[tuple[int, int], int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()} | {
        b.untyped_storage().data_ptr() for b in model.buffers()
    }

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    storage = x.untyped_storage()
    seen.pop((storage.data_ptr(), storage.nbytes()), None)
    return sum(size for (ptr, _), size in seen.items() if ptr not in params) / tokens


def measure(backend: str, n: int, depth: int = 2) -> dict[str, float]:
    """Saved bytes per token (float32): one FLASH layer, and a depth-``depth`` LM with and without checkpointing."""
    torch.manual_seed(0)
    layer = ft.FLASH(
        dim=DIM,
        group_size=G,
        query_key_dim=S,
        causal=True,
        shift_tokens=True,
        rotary_pos_emb=ft.RotaryEmbedding(32),
        backend=backend,
    )
    out = {"layer": saved_bytes_per_token(layer, torch.randn(1, n, DIM, requires_grad=True), n)}
    lm = ft.FLASHTransformer(
        num_tokens=VOCAB, dim=DIM, depth=depth, group_size=G, query_key_dim=S, causal=True, backend=backend
    )
    ids = torch.randint(0, VOCAB, (1, n))
    for checkpointing in (False, True):
        lm.gradient_checkpointing = checkpointing
        out[f"lm{int(checkpointing)}"] = saved_bytes_per_token(lm, ids, n)
    out["outside_layers"] = out["lm0"] - depth * out["layer"]  # embeddings, head, logits
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.activation_memory", description=__doc__)
    p.add_argument("--n", type=int, default=2048, help="tokens measured (a multiple of the group size 256)")
    p.add_argument("--depth", type=int, default=8, help="layers of the model the 80 GB figures are for")
    args = p.parse_args(argv)
    for backend in ("reference", "triton"):
        if backend == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            print("triton: skipped (no GPU; set TRITON_INTERPRET=1 to measure under the interpreter)")
            continue
        m = measure(backend, args.n)
        layer_bf16 = m["layer"] / 2  # estimate: every saved activation in bf16
        plain = args.depth * layer_bf16 + m["outside_layers"] / 2
        # checkpointing keeps each layer's input (dim values) and recomputes one layer at a time
        ckpt = args.depth * DIM * 2 + layer_bf16 + m["outside_layers"] / 2
        print(f"{backend}: FLASH layer {m['layer']:.0f} B/token saved in fp32 ({m['layer'] / 4:.0f} values/token)")
        print(f"  LM depth 2, fp32: {m['lm0']:.0f} B/token, {m['lm1']:.0f} B/token with activation checkpointing")
        for name, per_token in (("no checkpointing", plain), ("activation checkpointing", ckpt)):
            longest = GPU_BYTES / per_token
            ranks = [math.ceil(t / longest) for t in (4 * 2**20, 16 * 2**20)]
            print(
                f"  estimate, bf16, depth {args.depth}, {name}: {per_token / 1e3:.1f} kB/token -> "
                f"{longest / 2**20:.2f}M tokens per 80 GB; context-parallel ranks for 4M / 16M tokens: {ranks}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
