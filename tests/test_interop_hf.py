"""transformers <-> zoo: outputs of converted models against the reference (random weights, nothing downloaded).

Contract: float32, eval, padded batches of unequal lengths, only non-padded positions compared,
max|diff| <= 1e-4 * max(1, max|ref|); float64 agreement <= 1e-9 (HF sdpa backend).
"""
import json

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

import zoo
from zoo.interop import from_hf, to_hf
from zoo.models.t5 import T5Encoder
from zoo.weights import StateDictMismatch




def assert_parity(out, ref, keep=None, tol=1e-4):
    out, ref = out.detach(), ref.detach()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if keep is not None:
        out, ref = out[keep.bool()], ref[keep.bool()]
    bound = tol * max(1.0, ref.abs().max().item())
    err = (out - ref).abs().max().item()
    assert err <= bound, f"max|diff| {err:.3g} > {bound:.3g}"
    return err


def text_batch(vocab, b=3, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    for i in range(1, b):  # unequal lengths: row i loses 2*i trailing tokens
        mask[i, length - 2 * i:] = 0
    return ids, mask


# ---------------------------------------------------------------------------------------------- BERT
BERT_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=64, num_labels=3)


def bert_outputs(ref, model, ids, mask, types):
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        feats, out = model.forward_features(ids, mask, types), model(ids, mask, types)
    head = r.logits if hasattr(r, "logits") else r.pooler_output
    return r.hidden_states[-1], feats, head, out


@pytest.mark.parametrize("cls,head", [(T.BertModel, "cls"), (T.BertForMaskedLM, "mlm"),
                                      (T.BertForSequenceClassification, "cls")])
@pytest.mark.parametrize("from_dir", [False, True])
def test_bert_parity(cls, head, from_dir, tmp_path):
    torch.manual_seed(0)
    ref = cls(T.BertConfig(**BERT_TINY, hidden_act="gelu_new", layer_norm_eps=1e-7)).eval()
    if from_dir:
        ref.save_pretrained(tmp_path)
    model = from_hf(tmp_path if from_dir else ref)
    assert model.config.head == head and model.config.norm_eps == 1e-7 and model.config.activation == "gelu_tanh"
    ids, mask = text_batch(99)
    types = (torch.arange(9) >= 4).long().expand(3, 9)
    hid, feats, head_ref, out = bert_outputs(ref, model, ids, mask, types)
    assert_parity(feats, hid, mask)
    assert_parity(out, head_ref, mask if out.dim() == 3 else None)
    # float64: a structural check, rounding can not hide a bug here
    hid, feats, head_ref, out = bert_outputs(ref.double(), model.double(), ids, mask, types)
    assert_parity(out, head_ref, mask if out.dim() == 3 else None, tol=1e-9)


def test_bert_pretraining_checkpoint_with_legacy_names(tmp_path):
    """gamma/beta names, the NSP head and position_ids buffers load, as in transformers."""
    torch.manual_seed(0)
    ref = T.BertForPreTraining(T.BertConfig(**BERT_TINY)).eval()
    ref.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in sd.items()}
    sd["bert.embeddings.position_ids"] = torch.arange(64)[None]
    save_file(sd, tmp_path / "model.safetensors")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["BertForMaskedLM"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = from_hf(tmp_path)
    ids, mask = text_batch(99)
    with torch.no_grad():
        ref_logits = ref(input_ids=ids, attention_mask=mask).prediction_logits
        assert_parity(model(ids, mask), ref_logits, mask)
    assert model.mlm_head.decoder.weight is model.embeddings.word_embeddings.weight



@pytest.mark.parametrize("from_dir", [False, True])
def test_bert_mlm_with_untied_decoder_is_refused(from_dir, tmp_path):
    """tie_word_embeddings=False gives BertForMaskedLM its own decoder weight; zoo's MLM head is tied, and the converter
    silently replaced the decoder by the word embeddings (logits off by 0.7 on a tiny model)."""
    torch.manual_seed(0)
    ref = T.BertForMaskedLM(T.BertConfig(**BERT_TINY, tie_word_embeddings=False)).eval()
    assert not torch.equal(ref.cls.predictions.decoder.weight, ref.bert.embeddings.word_embeddings.weight)
    if from_dir:
        ref.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"MLM decoder differs from its word embeddings \(tie_word_embeddings=False\)"):
        from_hf(tmp_path if from_dir else ref)


