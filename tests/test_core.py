"""The shared core against formulas and naive references."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.core import (
    BlockConfig,
    KVCache,
    MultiHeadAttention,
    RelativePositionBias,
    RMSNorm,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    TransformerBlock,
    TransformerStack,
    attention,
    causal_mask,
    decoder_padding_mask,
    padding_mask,
    relative_position_bucket,
    sinusoidal_table,
)
from zoo.core.layers import DropPath, Dropout, FeedForward, dropout, keep_mask


def naive_attention(q, k, v, keep=None, bias=None, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if bias is not None:
        s = s + bias
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v)


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_with_padding_and_causal_matches_naive(qkv, need_weights):
    q, k, v = qkv
    am = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    keep = padding_mask(am) & causal_mask(5, 5)
    out, _ = attention(q, k, v, mask=padding_mask(am), causal=True, need_weights=need_weights)
    ref = naive_attention(q, k, v, keep)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_attention_bias_and_unit_scale_matches_naive(qkv):
    q, k, v = qkv
    bias = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    am = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    out, _ = attention(q, k, v, mask=padding_mask(am), bias=bias, scale=1.0)
    ref = naive_attention(q, k, v, padding_mask(am).expand(2, 3, 5, 5), bias=bias, scale=1.0)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_attention_weights_rows_sum_to_one_and_respect_mask(qkv):
    q, k, v = qkv
    am = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    _, w = attention(q, k, v, mask=padding_mask(am), need_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    assert w[1, :, :, 2:].abs().max() == 0


def test_causal_mask_aligns_queries_to_the_end():
    m = causal_mask(2, 4)[0, 0]
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_padding_mask_rejects_wrong_rank():
    with pytest.raises(ValueError, match="attention_mask must be"):
        padding_mask(torch.ones(2, 1, 5))


def test_padding_mask_drops_a_mask_that_keeps_everything_only_in_eager_mode():
    full, padded = torch.ones(2, 5, dtype=torch.long), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert padding_mask(full) is None and decoder_padding_mask(full, 3) is None  # SDPA's unmasked kernel
    assert padding_mask(padded)[:, 0, 0].tolist() == padded.bool().tolist()
    # while a graph is captured the mask stays, so the same graph is right for a padded batch later
    fn = torch.compile(lambda am: padding_mask(am), backend="eager", fullgraph=True)
    kept = fn(full)
    assert kept is not None and kept.shape == (2, 1, 1, 5) and bool(kept.all())
    assert padding_mask(full.to("meta")).shape == (2, 1, 1, 5)  # no values to look at: kept
    traced = torch.jit.trace(lambda am: padding_mask(am).float(), (full,), check_trace=False)
    assert traced(padded)[:, 0, 0].tolist() == padded.float().tolist()


def test_mha_fused_and_separate_projections_agree():
    torch.manual_seed(0)
    fused = MultiHeadAttention(16, 4, fused_qkv=True).eval()
    split = MultiHeadAttention(16, 4, fused_qkv=False).eval()
    wq, wk, wv = fused.qkv.weight.chunk(3)
    bq, bk, bv = fused.qkv.bias.chunk(3)
    with torch.no_grad():
        for lin, w, b in ((split.q, wq, bq), (split.k, wk, bk), (split.v, wv, bv)):
            lin.weight.copy_(w), lin.bias.copy_(b)
        split.proj.load_state_dict(fused.proj.state_dict())
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(fused(x), split(x), atol=1e-6, rtol=1e-6)


def test_mha_head_split_convention_matches_torch_multihead_attention():
    """Heads outermost in the feature split: the same weights give nn.MultiheadAttention's output."""
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = MultiHeadAttention(16, 4).eval()
    with torch.no_grad():
        ours.qkv.weight.copy_(ref.in_proj_weight), ours.qkv.bias.copy_(ref.in_proj_bias)
        ours.proj.load_state_dict(ref.out_proj.state_dict())
    x = torch.randn(2, 6, 16)
    am = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    expected, _ = ref(x, x, x, key_padding_mask=am == 0, need_weights=False)
    torch.testing.assert_close(ours(x, mask=padding_mask(am)), expected, atol=1e-5, rtol=1e-5)


