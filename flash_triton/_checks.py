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


def positive_real(name: str, value: object) -> float:
    value = real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def norm_module(name: str, klass: object, dim: int) -> torch.nn.Module:
    """``klass(dim)``, which must be a torch module (e.g. ``nn.LayerNorm``, ``flash_triton.ScaleNorm``)."""
    if not callable(klass):
        raise TypeError(f"{name} must be a module class such as nn.LayerNorm, got {type(klass).__name__} {klass!r}")
    if isinstance(klass, torch.nn.Module):
        raise TypeError(f"{name} must be a module class such as nn.LayerNorm (called with dim), not an instance")
    norm = klass(dim)
    if not isinstance(norm, torch.nn.Module):
        raise TypeError(f"{name}(dim) must return a torch.nn.Module, got {type(norm).__name__}")
    return norm


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


def flag(name: str, value: object) -> bool:
    """A bool flag: bool, numpy bool, or the ints 0 / 1 (a truthy int works upstream); anything else (None, a string
    such as "False", a tensor) is a TypeError instead of silently meaning its truth value."""
    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):  # numpy 2 renamed it
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def length(name: str, value: object) -> int:
    """A positive int of at most :data:`MAX_SEQ_LEN` tokens (a group or window size)."""
    value = positive_int(name, value)
    if value > MAX_SEQ_LEN:
        raise ValueError(f"{name} must be at most {MAX_SEQ_LEN} tokens (the sequence limit), got {value}")
    return value