# ------------------------------------------------------------------------------------------------ T5
T5_TINY = dict(vocab_size=50, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_decoder_layers=3, num_heads=2,
               relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0)
V11 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def t5_ref(version, cls=T.T5ForConditionalGeneration, untie=True):
    torch.manual_seed(0)
    ref = cls(T.T5Config(**T5_TINY, **(V11 if version == "1.1" else {}))).eval()
    if untie and version == "1.1" and hasattr(ref, "lm_head"):
        # HF 5.24 ties lm_head even for v1.1 configs built without a checkpoint; untie like a hub checkpoint
        ref.lm_head.weight = torch.nn.Parameter(torch.randn(50, 16))
    return ref


def t5_inputs():
    ids, mask = text_batch(50, length=11, seed=1)
    dids, dmask = text_batch(50, length=7, seed=2)
    return ids, mask, dids, dmask.flip(0)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
@pytest.mark.parametrize("from_dir", [False, True])
def test_t5_conditional_generation_parity(version, from_dir, tmp_path):
    ref = t5_ref(version)
    if from_dir:
        ref.save_pretrained(tmp_path)
    model = from_hf(tmp_path if from_dir else ref)
    assert model.output_scale == (16 ** -0.5 if version == "1.0" else 1.0)
    assert (model.lm_head.weight is model.shared.weight) == (version == "1.0")
    ids, mask, dids, dmask = t5_inputs()
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        ref, model = ref.to(dtype), model.to(dtype)
        with torch.no_grad():
            r = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dids, decoder_attention_mask=dmask,
                    output_hidden_states=True)
            assert_parity(model.encode(ids, mask), r.encoder_last_hidden_state, mask, tol)
            assert_parity(model.forward_features(ids, dids, mask, dmask), r.decoder_hidden_states[-1], dmask, tol)
            assert_parity(model(ids, dids, mask, dmask), r.logits, dmask, tol)


def test_t5_v11_config_built_is_tied_without_scaling():
    """A v1.1 model built from a config: HF ties lm_head to shared but does not rescale; so must zoo."""
    ref = t5_ref("1.1", untie=False)
    assert ref.lm_head.weight is ref.shared.weight
    model = from_hf(ref)
    assert model.lm_head.weight is model.shared.weight and model.output_scale == 1.0
    ids, mask, dids, dmask = t5_inputs()
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dids, decoder_attention_mask=dmask).logits
        assert_parity(model(ids, dids, mask, dmask), r, dmask)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_t5_model_and_encoder_model(version):
    ids, mask, dids, dmask = t5_inputs()
    ref = t5_ref(version, T.T5Model)
    model = from_hf(ref)
    assert not model.encoder_only
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dids, decoder_attention_mask=dmask)
        assert_parity(model.forward_features(ids, dids, mask, dmask), r.last_hidden_state, dmask)
    enc = t5_ref(version, T.T5EncoderModel)
    model = from_hf(enc)
    assert isinstance(model, T5Encoder) and model.encoder_only and model.decoder is None and model.lm_head is None
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        enc, model = enc.to(dtype), model.to(dtype)
        with torch.no_grad():
            ref = enc(input_ids=ids, attention_mask=mask).last_hidden_state
            assert_parity(model.forward_features(ids, mask), ref, mask, tol)
            assert_parity(model(ids, mask), ref, mask, tol)
            assert_parity(model.encode(ids, mask), ref, mask, tol)


def test_t5_encoder_model_round_trip(tmp_path):
    """from_hf(T5EncoderModel) -> T5Encoder -> to_hf writes a T5EncoderModel with the same outputs."""
    enc = t5_ref("1.1", T.T5EncoderModel)
    model = from_hf(enc)
    to_hf(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["T5EncoderModel"]
    back = T.T5EncoderModel.from_pretrained(tmp_path).eval()
    ids, mask, _, _ = t5_inputs()
    with torch.no_grad():
        assert_parity(back(input_ids=ids, attention_mask=mask).last_hidden_state, model(ids, mask), mask, 1e-5)
        assert torch.equal(from_hf(tmp_path)(ids, mask), model(ids, mask))
    with pytest.raises(TypeError, match="encoder-only"):
        model.generate(ids)


# ----------------------------------------------------------------------------------------------- ViT
VIT_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
                patch_size=8, num_labels=5)


