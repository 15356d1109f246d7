"""FLASH language models in the Hugging Face ecosystem: ``FLASHConfig``, ``FLASHModel``, ``FLASHForCausalLM``
(``generate`` with the exact O(group) decoding cache, ``labels=`` loss, safetensors ``save_pretrained`` /
``from_pretrained``, ``Trainer``, gradient checkpointing), registered with the Auto classes as model type
``"flash"``.

Optional: ``pip install flash-triton[hf]`` (transformers, safetensors, accelerate for ``Trainer``). Importing
``flash_triton`` never imports this module or transformers.

>>> from flash_triton.hf import FLASHConfig, FLASHForCausalLM
>>> model = FLASHForCausalLM(FLASHConfig(vocab_size=256, dim=64, depth=2, group_size=16, query_key_dim=32))
>>> model(torch.randint(0, 256, (1, 20))).logits.shape
torch.Size([1, 20, 256])

The models wrap :class:`flash_triton.FLASHTransformer` (attribute ``model``): same parameters, same numerics, its
state_dict keys under ``model.``. Supported: transformers 4.57.1 up to 5.x (see the README); the cache is handed to
``generate`` under the name that version uses (``past_key_values`` before 5.24, ``cache`` from then).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

try:
    import transformers
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        GenerationMixin,
        PretrainedConfig,
        PreTrainedModel,
    )
    from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
except ImportError as err:  # pragma: no cover - exercised only where transformers is missing
    raise ImportError(
        "flash_triton.hf needs transformers (pip install 'flash-triton[hf]', or transformers safetensors)"
    ) from err

from . import _checks
from .cache import FLASHCache
from .embeddings import RotaryEmbedding, ScaledSinuEmbedding
from .layers import OffsetScale, ScaleNorm
from .transformer import NORM_TYPES, FLASHTransformer

MODEL_TYPE = "flash"
# the output field and forward argument that carry the cache: renamed "cache" in transformers 5.24
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def expansion_for(hidden: int, dim: int) -> float:
    """An ``expansion_factor`` that rebuilds a hidden width: the layers use ``int(expansion_factor * dim)``, so
    ``hidden / dim`` unless float rounding would land just below ``hidden`` (then half a unit more)."""
    factor = hidden / dim
    return factor if int(factor * dim) == hidden else (hidden + 0.5) / dim


class FLASHConfig(PretrainedConfig):
    """Every :class:`~flash_triton.FLASHTransformer` argument (``vocab_size`` is its ``num_tokens``), plus
    ``backend``, which is a choice of this process: it is not saved (a model saved on a GPU loads anywhere)."""

    model_type = MODEL_TYPE
    attribute_map = {"num_tokens": "vocab_size", "hidden_size": "dim", "num_hidden_layers": "depth"}

    def __init__(
        self,
        vocab_size: int = 256,
        dim: int = 512,
        depth: int = 8,
        group_size: int = 256,
        query_key_dim: int = 128,
        expansion_factor: float = 2.0,
        causal: bool = True,
        attn_dropout: float = 0.0,
        norm_type: str = "scalenorm",
        shift_tokens: bool = True,
        laplace_attn_fn: bool = False,
        reduce_group_non_causal_attn: bool = True,
        backend: str | None = None,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = _checks.positive_int("vocab_size", vocab_size)
        self.dim = _checks.positive_int("dim", dim)
        self.depth = _checks.positive_int("depth", depth)
        self.group_size = _checks.length("group_size", group_size)
        self.query_key_dim = _checks.positive_int("query_key_dim", query_key_dim)
        self.expansion_factor = _checks.positive_real("expansion_factor", expansion_factor)
        self.causal = _checks.flag("causal", causal)
        self.attn_dropout = _checks.probability("attn_dropout", attn_dropout)
        if norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type must be one of {tuple(NORM_TYPES)}, got {norm_type!r}")
        self.norm_type = norm_type
        self.shift_tokens = _checks.flag("shift_tokens", shift_tokens)
        self.laplace_attn_fn = _checks.flag("laplace_attn_fn", laplace_attn_fn)
        self.reduce_group_non_causal_attn = _checks.flag("reduce_group_non_causal_attn", reduce_group_non_causal_attn)
        self.backend = backend
        self.use_cache = use_cache
        if tie_word_embeddings:
            raise ValueError("tie_word_embeddings: FLASHTransformer's head is its own Linear (as upstream's)")
        super().__init__(tie_word_embeddings=False, **kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.pop("backend", None)  # this process's choice, not the model's
        return out

    def transformer_kwargs(self) -> dict:
        """The :class:`~flash_triton.FLASHTransformer` arguments this configuration stands for."""
        return dict(
            num_tokens=self.vocab_size,
            dim=self.dim,
            depth=self.depth,
            group_size=self.group_size,
            query_key_dim=self.query_key_dim,
            expansion_factor=self.expansion_factor,
            causal=self.causal,
            attn_dropout=self.attn_dropout,
            norm_type=self.norm_type,
            shift_tokens=self.shift_tokens,
            laplace_attn_fn=self.laplace_attn_fn,
            reduce_group_non_causal_attn=self.reduce_group_non_causal_attn,
            backend=getattr(self, "backend", None),
        )

    @classmethod
    def from_transformer(cls, model: FLASHTransformer, **kwargs) -> FLASHConfig:
        """The configuration of an existing model (its constructor arguments, read from the modules)."""
        layer = model.layers[0]
        return cls(
            vocab_size=model.num_tokens,
            dim=layer.dim,
            depth=len(model.layers),
            group_size=model.group_size,
            query_key_dim=layer.to_qk[0].out_features,
            expansion_factor=expansion_for(layer.to_out.in_features, layer.dim),
            causal=model.causal,
            attn_dropout=layer.dropout.p,
            norm_type="scalenorm" if isinstance(layer.norm, ScaleNorm) else "layernorm",
            shift_tokens=layer.shift_tokens,
            laplace_attn_fn=layer.laplace_attn_fn,
            reduce_group_non_causal_attn=layer.reduce_group_non_causal_attn,
            backend=model.backend,
            **kwargs,
        )


class FLASHGenerationCache:
    """The decoding cache as ``generate`` handles it: a mutable holder of the immutable
    :class:`~flash_triton.FLASHCache` (exact, O(group) per token), with the methods generate calls
    (``get_seq_length``, ``reorder_cache`` for beam search, the batch selections)."""

    is_compileable = False
    is_croppable = False

    def __init__(self, inner: FLASHCache | None = None):
        self.inner = inner

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.inner is None else self.inner.position

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1  # no maximum length

    def reorder_cache(self, beam_idx: Tensor) -> None:
        if self.inner is not None:
            self.inner = self.inner.reorder(beam_idx.long())

    def batch_select_indices(self, indices: Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.inner is not None:
            rows = torch.arange(self.inner.batch_size, device=self.inner.device)
            self.inner = self.inner.reorder(rows.repeat_interleave(repeats))

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("a FLASH decoding cache cannot be rolled back (assisted decoding is not supported)")

    def __len__(self) -> int:
        return 0 if self.inner is None else len(self.inner.layers)


class FLASHPreTrainedModel(PreTrainedModel):
    config_class = FLASHConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["FLASH"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    # the rotary module is shared by every layer: its parameter is saved once (layer 0) and tied again on load
    _keys_to_ignore_on_load_missing = [r"layers\.[1-9]\d*\.rotary_pos_emb\.freqs"]
    _is_stateful = True  # transformers 4.x: no DynamicCache, no assisted decoding

    def __init__(self, config: FLASHConfig):
        super().__init__(config)
        self.model = FLASHTransformer(**config.transformer_kwargs())
        self._keys_to_ignore_on_save = [f"model.layers.{i}.rotary_pos_emb.freqs" for i in range(1, config.depth)]

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # generate must not make a key/value cache
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The initialisation the modules give themselves (PreTrainedModel re-runs this on every module after
        construction, and on those a checkpoint does not fill). torch.nn.init only: transformers 5 skips what a
        checkpoint already loaded."""
        if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
            module.reset_parameters()
        elif isinstance(module, ScaleNorm):
            nn.init.ones_(module.g)
        elif isinstance(module, OffsetScale):
            nn.init.normal_(module.gamma, std=0.02)
            nn.init.zeros_(module.beta)
        elif isinstance(module, ScaledSinuEmbedding):
            nn.init.ones_(module.scale)
            if not getattr(module.inv_freq, "_is_hf_initialized", False):
                dim = module.inv_freq.numel() * 2
                module.inv_freq.copy_(1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))
        elif isinstance(module, RotaryEmbedding) and not getattr(module.freqs, "_is_hf_initialized", False):
            dim = module.freqs.numel() * 2
            module.freqs.copy_(1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.token_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.token_emb = value

    def _run(self, input_ids, attention_mask, cache, past_key_values, use_cache):
        """(hidden states before the head's norm, the generation cache or None). The cache arrives as ``cache``
        (transformers >= 5.24) or ``past_key_values`` (before)."""
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, FLASHGenerationCache):
            raise TypeError(
                f"{CACHE_FIELD} must be a FLASHGenerationCache (from this model), got {type(cache).__name__}"
            )
        decoding = bool(use_cache) or (cache is not None and cache.inner is not None)
        mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != input_ids.shape[0]:
                raise ValueError(
                    f"attention_mask must have shape (batch, seq) with input_ids' batch {input_ids.shape[0]}, got "
                    f"{tuple(attention_mask.shape)}"
                )
            if not bool(attention_mask.all()):
                if decoding:
                    raise ValueError(
                        "padded batches (an attention_mask with zeros; generate also makes one where a prompt holds "
                        "pad_token_id) cannot use the decoding cache: FLASH's positions and token shift are "
                        "absolute, so a padded prompt is not the prompt; generate prompts of one length (or one at "
                        "a time), or pass use_cache=False"
                    )
                if attention_mask.shape[1] != input_ids.shape[1]:
                    raise ValueError(
                        f"attention_mask {tuple(attention_mask.shape)} must cover input_ids {tuple(input_ids.shape)}"
                    )
                mask = attention_mask.bool()
        if not decoding:
            return self.model.hidden_states(input_ids, mask=mask)[0], None
        holder = cache if cache is not None else FLASHGenerationCache()
        h, holder.inner = self.model.hidden_states(input_ids, cache=holder.inner, return_cache=True)
        return h, holder


