"""The Hugging Face integration (flash_triton.hf): config, logits parity with FLASHTransformer, the loss, cached
generate (greedy, sampling, beam search) against generation without the cache, save/load in safetensors through
the Auto classes, Trainer, gradient checkpointing. Skipped where transformers is not installed; the first two tests
run everywhere."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import flash_triton as ft
from tests._helpers import scramble

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_importing_flash_triton_does_not_import_transformers():
    code = "import sys, flash_triton, flash_triton.ops; print('transformers' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr


def test_activation_checkpointing_of_the_transformer_is_exact():
    """model.gradient_checkpointing = True (what transformers' gradient_checkpointing_enable() sets) recomputes each
    layer in the backward; outputs and every gradient equal, dropout included (its draws are replayed)."""
    torch.manual_seed(0)
    model = ft.FLASHTransformer(num_tokens=20, dim=16, depth=2, group_size=4, query_key_dim=8, attn_dropout=0.2)
    x = torch.randint(0, 20, (2, 11))
    runs = []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(1)
        out = model(x)
        out.square().mean().backward()
        runs.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out0, g0), (out1, g1) = runs
    torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=0, atol=0, msg=name)


# Skip on the package the extra installs, not on flash_triton.hf: that module turns a missing transformers into an
# ImportError with install advice, which importorskip reports as a deprecation (an error under our warning filters).
_EXTRA = "(pip install 'flash-triton[hf]')"
transformers = pytest.importorskip("transformers", reason=f"transformers is not installed {_EXTRA}")
pytest.importorskip("safetensors", reason=f"safetensors is not installed {_EXTRA}")
from flash_triton import hf  # noqa: E402


def small_config(**kw):
    base = dict(vocab_size=40, dim=24, depth=2, group_size=4, query_key_dim=12, expansion_factor=1.5)
    return hf.FLASHConfig(**(base | kw))


def model_and_twin(**kw):
    """A FLASHForCausalLM with scrambled weights and the FLASHTransformer holding the same weights."""
    torch.manual_seed(0)
    model = hf.FLASHForCausalLM(small_config(**kw)).eval()
    scramble(model.model)
    twin = ft.FLASHTransformer(**model.config.transformer_kwargs()).eval()
    twin.load_state_dict(model.model.state_dict(), strict=True)
    return model, twin


@pytest.mark.parametrize(
    "kw",
    [{}, dict(norm_type="layernorm", laplace_attn_fn=True, shift_tokens=False), dict(group_size=3, depth=3)],
    ids=["default", "layernorm-laplace-noshift", "group3-depth3"],
)
def test_logits_and_loss_equal_the_transformers(kw):
    model, twin = model_and_twin(**kw)
    x = torch.randint(0, 40, (3, 13))
    out = model(x, labels=x)
    torch.testing.assert_close(out.logits, twin(x), rtol=0, atol=0)
    expected = F.cross_entropy(twin(x)[:, :-1].reshape(-1, 40), x[:, 1:].reshape(-1))  # shifted next token
    torch.testing.assert_close(out.loss, expected)
    labels = x.clone()
    labels[:, :5] = -100  # ignored positions
    ignored = F.cross_entropy(twin(x)[:, 4:-1].reshape(-1, 40), x[:, 5:].reshape(-1))
    torch.testing.assert_close(model(x, labels=labels).loss, ignored)


def test_right_padding_is_a_key_mask_and_leaves_the_real_tokens_exact():
    model, twin = model_and_twin()
    x = torch.randint(0, 40, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    logits = model(x, attention_mask=mask).logits
    torch.testing.assert_close(logits[0], twin(x[:1])[0], rtol=1e-5, atol=1e-5)  # another batch: float order
    torch.testing.assert_close(logits[1, :6], twin(x[1:, :6])[0], rtol=1e-5, atol=1e-5)


def test_greedy_generate_with_the_cache_equals_without_it_and_the_wrapper():
    model, twin = model_and_twin()
    prompt = torch.randint(0, 40, (2, 6))
    cached = model.generate(prompt, max_new_tokens=11, do_sample=False)
    uncached = model.generate(prompt, max_new_tokens=11, do_sample=False, use_cache=False)
    assert cached.shape == (2, 17)
    assert torch.equal(cached, uncached)
    wrapper = ft.AutoregressiveWrapper(twin)
    assert torch.equal(cached[:, 6:], wrapper.generate(prompt, 11, filter_thres=1.0))  # top-1 = greedy
    # prompts of one length batched = one at a time
    for row in range(2):
        assert torch.equal(
            model.generate(prompt[row : row + 1], max_new_tokens=11, do_sample=False), cached[row : row + 1]
        )


def test_sampling_and_beam_search_with_the_cache_equal_them_without_it():
    model, _ = model_and_twin()
    prompt = torch.randint(0, 40, (2, 5))
    for kwargs in (
        dict(do_sample=True, top_k=8, top_p=0.9, temperature=0.7, num_return_sequences=2),
        dict(do_sample=False, num_beams=3, num_return_sequences=2),  # the beams' caches are reordered every step
        dict(do_sample=True, num_beams=2),
    ):
        runs = []
        for use_cache in (True, False):
            torch.manual_seed(3)
            runs.append(model.generate(prompt, max_new_tokens=9, use_cache=use_cache, **kwargs))
        assert torch.equal(runs[0], runs[1]), kwargs


def test_padded_batches_are_refused_by_the_cache():
    model, _ = model_and_twin()
    prompt = torch.randint(0, 40, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    with pytest.raises(ValueError, match="padded batches"):
        model.generate(prompt, attention_mask=mask, max_new_tokens=3)


def test_save_pretrained_and_auto_classes_round_trip_exactly(tmp_path):
    model, _ = model_and_twin(backend="reference")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "flash" and "backend" not in saved  # a choice of the process, not the model
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is hf.FLASHForCausalLM and loaded.config.backend is None
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the rotary module stays shared by every layer
    assert all(layer.rotary_pos_emb is loaded.model.layers[0].rotary_pos_emb for layer in loaded.model.layers)
    x = torch.randint(0, 40, (2, 9))
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    base = transformers.AutoModel.from_pretrained(tmp_path, backend="reference").eval()
    assert type(base) is hf.FLASHModel and base.config.backend == "reference"
    torch.testing.assert_close(base(x).last_hidden_state, model.model.to_logits[0](model.model.hidden_states(x)[0]))
    assert transformers.AutoConfig.from_pretrained(tmp_path).to_dict()["dim"] == 24


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="group_size must be positive"):
        small_config(group_size=0)
    with pytest.raises(TypeError, match="causal must be a bool"):
        small_config(causal="yes")
    with pytest.raises(ValueError, match="FLASHForCausalLM needs causal=True"):
        hf.FLASHForCausalLM(small_config(causal=False))
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        small_config(tie_word_embeddings=True)


def test_gradient_checkpointing_enable_is_exact():
    model, _ = model_and_twin(attn_dropout=0.1)
    model.train()
    x = torch.randint(0, 40, (2, 9))
    grads = []
    for enable in (False, True):
        if enable:  # gradient_checkpointing_enable(), renamed activation_checkpointing_enable() in 5.25
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
            assert model.model.gradient_checkpointing
        model.zero_grad()
        torch.manual_seed(5)
        model(x, labels=x).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0, msg=name)


def test_trainer_trains_a_tiny_model_on_cpu(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    torch.manual_seed(0)
    model = hf.FLASHForCausalLM(small_config(vocab_size=16))
    pattern = torch.arange(16).repeat(8)  # a cycle: easy to learn
    rows = [pattern[i : i + 24] for i in range(0, 64, 2)]
    data = [{"input_ids": r, "labels": r} for r in rows]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        max_steps=12,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12 and losses[-1] < 0.7 * losses[0], losses


def test_convert_a_training_checkpoint(tmp_path, capsys):
    from flash_triton import train as train_mod
    from flash_triton.checkpoint import load_checkpoint
    from flash_triton.train.config import build_model, config_from_dict
    from tests._helpers import MICRO, config_flags, write_text_corpus

    data = write_text_corpus(tmp_path / "corpus.txt")
    run = tmp_path / "run"
    flags = [*config_flags(MICRO, steps=2, sample_len=0), "--data", str(data), "--device", "cpu", "--no-progress"]
    assert train_mod.main([*flags, "--out", str(run), "--save-hf", str(tmp_path / "trained")]) == 0
    assert hf.main(["convert", str(run / "checkpoint.pt"), str(tmp_path / "hf")]) == 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    saved = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "trained").eval()  # --save-hf: the same
    ours, theirs = loaded.state_dict(), saved.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    model = build_model(config_from_dict(ckpt["config"])).eval()
    model.load_state_dict(ckpt["model"])
    x = torch.randint(0, 256, (2, 40))
    torch.testing.assert_close(loaded(x).logits, model(x), rtol=0, atol=0)
    # the folder is written whole or not at all: an existing non-empty one is refused, nothing else written
    assert hf.main(["convert", str(run / "checkpoint.pt"), str(tmp_path / "hf")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "hf", "run", "trained"]


def test_convert_a_flash_pytorch_state_dict(tmp_path, capsys):
    up = pytest.importorskip("flash_pytorch", reason="FLASH-pytorch 0.1.9 is the compatibility oracle")
    torch.manual_seed(0)
    theirs = up.FLASHTransformer(num_tokens=40, dim=24, depth=2, group_size=4, query_key_dim=12, causal=True).eval()
    scramble(theirs)
    torch.save(theirs.state_dict(), tmp_path / "upstream.pt")
    assert hf.main(["convert", str(tmp_path / "upstream.pt"), str(tmp_path / "missing-group")]) == 2
    assert "--group-size is required" in capsys.readouterr().err
    assert hf.main(["convert", str(tmp_path / "upstream.pt"), str(tmp_path / "hf"), "--group-size", "4"]) == 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 40, (2, 11))
    expected = theirs(x)
    torch.testing.assert_close(loaded(x).logits, expected, rtol=0, atol=2e-5 * expected.abs().max().item())


@pytest.mark.parametrize("expansion_factor", [1.3, 2.0, 0.7])
def test_from_transformer_rebuilds_any_width(expansion_factor):
    """from_transformer reads the arguments back from the modules (int(expansion_factor * dim) widths included)."""
    torch.manual_seed(0)
    twin = ft.FLASHTransformer(
        num_tokens=30, dim=24, depth=2, group_size=5, query_key_dim=10, expansion_factor=expansion_factor, causal=True
    ).eval()
    scramble(twin)
    model = hf.FLASHForCausalLM.from_transformer(twin).eval()
    x = torch.randint(0, 30, (2, 12))
    torch.testing.assert_close(model(x).logits, twin(x), rtol=0, atol=0)
