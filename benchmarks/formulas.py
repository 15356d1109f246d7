"""FLOP counts and bytes-moved estimates of every subject, written out. ``tests/test_benchmarks.py`` checks the
FLOP formulas against a brute-force count (``torch.utils.flop_counter`` on the reference path, and literal loops
over the attended pairs).

Conventions. FLOPs count the matrix products only (a multiply-add is 2 FLOPs; element-wise work is left out) and
only the useful ones: causal attention counts the pairs a query attends to, n² / 2 (the exact count,
n (n + 1) / 2, differs by the diagonal), so a kernel that skips masked tiles and one that computes and discards
them are measured against the same work. A backward pass costs twice its forward (each product of the forward
has two products in the backward), so ``backward=True`` gives 3x the forward: one training step.

Bytes are a floor for the design measured here: every tensor that must exist between kernels (inputs, outputs,
the GEMM results the attention core reads, the core's fp32 group states) is written once and read once; weights
are read once. For the attention cores the backward's traffic is counted tensor by tensor (inputs and the
output gradient read, input gradients written); for layers and models it is estimated as twice the forward's.
With ``p`` the element size in bytes. The roofline floor of a row is ``max(flops / matmul rate, bytes / copy
bandwidth)``, both rates measured on the same device in the same run.
"""


def _causal(causal: bool) -> float:
    return 0.5 if causal else 1.0


def _train(fwd: float, backward: bool) -> float:
    return 3.0 * fwd if backward else fwd


# ---------------------------------------------------------------------------------------------------------------
# FLOPs


def quad_flops(n: int, window: int, s: int, e: int, causal: bool) -> float:
    """relu² attention over windows of ``window`` tokens: scores q·k (2 s per pair) and A·v (2 e per pair), each
    query attending to min(window, n) keys, halved when causal."""
    return 2.0 * n * min(window, n) * (s + e) * _causal(causal)


def linear_flops(n: int, s: int, e: int) -> float:
    """FLASH's linear attention: each token adds lin_kᵀ v to its group's state (2 s e) and reads lin_q · state
    (2 s e). The prefix sum over groups is additions only."""
    return 4.0 * n * s * e


def quad_attn_flops(n: int, s: int, e: int, causal: bool, backward: bool) -> float:
    """GAU attention core (window = the whole sequence): 2 n² (s + e), halved when causal; x3 for fwd+bwd."""
    return _train(quad_flops(n, n, s, e, causal), backward)


def mixed_chunk_attn_flops(n: int, s: int, e: int, g: int, causal: bool, backward: bool) -> float:
    """FLASH attention core: quadratic within groups of g, 2 n g (s + e) (halved when causal), plus linear
    attention 4 n s e; x3 for fwd+bwd."""
    return _train(quad_flops(n, g, s, e, causal) + linear_flops(n, s, e), backward)


def projection_flops(n: int, dim: int, s: int, e: int) -> float:
    """GAU / FLASH projections: to_hidden dim -> 2e (value and gate), to_qk dim -> s, to_out e -> dim."""
    return 2.0 * n * dim * 2 * e + 2.0 * n * dim * s + 2.0 * n * e * dim


def projections_flops(n: int, dim: int, s: int, e: int, backward: bool) -> float:
    """A GAU / FLASH layer whose attention core is the identity: its projections alone; x3 for fwd+bwd."""
    return _train(projection_flops(n, dim, s, e), backward)


def gau_flops(n: int, dim: int, s: int, e: int, causal: bool, backward: bool) -> float:
    """One GAU layer: projections plus the whole-sequence quadratic core."""
    return _train(projection_flops(n, dim, s, e) + quad_flops(n, n, s, e, causal), backward)


def flash_flops(n: int, dim: int, s: int, e: int, g: int, causal: bool, backward: bool) -> float:
    """One FLASH layer: projections 2 n dim (2e + s + e), in-group quadratic attention 2 n g (s + e) (halved when
    causal), linear attention 4 n s e; x3 for fwd+bwd."""
    return _train(projection_flops(n, dim, s, e) + quad_flops(n, g, s, e, causal) + linear_flops(n, s, e), backward)


def sdpa_flops(n: int, width: int, causal: bool, backward: bool) -> float:
    """Softmax attention of total width ``width`` (heads x head dim) for q, k and v: q·k and A·v, 2 n² width
    each, halved when causal; x3 for fwd+bwd (the flash backward's recomputation is not counted)."""
    return _train(4.0 * n * n * width * _causal(causal), backward)


def transformer_flops(n: int, dim: int, hidden: int, causal: bool, backward: bool) -> float:
    """One Transformer++ layer: qkv and output projections 8 n dim², attention 4 n² dim (halved when causal),
    SwiGLU FFN 6 n dim hidden (up to 2 hidden, down from hidden); x3 for fwd+bwd."""
    fwd = 8.0 * n * dim * dim + 4.0 * n * n * dim * _causal(causal) + 6.0 * n * dim * hidden
    return _train(fwd, backward)


