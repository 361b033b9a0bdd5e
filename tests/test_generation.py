"""zoo.generation: cached decoding, greedy, beam search and sampling on tiny encoder-decoders."""
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from zoo.core import BlockConfig, KVCache, RotaryEmbedding, TransformerStack, decoder_padding_mask
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
    return _Setup.encoder_decoder(model.encode(src, mask), mask, cfg.decoder_start_token_id, cfg.pad_token_id, eos)


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


# -- decoder-only models ---------------------------------------------------------------------------

class TinyLM(GenerationMixin, nn.Module):
    """A decoder-only LM from the core: token embedding + positions, a causal TransformerStack and a
    head tied to the embedding. Learned positions count from each row's first real token
    (attention_mask.cumsum - 1), rotary ones from the first column (offsets are all that matter)."""

    def __init__(self, rotary: bool = False, vocab: int = V, dim: int = 32, heads: int = 4, max_len: int = 64):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab, pad_token_id=0, eos_token_id=2)
        self.embed = nn.Embedding(vocab, dim)
        self.pos = None if rotary else nn.Embedding(max_len, dim)
        self.rope = RotaryEmbedding(dim // heads) if rotary else None
        self.stack = TransformerStack(BlockConfig(dim, heads, 2 * dim), depth=2)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def decode(self, input_ids, cache=None, attention_mask=None):
        length = input_ids.shape[1]
        past = 0 if cache is None else cache.length(self.stack.blocks[0].attn.layer_id)
        x = self.embed(input_ids)
        if self.pos is not None:
            if attention_mask is None:
                pos = torch.arange(past, past + length, device=x.device)[None]
            else:
                pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
            x = x + self.pos(pos)
        mask = decoder_padding_mask(attention_mask, length)
        return self.head(self.stack(x, mask=mask, causal=True, rope=self.rope, cache=cache))


def tiny_lm(rotary):
    torch.manual_seed(0)
    return TinyLM(rotary).eval()


@pytest.fixture(params=[False, True], ids=["learned", "rotary"])
def lm(request):
    return tiny_lm(request.param)


def _prompts():
    """Three prompts of lengths 5, 3, 1, left-padded with 0 into one batch."""
    torch.manual_seed(2)
    rows = [torch.randint(3, V, (n,)) for n in (5, 3, 1)]
    ids, mask = torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 5 - len(r):], mask[i, 5 - len(r):] = r, 1
    return rows, ids, mask


