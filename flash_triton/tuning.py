"""Launch configs tuned on a GPU: the table the launchers read, and the override the tuner sets.

Every launcher asks a config function of its op for tiles and warps (``quad_attn.kernels.launch_config``,
``quad_attn.short_window.short_config``, ``mixed_chunk_attn.kernels.state_config`` / ``apply_config`` /
``scan_config``). Each of those computes its static default, then passes it through :func:`tuned` with the kernel's
name, the GPU's compute capability and the shape key its config depends on. :func:`tuned` returns, in this order:

1. the config a caller forces with :func:`override` (the tuner, and tests under the CPU interpreter);
2. the entry of the tuned table for (arch, kernel, dtype, key), when the launch is on a GPU;
3. the static default.

The table is ``tuned_configs.json`` beside this module (``python -m flash_triton.tune`` writes it on a GPU), or the
file named by ``FLASH_TRITON_TUNED_CONFIGS`` (``off``: no table). Each entry keeps its provenance (device, date,
commit, versions, the times it was chosen on). A malformed table raises ``ValueError`` naming the file and the entry
on the first launch that reads it; an entry for another GPU, dtype or shape is simply not used.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import os
from pathlib import Path

import torch

TABLE = Path(__file__).with_name("tuned_configs.json")
ENV = "FLASH_TRITON_TUNED_CONFIGS"
FORMAT = 1

# kernel -> the config keys an entry may set (the others, and values derived from them, stay the launcher's). The
# short-window kernels share their BM x BN score tiles (each reads the tiles another stored): not tunable one by one.
# The streaming kernels' T5_BAND (bool: split the loop at the T5 band; the kernels' default True where the launcher
# leaves it out) and, for the transposed key-tile kernel (sm_90's dk and dkq: configs with BM_NEAR; it always splits),
# the near steps' value-width step BE_NEAR instead.
_STREAMING = ("BM", "BN", "BS", "BE", "num_warps", "num_stages", "T5_BAND")
FLAGS = {"T5_BAND": True}  # boolean tunables, with the value a config without them runs
NEAR_ONLY = ("BE_NEAR",)  # the transposed key-tile kernel's only: ignored for a config without BM_NEAR
NOT_NEAR = ("T5_BAND",)  # the other kernels' only: ignored for a config with BM_NEAR
TUNABLE: dict[str, tuple[str, ...]] = {
    **{f"quad_attn_{k}": _STREAMING for k in ("fwd", "dv", "dq")},
    **{f"quad_attn_{k}": (*_STREAMING, *NEAR_ONLY) for k in ("dk", "dkq")},
    "quad_attn_weights": ("BS", "num_warps", "num_stages"),
    "quad_attn_out": ("BS", "BE", "num_warps", "num_stages"),
    "quad_attn_dscores": ("BS", "BE", "num_warps", "num_stages"),
    "quad_attn_product": ("BD", "num_warps", "num_stages"),
    "group_state": ("BT", "BA", "BB", "num_warps", "num_stages"),
    "group_apply": ("BT", "BX", "BY", "num_warps", "num_stages"),
    "group_scan": ("BT", "BA", "BB", "num_warps", "num_stages"),
}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

_override: contextvars.ContextVar[dict | None] = contextvars.ContextVar("flash_triton_tuning_override", default=None)
_record: contextvars.ContextVar[list | None] = contextvars.ContextVar("flash_triton_tuning_record", default=None)


def freeze(key: dict) -> tuple:
    """A shape key as a hashable, order-free value."""
    return tuple(sorted(key.items()))


def check_config(kernel: str, config: dict, where: str) -> dict:
    """``config`` if every key is one that ``kernel`` lets a tuned entry set and every value is in range (blocks:
    powers of two 16..1024; warps: 1, 2, 4, 8, 16; stages: 1..6; ``FLAGS``: booleans); ``ValueError`` naming
    ``where`` otherwise."""
    if kernel not in TUNABLE:
        raise ValueError(f"{where}: unknown kernel {kernel!r}; tunable kernels: {sorted(TUNABLE)}")
    if not isinstance(config, dict) or not config:
        raise ValueError(f"{where}: config of {kernel} must be a non-empty object, got {config!r}")
    for k, v in config.items():
        if k not in TUNABLE[kernel]:
            raise ValueError(f"{where}: {kernel} has no tunable {k!r} (tunable: {', '.join(TUNABLE[kernel])})")
        if k in FLAGS:
            if not isinstance(v, bool):
                raise ValueError(f"{where}: {kernel}.{k} must be true or false, got {v!r}")
            continue
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{where}: {kernel}.{k} must be an integer, got {v!r}")
        if k == "num_warps":
            ok = v in (1, 2, 4, 8, 16)
        elif k == "num_stages":
            ok = 1 <= v <= 6
        else:
            ok = 16 <= v <= 1024 and v & (v - 1) == 0
        if not ok:
            raise ValueError(f"{where}: {kernel}.{k} = {v} is out of range")
    return config


def table_path() -> Path | None:
    value = os.environ.get(ENV)
    if value is None:
        return TABLE
    return None if value.strip().lower() in ("", "off", "0", "none") else Path(value)


@functools.lru_cache(maxsize=8)
def _load(path: Path | None) -> dict:
    if path is None or not path.exists():
        if path is not None and path != TABLE:  # a table asked for by name must exist
            raise ValueError(f"{ENV}={path}: no such file (set it to 'off' to run without a tuned table)")
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"tuned-config table {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), list):
        raise ValueError(f"tuned-config table {path}: expected {{'format': {FORMAT}, 'entries': [...]}}")
    table = {}
    for i, entry in enumerate(data["entries"]):
        where = f"tuned-config table {path}, entry {i}"
        try:
            arch, kernel, dtype, key, config = (entry[k] for k in ("arch", "kernel", "dtype", "key", "config"))
        except (KeyError, TypeError):
            raise ValueError(f"{where}: needs arch, kernel, dtype, key and config") from None
        if not isinstance(arch, int) or dtype not in DTYPE_NAMES.values() or not isinstance(key, dict):
            raise ValueError(f"{where}: arch must be an integer, dtype one of fp32/fp16/bf16, key an object")
        table[(arch, kernel, dtype, freeze(key))] = check_config(kernel, config, where)
    return table


_current: list = [None, None]  # (the environment variable's value, its table): one dict lookup per launch


def table() -> dict:
    """{(arch, kernel, dtype, frozen key): config} of the current table (read once per path)."""
    value = os.environ.get(ENV)
    if _current[1] is None or _current[0] != value:
        _current[:] = [value, _load(table_path())]
    return _current[1]


def reload() -> None:
    """Forget the tables read so far (after the tuner writes one, or a test points ``FLASH_TRITON_TUNED_CONFIGS``
    elsewhere)."""
    _load.cache_clear()
    _current[:] = [None, None]


def tuned(kernel: str, arch: int | None, dtype: torch.dtype, key: dict, default: dict) -> dict:
    """The config of ``kernel`` for this launch: forced (:func:`override`), else tuned for ``arch`` (None: not on a
    GPU, no table entry applies), else ``default``. Derived values (``S_BLOCKS`` from ``BS`` and the query/key width
    ``key['qk']``) follow the chosen blocks; ``NEAR_ONLY`` values apply to configs of the transposed key-tile kernel
    (with ``BM_NEAR``) only, ``NOT_NEAR`` ones to the others only."""
    record = _record.get()
    if record is not None:
        record.append((kernel, DTYPE_NAMES[dtype], dict(key), dict(default)))
    overrides = _override.get()
    entries = table() if arch is not None else None
    if not overrides and not entries:  # the common case (no table entries yet, or off a GPU): nothing to look up
        return default
    frozen = freeze(key)
    forced = (overrides or {}).get((kernel, DTYPE_NAMES[dtype], frozen))
    if forced is None and entries:
        forced = entries.get((arch, kernel, DTYPE_NAMES[dtype], frozen))
    if forced is None:
        return default
    ignored = NOT_NEAR if "BM_NEAR" in default else NEAR_ONLY
    forced = {k: v for k, v in forced.items() if k not in ignored}
    cfg = dict(default, **forced)
    if "S_BLOCKS" in cfg:
        cfg["S_BLOCKS"] = math.ceil(key["qk"] / cfg["BS"])
    return cfg


@contextlib.contextmanager
def override(configs: dict):
    """Force configs for the launches in this context: ``{(kernel, dtype name, freeze(key)): config}`` (each config
    checked as a table entry is)."""
    forced = dict(_override.get() or {})
    for (kernel, dtype, frozen), config in configs.items():
        forced[(kernel, dtype, frozen)] = check_config(kernel, dict(config), "override")
    token = _override.set(forced)
    try:
        yield
    finally:
        _override.reset(token)


@contextlib.contextmanager
def recording():
    """Yields a list that collects (kernel, dtype name, key, default config) of every tunable config asked for in
    this context: how the tuner finds the entries a launch uses."""
    log: list = []
    token = _record.set(log)
    try:
        yield log
    finally:
        _record.reset(token)