def model_flops(layer_fwd_flops: float, n: int, dim: int, vocab: int, depth: int, backward: bool) -> float:
    """A language model: ``depth`` layers of ``layer_fwd_flops`` (forward FLOPs of one layer) plus the logits
    head 2 n dim vocab (the embedding is a lookup); x3 for fwd+bwd."""
    return _train(depth * layer_fwd_flops + 2.0 * n * dim * vocab, backward)


def decode_flops(dim: int, s: int, e: int, g: int, vocab: int, depth: int) -> float:
    """One token generated with the cache, averaged over the g positions of a group: per layer the projections of
    one token, quadratic attention to (g + 1) / 2 keys of its group on average (2 (s + e) each), lin_q · state
    (2 s e) and its own lin_kᵀ v folded into the state once its group completes (2 s e); plus the logits head."""
    layer = projection_flops(1, dim, s, e) + (g + 1) / 2 * 2 * (s + e) + linear_flops(1, s, e)
    return depth * layer + 2.0 * dim * vocab


# ---------------------------------------------------------------------------------------------------------------
# bytes


def quad_attn_bytes(n: int, s: int, e: int, p: int, backward: bool) -> float:
    """GAU core: forward reads q, k (s each), v, gate (e each) and writes out (e); backward reads the four inputs
    and dY, writes dq, dk, dv, dgate. Nothing n x n."""
    fwd = n * p * (2 * s + 3 * e)
    bwd = n * p * (2 * s + 3 * e) + n * p * (2 * s + 2 * e)
    return fwd + (bwd if backward else 0.0)


def mixed_chunk_attn_bytes(n: int, s: int, e: int, g: int, p: int, backward: bool) -> float:
    """FLASH core: forward reads quad_q, quad_k, lin_q, lin_k (s each), v, gate (e each), writes out (e), and
    writes then reads one fp32 s x e state per group; backward reads the six inputs and dY, writes their six
    gradients, recomputes the states (written and read) and writes then reads their gradients."""
    groups = -(-n // g)
    states = 2.0 * 4 * groups * s * e
    fwd = n * p * (4 * s + 3 * e) + states
    bwd = n * p * (4 * s + 3 * e) + n * p * (4 * s + 2 * e) + 2 * states
    return fwd + (bwd if backward else 0.0)


def sdpa_bytes(n: int, width: int, p: int, backward: bool) -> float:
    """Flash softmax attention: forward reads q, k, v, writes out; backward reads q, k, v, out, dout and writes
    dq, dk, dv (the per-row log-sum-exp is negligible)."""
    fwd = 4.0 * n * width * p
    return fwd + (8.0 * n * width * p if backward else 0.0)


def gau_bytes(n: int, dim: int, s: int, e: int, p: int, backward: bool) -> float:
    """GAU layer: x read twice (norm, residual), out written; written once and read once: the normed x (dim),
    value and gate (2e), the shared qk (s), q and k (2s), the core's output (e); weights read once."""
    act = n * p * (2 * dim + dim + 2 * (dim + 2 * e + s + 2 * s + e))
    weights = p * (dim * 2 * e + dim * s + e * dim)
    return _train(act + weights, backward)


def flash_bytes(n: int, dim: int, s: int, e: int, g: int, p: int, backward: bool) -> float:
    """FLASH layer: as :func:`gau_bytes` with four query/key heads (4s) and the core's fp32 group states."""
    groups = -(-n // g)
    act = n * p * (2 * dim + dim + 2 * (dim + 2 * e + s + 4 * s + e)) + 2.0 * 4 * groups * s * e
    weights = p * (dim * 2 * e + dim * s + e * dim)
    return _train(act + weights, backward)


def transformer_bytes(n: int, dim: int, hidden: int, p: int, backward: bool) -> float:
    """Transformer++ layer: x read twice, out written; written once and read once: normed x (dim), qkv (3 dim),
    attention out (dim), the first residual sum (dim, read twice), normed (dim), up (2 hidden), SwiGLU product
    (hidden); weights read once."""
    act = n * p * (2 * dim + dim + 2 * (dim + 3 * dim + dim + dim + 2 * hidden + hidden) + dim)
    weights = p * (dim * 3 * dim + dim * dim + dim * 2 * hidden + hidden * dim)
    return _train(act + weights, backward)


def model_bytes(layer_fwd_bytes: float, n: int, dim: int, vocab: int, depth: int, p: int, backward: bool) -> float:
    """A language model: ``depth`` layers of ``layer_fwd_bytes``, the embedding rows gathered (dim per token),
    the final norm (dim written and read), the head's weights and its logits (vocab written and read)."""
    fwd = depth * layer_fwd_bytes + n * p * (dim + 2 * dim + 2 * vocab) + p * dim * vocab
    return _train(fwd, backward)


def decode_bytes(dim: int, s: int, e: int, g: int, vocab: int, depth: int, p: int) -> float:
    """One token generated with the cache (batch 1: weight reads dominate): every layer's weights read once, its
    cache read once ((g - 1) / 2 rows of quad_k, lin_k and v on average, and the fp32 s x e state), and the head's
    weights."""
    weights = p * (dim * 2 * e + dim * s + e * dim)
    cache = p * (g - 1) / 2 * (2 * s + e) + 4.0 * s * e
    return depth * (weights + cache) + p * dim * vocab
