"""zoo.generation: cached decoding, greedy, beam search and sampling on tiny encoder-decoders."""
import pytest
import torch
from torch import nn

from zoo.core import KVCache
from zoo.generation import GenerationMixin, _filter_logits, _Setup, beam_search, greedy_search, sequence_scores
from test_encoder_decoder import TINY, V, tiny  # noqa: F401




@pytest.fixture(params=list(TINY))
def model(request):
    return tiny(request.param)


def _src():
    torch.manual_seed(1)
    src = torch.randint(3, V, (3, 7))
    mask = torch.ones_like(src)
    mask[1, 5:], mask[2, 3:] = 0, 0
    return src, mask


def _setup(model, src, mask, eos=None):
    cfg = model.config
    return _Setup(model.encode(src, mask), mask, cfg.decoder_start_token_id, cfg.pad_token_id, eos)


def test_cached_logits_equal_full_recompute(model):
    src, mask = _src()
    tgt = torch.randint(3, V, (3, 9))
    memory = model.encode(src, mask)
    full = model.decode(tgt, memory, memory_mask=mask)
    cache = KVCache()
    steps = [model.decode(tgt[:, :4], memory, memory_mask=mask, cache=cache)]  # a prompt, then one token at a time
    steps += [model.decode(tgt[:, t: t + 1], memory, memory_mask=mask, cache=cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length(model.decoder.blocks[0].attn.layer_id) == 9


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cache_gives_the_same_tokens(model, num_beams):
    src, mask = _src()
    kw = dict(attention_mask=mask, max_new_tokens=12, num_beams=num_beams, ignore_eos=True)
    with_cache = model.generate(src, use_cache=True, **kw)
    assert with_cache.shape == (3, 13)
    assert torch.equal(with_cache, model.generate(src, use_cache=False, **kw))


def test_output_format_and_eos_padding():
    model = tiny("post")
    src, mask = _src()
    free = model.generate(src, attention_mask=mask, max_new_tokens=8, ignore_eos=True)
    assert (free[:, 0] == model.config.decoder_start_token_id).all()
    eos = free[0, 3].item()  # pretend the 3rd generated token of row 0 is EOS
    out = model.generate(src, attention_mask=mask, max_new_tokens=8, eos_token_id=eos)
    for row, ref in zip(out, free):
        hit = (ref[1:] == eos).nonzero()
        if len(hit) == 0:
            assert torch.equal(row[: len(ref)], ref)
            continue
        end = hit[0].item() + 2  # start token + tokens up to and including EOS
        assert torch.equal(row[:end], ref[:end])
        assert (row[end:] == model.config.pad_token_id).all()
    assert (out[0, 5:] == model.config.pad_token_id).all() and out.shape[1] <= free.shape[1]
    assert torch.equal(model.generate(src, attention_mask=mask, max_new_tokens=8, eos_token_id=eos, ignore_eos=True), free)


def test_one_beam_equals_greedy(model):
    src, mask = _src()
    free = greedy_search(model, _setup(model, src, mask), max_new_tokens=10)
    for eos in (None, free[1, 4].item()):  # also with an EOS that row 1 emits at step 4
        setup = _setup(model, src, mask, eos)
        greedy = greedy_search(model, setup, max_new_tokens=10)
        beam = beam_search(model, setup, max_new_tokens=10, num_beams=1)
        assert torch.equal(beam, greedy[:, : beam.shape[1]])
        assert (greedy[:, beam.shape[1]:] == model.config.pad_token_id).all()


def test_beam_search_scores_at_least_greedy(model):
    src, mask = _src()
    eos = model.config.eos_token_id
    greedy = model.generate(src, attention_mask=mask, max_new_tokens=10, eos_token_id=eos)
    beam = model.generate(src, attention_mask=mask, max_new_tokens=10, num_beams=4, length_penalty=0.0, eos_token_id=eos)
    g = sequence_scores(model, src, greedy, mask, eos)
    b = sequence_scores(model, src, beam, mask, eos)
    assert (b >= g - 1e-5).all()
    assert (b > g + 1e-4).any() or torch.equal(beam, greedy[:, : beam.shape[1]])


def test_beam_search_finds_the_exact_best_on_a_short_horizon():
    """With 2 new tokens and beams = vocab, beam search is exhaustive: compare with brute force."""
    model = tiny("t5", vocab_size=12)
    src = torch.randint(3, 12, (1, 5))
    start = model.config.decoder_start_token_id
    cands = torch.tensor([[start, a, b] for a in range(12) for b in range(12)])
    scores = sequence_scores(model, src.expand(len(cands), -1), cands)
    best = cands[scores.argmax()]
    out = model.generate(src, max_new_tokens=2, num_beams=12, length_penalty=0.0, ignore_eos=True)
    assert out[0].tolist() == best.tolist()


def test_sampling(model):
    src, mask = _src()
    greedy = model.generate(src, attention_mask=mask, max_new_tokens=8)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(src, attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=1, generator=gen), greedy)
    assert torch.equal(model.generate(src, attention_mask=mask, max_new_tokens=8, do_sample=True, top_p=1e-6, generator=gen), greedy)
    a = model.generate(src, attention_mask=mask, max_new_tokens=8, do_sample=True, temperature=5.0,
                       generator=torch.Generator().manual_seed(3))
    b = model.generate(src, attention_mask=mask, max_new_tokens=8, do_sample=True, temperature=5.0,
                       generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)  # a seeded generator reproduces the sample
    assert not torch.equal(a[:, : greedy.shape[1]], greedy)  # hot sampling leaves the greedy path


def test_filter_logits():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]]).log()  # probabilities 0.4, 0.3, 0.2, 0.1
    assert torch.isinf(_filter_logits(logits, top_k=2, top_p=None)).tolist() == [[False, False, True, True]]
    assert torch.isinf(_filter_logits(logits, top_k=None, top_p=0.65)).tolist() == [[False, False, True, True]]
    assert torch.isinf(_filter_logits(logits, top_k=None, top_p=0.75)).tolist() == [[False, False, False, True]]
    assert torch.isinf(_filter_logits(logits, top_k=None, top_p=0.1)).tolist() == [[False, True, True, True]]


def test_bad_arguments_raise():
    model = tiny("post")
    src = torch.randint(3, V, (1, 4))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(src, max_new_tokens=0)
    with pytest.raises(ValueError, match="beam sampling"):
        model.generate(src, num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(src, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(src, do_sample=True, top_p=1.5)


class _ImageCaptioner(GenerationMixin, nn.Module):
    """An encoder that takes images instead of token ids: generate must hand them to encode as-is."""

    def __init__(self, text_model):
        super().__init__()
        self.text, self.config = text_model, text_model.config
        self.patch = nn.Linear(4 * 4, text_model.config.d_model)

    def encode(self, images):
        return self.patch(images.unfold(2, 4, 4).unfold(3, 4, 4).flatten(-2).flatten(1, 3))

    def decode(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None, cache=None):
        return self.text.decode(decoder_input_ids, memory, memory_mask, decoder_attention_mask, cache)


def test_generate_passes_non_text_inputs_to_encode():
    model = _ImageCaptioner(tiny("post")).eval()
    images = torch.randn(2, 1, 8, 8)
    out = model.generate(images, max_new_tokens=6, num_beams=2, ignore_eos=True)
    assert out.shape == (2, 7)
    assert torch.equal(model.generate(images, max_new_tokens=6, ignore_eos=True, use_cache=False),
                       model.generate(images, max_new_tokens=6, ignore_eos=True))
