"""The recurrent causal-LM baseline (lstm_lm) and the unigram baseline of CausalLM's perplexity."""
import math

import pytest
import torch

import zoo
from zoo.tasks.text import next_token_targets, unigram_counts, unigram_perplexity


def test_unigram_perplexity_against_hand_computation():
    train = [{"input_ids": torch.tensor([[1, 3, 3, 4, 0], [1, 2, 0, 0, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])}]
    # scored targets (positions 1.., no padding): 3, 3, 4 and 2 -> counts [0, 0, 1, 2, 1], N = 4
    assert unigram_counts(train, 5).tolist() == [0, 0, 1, 2, 1]
    test = [{"input_ids": torch.tensor([[1, 3, 1, 4]]), "labels": torch.tensor([[1, 3, 1, -100]])}]
    assert next_token_targets(test[0]).tolist() == [3, 1]  # labels' -100 is not scored, the first token never
    # add-one over 5 tokens: p(3) = 3/9, p(1) = 1/9 -> ppl = exp(-(log 3/9 + log 1/9) / 2) = sqrt(27)
    assert unigram_perplexity(train, test, 5) == pytest.approx(math.sqrt(27), rel=1e-9)
    assert unigram_perplexity(train, test, 5, smoothing=0.5) == pytest.approx(
        math.exp(-(math.log(2.5 / 6.5) + math.log(0.5 / 6.5)) / 2), rel=1e-9)
    with pytest.raises(ValueError, match="no scored token"):
        unigram_perplexity(train, [{"input_ids": torch.tensor([[1]])}], 5)


def _model():
    torch.manual_seed(0)
    return zoo.create_model("lstm_lm", vocab_size=50, embed_dim=16, hidden_size=24).eval()


def test_lstm_lm_size_matches_gpt2_tiny():
    for vocab in (4000, 8000):
        lstm = sum(p.numel() for p in zoo.create_model("lstm_lm", vocab_size=vocab).parameters())
        gpt = sum(p.numel() for p in zoo.create_model("gpt2_tiny", vocab_size=vocab, max_positions=128).parameters())
        assert abs(lstm - gpt) / gpt < 0.01


def test_lstm_lm_is_causal_and_left_padding_gives_the_unpadded_logits():
    m = _model()
    ids = torch.randint(3, 50, (1, 7))
    with torch.no_grad():
        alone = m(ids)
        changed = ids.clone()
        changed[0, 5] = (ids[0, 5] + 1) % 47 + 3
        torch.testing.assert_close(m(changed)[:, :5], alone[:, :5])  # later tokens do not change earlier logits
        padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
        mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)], 1)
        torch.testing.assert_close(m(padded, mask)[:, 3:], alone)
        right = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
        torch.testing.assert_close(m(right, mask.flip(1))[:, :7], alone)


def test_lstm_lm_generate_with_state_cache_equals_recomputation():
    m = _model()
    ids = torch.randint(3, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    ids[0, :2], mask[0, :2] = 0, 0  # a left-padded prompt
    for beams in (1, 3):
        cached = m.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=beams, ignore_eos=True)
        full = m.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=beams, ignore_eos=True, use_cache=False)
        assert torch.equal(cached, full)
    alone = m.generate(ids[:1, 2:], max_new_tokens=5, ignore_eos=True)
    assert torch.equal(m.generate(ids, attention_mask=mask, max_new_tokens=5, ignore_eos=True)[:1, 2:], alone)