class FLASHModel(FLASHPreTrainedModel):
    """The FLASH trunk: ``last_hidden_state`` is the last layer's output after the head's LayerNorm (the features
    the language-model head reads), (b, n, dim)."""

    def __init__(self, config: FLASHConfig):
        super().__init__(config)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: FLASHGenerationCache | None = None,
        past_key_values: FLASHGenerationCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        h, new_cache = self._run(input_ids, attention_mask, cache, past_key_values, use_cache)
        out = BaseModelOutputWithPast(last_hidden_state=self.model.to_logits[0](h), **{CACHE_FIELD: new_cache})
        return out if return_dict is not False else out.to_tuple()


class FLASHForCausalLM(FLASHPreTrainedModel, GenerationMixin):
    """A causal FLASH language model: ``labels`` give the shifted next-token loss (ignore index -100);
    ``generate`` decodes through the exact cache (greedy, sampling, top-k / top-p, beam search)."""

    def __init__(self, config: FLASHConfig):
        if not config.causal:
            raise ValueError("FLASHForCausalLM needs causal=True in its config")
        super().__init__(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.to_logits[1]

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.to_logits[1] = value

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: FLASHGenerationCache | None = None,
        past_key_values: FLASHGenerationCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ):
        h, new_cache = self._run(input_ids, attention_mask, cache, past_key_values, use_cache)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        logits = self.model.to_logits(h)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
                )
            if logits.shape[1] != labels.shape[1]:
                raise ValueError("labels need the logits of every position (logits_to_keep=0)")
            loss_kwargs = {k: v for k, v in kwargs.items() if k in ("num_items_in_batch", "ignore_index")}
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: new_cache})
        return out if return_dict is not False else out.to_tuple()

    @classmethod
    def from_transformer(cls, model: FLASHTransformer, **config_kwargs) -> FLASHForCausalLM:
        """A FLASHForCausalLM with ``model``'s configuration and a copy of its weights (exactly)."""
        hf = cls(FLASHConfig.from_transformer(model, **config_kwargs))
        hf.model.load_state_dict(model.state_dict(), strict=True)
        return hf.to(next(model.parameters()).device)