def test_mha_cache_equals_full_recompute():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    rope = RotaryEmbedding(4)
    x = torch.randn(2, 6, 16)
    full = mha(x, causal=True, rope=rope)
    cache = KVCache()
    steps = [mha(x[:, i:i + 1], causal=True, rope=rope, cache=cache) for i in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=1e-5)
    assert cache.length(mha.layer_id) == 6


@pytest.mark.parametrize("norm_first", [True, False])
def test_last_queries_give_the_first_rows_of_the_full_stack(norm_first):
    """TransformerStack(last_queries=n) = the first n rows of the full stack's output, with a padding mask, a
    per-query bias and rotary positions; with a hook inside the last block, the full output."""
    torch.manual_seed(0)
    cfg = BlockConfig(dim=16, num_heads=4, mlp_hidden=32, norm_first=norm_first, qk_norm=True)
    stack = TransformerStack(cfg, depth=3).double().eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    mask = padding_mask(torch.tensor([[1] * 7, [1] * 5 + [0] * 2]))
    bias = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    rope = RotaryEmbedding(4)
    full = stack(x, mask=mask, bias=bias, rope=rope)
    first = stack(x, mask=mask, bias=bias, rope=rope, last_queries=2)
    assert first.shape == (2, 2, 16)
    torch.testing.assert_close(first, full[:, :2], atol=1e-12, rtol=1e-12)
    seen = []  # a hook on the last block's feed-forward: every row again
    stack.blocks[-1].mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    torch.testing.assert_close(stack(x, mask=mask, bias=bias, rope=rope, last_queries=2), full, atol=1e-12, rtol=1e-12)
    assert seen == [7]


def test_queries_refuse_causal_attention_and_caches():
    mha = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match="bidirectional self-attention"):
        mha(torch.randn(1, 5, 16), causal=True, queries=1)
    with pytest.raises(ValueError, match="KVCache"):
        mha(torch.randn(1, 5, 16), cache=KVCache(), queries=1)


def test_cross_attention_needs_context():
    with pytest.raises(ValueError, match="context"):
        MultiHeadAttention(16, 4, cross=True)(torch.randn(1, 2, 16))


def test_mha_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(10, 4)


def test_sinusoidal_table_matches_formula():
    d, table = 16, sinusoidal_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_positional_embedding_too_long_raises_clear_error():
    pe = SinusoidalPositionalEmbedding(8, 4)
    with pytest.raises(ValueError, match="exceeds the model's maximum of 8"):
        pe(9)