@pytest.mark.parametrize("cls", [T.ViTModel, T.ViTForImageClassification])
@pytest.mark.parametrize("from_dir", [False, True])
def test_vit_parity(cls, from_dir, tmp_path):
    torch.manual_seed(0)
    ref = cls(T.ViTConfig(**VIT_TINY, layer_norm_eps=1e-6)).eval()
    if from_dir:  # on disk: hub names (encoder.layer.i.attention.attention.query ...)
        ref.save_pretrained(tmp_path)
        assert any(".attention.attention.query." in k for k in load_file(tmp_path / "model.safetensors"))
    else:  # in memory: v5 names (layers.i.attention.q_proj ...)
        assert any(".attention.q_proj." in k for k in ref.state_dict())
    model = from_hf(tmp_path if from_dir else ref)
    assert model.config.norm_eps == 1e-6
    x = torch.randn(2, 3, 32, 32)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        ref, model = ref.to(dtype), model.to(dtype)
        with torch.no_grad():
            r = ref(x.to(dtype))
            assert_parity(model.forward_features(x.to(dtype)), r.last_hidden_state if cls is T.ViTModel else
                          ref.vit(x.to(dtype)).last_hidden_state, tol=tol)
            if cls is T.ViTForImageClassification:
                assert_parity(model(x.to(dtype)), r.logits, tol=tol)
            else:  # the pooler (dense + tanh on the class token) was dropped: model(x) gave the class token itself
                assert_parity(model(x.to(dtype)), r.pooler_output, tol=tol)


# -------------------------------------------------------------------------------------------- Marian
@pytest.mark.parametrize("from_dir", [False, True])
def test_marian_parity(from_dir, tmp_path):
    torch.manual_seed(0)
    ref = T.MarianMTModel(T.MarianConfig(
        vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=32, pad_token_id=49,
        decoder_start_token_id=49, eos_token_id=0, activation_function="swish")).eval()
    if from_dir:
        ref.save_pretrained(tmp_path)
    model = from_hf(tmp_path if from_dir else ref)
    c = model.config
    assert (c.activation, c.sinusoid_layout, c.final_norm, c.pad_token_id) == ("silu", "halves", False, 49)
    ids, mask, dids, dmask = t5_inputs()
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        ref, model = ref.to(dtype), model.to(dtype)
        with torch.no_grad():
            r = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dids, decoder_attention_mask=dmask)
            assert_parity(model.encode(ids, mask), r.encoder_last_hidden_state, mask, tol)
            assert_parity(model(ids, dids, mask, dmask), r.logits, dmask, tol)


MARIAN_TINY = dict(vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
                   decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=32,
                   pad_token_id=49, decoder_start_token_id=49, eos_token_id=0, activation_function="swish")


def zoo_greedy(model, ids, mask, max_new_tokens):
    """Greedy decoding through the model's generation hook, as zoo.generation is to call it:
    scores = model.process_next_token_logits(log_softmax(logits), tokens.shape[1], 1 + max_new_tokens)."""
    memory = model.encode(ids, mask)
    tokens = torch.full((ids.shape[0], 1), model.config.decoder_start_token_id)
    for _ in range(max_new_tokens):
        logp = model.decode(tokens, memory, memory_mask=mask)[:, -1].float().log_softmax(-1)
        logp = model.process_next_token_logits(logp, tokens.shape[1], 1 + max_new_tokens)
        tokens = torch.cat([tokens, logp.argmax(-1, keepdim=True)], dim=1)
    return tokens


def hf_greedy(ref, ids, mask, max_new_tokens):
    return ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)


def marian_ref(likely_pad: bool = False):
    torch.manual_seed(0)
    ref = T.MarianMTModel(T.MarianConfig(**MARIAN_TINY)).eval()
    if likely_pad:  # pad's row (zeros at init) made a scaled copy of a frequent token's: the output layer is tied
        with torch.no_grad():
            ref.model.shared.weight[49] = 3 * ref.model.shared.weight[33]
    return ref


