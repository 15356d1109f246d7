"""The training program's configuration: :class:`TrainConfig` (one frozen dataclass, the tiny preset's values as
defaults), the validation rule of every field, the presets, and the model a configuration describes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from .._checks import MAX_SEQ_LEN
from ..transformer import FLASHTransformer

FLOAT32_MAX = 3.4028234663852886e38

PROG = "flash-triton-train"
CHECKPOINT_FORMAT = 2
#: Fields that fix the model's parameter shapes: a checkpoint loads only into the same values.
MODEL_FIELDS = (
    "dim",
    "depth",
    "group_size",
    "query_key_dim",
    "expansion_factor",
    "norm_type",
    "shift_tokens",
    "laplace_attn_fn",
)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NORM_TYPES = ("scalenorm", "layernorm")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Model shape, optimisation, evaluation and checkpoint settings of one run; the defaults are the tiny preset.

    Invalid values raise ``ValueError`` naming the field (see ``FIELD_RULES``).
    """

    dim: int = 192
    depth: int = 3
    group_size: int = 128
    query_key_dim: int = 96
    expansion_factor: float = 2.0
    attn_dropout: float = 0.0
    norm_type: str = "scalenorm"
    shift_tokens: bool = True
    laplace_attn_fn: bool = False
    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    warmup_steps: int = 20
    cosine_decay: bool = True  # decay the lr to 10% of its peak over the run (else constant after warm-up)
    grad_clip: float = 0.5
    steps: int = 400
    schedule_steps: int = 0  # steps the cosine decay spans (0: ``steps``); a resume with more --steps keeps it
    eval_every: int = 100
    eval_windows: int = 64  # fixed validation windows per evaluation (see data.validation_windows)
    eval_batch_size: int = 16
    log_every: int = 10
    checkpoint_every: int = 100  # 0: only at the end and on interruption
    keep_checkpoints: int = 3
    sample_every: int = 0  # 0: only at the end
    sample_prompt_len: int = 96
    sample_len: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = check_field(f.name, value)
            if checked is not value:
                object.__setattr__(self, f.name, checked)


#: Per field: (help text, rule). Rules: ">0", ">=0", "[0,1)", "any" (ints), "bool", or a tuple of choices.
FIELD_RULES: dict[str, tuple[str, Any]] = {
    "dim": ("model width (even)", ">0"),
    "depth": ("number of FLASH layers", ">0"),
    "group_size": ("tokens per attention group", ">0"),
    "query_key_dim": ("width of the shared query/key projection", ">0"),
    "expansion_factor": ("value and gate width as a multiple of dim", ">0"),
    "attn_dropout": ("attention dropout probability", "[0,1)"),
    "norm_type": ("normalisation", NORM_TYPES),
    "shift_tokens": ("token shift: half the features come from the previous position", "bool"),
    "laplace_attn_fn": ("laplace attention function instead of relu squared", "bool"),
    "seq_len": ("bytes per training sequence and per validation window", ">0"),
    "batch_size": ("sequences per micro-batch, per process", ">0"),
    "grad_accum": ("micro-batches per optimizer step", ">0"),
    "lr": ("peak learning rate (Adam)", ">0"),
    "warmup_steps": ("linear warm-up steps", ">=0"),
    "cosine_decay": ("cosine decay of the lr to 10%% of its peak over the run", "bool"),
    "grad_clip": ("gradient-norm clip (0: none)", ">=0"),
    "steps": ("optimizer steps of the whole run", ">0"),
    "schedule_steps": (
        "steps the cosine decay spans, at its 10%% floor after (0: --steps; a --resume with more --steps keeps the "
        "run's span)",
        ">=0",
    ),
    "eval_every": ("evaluate every this many steps (and at the end)", ">0"),
    "eval_windows": ("fixed validation windows per evaluation (capped at what the split holds)", ">0"),
    "eval_batch_size": ("validation windows per forward pass", ">0"),
    "log_every": ("log line every this many steps", ">0"),
    "checkpoint_every": ("checkpoint every this many steps (0: only at the end and on interruption)", ">=0"),
    "keep_checkpoints": ("step checkpoints kept in OUT/checkpoints", ">0"),
    "sample_every": ("write a generated sample every this many steps (0: only at the end)", ">=0"),
    "sample_prompt_len": ("prompt bytes, taken from the validation split, for samples", ">0"),
    "sample_len": ("bytes generated per sample (0: no samples)", ">=0"),
    "seed": ("random seed: initialisation, data streams, dropout", "any"),
}