def test_rope_scores_depend_only_on_offsets():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        return (rope(q, offset=pq) * rope(k, offset=pk)).sum().item()

    assert score(3, 1) == pytest.approx(score(13, 11), abs=1e-5)
    assert score(0, 5) == pytest.approx(score(20, 25), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    # a rotation keeps norms
    torch.testing.assert_close(rope(q, offset=7).norm(), q.norm())


def test_rope_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(7)


@pytest.mark.parametrize(
    "rel,bidirectional,bucket",
    [(0, True, 0), (-1, True, 1), (-7, True, 7), (-8, True, 8), (-11, True, 8), (-12, True, 9), (-90, True, 14),
     (-91, True, 15), (1, True, 17), (8, True, 24), (91, True, 31), (500, True, 31),
     (5, False, 0), (-15, False, 15), (-16, False, 16), (-18, False, 16), (-19, False, 17), (-112, False, 30), (-113, False, 31)],
)
def test_t5_relative_buckets_match_reference_ranges(rel, bidirectional, bucket):
    out = relative_position_bucket(torch.tensor([rel]), bidirectional, 32, 128)
    assert out.item() == bucket


def test_t5_bidirectional_bucket_16_unused():
    rel = torch.arange(-300, 301)
    assert 16 not in relative_position_bucket(rel, True, 32, 128).tolist()


def test_relative_bias_shape():
    bias = RelativePositionBias(num_heads=3, num_buckets=8, max_distance=20)(4, 6)
    assert bias.shape == (1, 3, 4, 6)


def test_rmsnorm_formula():
    x = torch.randn(3, 8)
    n = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        n.weight.uniform_()
    torch.testing.assert_close(n(x), n.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


@pytest.mark.parametrize("float32_math", [False, True])
def test_rmsnorm_float32_kernel_equals_the_formula_step_by_step(float32_math):
    """float32 goes through ATen's fused rms_norm: the same values and gradients as the formula written out."""
    torch.manual_seed(0)
    n = RMSNorm(64, eps=1e-6, float32_math=float32_math)
    with torch.no_grad():
        n.weight.normal_()
    x = (torch.randn(4, 16, 64) * 3).requires_grad_()
    x_ref, w_ref = x.detach().clone().requires_grad_(), n.weight.detach().clone().requires_grad_()
    y, y_ref = n(x), w_ref * (x_ref * torch.rsqrt(x_ref.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(n.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-5)


def test_gated_feedforward_formula():
    torch.manual_seed(0)
    ff = FeedForward(8, 16, activation="silu", gated=True)
    x = torch.randn(2, 8)
    expected = ff.fc2(torch.nn.functional.silu(ff.fc1(x)) * ff.gate(x))
    torch.testing.assert_close(ff(x), expected)


def test_drop_path_is_identity_in_eval_and_unbiased_in_train():
    dp = DropPath(0.5)
    x = torch.ones(20000, 1)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_a_bernoulli_share_scaled_and_its_gradient_is_the_mask(dtype):
    p, n = 0.1, 1_000_000
    x = torch.full((n,), 2.0, dtype=dtype, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, p, training=True)
    kept = y != 0
    # Bernoulli(1 - p): the kept share within 5 standard deviations (3e-4) of 0.9
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    scale = torch.tensor(1 / (1 - p), dtype=dtype)  # in x's dtype, as F.dropout scales
    assert torch.equal(y[kept], (2 * scale).expand(int(kept.sum())))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.where(kept, scale, torch.zeros((), dtype=dtype)))
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, training=True), y)  # the generator's seed repeats it
    assert torch.equal(dropout(x, p, training=False), x) and torch.equal(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_is_bernoulli_in_every_lane_and_independent_of_its_neighbour(p):
    n = 4_000_000
    torch.manual_seed(1)
    keep = keep_mask((n // 4, 4), p).float()  # column j: the j-th 16-bit lane of each 64-bit draw
    tol = 5 * math.sqrt(p * (1 - p) / (n // 4))
    assert (keep.mean(0) - (1 - p)).abs().max().item() < tol
    both = (keep[:, 0] * keep[:, 3]).mean().item()  # lanes of one draw: P(keep, keep) = (1 - p)^2
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 / (n // 4))
    assert keep_mask((3, 5), p).shape == (3, 5) and keep_mask((0,), p).shape == (0,)
    torch.manual_seed(1)
    assert torch.equal(keep_mask((n // 4, 4), p).float(), keep)


def test_keep_mask_rounds_p_to_16_bits():
    assert not keep_mask((100_000,), 1 - 2**-20).any()  # p within 2^-16 of 1: nothing kept
    assert keep_mask((100_000,), 2**-20).all()  # p below 2^-17: nothing dropped


def test_dropout_module_is_a_drop_in_nn_dropout():
    d = Dropout(0.25)
    assert isinstance(d, torch.nn.Dropout) and repr(d) == repr(torch.nn.Dropout(0.25))
    x = torch.ones(10_000)
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(d.train()(x).unique(), torch.tensor([0.0, 1 / 0.75]))


def test_attention_dropout_on_the_cpu_is_the_naive_formula_with_the_core_mask(qkv):
    """With dropout_p on the CPU: softmax(q k^T s + bias) with its probabilities dropped by zoo.core.dropout's mask."""
    q, k, v = (t.float() for t in qkv)
    bias = torch.randn(1, 3, 5, 5)
    torch.manual_seed(3)
    out, _ = attention(q, k, v, bias=bias, dropout_p=0.3)
    torch.manual_seed(3)
    probs = (torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(8) + bias).softmax(-1)
    n = probs.numel()  # four 16-bit lanes of each 64-bit draw, kept where >= 0.3 of their range
    keep = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,)).view(torch.int16)[:n].view(probs.shape)
    keep = (keep.float() + 32768) / 65536 >= 0.3
    ref = torch.einsum("bhqk,bhkd->bhqd", probs * keep / 0.7, v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.manual_seed(4)
    assert not torch.allclose(attention(q, k, v, bias=bias, dropout_p=0.3)[0], out, atol=1e-3)


def test_post_norm_block_matches_torch_encoder_layer():
    """Post-norm block == nn.TransformerEncoderLayer (norm_first=False) with copied weights."""
    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation="relu", batch_first=True).eval()
    blk = TransformerBlock(BlockConfig(16, 4, 32, norm_first=False, norm_eps=1e-5, activation="relu")).eval()
    with torch.no_grad():
        blk.attn.qkv.weight.copy_(ref.self_attn.in_proj_weight), blk.attn.qkv.bias.copy_(ref.self_attn.in_proj_bias)
        blk.attn.proj.load_state_dict(ref.self_attn.out_proj.state_dict())
        blk.mlp.fc1.load_state_dict(ref.linear1.state_dict()), blk.mlp.fc2.load_state_dict(ref.linear2.state_dict())
        blk.norm1.load_state_dict(ref.norm1.state_dict()), blk.norm2.load_state_dict(ref.norm2.state_dict())
    x = torch.randn(2, 5, 16)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        torch.testing.assert_close(blk(x), ref(x), atol=1e-5, rtol=1e-5)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def test_decoder_stack_causality_and_cross_attention():
    torch.manual_seed(0)
    stack = TransformerStack(BlockConfig(16, 4, 32), depth=2, cross_attention=True).eval()
    x, mem = torch.randn(1, 6, 16), torch.randn(1, 4, 16)
    out = stack(x, causal=True, context=mem)
    x2 = x.clone()
    x2[:, 4:] += 1.0  # change the future
    out2 = stack(x2, causal=True, context=mem)
    torch.testing.assert_close(out[:, :4], out2[:, :4])
    assert not torch.allclose(out[:, 4:], out2[:, 4:])
    out3 = stack(x, causal=True, context=mem + 1)
    assert not torch.allclose(out, out3)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    stack = TransformerStack(BlockConfig(16, 4, 32), depth=2)
    x = torch.randn(2, 5, 16)
    stack(x).sum().backward()
    g1 = [p.grad.clone() for p in stack.parameters()]
    stack.zero_grad()
    stack.gradient_checkpointing = True
    stack(x).sum().backward()
    for a, p in zip(g1, stack.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_decoder_padding_mask_hides_pads_and_never_empties_a_row():
    am = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    m = decoder_padding_mask(am, 5)
    assert m.shape == (2, 1, 5, 5)
    full = m & causal_mask(5, 5)
    assert full.any(-1).all()  # every query keeps a key: no NaN from SDPA
    assert not full[0, 0, 2:, :2].any()  # real queries never see the padding
    assert full[1, 0].equal(causal_mask(5, 5)[0, 0])
    last = decoder_padding_mask(am, 1)  # one new query after a cached prefix
    assert last.shape == (2, 1, 1, 5) and last[0, 0, 0].tolist() == [False, False, True, True, True]
    assert decoder_padding_mask(None, 3) is None


def test_stack_folds_mask_into_bias_once_with_the_per_layer_result():
    """TransformerStack folds padding + causal masks into the additive bias once; each block then gets one
    attn_mask. The result equals running the blocks with the mask, causal flag and bias unfolded."""
    from zoo.core import BlockConfig, TransformerStack, fold_mask_into_bias

    torch.manual_seed(0)
    stack = TransformerStack(BlockConfig(dim=16, num_heads=2, mlp_hidden=32), depth=2).eval()
    x, bias = torch.randn(3, 5, 16), torch.randn(1, 2, 5, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]).bool()[:, None, None, :]
    for causal in (False, True):
        ref = x
        for block in stack.blocks:
            ref = block(ref, mask=mask, causal=causal, bias=bias)
        out = stack(x, mask=mask, causal=causal, bias=bias)
        torch.testing.assert_close(out, stack.norm(ref), rtol=1e-5, atol=1e-6)
    folded = fold_mask_into_bias(bias, mask, causal=True)
    assert folded.shape == (3, 2, 5, 5) and folded[1, :, 4, 3:].eq(torch.finfo(torch.float32).min).all()
    assert folded[0, :, 0, 1].eq(torch.finfo(torch.float32).min).all() and folded[0, :, 1, 0].eq(bias[0, :, 1, 0]).all()


def test_fp32_bias_under_bf16_stays_finite_on_a_fully_masked_row():
    from zoo.core.attention import attention

    q = k = v = torch.randn(1, 1, 3, 4, dtype=torch.bfloat16)
    bias = torch.zeros(1, 1, 3, 3)
    bias[..., 0, :] = torch.finfo(torch.float32).min  # a query that may attend to nothing (all keys padded)
    out, _ = attention(q, k, v, bias=bias)
    # clamped to bf16's lowest finite value: the row's scores are all equal, so it averages v (as a boolean mask
    # folded per layer did); an -inf row would give SDPA's empty-row result (0 on CPU, NaN elsewhere)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0].float().mean(0).to(v.dtype), rtol=2e-2, atol=2e-2)


def test_cpu_bf16_training_attention_runs_in_float32_and_inference_stays_bf16():
    """On the CPU, SDPA's bf16 backward is several times slower than float32's: with gradients, attention under
    autocast computes in float32 and casts back (bit for bit the float32 result); without, it stays in bf16."""
    import torch.nn.functional as F

    from zoo.core.attention import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8).bfloat16().requires_grad_() for _ in range(3))
    bias = torch.randn(1, 3, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention(q, k, v, bias=bias)
        with torch.no_grad():
            infer, _ = attention(q, k, v, bias=bias)
    assert out.dtype == infer.dtype == torch.bfloat16
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias).bfloat16()
    assert torch.equal(out, ref)
    low = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.bfloat16())
    assert torch.equal(infer, low) and not torch.equal(out, low)  # the two paths really differ
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0


def test_cpu_attention_with_dropout_under_autocast_multiplies_in_bf16_and_normalises_in_float32():
    """With attention dropout the CPU runs the math path (SDPA's CPU kernels have none). Under autocast its two
    matmuls take bf16 inputs and its softmax runs in float32 (autocast's lists), as transformers' eager attention
    does, rather than upcasting q, k, v and computing all of it in float32: BERT-base's bf16 training step
    spent its attention in float32 matmuls and casts. The result equals the float32 computation with the same
    dropout draws within bf16's rounding."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from zoo.core.attention import attention

    class Dtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten._softmax):
                self.seen.append((func.overloadpacket.__name__, args[0].dtype))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8).bfloat16().requires_grad_() for _ in range(3))  # as autocast's linears give
    bias = torch.randn(1, 3, 7, 7)
    torch.manual_seed(1)
    ref, _ = attention(q.float(), k.float(), v.float(), bias=bias, dropout_p=0.2)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16), Dtypes() as mode:
        out, _ = attention(q, k, v, bias=bias, dropout_p=0.2)
    assert sorted(set(mode.seen)) == [("_softmax", torch.float32), ("bmm", torch.bfloat16)]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    assert not torch.equal(out.float(), ref.bfloat16().float())  # not the float32 result rounded: bf16 matmuls
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0


def _table_sized_ops(fn, shape):
    """(op name, dtype) of every op that writes a tensor of `shape` while `fn` runs (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and tuple(out.shape) == shape:
                self.seen.append((func.overloadpacket.__name__, out.dtype))
            return out

    with Ops() as mode:
        fn()
    return mode.seen


@pytest.mark.parametrize("padding_idx, bias", [(None, False), (0, True)])
@pytest.mark.parametrize("bf16", [False, True])
def test_tied_lookup_gives_the_two_uses_gradient_without_a_table_sized_zero_fill_or_sum(padding_idx, bias, bf16):
    """An embedding table that the output layer shares, trained: `lookup` returns the rows and the weight for the
    output layer from one autograd node, whose backward adds the rows' gradients into the output layer's gradient
    in place. Output and gradients equal the plain path (table(ids), then head(x)); the plain path zero-fills a
    table-sized gradient for the lookup and sums two, this one does neither, and under autocast it casts the
    table once each way."""
    from zoo.core.position import lookup

    torch.manual_seed(0)
    table = nn.Embedding(40, 8, padding_idx=padding_idx)
    head = nn.Linear(8, 40, bias=bias)
    head.weight = table.weight
    ids = torch.randint(0, 40, (3, 6))
    ids[0, :3] = 0  # repeated ids (and the padding row when there is one)
    mix = torch.randn(8, 8)

    def run(tied: bool):
        table.zero_grad()
        head.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            rows, weight = lookup(table, ids, head if tied else None)
            x = torch.tanh(rows @ mix)
            out = head(x) if weight is None else F.linear(x, weight, head.bias)
        out.float().square().mean().backward()
        return out, {n: p.grad.clone() for n, p in [("weight", table.weight), ("bias", head.bias)] if p is not None}

    seen = {}
    for tied in (True, False):
        seen[tied] = _table_sized_ops(lambda: seen.setdefault(f"run{tied}", run(tied)), (40, 8))
    (out, grads), (ref, ref_grads) = seen["runTrue"], seen["runFalse"]
    assert out.dtype == (torch.bfloat16 if bf16 else torch.float32)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-6, atol=1e-7, msg=n)
    if padding_idx is not None:  # the padding row learns only from the output layer, as with nn.Embedding
        assert not torch.equal(grads["weight"][0], torch.zeros(8))
    zero_or_sum = {"zeros", "new_zeros", "zero_", "fill_", "add", "add_", "embedding_dense_backward"}
    assert {op for op, _ in seen[False]} & zero_or_sum  # the plain path does both
    assert not {op for op, _ in seen[True]} & zero_or_sum, seen[True]
    casts = [dtype for op, dtype in seen[True] if op == "_to_copy"]
    assert casts == ([torch.bfloat16, torch.float32] if bf16 else [torch.float32])  # down once; the gradient up / copied
    with torch.no_grad():
        assert lookup(table, ids, head)[1] is None  # inference: the plain lookup
    assert lookup(table, ids, nn.Linear(8, 40))[1] is None  # an untied output layer
    table.requires_grad_(False)
    assert lookup(table, ids, head)[1] is None  # a frozen table


@pytest.mark.parametrize("activation, op", [("gelu", "gelu_"), ("gelu_tanh", "gelu_"), ("relu", "relu_"), ("silu", "silu_"),
                                            ("quick_gelu", "sigmoid")])
@pytest.mark.parametrize("gated", [False, True])
def test_feedforward_activates_in_place_in_inference_with_the_same_result(activation, op, gated):
    """In inference (no autograd graph, no tracer) the feed-forward activates fc1's fresh output in place instead
    of allocating a second (tokens, hidden) tensor; the result is bit for bit the one with gradients on, and an
    fc1 that hands back its input (nn.Identity) leaves the input untouched."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from zoo.core.layers import FeedForward

    class Names(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    ff = FeedForward(16, 32, activation, gated=gated).eval()
    x = torch.randn(2, 5, 16)
    with Names() as graded:
        ref = ff(x)
    with torch.no_grad(), Names() as inference:
        out = ff(x)
    assert torch.equal(out, ref)
    assert op in inference.seen
    if op.endswith("_"):  # the core's activations run in place; anything else as it is
        assert op not in graded.seen and op[:-1] in graded.seen and op[:-1] not in inference.seen
        assert ("mul_" in inference.seen) == gated
    with torch.inference_mode():
        assert torch.equal(ff(x), ref)
    ff.fc1, ff.gate = nn.Identity(), None
    ff.fc2 = nn.Linear(16, 16)
    before = x.clone()
    with torch.no_grad():
        ff(x)
    assert torch.equal(x, before)


def test_tied_lookup_takes_the_plain_path_in_a_torchscript_trace():
    """torch.jit.trace records with gradients on by default; a trace cannot hold the Python autograd node, so
    tracing takes the plain lookup and the traced module saves (it failed to save before)."""
    import io

    from zoo.core.position import lookup

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.table, self.head = nn.Embedding(20, 4), nn.Linear(4, 20, bias=False)
            self.head.weight = self.table.weight

        def forward(self, ids):
            rows, weight = lookup(self.table, ids, self.head)
            return self.head(rows) if weight is None else F.linear(rows, weight)

    model, ids = Tied(), torch.randint(0, 20, (2, 3))
    traced = torch.jit.trace(model, (ids,))
    torch.jit.save(traced, io.BytesIO())
    torch.testing.assert_close(traced(ids), model(ids))