def test_decoder_only_cached_logits_equal_full_recompute(lm):
    _, ids, mask = _prompts()
    cont = torch.randint(3, V, (3, 4))
    seq, seq_mask = torch.cat([ids, cont], 1), torch.cat([mask, torch.ones_like(cont)], 1)
    full = lm.decode(seq, attention_mask=seq_mask)
    cache = KVCache()
    steps = [lm.decode(ids, cache=cache, attention_mask=mask)]  # the prompt once, then one token at a time
    steps += [lm.decode(seq[:, t: t + 1], cache=cache, attention_mask=seq_mask[:, : t + 1]) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(full).all()


def test_decoder_only_greedy_equals_a_recomputing_loop(lm):
    _, ids, mask = _prompts()
    out = lm.generate(ids, attention_mask=mask, max_new_tokens=6, ignore_eos=True)
    assert out.shape == (3, 11) and torch.equal(out[:, :5], ids)  # the prompt, then the new tokens
    seq, seq_mask = ids, mask
    for _ in range(6):  # by hand: the whole sequence every step, argmax of the last position
        nxt = lm.decode(seq, attention_mask=seq_mask)[:, -1].argmax(-1, keepdim=True)
        seq, seq_mask = torch.cat([seq, nxt], 1), torch.cat([seq_mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_decoder_only_cache_gives_the_same_tokens(lm, num_beams):
    _, ids, mask = _prompts()
    kw = dict(attention_mask=mask, max_new_tokens=7, num_beams=num_beams, ignore_eos=True)
    with_cache = lm.generate(ids, use_cache=True, **kw)
    assert with_cache.shape == (3, 12) and torch.equal(with_cache[:, :5], ids)
    assert torch.equal(with_cache, lm.generate(ids, use_cache=False, **kw))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(lm, num_beams):
    rows, ids, mask = _prompts()
    batch = lm.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=num_beams, ignore_eos=True)
    scores = sequence_scores(lm, ids, batch, mask)
    for i, row in enumerate(rows):
        alone = lm.generate(row[None], max_new_tokens=6, num_beams=num_beams, ignore_eos=True)
        assert batch[i, 5 - len(row):].tolist() == alone[0].tolist()
        # the scores too: a random model often repeats tokens, a leak through the padding shows in the numbers
        torch.testing.assert_close(scores[i], sequence_scores(lm, row[None], alone)[0], atol=1e-5, rtol=1e-5)


def test_decoder_only_beam_search_scores_at_least_greedy(lm):
    _, ids, mask = _prompts()
    kw = dict(attention_mask=mask, max_new_tokens=6, ignore_eos=True)
    greedy, beam = lm.generate(ids, **kw), lm.generate(ids, num_beams=4, length_penalty=0.0, **kw)
    assert torch.equal(beam[:, :5], ids)
    g, b = sequence_scores(lm, ids, greedy, mask), sequence_scores(lm, ids, beam, mask)
    assert (b >= g - 1e-5).all()
    assert (b > g + 1e-4).any() or torch.equal(beam, greedy)


def test_decoder_only_beam_search_is_exhaustive_on_a_short_horizon():
    lm = tiny_lm(rotary=True)
    prompt = torch.randint(3, V, (1, 4))
    cands = torch.cat([prompt.expand(V * V, -1), torch.cartesian_prod(torch.arange(V), torch.arange(V))], 1)
    best = cands[sequence_scores(lm, prompt.expand(V * V, -1), cands).argmax()]
    out = lm.generate(prompt, max_new_tokens=2, num_beams=V, length_penalty=0.0, ignore_eos=True)
    assert out[0].tolist() == best.tolist()


def test_decoder_only_sampling_is_reproducible(lm):
    _, ids, mask = _prompts()
    greedy = lm.generate(ids, attention_mask=mask, max_new_tokens=8, ignore_eos=True)
    kw = dict(attention_mask=mask, max_new_tokens=8, ignore_eos=True, do_sample=True)
    assert torch.equal(lm.generate(ids, top_k=1, generator=torch.Generator().manual_seed(0), **kw), greedy)
    a = lm.generate(ids, temperature=5.0, generator=torch.Generator().manual_seed(3), **kw)
    b = lm.generate(ids, temperature=5.0, generator=torch.Generator().manual_seed(3), **kw)
    c = lm.generate(ids, temperature=5.0, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a, b) and torch.equal(a[:, :5], ids)
    assert not torch.equal(a, greedy) and not torch.equal(a, c)


def test_decoder_only_eos_pads_finished_rows():
    lm = tiny_lm(rotary=False)
    _, ids, mask = _prompts()
    free = lm.generate(ids, attention_mask=mask, max_new_tokens=8, ignore_eos=True)
    eos = free[0, 7].item()  # pretend a new token of row 0 is EOS
    out = lm.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=1)
    assert (out[0, 8:] == 1).all() and (free[0, 8:] != 1).any()
    for row, ref in zip(out, free):
        hit = (ref[5:] == eos).nonzero()
        end = 5 + (hit[0].item() + 1 if len(hit) else 8)
        assert torch.equal(row[:end], ref[:end]) and (row[end:] == 1).all()


def test_length_penalty_without_beams_is_accepted():
    lm = tiny_lm(rotary=False)
    _, ids, mask = _prompts()
    kw = dict(attention_mask=mask, max_new_tokens=4)
    assert torch.equal(lm.generate(ids, length_penalty=2.0, **kw), lm.generate(ids, **kw))


# -- argument validation: every refusal names the argument, the value and the fix -------------------

_IDS = torch.randint(3, V, (2, 4))
BAD_ARGUMENTS = [
    (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1, got 0; pass how many"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an int >= 1, got 2.5"),
    (dict(num_beams=0), "num_beams must be an int >= 1, got 0; num_beams=1 is greedy"),
    (dict(num_beams=2.0), "num_beams must be an int >= 1, got 2.0"),
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0, got 0.0; use do_sample=False"),
    (dict(do_sample=True, temperature=-1), "temperature must be > 0, got -1"),
    (dict(do_sample=True, top_k=-1), "top_k must be an int >= 0, got -1; top_k=0 keeps every token"),
    (dict(do_sample=True, top_k=2.0), "top_k must be an int >= 0, got 2.0"),
    (dict(do_sample=True, top_p=0.0), "top_p must be in (0, 1], got 0.0; top_p=1.0 keeps every token"),
    (dict(do_sample=True, top_p=1.5), "top_p must be in (0, 1], got 1.5"),
    (dict(num_beams=2, do_sample=True), "do_sample=True with num_beams=2: beam sampling is not supported"),
    (dict(temperature=0.7), "temperature=0.7 only applies to sampling but do_sample=False; pass do_sample=True"),
    (dict(top_k=5), "top_k=5 only applies to sampling but do_sample=False; pass do_sample=True"),
    (dict(top_p=0.9, num_beams=3), "top_p=0.9 only applies to sampling but do_sample=False; pass do_sample=True"),
    (dict(generator=torch.Generator()), "only applies to sampling but do_sample=False; pass do_sample=True"),
    (dict(attention_mask=torch.ones(3, 4)), "attention_mask has shape (3, 4) but inputs have shape (2, 4); pass the"),
    (dict(attention_mask=torch.ones(2, 5)), "attention_mask has shape (2, 5) but inputs have shape (2, 4)"),
    (dict(attention_mask=torch.ones(2)), "attention_mask has shape (2,) but inputs have shape (2, 4)"),
    (dict(attention_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])), "attention_mask rows [1] are all zeros"),
]
DECODER_ONLY_BAD_ARGUMENTS = [
    (dict(attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])), "pad decoder-only prompts on the left"),
    (dict(decoder_start_token_id=1), "decoder_start_token_id=1 only applies to encoder-decoders"),
    (dict(inputs=_IDS[0]), "generates from a prompt of token ids (batch, length >= 1), got inputs (4,)"),
    (dict(inputs=_IDS[:, :0]), "got inputs (2, 0); without a prompt, pass the BOS token"),
    (dict(inputs=_IDS.float()), "a decoder-only model generates from a prompt of token ids"),
]


