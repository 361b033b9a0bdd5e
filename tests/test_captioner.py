"""Image-to-text: the encoder–decoder contract, causality, cached decoding, generation and the recipe."""
import pytest
import torch

import zoo


def tiny():
    torch.manual_seed(0)
    m = zoo.create_model("vit_captioner_mnist", vocab_size=40, eos_token_id=2, decoder_start_token_id=1)
    return m.eval()


def test_forward_contract_and_causality():
    m = tiny()
    images, ids = torch.randn(2, 1, 28, 28), torch.randint(3, 40, (2, 6))
    logits = m(images, ids)
    assert logits.shape == (2, 6, 40)
    memory = m.encode(images)
    assert memory.shape == (2, 1 + 49, 96)
    torch.testing.assert_close(m.decode(ids, memory), logits)
    changed = ids.clone()
    changed[:, 4] = 7  # a later token cannot change earlier predictions
    out = m(images, changed)
    torch.testing.assert_close(out[:, :4], logits[:, :4])
    assert not torch.allclose(out[:, 4:], logits[:, 4:])
    other = m(torch.randn(2, 1, 28, 28), ids)  # the image matters (cross-attention)
    assert not torch.allclose(other, logits)
    assert m.lm_head.weight is m.token_embedding.weight


def test_cached_decoding_matches_full_decoding():
    from zoo.core import KVCache

    m = tiny()
    images, ids = torch.randn(2, 1, 28, 28), torch.randint(3, 40, (2, 5))
    memory = m.encode(images)
    full = m.decode(ids, memory)
    cache = KVCache()
    steps = [m.decode(ids[:, t:t + 1], memory, cache=cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_generate_is_greedy_argmax_and_stops_at_eos():
    m = tiny()
    images = torch.randn(3, 1, 28, 28)
    out = m.generate(images, max_new_tokens=6)
    assert out.shape[0] == 3 and (out[:, 0] == 1).all() and out.shape[1] <= 7
    # every generated token is the argmax of the model's next-token distribution given the prefix
    for b in range(3):
        row = out[b].tolist()
        for t in range(1, len(row)):
            if row[t - 1] == 2 or (t > 1 and 2 in row[1:t]):
                assert row[t] == 0  # after EOS: padding
                continue
            nxt = m(images[b:b + 1], torch.tensor([row[:t]]))[0, -1].argmax().item()
            assert row[t] == nxt
    assert m.generate(images, max_new_tokens=6, use_cache=False).tolist() == out.tolist()
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(images, max_new_tokens=0)


def test_caption_data_shift_and_targets():
    from zoo.data.multimodal import CAPTION_TEMPLATES, MNISTCaptioning

    dm = MNISTCaptioning(batch_size=4, augment=False)
    batch = dm.on_after_batch_transfer((torch.zeros(3, 1, 28, 28), torch.tensor([7, 0, 3])), 0)
    tok = dm.tokenizer
    # evaluation batches are English: decoder input = <en> + caption, targets = caption + </s>
    assert (batch["decoder_input_ids"][:, 0] == tok.convert_tokens_to_ids("<en>")).all()
    targets = batch["targets"][0]
    text = tok.decode(targets[targets != -100].tolist(), skip_special_tokens=True)
    assert text == CAPTION_TEMPLATES["en"].format("seven")
    valid = batch["targets"] != -100
    torch.testing.assert_close(batch["decoder_input_ids"][:, 1:][valid[:, :-1]], batch["targets"][:, :-1][valid[:, :-1]])
    assert dm.model_overrides["vocab_size"] == len(tok) and dm.model_overrides["eos_token_id"] == tok.eos_token_id
