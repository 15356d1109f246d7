"""The benchmark harnesses run end to end (tiny sizes, CPU) and write rows with their provenance."""

import json

import pytest
import torch

from benchmarks import gau_attention, layer_cpu


def test_gau_attention_harness_smoke(tmp_path, capsys):
    assert (
        gau_attention.main(["--n", "32", "--dtype", "fp32", "--allow-cpu", "--no-compile", "--out", str(tmp_path)]) == 0
    )
    rows = json.loads((tmp_path / "gau_attention.json").read_text())
    providers = {r["provider"] for r in rows}
    assert {"reference", "sdpa-softmax", "layer-reference"} <= providers
    for r in rows:
        assert {"device", "torch", "triton", "commit", "date", "dtype", "n", "mode", "ms"} <= set(r)
        assert r["ms"] > 0
    assert "| gau-core |" in capsys.readouterr().out


def test_gau_attention_flop_formula_matches_a_brute_force_count():
    n, s, e = 6, 3, 5
    pairs = sum(1 for i in range(n) for j in range(n) if j <= i)
    fwd = pairs * (2 * s + 2 * e)  # one multiply-add per feature for q.k and for a * v
    assert gau_attention.core_flops(n, s, e, causal=False, backward=False) == n * n * (2 * s + 2 * e)
    # the formula halves n² for causal; the exact count has n (n + 1) / 2 pairs: equal up to the diagonal
    assert abs(gau_attention.core_flops(n, s, e, causal=True, backward=False) - fwd) <= n * (2 * s + 2 * e)
    assert gau_attention.core_flops(n, s, e, causal=False, backward=True) == 3 * n * n * (2 * s + 2 * e)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine this runs the full sweep")
def test_gau_attention_without_cuda_says_so(capsys):
    assert gau_attention.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_layer_cpu_harness_smoke(capsys):
    pytest.importorskip("flash_pytorch", reason="FLASH-pytorch 0.1.9 is not installed")
    assert layer_cpu.main(["--n", "64", "--dim", "32", "--group-size", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 64 |" in out


def test_flash_layer_harness_smoke(tmp_path, capsys):
    from benchmarks import flash_layer

    argv = ["--n", "64", "--tokens", "128", "--dtype", "fp32", "--allow-cpu", "--no-compile", "--out", str(tmp_path)]
    assert flash_layer.main(argv) == 0
    rows = json.loads((tmp_path / "flash_layer.json").read_text())
    assert {"reference", "transformer++"} <= {r["provider"] for r in rows}
    for r in rows:
        assert {"device", "commit", "date", "n", "batch", "mode", "ms", "tflops", "ratio_to_kernels"} <= set(r)
        assert r["ms"] > 0 and r["batch"] == 2
    assert "| fwd+bwd | 64 |" in capsys.readouterr().out


def test_flash_layer_flop_formula_matches_a_brute_force_count():
    from benchmarks.flash_layer import flash_flops, transformer_flops

    n, dim, s, e, g = 12, 5, 3, 4, 4
    proj = 2 * n * dim * 2 * e + 2 * n * dim * s + 2 * n * e * dim
    pairs = sum(1 for i in range(n) for j in range(n) if i // g == j // g and j <= i)
    quad = pairs * 2 * (s + e)
    lin = n * 2 * s * e + n * 2 * s * e  # each token adds lin_kᵀ v to a state, and reads lin_q · state
    exact = proj + quad + lin
    approx = flash_flops(n, dim, s, e, g, causal=True, backward=False)
    assert abs(approx - exact) <= n * 2 * (s + e)  # the formula halves g² where the count has g (g + 1) / 2
    assert flash_flops(n, dim, s, e, g, causal=True, backward=True) == 3 * approx
    attn_pairs = n * (n + 1) // 2
    exact_tpp = (
        2 * n * dim * 3 * dim + 2 * n * dim * dim + attn_pairs * 2 * 2 * dim + 2 * n * dim * 2 * e + 2 * n * e * dim
    )
    assert abs(transformer_flops(n, dim, e, causal=True, backward=False) - exact_tpp) <= n * 4 * dim