# ------------------------------------------------------------------------------------------------------------------
# conversion: this project's training checkpoints and FLASH-pytorch 0.1.9 state_dicts -> save_pretrained folders


def from_training_checkpoint(path) -> FLASHForCausalLM:
    """The model of a ``python -m flash_triton.train`` checkpoint (``OUT/checkpoint.pt``,
    ``OUT/checkpoints/step_N.pt``): its configuration and weights, loaded with ``weights_only``."""
    from .checkpoint import load_checkpoint
    from .train.config import build_model, config_from_dict

    ckpt = load_checkpoint(path)
    if not isinstance(ckpt["config"], dict):
        raise ValueError(f"checkpoint {str(path)!r} holds no configuration")
    model = build_model(config_from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"], strict=True)
    return FLASHForCausalLM.from_transformer(model)


def from_upstream_state_dict(
    state_dict: dict[str, Tensor], *, group_size: int, shift_tokens: bool = True, laplace_attn_fn: bool = False
) -> FLASHForCausalLM:
    """The model of a FLASH-pytorch 0.1.9 causal ``FLASHTransformer`` state_dict (the same keys as ours). The sizes
    are read from the weights; ``group_size``, ``shift_tokens`` and ``laplace_attn_fn`` leave no trace in them and
    must be given as the model was built (upstream's defaults: shift_tokens True, laplace_attn_fn False)."""
    try:
        vocab, dim = state_dict["token_emb.weight"].shape
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("layers."))
        qk = state_dict["layers.0.to_qk.0.weight"].shape[0]
        hidden = state_dict["layers.0.to_out.weight"].shape[1]
    except (KeyError, ValueError, AttributeError) as err:
        raise ValueError(f"not a FLASH-pytorch FLASHTransformer state_dict (missing or malformed {err})") from None
    norm_type = "scalenorm" if "layers.0.norm.g" in state_dict else "layernorm"
    model = FLASHTransformer(
        num_tokens=vocab,
        dim=dim,
        depth=depth,
        group_size=group_size,
        query_key_dim=qk,
        expansion_factor=expansion_for(hidden, dim),
        causal=True,
        norm_type=norm_type,
        shift_tokens=shift_tokens,
        laplace_attn_fn=laplace_attn_fn,
    )
    model.load_state_dict(state_dict, strict=True)
    return FLASHForCausalLM.from_transformer(model)


