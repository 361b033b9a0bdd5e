"""Recurrent (Bahdanau) encoder–decoders: contract, padding, causality, cache, learning."""
import pytest
import torch

import zoo
from zoo.core import KVCache

TINY = dict(vocab_size=40, embed_dim=16, hidden_size=24, attn_dim=20, dropout=0.0)


def _model(name, **kw):
    torch.manual_seed(0)
    return zoo.create_model(name, **{**TINY, **kw}).eval()


@pytest.mark.parametrize("name", ["lstm_seq2seq", "gru_seq2seq"])
def test_shapes_and_contract(name):
    m = _model(name, num_encoder_layers=2, num_decoder_layers=2)
    src, tgt = torch.randint(3, 40, (3, 7)), torch.randint(3, 40, (3, 5))
    assert m(src, tgt).shape == (3, 5, 40)
    assert m.encode(src).shape == (3, 7, 48)  # bidirectional: 2 x hidden
    assert m.forward_features(src, tgt).shape == (3, 5, 16)
    assert zoo.model_info(name, **TINY, num_encoder_layers=2, num_decoder_layers=2)["params"] == sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())
    assert zoo.model_info(name)["family"] == "recurrent"


@pytest.mark.parametrize("name", ["lstm_seq2seq", "gru_seq2seq"])
def test_encoder_is_padding_invariant(name):
    m = _model(name, num_encoder_layers=2)
    short = torch.randint(3, 40, (1, 4))
    padded = torch.cat([short, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    alone = m.encode(short)
    in_batch = m.encode(torch.cat([padded, torch.randint(3, 40, (1, 7))]), torch.cat([mask, torch.ones(1, 7, dtype=torch.long)]))
    torch.testing.assert_close(in_batch[:1, :4], alone, atol=1e-6, rtol=1e-5)
    assert in_batch[0, 4:].abs().max() == 0  # padded annotations are zero and masked in attention
    tgt = torch.randint(3, 40, (1, 5))
    torch.testing.assert_close(m(padded, tgt, attention_mask=mask), m(short, tgt), atol=1e-6, rtol=1e-5)


def test_left_padding_and_empty_rows_are_rejected():
    m = _model("gru_seq2seq")
    src = torch.randint(3, 40, (2, 4))
    with pytest.raises(ValueError, match="right padding"):
        m.encode(src, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="all padding"):
        m.encode(src, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="unknown cell"):
        zoo.create_model("gru_seq2seq", cell="transformer")


@pytest.mark.parametrize("name", ["lstm_seq2seq", "gru_seq2seq"])
def test_decoder_is_causal_and_cache_matches_full_pass(name):
    m = _model(name, num_decoder_layers=2)
    src, tgt = torch.randint(3, 40, (2, 6)), torch.randint(3, 40, (2, 6))
    full = m(src, tgt)
    changed = tgt.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 40
    torch.testing.assert_close(m(src, changed)[:, :4], full[:, :4])  # the future does not leak backwards
    assert not torch.allclose(m(src, changed)[:, 4:], full[:, 4:])
    memory, cache = m.encode(src), KVCache()
    steps = [m.decode(tgt[:, t:t + 1], memory, cache=cache) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=1e-5)


def test_generate_with_and_without_cache_and_beams():
    m = _model("lstm_seq2seq")
    src = torch.randint(3, 40, (3, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    fast = m.generate(src, attention_mask=mask, max_new_tokens=8, eos_token_id=-1)
    slow = m.generate(src, attention_mask=mask, max_new_tokens=8, use_cache=False, eos_token_id=-1)
    assert fast.shape == (3, 9) and torch.equal(fast, slow)
    # beam search reorders the cached states: the result must equal beam search without a cache
    beams = m.generate(src, attention_mask=mask, max_new_tokens=8, num_beams=3, eos_token_id=-1)
    assert torch.equal(beams, m.generate(src, attention_mask=mask, max_new_tokens=8, num_beams=3, eos_token_id=-1, use_cache=False))


@pytest.mark.parametrize("name", ["lstm_seq2seq", "gru_seq2seq"])
def test_overfits_a_few_reversed_sequences(name):
    """8 random sequences -> their reversal: teacher forcing to near-zero loss, then exact greedy output."""
    torch.manual_seed(0)
    m = zoo.create_model(name, **{**TINY, "hidden_size": 48, "attn_dim": 32, "embed_dim": 24})
    src = torch.randint(3, 40, (8, 5))
    labels = torch.cat([src.flip(1), torch.full((8, 1), 2)], 1)  # reversed, then EOS
    dec_in = torch.cat([torch.full((8, 1), 1), labels[:, :-1]], 1)  # shift right after BOS
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(m(src, dec_in).flatten(0, 1), labels.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    out = m.eval().generate(src, max_new_tokens=6)
    assert torch.equal(out[:, 1:], labels)