@pytest.mark.parametrize("kwargs,message", BAD_ARGUMENTS + DECODER_ONLY_BAD_ARGUMENTS)
def test_decoder_only_generate_refuses_bad_arguments(kwargs, message):
    lm = tiny_lm(rotary=False)
    kwargs = {"inputs": _IDS, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        lm.generate(**kwargs)


@pytest.mark.parametrize("kwargs,message", BAD_ARGUMENTS)
def test_encoder_decoder_generate_refuses_bad_arguments(kwargs, message):
    model = tiny("pre")
    kwargs = {"inputs": _IDS, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        model.generate(**kwargs)


@pytest.mark.parametrize("name, field, start", [("gpt2_tiny", "max_positions", 5), ("transformer_tiny", "max_len", 1),
                                                ("vit_captioner_mnist", "max_len", 1)])
def test_generation_stops_at_the_decoders_positions_with_a_warning(name, field, start):
    import zoo

    model = zoo.create_model(name, **{field: 12}).eval()
    prompt = torch.randn(1, 1, 28, 28) if name.startswith("vit") else torch.randint(5, 50, (1, 5))
    with pytest.warns(UserWarning, match=rf"max_new_tokens=100 would take the decoder to {start + 100} positions, "
                                         rf"beyond the 12 that \w+ holds \({field}\); generating at most {12 - start}"):
        out = model.generate(prompt, max_new_tokens=100, ignore_eos=True)
    assert out.shape == (1, 12)
    torch.testing.assert_close(out, model.generate(prompt, max_new_tokens=12 - start, ignore_eos=True))  # same tokens


def test_transformers_keywords_name_the_inputs():
    """transformers' `generate(input_ids=..., attention_mask=...)` (and `pixel_values=` for images) was a TypeError:
    the inputs were positional only."""
    import zoo

    model = tiny("post").eval()
    src, mask = _src()
    kw = dict(attention_mask=mask, max_new_tokens=4, ignore_eos=True)
    assert torch.equal(model.generate(input_ids=src, **kw), model.generate(src, **kw))
    lm = tiny_lm(rotary=True)
    _, ids, lm_mask = _prompts()
    assert torch.equal(lm.generate(input_ids=ids, attention_mask=lm_mask, max_new_tokens=3),
                       lm.generate(ids, attention_mask=lm_mask, max_new_tokens=3))
    captioner = zoo.create_model("vit_captioner_mnist", depth=1, encoder_depth=1).eval()
    images = torch.randn(2, 1, 28, 28)
    assert torch.equal(captioner.generate(pixel_values=images, max_new_tokens=3), captioner.generate(images, max_new_tokens=3))
    with pytest.raises(ValueError, match="generate takes its inputs once, as inputs .*; got inputs, input_ids"):
        model.generate(src, input_ids=src)
    with pytest.raises(ValueError, match="generate takes its inputs once.*; got none"):
        model.generate(max_new_tokens=2)


@pytest.mark.parametrize("batch", [2, 3])
def test_a_list_of_eos_ids_ends_a_row_at_any_of_them(batch):
    """transformers takes eos_token_id=[a, b] (Llama 3's generation config has two): any of them ends a row. The list
    was compared with the batch element by element, row i against the i-th id (batch 2: silently wrong stops;
    batch 3: a broadcasting error)."""
    lm = tiny_lm(rotary=True)
    _, ids, mask = _prompts()
    ids, mask = ids[:batch], mask[:batch]
    free = lm.generate(ids, attention_mask=mask, max_new_tokens=6, ignore_eos=True)[:, 5:]
    eos = [int(free[1, 0]), int(free[0, 2])]  # row 1 stops at once, row 0 by its third token at the latest
    out = lm.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)[:, 5:]
    for row, ref in zip(out, free):
        hits = [t for t, tok in enumerate(ref.tolist()) if tok in eos]
        end = hits[0] + 1 if hits else len(ref)
        assert torch.equal(row[:end], ref[:end]) and (row[end:] == 0).all()
    assert out[1, 1:].eq(0).all() and out.shape[1] <= 3 + (batch == 3) * 3
    beams = lm.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=0, num_beams=3)[:, 5:]
    for row in beams.tolist():  # every hypothesis ends at its first EOS, whichever of the ids it is
        hits = [t for t, tok in enumerate(row) if tok in eos]
        assert not hits or all(tok == 0 for tok in row[hits[0] + 1:])
    single = dict(attention_mask=mask, max_new_tokens=6, pad_token_id=0)
    assert torch.equal(lm.generate(ids, eos_token_id=[eos[0]], **single), lm.generate(ids, eos_token_id=eos[0], **single))
    with pytest.raises(ValueError, match=r"eos_token_id must be a token id \(an int\) or a non-empty list of them, got \[\]"):
        lm.generate(ids, eos_token_id=[], **single)


