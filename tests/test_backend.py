"""Backend dispatch: explicit requests are honoured or refused with a reason, never silently swapped."""

import pytest
import torch

import flash_triton as ft
from flash_triton import backend as bk


def small_gau(**kw):
    return ft.GAU(dim=8, query_key_dim=8, **kw)


def small_flash(**kw):
    return ft.FLASH(dim=8, group_size=4, query_key_dim=8, causal=True, **kw)


@pytest.mark.parametrize("make", [small_gau, small_flash], ids=["GAU", "FLASH"])
def test_unknown_backend_is_a_value_error(make):
    with pytest.raises(ValueError, match="backend must be one of"):
        make(backend="cuda")


def test_triton_without_a_kernel_raises_instead_of_falling_back(monkeypatch):
    assert {"quad_attn", "mixed_chunk_attn"} <= bk.KERNEL_OPS
    monkeypatch.setattr(bk, "KERNEL_OPS", frozenset({"quad_attn"}))
    with pytest.raises(ft.BackendUnavailableError, match="no Triton kernel for 'mixed_chunk_attn'"):
        small_flash(backend="triton")(torch.randn(1, 5, 8))
    assert small_flash(backend="auto")(torch.randn(1, 5, 8)).shape == (1, 5, 8)  # auto may use the reference


def test_triton_on_cpu_without_the_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ft.BackendUnavailableError, match="TRITON_INTERPRET=1 is not set"):
        small_gau(backend="triton")(torch.randn(1, 5, 8))


def test_environment_variable_sets_the_default(monkeypatch):
    x = torch.randn(1, 5, 8)
    monkeypatch.setenv(bk.ENV_VAR, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors without the interpreter: triton cannot run
    with pytest.raises(ft.BackendUnavailableError):
        small_flash()(x)
    small_flash(backend="reference")(x)  # an explicit argument wins over the environment
    monkeypatch.setenv(bk.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=bk.ENV_VAR):
        small_flash()(x)
    monkeypatch.setenv(bk.ENV_VAR, "reference")
    small_flash()(x)


def test_auto_uses_the_reference_on_cpu_tensors(monkeypatch):
    monkeypatch.delenv(bk.ENV_VAR, raising=False)
    x = torch.randn(2, 3)
    assert bk.resolve_backend(None, "mixed_chunk_attn", x) == "reference"
    assert bk.resolve_backend("auto", "quad_attn", x) == "reference"
    assert bk.resolve_backend("reference", "quad_attn", x) == "reference"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(bk, "triton_import_error", lambda: None)
    monkeypatch.setitem(bk.__dict__, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(bk, "KERNEL_OPS", frozenset({"quad_attn"}))
    with pytest.raises(ft.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        bk.resolve_backend("triton", "quad_attn", torch.randn(2))
    monkeypatch.setitem(bk.__dict__, "interpreter_enabled", lambda: True)
    assert bk.resolve_backend("triton", "quad_attn", torch.randn(2)) == "triton"
    assert bk.resolve_backend("auto", "quad_attn", torch.randn(2)) == "reference"  # auto: Triton on CUDA only


def test_triton_that_cannot_import_is_reported(monkeypatch):
    monkeypatch.setattr(bk, "KERNEL_OPS", frozenset({"quad_attn"}))
    monkeypatch.setattr(bk, "triton_import_error", lambda: "ImportError: no module named triton")
    with pytest.raises(ft.BackendUnavailableError, match="cannot be imported"):
        bk.resolve_backend("triton", "quad_attn", torch.randn(2))
    assert bk.resolve_backend("auto", "quad_attn", torch.randn(2)) == "reference"


def test_transformer_passes_its_backend_to_every_layer():
    model = ft.FLASHTransformer(num_tokens=10, dim=8, depth=3, group_size=4, query_key_dim=8, backend="reference")
    assert [layer.backend for layer in model.layers] == ["reference"] * 3


def test_float64_runs_on_the_reference_under_auto_and_is_refused_by_triton(monkeypatch):
    monkeypatch.setattr(bk, "triton_import_error", lambda: None)
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ft.BackendUnavailableError, match="float32, float16 or bfloat16"):
        bk.resolve_backend("triton", "quad_attn", x)
    assert bk.resolve_backend("auto", "quad_attn", x) == "reference"


@pytest.mark.parametrize(
    "triton_version, numpy_version, interpreter, problem",
    [
        ("3.6.0", "2.3.5", True, None),
        ("3.6.0", "2.4.0", False, None),  # compiled for a GPU, numpy 2.4 is fine
        ("3.6.0", "2.4.6", True, "numpy<2.4"),
        ("3.6.0", "2.4.0rc1", True, "numpy<2.4"),
        ("3.7.1", "2.4.6", True, None),
        ("3.9.0+git1a2b3c", "2.4.6", True, None),
        ("3.5.1", "2.3.5", False, "older than 3.6"),
        ("3.10.0", "2.5.0", True, None),
    ],
)
def test_triton_stack_check_names_the_versions_and_the_fix(triton_version, numpy_version, interpreter, problem):
    reason = bk.triton_stack_error(triton_version, numpy_version, interpreter)
    if problem is None:
        assert reason is None
    else:
        assert problem in reason and triton_version in reason
        if "numpy" in problem:
            assert numpy_version in reason and "TRITON_INTERPRET=1" in reason


def test_an_unsupported_triton_is_refused_before_any_kernel_runs(monkeypatch):
    monkeypatch.setattr(bk, "KERNEL_OPS", frozenset({"quad_attn"}))
    reason = bk.triton_stack_error("3.6.0", "2.4.6", True)
    monkeypatch.setattr(bk, "_TRITON_STATUS", [None, reason])
    with pytest.raises(ft.BackendUnavailableError, match=r"triton 3\.6\.0 and numpy 2\.4\.6.*pip install 'numpy<2\.4'"):
        bk.resolve_backend("triton", "quad_attn", torch.randn(2))
    assert bk.resolve_backend("auto", "quad_attn", torch.randn(2)) == "reference"
    with pytest.raises(RuntimeError, match="kernels cannot run here: TRITON_INTERPRET=1 with triton 3.6.0"):
        bk.check_triton_stack()


def test_the_installed_stack_is_supported():
    """The environment the tests run in is one the stack check accepts (else every kernel test would error)."""
    pytest.importorskip("triton")
    assert bk.triton_import_error() is None
    assert bk.unsupported_triton() is None
