"""Core extension points: pluggable token mixers and blocks, the attention-recording protocol,
declared block types (FSDP units) and the gradient-checkpointing switch."""
import functools
from types import SimpleNamespace

import pytest
import torch
from einops import rearrange
from torch import nn

from zoo.core import (
    AdditiveAttention,
    BlockConfig,
    FeedForward,
    MultiHeadAttention,
    TransformerBlock,
    TransformerStack,
    attention,
    capture_attention,
    combine_masks,
    find_blocks,
    multi_head_attention,
    set_grad_checkpointing,
)
from zoo.tasks.base import ZooTask

CFG = BlockConfig(dim=16, num_heads=4, mlp_hidden=32)


class WindowAttention(nn.Module):
    """Sliding-window (local) self-attention: token i sees keys j with |i - j| <= window.
    It ignores rope / cache / bias (**kwargs) and joins capture_attention by declaring the protocol."""

    def __init__(self, cfg: BlockConfig, window: int = 1):
        super().__init__()
        self.num_heads, self.window = cfg.num_heads, window
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.record_weights, self.last_weights = False, None

    def forward(self, x, mask=None, causal=False, need_weights=False, **kwargs):
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.num_heads).unbind(0)
        pos = torch.arange(x.shape[1], device=x.device)
        band = (pos[:, None] - pos[None, :]).abs() <= self.window
        out, self.last_weights = attention(q, k, v, mask=combine_masks(mask, band), causal=causal,
                                           need_weights=need_weights or self.record_weights)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class TokenMean(nn.Module):
    """A weightless PoolFormer-style mixer: every token becomes the mean of all tokens. No protocol."""

    def forward(self, x, **kwargs):
        return x.mean(dim=1, keepdim=True).expand_as(x)


class ParallelBlock(TransformerBlock):
    """GPT-J style: attention and feed-forward read the same normed input, one residual."""

    def forward(self, x, mask=None, causal=False, **kwargs):
        h = self.norm1(x)
        return x + self.attn(h, mask=mask, causal=causal) + self.mlp(h)


def window_stack(depth=2, window=1, **kw):
    torch.manual_seed(0)
    return TransformerStack(CFG, depth, attn_layer=functools.partial(WindowAttention, window=window), **kw)


def test_default_block_keeps_its_state_dict_keys():
    keys = set(TransformerBlock(CFG, cross_attention=True).state_dict())
    expected = {f"{m}.{p}" for m in ("norm1", "norm_cross", "norm2") for p in ("weight", "bias")}
    expected |= {f"attn.{m}.{p}" for m in ("qkv", "proj") for p in ("weight", "bias")}
    expected |= {f"cross_attn.{m}.{p}" for m in ("q", "k", "v", "proj") for p in ("weight", "bias")}
    expected |= {f"mlp.{m}.{p}" for m in ("fc1", "fc2") for p in ("weight", "bias")}
    assert keys == expected


def test_explicit_default_factories_build_the_same_block():
    x = torch.randn(2, 5, 16)
    torch.manual_seed(0)
    default = TransformerBlock(CFG).eval()
    torch.manual_seed(0)
    explicit = TransformerBlock(CFG, attn_layer=multi_head_attention,
                                mlp_layer=lambda c: FeedForward(c.dim, c.mlp_hidden, c.activation)).eval()
    assert isinstance(explicit.attn, MultiHeadAttention)
    torch.testing.assert_close(explicit(x), default(x), atol=0, rtol=0)


def test_window_attention_in_the_stack_is_local():
    """Two layers of window 1: position i only depends on positions i-2 .. i+2."""
    stack = window_stack().eval()
    assert all(isinstance(b.attn, WindowAttention) for b in stack.blocks)
    x = torch.randn(2, 8, 16)
    y = x.clone()
    y[:, 6] = torch.randn(2, 16)
    out, out2 = stack(x), stack(y)
    torch.testing.assert_close(out[:, :4], out2[:, :4], atol=0, rtol=0)
    assert (out[:, 4:] - out2[:, 4:]).abs().amax(dim=(0, 2)).min() > 1e-4


def test_window_attention_trains_a_step_with_and_without_checkpointing():
    stack = window_stack(mlp_layer=lambda c: FeedForward(c.dim, c.mlp_hidden, "silu", gated=True)).train()
    assert stack.blocks[0].mlp.gate is not None
    x, target = torch.randn(3, 6, 16), torch.randn(3, 6, 16)
    loss = (stack(x) - target).pow(2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in stack.named_parameters()}
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "attn" in n)
    stack.zero_grad()
    assert set_grad_checkpointing(stack) == 1 and stack.gradient_checkpointing
    (stack(x) - target).pow(2).mean().backward()
    for n, p in stack.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)
    before = stack.blocks[0].attn.qkv.weight.detach().clone()
    torch.optim.SGD(stack.parameters(), lr=0.1).step()
    assert not torch.equal(before, stack.blocks[0].attn.qkv.weight)
    assert (stack(x) - target).pow(2).mean() < loss


