"""Incremental-decoding caches of causal FLASH layers and FLASHTransformer models.

Causal FLASH is exact under prefix extension: token t reads the quadratic attention over the tokens of its own
group up to t (scale 1/g, fixed) and the linear state of the groups before its group. So a layer needs only

* ``state`` (b, s, e) float32: ``Σ lin_kᵀ v / g`` over the completed groups (the exclusive prefix the next group
  reads);
* ``quad_k``, ``lin_k`` (b, r, s) and ``v`` (b, r, e): the ``r = position % g`` tokens of the current, incomplete
  group (at most g - 1 rows); when a group completes it is folded into ``state`` and the buffers restart empty;
* ``shift`` (b, ceil(dim / 2)): the shifted half of the last token's normalised features, for ``shift_tokens``
  (the next token reads it), else None;
* ``position``: how many tokens were consumed (the absolute position of the next token: RoPE and the scaled
  sinusoidal embedding use it, and ``position % g`` is the in-group position the T5 bias uses).

Work per generated token is O(g) per layer, whatever the context length. Caches are made by calling a causal
``FLASH`` / ``FLASHTransformer`` with ``return_cache=True`` and fed back with ``cache=``; they are plain tensors
(no autograd history is kept between calls) and never modified in place: every call returns a new cache.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
from torch import Tensor

_owner_ids = itertools.count(1)


def new_owner_id() -> int:
    """A process-unique id for a module, so a cache from another module is recognised."""
    return next(_owner_ids)


# bumped whenever any module registers or replaces a parameter (load_state_dict(assign=True), setattr): the
# parameter lists that cache_owner() keeps are re-read then
_registrations = [0]


def _parameter_registered(module, name, param) -> None:
    _registrations[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_parameter_registered)


def cache_owner(module: torch.nn.Module) -> tuple[int, int]:
    """What a cache records of the module that made it: the module's id (:func:`new_owner_id`) and a stamp of its
    parameters (storage and version counter of each): ``load_state_dict``, an optimizer step or any in-place edit
    bumps a version, and a copy (``copy.deepcopy``, pickling, ``.to()`` to another device or dtype) has other
    storage, so a cache made before is refused instead of silently mixing two sets of weights. The parameter list
    is kept between calls (walking the module tree each decoding step cost ~170 us for an 8-layer model)."""
    memo = module.__dict__.get("_cache_params")
    if memo is None or memo[0] != _registrations[0]:
        memo = (_registrations[0], tuple(module.parameters()))
        module.__dict__["_cache_params"] = memo
    return module._cache_owner, hash(tuple((p.data_ptr(), p._version) for p in memo[1]))


def _index(t: Tensor | None, index: Tensor) -> Tensor | None:
    return None if t is None else t.index_select(0, index.to(t.device))


def _move(t: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if t is None else t.to(device)


def check_index(index: object, batch: int) -> Tensor:
    """``reorder``'s index: a non-empty 1-D int64/int32 tensor of rows in [0, batch)."""
    if not isinstance(index, Tensor) or index.dtype not in (torch.int64, torch.int32):
        what = f"dtype {index.dtype}" if isinstance(index, Tensor) else type(index).__name__
        raise TypeError(f"index must be a 1-D int64 or int32 tensor of batch rows, got {what}")
    if index.dim() != 1 or index.numel() == 0:
        raise ValueError(f"index must be 1-D and select at least one row, got shape {tuple(index.shape)}")
    if index.device.type != "meta":
        lo, hi = torch.stack(torch.aminmax(index)).tolist()
        if lo < 0 or hi >= batch:
            raise ValueError(f"index selects rows in [{lo}, {hi}] but the cache holds batch size {batch}")
    return index


def check_device(device: object) -> torch.device:
    """``to``'s device: a torch.device or its name, one that exists here (a dtype is refused: a cache keeps the
    dtypes of the model that made it)."""
    if not isinstance(device, (torch.device, str, int)) or isinstance(device, bool):
        raise TypeError(f"device must be a torch.device or a device name such as 'cuda', got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must name a device, got {device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} is not available here (torch.cuda.is_available() is False)")
    return device


