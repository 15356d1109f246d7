"""A FLASH layer, side by side: flash_triton's kernels, its reference path (eager and torch.compile), FLASH-pytorch
0.1.9 eager, and a Transformer++ layer of equal width, at constant tokens per batch.

    python -m benchmarks.flash_layer [--n 1024 ... 131072] [--tokens 131072] [--dtype bf16] [--out DIR]

FLASH: dim 512, query/key 128, value width e = 1024, group 256, causal, token shift off. Transformer++: the same
dim, pre-LayerNorm, causal SDPA multi-head attention (8 heads x 64, flash backend where available) and a SwiGLU
FFN of hidden width 1024, residuals. Forward and forward+backward; median time (``triton.testing.do_bench``),
TFLOP/s from :func:`flash_flops` / :func:`transformer_flops`, peak memory, and every provider's time as a ratio to
the kernels'. On a machine without CUDA it prints why and exits, unless ``--allow-cpu`` (a tiny smoke run).
"""

import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

import flash_triton as ft

from .common import DTYPES, matmul_tflops, measure, provenance, timer


def flash_flops(n: int, dim: int, s: int, e: int, g: int, causal: bool, backward: bool) -> float:
    """FLOPs of one FLASH layer on n tokens: projections 2 n dim (2e + s + e) (to_hidden, to_qk, to_out); in-group
    quadratic attention 2 n g (s + e), halved when causal; linear attention 4 n s e (states and their use).
    Backward counts twice the forward (two products per forward product)."""
    proj = 2.0 * n * dim * (2 * e + s + e)
    quad = 2.0 * n * g * (s + e) * (0.5 if causal else 1.0)
    lin = 4.0 * n * s * e
    fwd = proj + quad + lin
    return fwd * (3 if backward else 1)


def transformer_flops(n: int, dim: int, hidden: int, causal: bool, backward: bool) -> float:
    """FLOPs of one Transformer++ layer: qkv and output projections 8 n dim², attention 4 n² dim (halved when
    causal), SwiGLU 6 n dim hidden; backward twice the forward."""
    fwd = 8.0 * n * dim * dim + 4.0 * n * n * dim * (0.5 if causal else 1.0) + 6.0 * n * dim * hidden
    return fwd * (3 if backward else 1)


class TransformerPP(nn.Module):
    """Pre-norm causal multi-head attention (SDPA) + SwiGLU FFN, the baseline FLASH is compared with."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.up, self.down = nn.Linear(dim, 2 * hidden, bias=False), nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        a, gate = self.up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * a)


def providers(device: str, dim: int, s: int, e: int, g: int, compile_reference: bool) -> dict:
    kw = dict(dim=dim, group_size=g, query_key_dim=s, expansion_factor=e / dim, causal=True)
    out = {}
    if device == "cuda":
        out["triton"] = ft.FLASH(**kw, backend="triton")
    reference = ft.FLASH(**kw, backend="reference")
    out["reference"] = reference
    if compile_reference:
        out["reference+compile"] = torch.compile(ft.FLASH(**kw, backend="reference"))
    try:
        import flash_pytorch

        out["flash-pytorch-0.1.9"] = flash_pytorch.FLASH(**kw)
    except ImportError:
        pass
    out["transformer++"] = TransformerPP(dim, heads=dim // 64, hidden=e)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072])
    parser.add_argument("--tokens", type=int, default=131072, help="tokens per batch (batch = tokens // n)")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--out", default=None, help="directory for flash_layer.json")
    parser.add_argument("--allow-cpu", action="store_true", help="smoke-run the harness on CPU")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile of the reference")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        print("no CUDA device: the FLASH layer benchmark measures GPU kernels; nothing measured (see --allow-cpu)")
        return 0
    dim, s, e, g = 512, 128, 1024, 256
    dtype = DTYPES[args.dtype]
    bench = timer(device)
    meta = provenance(device)
    peak = matmul_tflops(device, dtype, bench)
    print(f"{meta} | measured {args.dtype} matmul: {peak:.1f} TFLOP/s")
    models = {name: m.to(device, dtype) for name, m in providers(device, dim, s, e, g, not args.no_compile).items()}
    results = []
    for n in args.n:
        b = max(1, args.tokens // n)
        x = torch.randn(b, n, dim, device=device, dtype=dtype)
        for backward in (False, True):
            rows = {}
            for name, model in models.items():

                def step(model=model, x=x, backward=backward):
                    if backward:
                        model(x.requires_grad_()).float().sum().backward()
                    else:
                        with torch.no_grad():
                            model(x)

                rows[name] = measure(step, device, bench)
                is_tpp = name == "transformer++"
                flops = b * (transformer_flops(n, dim, e, True, backward) if is_tpp else
                             flash_flops(n, dim, s, e, g, True, backward))  # fmt: skip
                rows[name]["tflops"] = flops / (rows[name]["ms"] * 1e-3) / 1e12
            base = rows.get("triton", rows["reference"])["ms"]
            for name, r in rows.items():
                results.append(dict(meta, subject="flash-layer", mode="fwd+bwd" if backward else "fwd", n=n, batch=b,
                                    dim=dim, s=s, e=e, group=g, dtype=args.dtype, provider=name, matmul_tflops=peak,
                                    ratio_to_kernels=r["ms"] / base, **r))  # fmt: skip
    print("| mode | n | batch | provider | ms | TFLOP/s | x kernels' time | peak MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['mode']} | {r['n']} | {r['batch']} | {r['provider']} | {r['ms']:.3f} | {r['tflops']:.1f} | "
              f"{r['ratio_to_kernels']:.2f} | {r['peak_mib']:.0f} |")  # fmt: skip
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "flash_layer.json"), "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
