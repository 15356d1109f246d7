"""Train a byte-level causal FLASH language model: ``python -m flash_triton.train`` / ``flash-triton-train``.

The package: :mod:`.config` (:class:`TrainConfig`, field rules, presets, the model), :mod:`.runtime` (processes,
device, precision, progress, signals), :mod:`.loop` (:class:`Trainer`, :func:`train`), :mod:`.metrics`
(evaluation, samples, the metrics log and plot), :mod:`.sharding` (``--fsdp``) and :mod:`.cli` (flags, input
checks, :func:`main`).

Examples::

    python -m flash_triton.train                                   # tiny preset on the stdlib sources, CPU, ~3 min
    python -m flash_triton.train --preset enwik8 --data enwik8.gz  # upstream's enwik8 recipe (wants a GPU)
    python -m flash_triton.train --out runs/tiny --resume          # continue runs/tiny from its latest checkpoint
    python -m flash_triton.train --eval-only runs/tiny/checkpoint.pt
    torchrun --nproc_per_node 8 -m flash_triton.train --preset enwik8 --data enwik8.gz   # one process per GPU
    torchrun --nproc_per_node 8 -m flash_triton.train --context-parallel 4 --fsdp ...     # 2 x 4, sharded

**Configuration.** ``--preset`` (``tiny``, the CPU default; ``enwik8``, FLASH-pytorch's recipe) sets every field of
:class:`TrainConfig`; each field has a flag that overrides it (``--dim``, ``--seq-len``, ``--grad-accum``,
``--shift-tokens/--no-shift-tokens``, ...; see ``--help``). The effective configuration, with the run's data,
precision and process count, is saved as ``OUT/config.json`` and inside every checkpoint.

**Data and validation.** See :mod:`flash_triton.data`: enwik8 is split as upstream (first 90M bytes train, next 5M
validate). Validation loss is reported in bits per byte (= bits per character for enwik8's byte-level protocol) over
``eval_windows`` fixed, non-overlapping windows of ``seq_len + 1`` bytes spread evenly over the validation split
(:func:`flash_triton.data.validation_windows`): numbers are comparable across runs with the same data, ``seq_len`` and
``eval_windows``. ``--eval-only CHECKPOINT`` rebuilds the model from the checkpoint's configuration, evaluates these
windows (data: ``--data``, else the data the checkpoint was trained on), prints the result and writes nothing.

**Outputs in OUT** (only process 0 writes): ``config.json``; ``metrics.jsonl``, one JSON object per evaluation (step,
train and validation loss, val bpb, lr, tokens, tokens/s, elapsed s); ``loss.png``, train and validation curves,
redrawn at each evaluation (when matplotlib is installed); ``sample.txt``, the latest generated sample (every
``sample_every`` steps and at the end); ``checkpoints/step_XXXXXXX.pt`` every ``checkpoint_every`` steps, at the end
and on interruption, the newest ``keep_checkpoints`` kept; ``checkpoint.pt``, the newest of them (a hard link). All are
written atomically (temporary file, fsync, rename), checkpoints as described in :mod:`flash_triton.checkpoint`; a
SIGKILL at any moment loses at most the steps since the last checkpoint and never leaves an unreadable one.

**Resume.** ``--resume`` continues the run in OUT from its newest loadable checkpoint: model, optimizer, grad scaler,
step, every process's random states, data position and the running train-loss average are restored, so an
interrupted and resumed run computes exactly what an uninterrupted one does (bit for bit in fp32 on the CPU).
``metrics.jsonl`` keeps its records up to the checkpoint's step and is appended to. The configuration comes from the
checkpoint; flags override it, except that a different model shape is an error. ``--resume`` with no checkpoint in
OUT is an error (exit 2). A run without ``--resume`` refuses to replace an unfinished run in OUT (one whose newest
checkpoint is before its last step) unless ``--overwrite`` is given; a finished run is replaced. ``--stop-after N``
stops after N steps of this invocation with a checkpoint (a time-sliced job: repeat the command with ``--resume``).

**Signals.** SIGINT or SIGTERM (also from ``torchrun``) finishes the current step, writes a checkpoint and exits with
128 + the signal number (130 for SIGINT, 143 for SIGTERM), so that a job script can tell that the run did not finish;
a second SIGINT aborts at once (the last checkpoint stays intact).

**Precision.** ``--precision auto`` trains in bf16 autocast on a GPU that supports it, in fp16 autocast with a
gradient scaler on one that does not, and in fp32 on the CPU; ``fp32``, ``bf16`` and ``fp16`` force a mode
(parameters and optimizer state stay fp32). Evaluation runs under the same autocast.

**Multiple processes.** Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains a DistributedDataParallel
replica (NCCL on GPUs, each process on ``cuda:LOCAL_RANK``; gloo on the CPU) on its own data stream (global batch =
processes x batch_size x grad_accum); validation windows are shared out and the losses summed; at the end the
processes check that their parameters are identical. ``--context-parallel C``: consecutive groups of C processes
each split every sequence of their shared batch (process ``r`` holds slice ``r % C``; see
:mod:`flash_triton.distributed`), data parallel over the ``WORLD_SIZE / C`` groups (global batch = groups x
batch_size x grad_accum). Each process's loss is its slice's mean, a ``1 / C`` share of the sequence's, so the
world-averaged gradients are the data-parallel ones. ``--fsdp``: FSDP2 instead of DistributedDataParallel (see
:mod:`.sharding`).

**One writer per run directory.** Process 0 holds an exclusive lock on OUT (a ``flock`` on the directory: no file,
dropped by the OS when the process ends, however it ends) from before it reads OUT until the program returns; a
second training or a ``--resume`` on the same OUT meanwhile exits 2 naming the holder's pid.

**Exit codes.** 0: finished, or stopped by ``--stop-after``; 2: bad input (unknown preset or flag value, missing,
unreadable or too short data, a checkpoint that does not load or comes from another model shape, nothing to resume,
OUT in use by another training):
one line on stderr starting with ``flash-triton-train: error:``, and nothing in OUT written; 1: the training loss or
the parameters became non-finite (e.g. a learning rate far too high): one such line, nothing non-finite written, the
last checkpoint (all finite) stays the one ``--resume`` reads; 130/143: stopped by SIGINT/SIGTERM after writing a
checkpoint.
"""

from ..checkpoint import atomic_write
from .cli import build_parser, main, overrides_from_args
from .config import PRESETS, PROG, TrainConfig, build_model, check_field, config_from_dict
from .loop import RunResult, Trainer, lr_at, train
from .metrics import evaluate, visible
from .runtime import DistEnv, resolve_device, resolve_precision

__all__ = [
    "PRESETS",
    "PROG",
    "DistEnv",
    "RunResult",
    "TrainConfig",
    "Trainer",
    "build_model",
    "build_parser",
    "check_field",
    "config_from_dict",
    "evaluate",
    "lr_at",
    "main",
    "overrides_from_args",
    "resolve_device",
    "resolve_precision",
    "train",
    "visible",
    "atomic_write",
]
