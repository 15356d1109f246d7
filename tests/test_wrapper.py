"""AutoregressiveWrapper: loss, sampling shapes, top-k filtering, and eos handling (upstream raised NameError)."""

import torch
from torch import nn

import flash_triton as ft
from flash_triton.autoregressive_wrapper import top_k


class Scripted(nn.Module):
    """A 'model' whose next token is fixed by a script: logits peak at script[position]."""

    def __init__(self, script, vocab=8):
        super().__init__()
        self.script, self.vocab = script, vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        b, n = x.shape
        logits = torch.full((b, n, self.vocab), -1e4)
        for row in range(b):
            logits[row, -1, self.script[row][n - 1]] = 1e4
        return logits


def test_generate_stops_at_eos_and_pads_after_it():
    eos, pad = 7, 0
    net = Scripted([[0, 3, 7, 5, 5, 5, 5, 5], [0, 7, 2, 7, 5, 5, 5, 5]])  # token at length n = script[n - 1]
    wrapper = ft.AutoregressiveWrapper(net, pad_value=pad)
    start = torch.tensor([[1, 1], [1, 1]])
    out = wrapper.generate(start, 6, eos_token=eos)
    # row 0 produces 3, 7 (eos) ; row 1 produces 7 (eos), 2 -> padded; generation stops once both rows hit eos
    assert out.tolist() == [[3, 7], [7, pad]]


def test_generate_without_eos_returns_seq_len_tokens_and_restores_training_mode():
    net = ft.FLASHTransformer(num_tokens=20, dim=16, depth=1, group_size=4, query_key_dim=8, causal=True)
    wrapper = ft.AutoregressiveWrapper(net)
    wrapper.train()
    out = wrapper.generate(torch.randint(0, 20, (3, 5)), 9)
    assert out.shape == (3, 9) and out.dtype == torch.long
    assert out.min() >= 0 and out.max() < 20
    assert wrapper.training and net.training


def test_top_k_keeps_the_largest_and_at_least_one():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5, 0.0, 1.0, -2.0, 4.0, 0.2]])
    kept = top_k(logits, thres=0.7)  # k = 3
    assert torch.isfinite(kept).nonzero()[:, 1].tolist() == [1, 3, 8]
    assert torch.isfinite(top_k(logits, thres=0.99)).sum() == 1  # upstream would keep none


def test_loss_is_next_token_cross_entropy():
    net = ft.FLASHTransformer(num_tokens=12, dim=16, depth=1, group_size=4, query_key_dim=8, causal=True)
    x = torch.randint(0, 12, (2, 10))
    logits = net(x[:, :-1])
    expected = nn.functional.cross_entropy(logits.reshape(-1, 12), x[:, 1:].reshape(-1))
    assert torch.allclose(ft.AutoregressiveWrapper(net)(x), expected, atol=1e-6)