def test_capture_attention_records_custom_mixers_and_restores_flags():
    stack = window_stack(depth=3, window=1).eval()
    x = torch.randn(2, 6, 16)
    fast = stack(x)
    with capture_attention(stack) as maps:
        out = stack(x)
        assert all(b.attn.record_weights for b in stack.blocks)
    assert list(maps) == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    torch.testing.assert_close(out, fast, atol=1e-6, rtol=1e-5)  # the math path gives the same output
    for w in maps.values():
        assert w.shape == (2, 4, 6, 6)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 6))
        far = (torch.arange(6)[:, None] - torch.arange(6)[None]).abs() > 1
        assert w[..., far].abs().max() == 0
    assert not any(b.attn.record_weights for b in stack.blocks)
    stack(x)
    assert stack.blocks[0].attn.last_weights is None  # not recording: the fast path keeps nothing


def test_capture_attention_skips_mixers_without_the_protocol():
    torch.manual_seed(0)
    mixed = nn.ModuleList([TransformerStack(CFG, 1, attn_layer=lambda c: TokenMean()), window_stack(depth=1)])
    x = torch.randn(1, 4, 16)
    with capture_attention(mixed) as maps:
        mixed[1](mixed[0](x))
    assert list(maps) == ["1.blocks.0.attn"]
    with pytest.raises(TypeError, match="no attention module with a `record_weights`"):
        with capture_attention(TransformerStack(CFG, 1, attn_layer=lambda c: TokenMean())):
            pass


def test_capture_attention_matches_softmax_of_projected_queries_and_keys():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    with capture_attention(mha) as maps:
        mha(x, causal=True)
    q, k, _ = rearrange(mha.qkv(x), "b l (three h d) -> three b h l d", three=3, h=4)
    scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
    torch.testing.assert_close(maps[""], scores.softmax(-1))


def test_additive_attention_follows_the_protocol():
    torch.manual_seed(0)
    att = AdditiveAttention(8, 6, 5)
    memory, query = torch.randn(2, 4, 6), torch.randn(2, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert att.record_weights is False
    with capture_attention(att) as maps:
        _, weights = att(query, att.keys(memory), memory, mask)
    assert maps[""].shape == (2, 1, 1, 4)
    torch.testing.assert_close(maps[""][:, 0, 0], weights)
    assert maps[""][1, 0, 0, 2:].abs().max() == 0


def test_block_fn_and_declared_blocks():
    class ParallelLM(nn.Module):
        no_split_modules = (ParallelBlock,)

        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 16)
            self.stack = TransformerStack(CFG, 3, block_fn=ParallelBlock, attn_layer=WindowAttention)

    model = ParallelLM()
    blocks = find_blocks(model)
    assert blocks == list(model.stack.blocks) and all(isinstance(b.attn, WindowAttention) for b in blocks)
    x = torch.randn(1, 4, 16)
    b = blocks[0]
    torch.testing.assert_close(b(x), x + b.attn(b.norm1(x)) + b.mlp(b.norm1(x)))
    stack = TransformerStack(CFG, 2)
    assert find_blocks(stack) == list(stack.blocks)  # default: zoo's TransformerBlock
    model.no_split_modules = ("ParallelBlock",)
    with pytest.raises(TypeError, match="no_split_modules must be a tuple of nn.Module classes"):
        find_blocks(model)


def test_set_grad_checkpointing_counts_switches_and_refuses_models_without_one():
    class Custom(nn.Module):  # a stack of its own that declares the switch
        def __init__(self):
            super().__init__()
            self.gradient_checkpointing = False

    model = nn.ModuleDict({"enc": TransformerStack(CFG, 1), "dec": TransformerStack(CFG, 1), "own": Custom()})
    assert set_grad_checkpointing(model) == 3
    assert all(m.gradient_checkpointing for m in model.values())
    assert set_grad_checkpointing(model, enable=False) == 3
    assert not any(m.gradient_checkpointing for m in model.values())
    with pytest.raises(ValueError, match="Linear has no module with a `gradient_checkpointing` switch"):
        set_grad_checkpointing(nn.Linear(2, 2))


def test_configure_model_shards_the_declared_blocks(monkeypatch):
    import torch.distributed.fsdp as fsdp

    sharded = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, mesh: sharded.append(module))

    class Model(nn.Module):
        no_split_modules = (ParallelBlock,)

        def __init__(self):
            super().__init__()
            self.stack = TransformerStack(CFG, 2, block_fn=ParallelBlock)

    task = SimpleNamespace(model=Model(), device_mesh=SimpleNamespace(mesh_dim_names=None))
    ZooTask.configure_model(task)
    assert sharded == [*task.model.stack.blocks, task.model] and task._zoo_sharded
    ZooTask.configure_model(task)  # idempotent
    assert len(sharded) == 3


def test_capture_attention_on_an_encoder_decoder_names_every_map():
    from test_encoder_decoder import V, tiny

    model = tiny("pre")
    src, tgt = torch.randint(3, V, (2, 7)), torch.randint(3, V, (2, 4))
    with capture_attention(model) as maps:
        model(src, tgt)
    depth = len(model.decoder.blocks)
    assert [n for n in maps if n.startswith("decoder")] == [
        f"decoder.blocks.{i}.{kind}" for i in range(depth) for kind in ("attn", "cross_attn")]
    assert maps["encoder.blocks.0.attn"].shape == (2, 4, 7, 7)
    assert maps["decoder.blocks.0.attn"].shape == (2, 4, 4, 4) and maps["decoder.blocks.0.cross_attn"].shape == (2, 4, 4, 7)
    assert maps["decoder.blocks.0.attn"][..., torch.ones(4, 4).triu(1).bool()].abs().max() == 0  # causal
    assert not any(m.record_weights for m in model.modules() if hasattr(m, "record_weights"))