@pytest.mark.parametrize("from_dir", [False, True])
def test_marian_forced_eos_matches_transformers_greedy(from_dir, tmp_path):
    """transformers forces EOS as the last token the length limit allows (forced_eos_token_id); so must zoo."""
    ref = marian_ref()
    if from_dir:
        ref.save_pretrained(tmp_path)
    model = from_hf(tmp_path if from_dir else ref)
    assert model.config.forced_eos_token_id == 0 and model.config.suppress_token_ids == ()
    ids, mask = text_batch(49, b=3, length=9)
    with torch.no_grad():
        for n in (1, 3, 6, 9):
            expected = hf_greedy(ref, ids, mask, n)
            got = zoo_greedy(model, ids, mask, n)
            finished = (got == 0).cumsum(1) - (got == 0).long() > 0  # zoo pads after EOS on its own
            assert torch.equal(got.masked_fill(finished, 49), expected), n
            assert (expected[:, -1] == 0).all() or n < expected.shape[1] - 1


@pytest.mark.parametrize("from_dir", [False, True])
def test_marian_bad_words_never_generated(from_dir, tmp_path):
    """OPUS-MT configs carry bad_words_ids=[[pad]]: the pad id is never generated, as in transformers."""
    ref = marian_ref(likely_pad=True)
    with torch.no_grad():
        plain = hf_greedy(ref, *text_batch(49, b=3, length=9), 6)
    assert (plain[:, 1:] == 49).any()  # without the rule pad would be generated
    ref.generation_config.bad_words_ids = [[49]]
    if from_dir:
        ref.save_pretrained(tmp_path)
    model = from_hf(tmp_path if from_dir else ref)
    assert model.config.suppress_token_ids == (49,)
    ids, mask = text_batch(49, b=3, length=9)
    with torch.no_grad():
        got, expected = zoo_greedy(model, ids, mask, 6), hf_greedy(ref, ids, mask, 6)
    assert not (got[:, 1:] == 49).any()
    assert torch.equal(got, expected)


def test_marian_generate_honours_forced_eos():
    """zoo.generation applies the converted rules once it calls `process_next_token_logits`."""
    ref = marian_ref()
    model = from_hf(ref)
    calls = []
    hook = model.process_next_token_logits
    model.process_next_token_logits = lambda *a: calls.append(a[1:]) or hook(*a)
    ids, mask = text_batch(49, b=3, length=9)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6)
    if not calls:
        pytest.skip("zoo.generation does not call model.process_next_token_logits yet")
    assert calls[-1] == (6, 7)
    with torch.no_grad():
        assert torch.equal(out, hf_greedy(ref, ids, mask, 6))


def test_marian_unsupported_generation_rules_are_named():
    ref = marian_ref()
    ref.generation_config.bad_words_ids = [[3, 4]]
    with pytest.raises(ValueError, match="multi-token"):
        from_hf(ref)



@pytest.mark.parametrize("tables", ["separate", "equal"])
@pytest.mark.parametrize("from_dir", [False, True])
def test_marian_untied_output_layer(tables, from_dir, tmp_path):
    """tie_word_embeddings=False: transformers 5 ties nothing, so the source and target tables may differ ('separate')
    and the output layer is its own even where both tables are equal ('equal', as a hub checkpoint). The converter
    built one shared table (the target one overwrote the source one) and tied the output layer to it."""
    torch.manual_seed(0)
    ref = T.MarianMTModel(T.MarianConfig(**MARIAN_TINY, tie_word_embeddings=False)).eval()
    if tables == "equal":
        with torch.no_grad():
            ref.model.encoder.embed_tokens.weight.copy_(ref.model.shared.weight)
            ref.model.decoder.embed_tokens.weight.copy_(ref.model.shared.weight)
    if from_dir:
        ref.save_pretrained(tmp_path)
    model = from_hf(tmp_path if from_dir else ref)
    assert model.lm_head.weight is not model.tgt_embed.weight
    ids, mask, dids, dmask = t5_inputs()
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dids, decoder_attention_mask=dmask)
        assert_parity(model.encode(ids, mask), r.encoder_last_hidden_state, mask)
        assert_parity(model(ids, dids, mask, dmask), r.logits, dmask)
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=2),
                           ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, num_beams=2, do_sample=False))


# ---------------------------------------------------------------------------------------------- CLIP
def clip_ref():
    """A small CLIPModel with random weights: text EOS 98, BOS 97, pad 0; 32x32 images in 8x8 patches."""
    return T.CLIPModel(T.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=16, eos_token_id=98, bos_token_id=97, pad_token_id=0),
        vision_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8), projection_dim=24)).eval()