@dataclasses.dataclass(frozen=True)
class FLASHLayerCache:
    """Decoding state of one causal :class:`~flash_triton.FLASH` layer (see the module docstring)."""

    state: Tensor
    quad_k: Tensor
    lin_k: Tensor
    v: Tensor
    shift: Tensor | None
    position: int
    dtype: torch.dtype  # the dtype of the layer's input when the cache was made; later inputs must match
    owner: tuple[int, int]  # cache_owner() of the layer that made it

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    @property
    def device(self) -> torch.device:
        return self.state.device

    def reorder(self, index: Tensor) -> FLASHLayerCache:
        """The cache of the batch rows ``index`` (1-D long), e.g. the surviving beams of a beam search."""
        check_index(index, self.batch_size)
        return self._reorder(index)

    def _reorder(self, index: Tensor) -> FLASHLayerCache:
        return dataclasses.replace(
            self,
            state=_index(self.state, index),
            quad_k=_index(self.quad_k, index),
            lin_k=_index(self.lin_k, index),
            v=_index(self.v, index),
            shift=_index(self.shift, index),
        )

    def to(self, device: torch.device | str) -> FLASHLayerCache:
        """The same cache on ``device``."""
        device = check_device(device)
        return dataclasses.replace(
            self,
            state=self.state.to(device),
            quad_k=self.quad_k.to(device),
            lin_k=self.lin_k.to(device),
            v=self.v.to(device),
            shift=_move(self.shift, device),
        )


@dataclasses.dataclass(frozen=True)
class FLASHCache:
    """Decoding state of a causal :class:`~flash_triton.FLASHTransformer`: one :class:`FLASHLayerCache` per layer
    and the number of tokens consumed (``position``)."""

    layers: tuple[FLASHLayerCache, ...]
    position: int
    dtype: torch.dtype  # the model's embedding dtype when the cache was made
    owner: tuple[int, int]  # cache_owner() of the model that made it

    @property
    def batch_size(self) -> int:
        return self.layers[0].batch_size

    @property
    def device(self) -> torch.device:
        return self.layers[0].device

    def reorder(self, index: Tensor) -> FLASHCache:
        """The cache of the batch rows ``index`` (1-D long), e.g. the surviving beams of a beam search."""
        check_index(index, self.batch_size)
        return dataclasses.replace(self, layers=tuple(layer._reorder(index) for layer in self.layers))

    def to(self, device: torch.device | str) -> FLASHCache:
        """The same cache on ``device``."""
        device = check_device(device)
        return dataclasses.replace(self, layers=tuple(layer.to(device) for layer in self.layers))


def check_cache(
    name: str, cache: object, kind: type, owner: tuple[int, int], batch: int, dtype: torch.dtype, device, n: int
):
    """Validate a cache given to ``forward`` before any compute."""
    from ._checks import MAX_SEQ_LEN

    if not isinstance(cache, kind):
        raise TypeError(
            f"{name} must be a {kind.__name__} (from this module's return_cache=True), got {type(cache).__name__}"
        )
    if cache.owner[0] != owner[0]:
        raise ValueError(f"{name} was made by another module; a cache is only valid for the module that returned it")
    if cache.owner[1] != owner[1]:
        raise ValueError(
            f"{name} was made with other weights: the module's parameters changed since (load_state_dict, an optimizer "
            "step, an in-place edit) or this is a copy of the module that made it (deepcopy, pickle, .to()); start a "
            "new cache with return_cache=True"
        )
    if cache.batch_size != batch:
        raise ValueError(f"{name} holds batch size {cache.batch_size} but the input has batch size {batch}")
    if cache.dtype != dtype:
        raise ValueError(f"{name} was made for dtype {cache.dtype} but the input is {dtype}")
    if cache.device != device:
        raise ValueError(f"{name} is on {cache.device} but the input is on {device}; move it with cache.to(device)")
    if cache.position + n > MAX_SEQ_LEN:
        raise ValueError(f"{name} is at position {cache.position}; {n} more tokens pass the limit {MAX_SEQ_LEN}")