class Dims:
    """Named dimensions shared by several tensor arguments: the first tensor that has a dimension fixes its size,
    the others must agree (``b``: batch, ``n``: sequence, ``s``: query/key width, ``e``: value width, ...). Every
    tensor must also be on the first one's device."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.source: dict[str, str] = {}  # the argument each size came from
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self.first = ""

    def check(
        self, name: str, t: object, dims: str | tuple[str, ...], kind: str = "float", any_float: bool = False
    ) -> Tensor:
        """``t`` must be a ``kind`` ("float": floating point, or "bool") tensor of shape ``dims``: a name per
        dimension, one letter each in a string (e.g. "bns") or a tuple of names. Floating tensors share the first
        one's dtype (torch would fail deep inside, or promote silently) unless autocast is on for their device or
        ``any_float`` (the float32 linear states)."""
        t = _tensor(name, t)
        if not (t.is_floating_point() if kind == "float" else t.dtype == torch.bool):
            raise TypeError(f"{name} must be a {'floating-point' if kind == 'float' else 'bool'} tensor, got {t.dtype}")
        dims = tuple(dims)
        mismatch = t.dim() != len(dims) or any(self.sizes.get(d, s) != s for d, s in zip(dims, t.shape, strict=True))
        if mismatch:
            bound = ", ".join(f"{d}={self.sizes[d]}" if d in self.sizes else d for d in dims)
            sources = list(dict.fromkeys(self.source[d] for d in dims if d in self.source))
            source = f" (sizes from {', '.join(sources)})" if sources else ""
            trail = "," if len(dims) == 1 else ""
            raise ValueError(f"{name} must have shape ({bound}{trail}){source}, got {tuple(t.shape)}")
        if self.device is None:
            self.device, self.first, self.dtype = t.device, name, t.dtype
        elif t.device != self.device:
            raise ValueError(f"{name} is on {t.device} but {self.first} is on {self.device}")
        elif kind == "float" and not any_float:
            self.same_dtype(name, t)
        for d, s in zip(dims, t.shape, strict=True):
            if d not in self.sizes:
                self.sizes[d], self.source[d] = s, name
        return t

    def same_dtype(self, name: str, t: Tensor) -> None:
        if t.dtype != self.dtype and not torch.is_autocast_enabled(t.device.type):
            raise TypeError(
                f"{name} is {t.dtype} but {self.first} is {self.dtype}: the op takes one floating dtype (or run under "
                "torch.autocast)"
            )


def _common_kw(d: Dims, kw: dict, *, window: int | None) -> None:
    """The keywords :func:`quad_attn`, :func:`mixed_chunk_attn` and :func:`mixed_chunk_attn_step` share."""
    if kw.get("key_mask") is not None:
        d.check("key_mask", kw["key_mask"], "bn", "bool")
    distance = positive_int("t5_max_distance", kw.get("t5_max_distance", 128))
    if kw.get("t5_weight") is not None:
        buckets = d.check("t5_weight", kw["t5_weight"], ("num_buckets",)).numel()
        if buckets < 4 or distance <= buckets // 2:
            raise ValueError(
                f"t5_weight has {buckets} buckets and t5_max_distance is {distance}: the T5 buckets need at least 4 "
                "buckets and t5_max_distance > num_buckets // 2 (the last exactly-bucketed distance)"
            )
    for name in ("t5_scale", "bias_scale"):
        if name in kw:
            real(name, kw[name])
    for name in ("laplace", "causal", "reduce_group", "output_final_state"):
        if name in kw:
            flag(name, kw[name])
    probability("dropout_p", kw.get("dropout_p", 0.0))
    if kw.get("dropout_mask") is not None:
        if window is None:
            raise ValueError("dropout_mask is not supported here (a test hook of the fixed-window reference)")
        groups = -(-d.sizes["n"] // window)
        d.sizes.update(G=groups, w=window)
        d.source.update(G="window", w="window")
        d.check("dropout_mask", kw["dropout_mask"], "bGww", "bool")
    if kw.get("dropout_seed") is not None:
        seed = _tensor("dropout_seed", kw["dropout_seed"])
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise ValueError(f"dropout_seed must be a (1,) int64 tensor, got {seed.dtype} {tuple(seed.shape)}")


def quad_attn_args(q: object, k: object, v: object, gate: object, kw: dict) -> None:
    """The arguments of :func:`flash_triton.ops.quad_attn`, before any compute."""
    d = Dims()
    seq_len("q", d.check("q", q, "bns").shape[1], tuple(q.shape))
    d.check("k", k, "bns")
    d.check("v", v, "bne")
    if gate is not None:
        d.check("gate", gate, "bne")
    if "scale" not in kw:
        raise TypeError("quad_attn() missing the keyword argument 'scale'")
    real("scale", kw["scale"])
    n = d.sizes["n"]
    window = None if kw.get("window") is None else length("window", kw["window"])
    if kw.get("bias") is not None:
        if window is not None and window != n:
            raise ValueError(f"bias is only supported with window=None (the whole sequence), got window={window}")
        d.same_dtype("bias", attn_bias("bias", kw["bias"], d.sizes["b"], n))
    _common_kw(d, kw, window=window or n)


def mixed_chunk_attn_args(tensors: tuple, kw: dict) -> None:
    """The arguments of :func:`flash_triton.ops.mixed_chunk_attn`, before any compute."""
    d = Dims()
    names = ("quad_q", "quad_k", "lin_q", "lin_k", "v", "gate")
    for name, t, dims in zip(names, tensors, ("bns",) * 4 + ("bne",) * 2, strict=True):
        d.check(name, t, dims)
    seq_len("quad_q", d.sizes["n"], tuple(tensors[0].shape))
    for name in ("group_size", "causal"):
        if name not in kw:
            raise TypeError(f"mixed_chunk_attn() missing the keyword argument {name!r}")
    g = length("group_size", kw["group_size"])
    causal = flag("causal", kw["causal"])
    _common_kw(d, kw, window=g)
    if not causal and (kw.get("initial_state") is not None or kw.get("output_final_state")):
        raise ValueError("initial_state / output_final_state are defined for causal attention only (causal=False)")
    batch, n = d.sizes["b"], d.sizes["n"]
    sequences = batch
    if kw.get("cu_seqlens") is not None:
        if kw.get("dropout_mask") is not None:
            raise ValueError("dropout_mask is not supported with cu_seqlens")
        cu = cu_seqlens("cu_seqlens", kw["cu_seqlens"], batch, n, d.device)
        sequences = cu.numel() - 1
    if kw.get("initial_state") is not None:
        d.sizes["S"] = sequences
        d.source["S"] = "cu_seqlens" if kw.get("cu_seqlens") is not None else d.source["b"]
        d.check("initial_state", kw["initial_state"], "Sse", any_float=True)


def mixed_chunk_attn_step_args(tensors: tuple, state: object, kw: dict) -> None:
    """The arguments of :func:`flash_triton.ops.mixed_chunk_attn_step`, before any compute."""
    d = Dims()
    names = ("quad_q", "lin_q", "gate", "quad_k", "lin_k", "v")
    for name, t, dims in zip(names, tensors, ("bms", "bms", "bme", "bLs", "bLs", "bLe"), strict=True):
        d.check(name, t, dims)
    seq_len("quad_q", d.sizes["m"], tuple(tensors[0].shape))
    seq_len("quad_k", d.sizes["L"], tuple(tensors[3].shape))
    if d.sizes["m"] > d.sizes["L"]:
        raise ValueError(
            f"quad_q has {d.sizes['m']} new tokens but the window (quad_k) holds only {d.sizes['L']}: the window "
            "ends with the new tokens"
        )
    stray = sorted(set(kw) - {"group_size", "t5_weight", "t5_scale", "t5_max_distance", "laplace"})
    if stray:
        raise TypeError(
            f"mixed_chunk_attn_step() got unexpected keyword arguments {stray} (decoding is causal, "
            "unmasked and without dropout)"
        )
    length("group_size", kw["group_size"])
    _common_kw(d, kw, window=None)
    if state is not None:
        d.check("state", state, "bse", any_float=True)