def test_clip_parity():
    torch.manual_seed(0)
    ref = clip_ref()
    model = from_hf(ref)
    assert model.config.eos_token_id == 98 and model.config.activation == "quick_gelu"
    ids, mask = text_batch(97, b=3, length=10)
    lengths = mask.sum(1)
    ids[torch.arange(3), lengths - 1] = 98  # end-of-text token, then padding
    ids[mask == 0] = 0
    x = torch.randn(2, 3, 32, 32)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        ref, model = ref.to(dtype), model.to(dtype)
        with torch.no_grad():
            r = ref(input_ids=ids, attention_mask=mask, pixel_values=x.to(dtype))
            assert_parity(model.text.forward_features(ids, mask), r.text_model_output.last_hidden_state, mask, tol)
            assert_parity(model.encode_image(x.to(dtype)), r.image_embeds, tol=tol)
            assert_parity(model.encode_text(ids, mask), r.text_embeds, tol=tol)
            assert_parity(model(x.to(dtype), ids, mask), r.logits_per_image, tol=tol)



@pytest.mark.parametrize("logit_scale", [4.6052, 5.0])
def test_clip_logit_scale_is_not_clamped(logit_scale):
    """CLIPModel multiplies by exp(logit_scale) as stored; OpenAI's checkpoints hold 4.6052 (> ln 100) and fine-tuned
    ones more. The converted model clamped exp(logit_scale) at 100: logits off by 3e-5 relative at 4.6052, by 8 at 5."""
    torch.manual_seed(0)
    ref = clip_ref()
    with torch.no_grad():
        ref.logit_scale.fill_(logit_scale)
    model = from_hf(ref)
    ids, mask = text_batch(97, b=3, length=10)
    ids[torch.arange(3), mask.sum(1) - 1] = 98
    ids[mask == 0] = 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, pixel_values=x)
        assert_parity(model(x, ids, mask), r.logits_per_image, tol=1e-5)


def test_vit_other_image_size_matches_hf_interpolation():
    """zoo resizes positions like HF's interpolate_pos_encoding (bicubic, no antialias)."""
    torch.manual_seed(0)
    ref = T.ViTModel(T.ViTConfig(**VIT_TINY)).eval()
    model = from_hf(ref)
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        assert_parity(model.forward_features(x), ref(x, interpolate_pos_encoding=True).last_hidden_state)


