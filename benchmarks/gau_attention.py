"""GAU attention core and GAU layer: fused Triton kernels vs the reference (eager and torch.compile) vs PyTorch
SDPA softmax attention of the same width, side by side in one run.

    python -m benchmarks.gau_attention [--n 1024 2048 4096 8192 16384] [--dtype bf16] [--out DIR]

Core: causal relu² attention, query/key width s = 128, value width e = 1024, batch 1, with the T5 bias and the
gate, forward and forward+backward. SDPA: 8 heads x 128 = 1024 wide q, k and v, causal, flash backend where
available. Layer: a GAU(dim=512) training step (forward+backward), peak memory. Times are medians of
``triton.testing.do_bench`` (quantiles 0.5/0.2/0.8) on a GPU; TFLOP/s count useful FLOPs only (formulas below);
the device's measured bf16 matmul rate is printed beside them as the ceiling. On a machine without CUDA it prints
why and exits, unless ``--allow-cpu`` (a tiny smoke run of the harness with the reference providers).
"""

import argparse
import json
import os

import torch

import flash_triton as ft
from flash_triton import reference as ref

from .common import DTYPES, matmul_tflops, measure, provenance, timer


def core_flops(n: int, s: int, e: int, causal: bool, backward: bool) -> float:
    """Useful FLOPs: forward 2 n² (s + e) (QKᵀ and AV); backward 4 n² (s + e) (dV, dA, dQ, dK; the recomputed
    scores are not counted); causal halves both."""
    fwd = 2.0 * n * n * (s + e)
    total = fwd + (2 * fwd if backward else 0.0)
    return total / 2 if causal else total


def core_providers(device: str, allow_triton: bool, compile_reference: bool) -> dict:
    providers = {"reference": ref.quad_attn}
    if compile_reference:
        providers["reference+compile"] = torch.compile(ref.quad_attn)
    if allow_triton:
        from flash_triton.triton_ops import quad_attn

        providers = {"triton": quad_attn, **providers}
    return providers


def run_core(n, s, e, dtype, device, providers, bench, backward):
    q, k = (torch.randn(1, n, s, device=device, dtype=dtype, requires_grad=backward) for _ in range(2))
    v, gate = (torch.randn(1, n, e, device=device, dtype=dtype, requires_grad=backward) for _ in range(2))
    t5 = torch.randn(32, device=device, dtype=dtype, requires_grad=backward)
    grad = torch.randn(1, n, e, device=device, dtype=dtype)
    kw = dict(scale=1.0 / n, causal=True, t5_weight=t5, t5_scale=512**0.5 / n)
    rows = {}
    for name, fn in providers.items():

        def step(fn=fn):
            out = fn(q, k, v, gate, **kw)
            if backward:
                torch.autograd.grad(out, (q, k, v, gate, t5), grad)

        rows[name] = measure(step, device, bench)
    heads = e // 128
    qs, ks, vs = (torch.randn(1, heads, n, 128, device=device, dtype=dtype, requires_grad=backward) for _ in range(3))

    def sdpa():
        out = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
        if backward:
            torch.autograd.grad(out, (qs, ks, vs), torch.ones_like(out))

    rows["sdpa-softmax"] = measure(sdpa, device, bench)
    return rows


def run_layer(n, dtype, device, backends, bench):
    rows = {}
    x = torch.randn(1, n, 512, device=device, dtype=dtype)
    for backend in backends:
        layer = ft.GAU(dim=512, query_key_dim=128, causal=True, backend=backend).to(device, dtype)

        def step(layer=layer):
            layer(x).float().sum().backward()

        rows[f"layer-{backend}"] = measure(step, device, bench)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--out", default=None, help="directory for gau_attention.json")
    parser.add_argument("--allow-cpu", action="store_true", help="smoke-run the harness on CPU (reference only)")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile of the reference")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        print("no CUDA device: the GAU kernel benchmark measures GPU kernels; nothing measured (see --allow-cpu)")
        return 0
    dtype = DTYPES[args.dtype]
    bench = timer(device)
    meta = provenance(device)
    peak = matmul_tflops(device, dtype, bench)
    print(f"{meta} | measured {args.dtype} matmul: {peak:.1f} TFLOP/s")
    s, e = 128, 1024
    providers = core_providers(device, allow_triton=device == "cuda", compile_reference=not args.no_compile)
    results = []
    for n in args.n:
        for backward in (False, True):
            rows = run_core(n, s, e, dtype, device, providers, bench, backward)
            flops = core_flops(n, s, e, causal=True, backward=backward)
            for name, r in rows.items():
                r["tflops"] = flops / (r["ms"] * 1e-3) / 1e12 if name != "sdpa-softmax" else float("nan")
                results.append(dict(meta, subject="gau-core", mode="fwd+bwd" if backward else "fwd", n=n, s=s, e=e,
                                    dtype=args.dtype, provider=name, matmul_tflops=peak, **r))  # fmt: skip
        backends = ["triton", "reference"] if device == "cuda" else ["reference"]
        for name, r in run_layer(n, dtype, device, backends, bench).items():
            results.append(dict(meta, subject="gau-layer", mode="fwd+bwd", n=n, dim=512, dtype=args.dtype,
                                provider=name, **r))  # fmt: skip
    print("| subject | mode | n | provider | ms | TFLOP/s | % of matmul | peak MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        frac = r.get("tflops", float("nan")) / peak * 100
        print(f"| {r['subject']} | {r['mode']} | {r['n']} | {r['provider']} | {r['ms']:.3f} | "
              f"{r.get('tflops', float('nan')):.1f} | {frac:.0f} | {r['peak_mib']:.0f} |")  # fmt: skip
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gau_attention.json"), "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
