"""Validation of user input at the public boundary: clear ValueError/TypeError naming the argument and the shapes,
raised before any compute. Internal code trusts its inputs."""

import math
import numbers

import torch
from torch import Tensor

# Positions (RoPE, the sinusoidal embedding) are float32; integers above 2**24 are not exact in float32.
MAX_SEQ_LEN = 2**24


def positive_int(name: str, value: object) -> int:
    """An int (numpy integers included, as upstream accepts them; bool refused), > 0, returned as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def real(name: str, value: object) -> float:
    """A finite real number (numpy scalars included; bool refused), as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def probability(name: str, value: object) -> float:
    value = real(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def seq_len(name: str, n: int, shape: tuple) -> None:
    if n < 1:
        raise ValueError(f"{name} must have at least one position, got shape {shape}")
    if n > MAX_SEQ_LEN:
        raise ValueError(f"{name} has {n} positions (shape {shape}); the limit is {MAX_SEQ_LEN} (float32 positions)")


def features(name: str, x: object, dim: int) -> tuple[int, int]:
    """x must be a floating (batch, seq, dim) tensor; returns (batch, seq)."""
    x = _tensor(name, x)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (batch, seq, {dim}), got {tuple(x.shape)}")
    seq_len(name, x.shape[1], tuple(x.shape))
    return x.shape[0], x.shape[1]


def same_dtype(name: str, x: Tensor, module: torch.nn.Module) -> None:
    """A floating input must have the module's parameter dtype or, under autocast, the autocast dtype (torch would
    fail deep inside with "mat1 and mat2 must have the same dtype" or "mixed dtype (CPU)")."""
    param = next(module.parameters(), None)
    if param is None or x.dtype == param.dtype:
        return
    device = x.device.type
    autocasting = torch.is_autocast_enabled(device)
    if autocasting and x.dtype == torch.get_autocast_dtype(device):
        return
    allowed = f"{param.dtype}" + (f" or the autocast dtype {torch.get_autocast_dtype(device)}" if autocasting else "")
    raise TypeError(
        f"{name} is {x.dtype} but the module takes {allowed}: convert one to the other "
        f"({name}.to({param.dtype}) or module.to({x.dtype})), or run under torch.autocast"
    )


def tokens(name: str, x: object, num_tokens: int) -> tuple[int, int]:
    """x must be an integer (batch, seq) tensor of ids in [0, num_tokens); returns (batch, seq)."""
    x = _tensor(name, x)
    if x.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"{name} must hold integer token ids of dtype int64 or int32 (an embedding's index types), got {x.dtype}"
        )
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, seq), got {tuple(x.shape)}")
    seq_len(name, x.shape[1], tuple(x.shape))
    if not torch.compiler.is_compiling() and x.numel() > 0 and x.device.type != "meta":  # meta: no values
        lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()  # one device-to-host transfer
        if lo < 0 or hi >= num_tokens:
            raise ValueError(f"{name} holds token ids in [{lo}, {hi}], outside [0, {num_tokens}) (num_tokens)")
    return x.shape[0], x.shape[1]


def key_mask(name: str, mask: object, batch: int, n: int, device: torch.device) -> Tensor | None:
    """mask must be None or a bool (batch, seq) tensor on the input's device; (1, seq) broadcasts over the batch
    (as upstream); returned as (batch, seq)."""
    if mask is None:
        return None
    mask = _tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = attend), got dtype {mask.dtype}")
    if mask.dim() != 2 or mask.shape[1] != n or mask.shape[0] not in (1, batch):
        raise ValueError(f"{name} must have shape (batch, seq) = {(batch, n)} or (1, {n}), got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but the input is on {device}")
    return mask.expand(batch, n)


def attn_bias(name: str, bias: object, batch: int, n: int) -> Tensor | None:
    """bias must be None or a floating tensor broadcastable to (batch, seq, seq)."""
    if bias is None:
        return None
    bias = _tensor(name, bias)
    if not bias.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {bias.dtype}")
    target = (batch, n, n)
    ok = bias.dim() <= 3 and all(s in (1, t) for s, t in zip(reversed(bias.shape), reversed(target), strict=False))
    if not ok:
        raise ValueError(f"{name} must broadcast to (batch, seq, seq) = {target}, got {tuple(bias.shape)}")
    return bias


def cu_seqlens(name: str, cu: object, batch: int, n: int, device: torch.device) -> Tensor | None:
    """None, or a 1-D integer tensor [0, ..., n], strictly increasing, for a packed batch of one row."""
    if cu is None:
        return None
    cu = _tensor(name, cu)
    if cu.dtype.is_floating_point or cu.dtype.is_complex or cu.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer offsets, got dtype {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 offsets, got shape {tuple(cu.shape)}")
    if batch != 1:
        raise ValueError(f"{name} packs sequences along one row: the input's batch must be 1, got {batch}")
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device} but the input is on {device}")
    offsets = cu.tolist()
    if offsets[0] != 0 or offsets[-1] != n or any(b <= a for a, b in zip(offsets, offsets[1:], strict=False)):
        raise ValueError(f"{name} must rise strictly from 0 to the sequence length {n}, got {offsets}")
    return cu.long()  # any integer dtype in (int32 is what flash-attn uses); int64 for indexing