def test_bert_model_without_pooler_maps_to_head_none():
    torch.manual_seed(0)
    ref = T.BertModel(T.BertConfig(**BERT_TINY), add_pooling_layer=False).eval()
    model = from_hf(ref)
    assert model.config.head == "none"
    ids, mask = text_batch(99)
    with torch.no_grad():
        assert_parity(model(ids, mask), ref(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


# ---------------------------------------------------------------------------------------- round trips
def _roundtrip(model, hf_cls, tmp_path, call_zoo, call_hf):
    model.eval()
    to_hf(model, tmp_path)
    ref = hf_cls.from_pretrained(tmp_path).eval()
    back = from_hf(tmp_path)
    with torch.no_grad():
        expected = call_zoo(model)
        assert_parity(call_hf(ref), expected, tol=1e-5)
        assert torch.equal(call_zoo(back), expected)  # same weights, same code: bit-identical


def test_roundtrip_bert(tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model("bert_tiny", depth=2, vocab_size=120, dropout=0.0, attn_dropout=0.0)
    ids, mask = text_batch(120)
    _roundtrip(model, T.BertForMaskedLM, tmp_path, lambda m: m(ids, mask)[mask.bool()],
               lambda r: r(input_ids=ids, attention_mask=mask).logits[mask.bool()])


def test_roundtrip_bert_classifier(tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model("bert_tiny", depth=1, vocab_size=120, head="cls", num_classes=4)
    torch.nn.init.normal_(model.classifier.weight)
    ids, mask = text_batch(120)
    _roundtrip(model, T.BertForSequenceClassification, tmp_path, lambda m: m(ids, mask),
               lambda r: r(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("name", ["t5_small", "t5_v1_1_small"])
def test_roundtrip_t5(name, tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model(name, num_layers=2, num_decoder_layers=2, d_model=32, d_ff=48, d_kv=8, num_heads=4,
                             vocab_size=64, dropout_rate=0.0)
    ids, mask, dids, dmask = t5_inputs()
    _roundtrip(model, T.T5ForConditionalGeneration, tmp_path, lambda m: m(ids, dids, mask, dmask)[dmask.bool()],
               lambda r: r(input_ids=ids, attention_mask=mask, decoder_input_ids=dids,
                           decoder_attention_mask=dmask).logits[dmask.bool()])


def test_roundtrip_vit_features_only(tmp_path):
    """A headless zoo ViT exports as ViTModel without a pooler (zoo ViTs have none)."""
    torch.manual_seed(0)
    model = zoo.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=0).eval()
    to_hf(model, tmp_path)
    ref = T.ViTModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_parity(ref(x).last_hidden_state, model.forward_features(x), tol=1e-5)


def test_roundtrip_vit_with_pooler(tmp_path):
    """ViTModel's pooler converts both ways (zoo ViT pooler=True); a pooler with a classifier has no transformers form."""
    torch.manual_seed(0)
    model = zoo.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=0, pooler=True).eval()
    to_hf(model, tmp_path)
    ref = T.ViTModel.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_parity(model(x), ref(x).pooler_output)
    assert from_hf(tmp_path).config == model.config
    with pytest.raises(ValueError, match="ViTForImageClassification has no pooler"):
        to_hf(zoo.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3, pooler=True), tmp_path / "x")


def test_roundtrip_vit(tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model("vit_small_patch16_224", img_size=32, depth=2, num_classes=6)
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(2, 3, 32, 32)
    _roundtrip(model, T.ViTForImageClassification, tmp_path, lambda m: m(x), lambda r: r(x).logits)


# ------------------------------------------------------------------------------------ full published sizes
def test_full_size_bert_base_and_vit_base():
    """bert_base (MLM) and vit_base_patch16_224 at their published sizes, converted from HF."""
    torch.manual_seed(0)
    ref = T.BertForMaskedLM(T.BertConfig()).eval()  # the defaults are bert-base-uncased's
    model = from_hf(ref)
    assert zoo.registry.count_parameters(model) == zoo.model_info("bert_base")["params"]
    ids, mask = text_batch(30522, b=2, length=12)
    with torch.no_grad():
        assert_parity(model(ids, mask), ref(input_ids=ids, attention_mask=mask).logits, mask)
    del ref, model
    ref = T.ViTForImageClassification(T.ViTConfig(num_labels=1000, layer_norm_eps=1e-6)).eval()
    model = from_hf(ref)
    assert zoo.registry.count_parameters(model) == zoo.model_info("vit_base_patch16_224")["params"]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_parity(model(x), ref(x).logits)


# -------------------------------------------------------------------------------------------- errors
def test_bad_sources_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_hf(tmp_path)
    T.OPTConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, ffn_dim=32).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_hf(tmp_path)
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="no zoo converter for transformers model_type 'opt'"):
        from_hf(tmp_path)
    with pytest.raises(TypeError, match="transformers model"):
        from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="pool='avg'"):
        to_hf(zoo.create_model("vit_digits"), tmp_path / "out")
    with pytest.raises(ValueError, match="supports zoo ViT, BERT, T5, GPT-2 and Llama"):
        to_hf(zoo.create_model("clip_tiny"), tmp_path / "out")


def test_bad_weights_report_every_key(tmp_path):
    """A checkpoint that lost a tensor and has a wrong shape: one error naming both."""
    torch.manual_seed(0)
    ref = T.ViTForImageClassification(T.ViTConfig(**VIT_TINY))
    ref.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["vit.layernorm.bias"]
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lack 'layernorm.bias'"):
        from_hf(tmp_path)


def test_load_state_dict_checked_lists_missing_unexpected_and_shapes():
    model = zoo.create_model("vit_digits")
    sd = dict(model.state_dict())
    del sd["head.bias"], sd["pos_embed"]
    sd["extra.weight"] = torch.zeros(1)
    sd["head.weight"] = torch.zeros(3, 64)
    with pytest.raises(StateDictMismatch) as e:
        zoo.weights.load_state_dict_checked(model, sd)
    msg = str(e.value)
    for part in ("missing (2): head.bias, pos_embed", "unexpected (1): extra.weight",
                 "head.weight: checkpoint (3, 64) vs model (10, 64)"):
        assert part in msg
