"""TransformerConfig.pos_embed: rotary positions in the vanilla encoder-decoder (and the default unchanged)."""
import pytest
import torch

from zoo.core import KVCache
from zoo.models.transformer import EncoderDecoderTransformer, TransformerConfig

TINY = dict(vocab_size=50, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4, dim_feedforward=64,
            dropout=0.0, max_len=64)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return EncoderDecoderTransformer(TransformerConfig(**{**TINY, **kw})).eval()


def test_default_is_sinusoidal_and_bit_identical():
    assert TransformerConfig().pos_embed == "sinusoidal"
    a, b = _model(), _model(pos_embed="sinusoidal")
    assert a.rope is None and a.pos is not None
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the additive table is the fixed sinusoid: position p, feature 2i is sin(p / 10000^(2i/d))
    p, i = 5, 3
    assert a.pos.table[p, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(p / 10000 ** (2 * i / 32))).item(), abs=1e-6)


def test_rope_has_no_additive_positions_and_same_parameters():
    rope, base = _model(pos_embed="rope"), _model()
    assert rope.pos is None and rope.rope is not None
    assert set(rope.state_dict()) == set(base.state_dict())  # RoPE has no weights; the sinusoid table is not saved
    n = sum(p.numel() for p in rope.parameters())
    assert n == sum(p.numel() for p in base.parameters())
    learned = _model(pos_embed="learned")
    assert sum(p.numel() for p in learned.parameters()) == n + TINY["max_len"] * TINY["d_model"]


def test_bad_pos_embed_names_field_and_choices():
    with pytest.raises(ValueError, match=r"pos_embed.*'sinusoidal'.*'learned'.*'rope'.*'none'.*'alibi'"):
        _model(pos_embed="alibi")


def test_rope_needs_even_head_size():
    with pytest.raises(ValueError, match="pos_embed='rope'.*even head size"):
        _model(pos_embed="rope", d_model=12, num_heads=4)  # head size 3


class _Shifted(torch.nn.Module):
    """A rotary embedding that places the sequence at positions shift, shift+1, ... instead of 0, 1, ..."""

    def __init__(self, rope, shift):
        super().__init__()
        self.inner, self.shift = rope, shift

    def forward(self, x, offset=0):
        return self.inner(x, offset=offset + self.shift)


def _rotated_inputs(model, tokens):
    """Encoder outputs with the same tokens at positions 0..L-1 and 7..L+6."""
    rope, outs = model.rope, []
    for shift in (0, 7):
        model.rope = _Shifted(rope, shift)
        try:
            outs.append(model.encode(tokens))
        finally:
            model.rope = rope
    return outs


def test_rope_encoder_depends_only_on_relative_position():
    model = _model(pos_embed="rope")
    tokens = torch.randint(3, 50, (2, 9))
    a, b = _rotated_inputs(model, tokens)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # control: with sinusoids, moving the sequence to other absolute positions changes the output
    sin = _model()
    x = sin.src_embed(tokens) * sin.embed_scale
    at0 = sin.encoder(x + sin.pos(9, 0))
    at7 = sin.encoder(x + sin.pos(9, 7))
    assert (at0 - at7).abs().max() > 1e-2
    # and RoPE does carry order: permuting the source changes the encoder output beyond the permutation
    perm = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 8])
    assert (model.encode(tokens[:, perm])[:, perm] - a).abs().max() > 1e-3


def test_rope_scores_are_relative():
    """Rotating q at position m and k at position n gives q.k that depends only on m - n."""
    model = _model(pos_embed="rope")
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    rope = model.rope.__class__(8)
    score = lambda m, n: (rope(q, offset=m) * rope(k, offset=n)).sum().item()  # noqa: E731
    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_rope_cached_decoding_equals_full_recomputation():
    model = _model(pos_embed="rope")
    src = torch.randint(3, 50, (2, 7))
    tgt = torch.cat([torch.ones(2, 1, dtype=torch.long), torch.randint(3, 50, (2, 5))], dim=1)
    full = model(src, tgt)
    memory = model.encode(src)
    cache = KVCache()
    steps = [model.decode(tgt[:, :2], memory, cache=cache)]  # a two-token prefix, then one token at a time
    steps += [model.decode(tgt[:, t: t + 1], memory, cache=cache) for t in range(2, tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    cached = model.generate(src, max_new_tokens=12, ignore_eos=True)
    uncached = model.generate(src, max_new_tokens=12, ignore_eos=True, use_cache=False)
    assert torch.equal(cached, uncached)


def test_rope_decoder_offset_matters():
    """Decoding a token as if it were at position 0 (a wrong cache offset) gives other logits."""
    model = _model(pos_embed="rope")
    src, tgt = torch.randint(3, 50, (1, 6)), torch.tensor([[1, 7, 9, 11]])
    memory = model.encode(src)
    right = model.decode(tgt, memory)[:, -1]
    wrong = model.decode(tgt[:, -1:], memory)[:, -1]  # no past: position 0 instead of 3
    assert (right - wrong).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["learned", "none"])
def test_other_position_kinds_run_and_cache(kind):
    model = _model(pos_embed=kind)
    src = torch.randint(3, 50, (2, 6))
    assert torch.equal(model.generate(src, max_new_tokens=6, ignore_eos=True),
                       model.generate(src, max_new_tokens=6, ignore_eos=True, use_cache=False))


def test_to_hf_refuses_the_vanilla_family():
    from zoo.interop import to_hf
    with pytest.raises(ValueError, match="EncoderDecoderTransformer"):
        to_hf(_model(pos_embed="rope"), "unused")