@pytest.mark.parametrize("prompt_len, new, beams", [(12, 1, 1), (12, 3, 1), (12, 3, 2), (15, 1, 1)])
def test_a_prompt_that_leaves_no_position_free_is_refused_before_generating(prompt_len, new, beams):
    """A prompt as long as the decoder's positions failed one step into generation, naming a length the user never
    gave ("input_ids of 13 positions exceeds the model's maximum of 12 ... truncate the input (max_length=12)"), or
    with max_new_tokens=1 ran past the limit that generate keeps everywhere else (prompt + new tokens fit)."""
    import zoo

    model = zoo.create_model("gpt2_tiny", vocab_size=50, max_positions=12, dim=32, depth=1, num_heads=4).eval()
    prompt = torch.randint(3, 50, (2, prompt_len))
    with pytest.raises(ValueError, match=re.escape(
            f"the prompt is {prompt_len} tokens long and GPT holds 12 positions (max_positions): no room for a new token; "
            "pass at most 11 prompt tokens (e.g. its end, input_ids[:, -11:])")):
        model.generate(prompt, max_new_tokens=new, num_beams=beams)
    assert model.generate(prompt[:, -11:], max_new_tokens=new, num_beams=beams).shape == (2, 12)  # one new token fits


@pytest.mark.parametrize("temperature", [1e-39, 1e-44])
def test_a_tiny_temperature_samples_the_greedy_tokens(lm, temperature):
    """Sampling at a temperature near 0 is greedy decoding. Dividing the log-probabilities by a temperature under
    ~1e-38 turned every one into -inf (float32), and torch.multinomial failed: "probability tensor contains either
    `inf`, `nan` or element < 0"."""
    _, ids, mask = _prompts()
    greedy = lm.generate(ids, attention_mask=mask, max_new_tokens=6, ignore_eos=True)
    sampled = lm.generate(ids, attention_mask=mask, max_new_tokens=6, ignore_eos=True, do_sample=True,
                          temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, greedy)