def check_field(name: str, value: Any) -> Any:
    """Validate (and for float fields, coerce ints to float) one ``TrainConfig`` value; ``ValueError`` otherwise.

    >>> check_field("lr", 1), check_field("norm_type", "layernorm")
    (1.0, 'layernorm')
    """
    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
    value = check_value(name, value, FIELD_RULES[name][1], type(default))
    if name in ("group_size", "seq_len") and value > MAX_SEQ_LEN:
        raise ValueError(f"{name} must be at most {MAX_SEQ_LEN} tokens (the model's sequence limit), got {value}")
    return value


def check_value(name: str, value: Any, rule: Any, kind: type) -> Any:
    """Validate ``value`` against a rule of :data:`FIELD_RULES` for a value of type ``kind`` (int or float): the
    check behind every field and every numeric command-line flag.

    >>> check_value("stop_after", 3, ">0", int)
    3
    """
    if rule == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool, got {value!r}")
        return value
    if isinstance(rule, tuple):
        if value not in rule:
            raise ValueError(f"{name} must be one of {', '.join(rule)}; got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise ValueError(f"{name} must be {'an int' if kind is int else 'a number'}, got {value!r}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if abs(value) > FLOAT32_MAX:  # the optimizer's float32 tensors would overflow to inf
            raise ValueError(f"{name} must be at most {FLOAT32_MAX:.3g} in magnitude (float32), got {value!r}")
    elif not -(2**63) <= value < 2**63:
        raise ValueError(f"{name} must fit in 64 bits, got {value!r}")
    if rule == ">0" and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if rule == ">=0" and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if rule == "[0,1)" and not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


PRESETS: dict[str, TrainConfig] = {
    # Shows learning on 2 CPU cores in about 3 minutes.
    "tiny": TrainConfig(),
    # FLASH-pytorch's enwik8 recipe: effective batch 16 x 1024, Adam 2e-4, clip 0.5, 100k steps.
    "enwik8": TrainConfig(
        dim=512,
        depth=8,
        group_size=256,
        query_key_dim=128,
        seq_len=1024,
        batch_size=4,
        grad_accum=4,
        lr=2e-4,
        warmup_steps=0,
        cosine_decay=False,
        grad_clip=0.5,
        steps=100_000,
        eval_every=500,
        eval_windows=128,
        eval_batch_size=8,
        log_every=50,
        checkpoint_every=1_000,
        keep_checkpoints=3,
        sample_every=5_000,
        sample_prompt_len=128,
        sample_len=512,
    ),
}


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a ``TrainConfig`` from a dict such as ``checkpoint["config"]``, ignoring keys it does not know.

    >>> config_from_dict({"dim": 64, "preset": "tiny"}).dim
    64
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names})


def build_model(cfg: TrainConfig, backend: str | None = None) -> FLASHTransformer:
    """The byte-level causal ``FLASHTransformer`` (256 tokens) described by ``cfg``.

    >>> model = build_model(TrainConfig(dim=32, depth=1, group_size=16, query_key_dim=16))
    >>> model(torch.zeros(1, 10, dtype=torch.long)).shape
    torch.Size([1, 10, 256])
    """
    extra = {} if backend is None else {"backend": backend}
    return FLASHTransformer(
        num_tokens=256,
        dim=cfg.dim,
        depth=cfg.depth,
        causal=True,
        group_size=cfg.group_size,
        query_key_dim=cfg.query_key_dim,
        expansion_factor=cfg.expansion_factor,
        attn_dropout=cfg.attn_dropout,
        norm_type=cfg.norm_type,
        shift_tokens=cfg.shift_tokens,
        laplace_attn_fn=cfg.laplace_attn_fn,
        **extra,
    )


def check_same_model(cfg: TrainConfig, saved: dict[str, Any], source: Path) -> None:
    """``ValueError`` when a checkpoint's configuration ``saved`` has other parameter shapes than ``cfg``."""
    saved_cfg = config_from_dict(saved)
    diffs = [
        f"{name} {getattr(saved_cfg, name)!r} (checkpoint) != {getattr(cfg, name)!r} (requested)"
        for name in MODEL_FIELDS
        if getattr(saved_cfg, name) != getattr(cfg, name)
    ]
    if diffs:
        raise ValueError(f"checkpoint {str(source)!r} is from another model configuration: {'; '.join(diffs)}")