def check_folder(name: str, out: Path) -> None:
    """``out`` may be written by :func:`save_folder`: it does not exist, or is an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{name} {str(out)!r} exists and is not an empty folder")


def save_folder(model: FLASHForCausalLM, out: Path) -> None:
    """``model.save_pretrained`` into ``out``, whole or not at all (written beside it, then renamed)."""
    check_folder("out", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """``python -m flash_triton.hf convert SRC OUT_DIR``: a training checkpoint or a FLASH-pytorch state_dict (torch
    file) to a ``save_pretrained`` folder (config.json + model.safetensors); the folder is written whole or not at
    all."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m flash_triton.hf", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="checkpoint or FLASH-pytorch state_dict -> save_pretrained folder")
    c.add_argument("src", help="OUT/checkpoint.pt, OUT/checkpoints/step_N.pt, or a FLASH-pytorch state_dict file")
    c.add_argument("out", help="the folder to write (must not exist, or be empty)")
    c.add_argument("--group-size", type=int, help="FLASH-pytorch state_dicts: the model's group_size (required)")
    c.add_argument("--no-shift-tokens", action="store_true", help="FLASH-pytorch: built with shift_tokens=False")
    c.add_argument("--laplace-attn-fn", action="store_true", help="FLASH-pytorch: built with laplace_attn_fn=True")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        check_folder("out", out)
        try:
            obj = torch.load(args.src, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets one line
            raise ValueError(f"cannot load {args.src!r}: {type(err).__name__}: {err}") from None
        if isinstance(obj, dict) and "model" in obj and "config" in obj:
            model = from_training_checkpoint(args.src)
        elif isinstance(obj, dict):
            if args.group_size is None:
                raise ValueError("--group-size is required for a FLASH-pytorch state_dict (it is not in the weights)")
            model = from_upstream_state_dict(
                obj,
                group_size=args.group_size,
                shift_tokens=not args.no_shift_tokens,
                laplace_attn_fn=args.laplace_attn_fn,
            )
        else:
            raise ValueError(f"{args.src!r} holds a {type(obj).__name__}, not a checkpoint or a state_dict")
        save_folder(model, out)
    except (OSError, ValueError) as err:
        print(f"python -m flash_triton.hf: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} (config.json, model.safetensors)")
    return 0


AutoConfig.register(MODEL_TYPE, FLASHConfig, exist_ok=True)
AutoModel.register(FLASHConfig, FLASHModel, exist_ok=True)
AutoModelForCausalLM.register(FLASHConfig, FLASHForCausalLM, exist_ok=True)

__all__ = [
    "CACHE_FIELD",
    "FLASHConfig",
    "FLASHForCausalLM",
    "FLASHGenerationCache",
    "FLASHModel",
    "FLASHPreTrainedModel",
    "transformers",
]

if __name__ == "__main__":
    sys.exit(main())
