"""``--fsdp``: the training model sharded with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

Every FLASH layer is one FSDP unit and the model's root (embeddings, output norm and logits) another, sharded over
all the processes (a 1-D mesh of the world: with context parallelism too, since each process's gradient is a share
of the same mean, averaged over the world as DistributedDataParallel does). Parameters, gradients and the Adam
state live as shards; a layer's full weights exist only while it runs.

Checkpoints are gathered to process 0 (``torch.distributed.checkpoint.state_dict``'s full state dicts, offloaded
to the CPU) and written there in the program's one checkpoint format: the same atomic write, ``weights_only``
loading, ``--eval-only`` and ``--save-hf`` as without FSDP, and a checkpoint resumes with or without ``--fsdp``.
That needs the full model and optimizer state in process 0's CPU memory once per checkpoint (sharded
``torch.distributed.checkpoint`` folders are not written).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


def shard(model: nn.Module, layers: list[nn.Module], device: torch.device, param_dtype: torch.dtype | None) -> Any:
    """``fully_shard`` each of ``layers`` then ``model`` (the root unit) over every process; returns the mesh.

    ``param_dtype``: FSDP's mixed precision (parameters cast for compute, gradients reduced in float32), or None.
    Parameters that are not trained (the rotary frequencies, shared by every layer) stay whole on every process.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    frozen = {p for p in model.parameters() if not p.requires_grad}
    name = type(model).__name__  # (fully_shard renames the class FSDP<name>)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy, ignored_params=frozen)
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=frozen)
    # The logits are a view (a Linear on (b, n, d)); FSDP warns on every forward that an in-place change of them
    # would skip its backward hook. The training loop never changes them in place (a cross-entropy reads them).
    warnings.filterwarnings(
        "ignore", message=rf"FSDP2-wrapped module \(FSDP{name}\) returned a view", category=UserWarning
    )
    return mesh


def _names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole model and optimizer state (``optimizer`` None: ``{}``) on process 0's CPU (empty elsewhere), a
    collective of every process.

    The optimizer state comes back keyed by parameter index, as ``optimizer.state_dict()`` of the unsharded model
    is (the optimizer holds ``model.parameters()`` in order), so the checkpoint is the same either way.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = {} if optimizer is None else get_optimizer_state_dict(model, optimizer, options=options)
    if not optim_state:  # processes other than 0
        return model_state, optim_state
    index = {name: i for i, name in enumerate(_names(model))}
    return model_state, {
        "state": {index[name]: value for name, value in optim_state["state"].items()},
        "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in optim_state["param_groups"]],
    }


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore a whole (index-keyed) optimizer state into the sharded optimizer: each process keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _names(model)
    by_name = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (the tensor itself when it is not sharded)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
