"""transformers <-> zoo for the decoder-only families: GPT2LMHeadModel and LlamaForCausalLM (random
weights from config objects, nothing downloads).

Contract (as tests/test_interop_hf.py): float32 max|diff| <= 1e-4 * max(1, max|ref|) on real tokens;
float64 <= 1e-9. transformers' LlamaRMSNorm and RoPE tables stay float32 inside a float64 model
(parity facts §7); zoo's Llama normalises the same way (norm "rmsnorm_fp32") and builds the same
float32 rotary tables, so the float64 bound holds for Llama too.
"""
from dataclasses import replace

import pytest
import torch
import transformers as T

import zoo
from zoo.interop import from_hf, to_hf

GPT2_TINY = dict(vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=37, bos_token_id=1,
                 eos_token_id=2, attn_implementation="sdpa")
LLAMA_CONFIGS = {  # GQA 4 query / 2 kv heads, untied; an odd one: 6 / 1 heads of width 10 (not dim / heads), tied
    "gqa": dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                tie_word_embeddings=False),
    "odd": dict(vocab_size=77, hidden_size=48, intermediate_size=45, num_hidden_layers=3, num_attention_heads=6,
                num_key_value_heads=1, head_dim=10, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=True),
}


TRANSFORMERS_SAMPLING = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}  # GenerationConfig's defaults


def assert_parity(out, ref, keep=None, tol=1e-4):
    out, ref = out.detach(), ref.detach()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if keep is not None:
        out, ref = out[keep.bool()], ref[keep.bool()]
    bound = tol * max(1.0, ref.abs().max().item())
    err = (out - ref).abs().max().item()
    assert err <= bound, f"max|diff| {err:.3g} > {bound:.3g}"
    return err


def batch(vocab, side, b=3, length=9, seed=0):
    """Rows of lengths 9, 7, 5, padded on `side`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    for i in range(1, b):
        if side == "right":
            mask[i, length - 2 * i:] = 0
        else:
            mask[i, : 2 * i] = 0
    return ids, mask


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def gpt2_ref(**kw):
    torch.manual_seed(0)
    return T.GPT2LMHeadModel(T.GPT2Config(**{**GPT2_TINY, **kw})).eval()


def llama_ref(name):
    torch.manual_seed(0)
    ref = T.LlamaForCausalLM(T.LlamaConfig(**LLAMA_CONFIGS[name], attn_implementation="sdpa")).eval()
    with torch.no_grad():  # norms away from 1 so that a wrong norm shows
        for n, p in ref.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return ref


def ref_logits(ref, ids, mask):
    """transformers' forward with the positions its generate uses (cumsum of the mask)."""
    with torch.no_grad():
        return ref(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("from_dir", [False, True])
def test_gpt2_parity(side, from_dir, tmp_path):
    ref = gpt2_ref(layer_norm_epsilon=1e-6)
    if from_dir:
        ref.save_pretrained(tmp_path)
    model = from_hf(tmp_path if from_dir else ref)
    c = model.config
    assert (c.dim, c.depth, c.num_heads, c.mlp_hidden, c.norm_eps, c.activation) == (32, 2, 4, 37, 1e-6, "gelu_tanh")
    assert model.lm_head.weight is model.wte.weight
    ids, mask = batch(99, side)
    with torch.no_grad():
        assert_parity(model(ids, mask), ref_logits(ref, ids, mask), mask)
        hidden = ref(input_ids=ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=True).hidden_states[-1]
        assert_parity(model.forward_features(ids, mask), hidden, mask)
        if side == "right":  # transformers' plain forward numbers columns, which right padding leaves intact
            assert_parity(model(ids, mask), ref(input_ids=ids, attention_mask=mask).logits, mask)
        assert_parity(model.double()(ids, mask), ref_logits(ref.double(), ids, mask), mask, tol=1e-9)


@pytest.mark.parametrize("name", list(LLAMA_CONFIGS))
@pytest.mark.parametrize("side", ["right", "left"])
def test_llama_parity(name, side):
    ref = llama_ref(name)
    model = from_hf(ref)
    cfg = LLAMA_CONFIGS[name]
    assert model.config.num_kv_heads == cfg["num_key_value_heads"] and model.config.tie_word_embeddings == cfg["tie_word_embeddings"]
    assert (model.lm_head.weight is model.wte.weight) == cfg["tie_word_embeddings"]
    ids, mask = batch(cfg["vocab_size"], side)
    with torch.no_grad():
        # RoPE depends on offsets only: transformers' forward with column positions gives the same logits
        assert_parity(model(ids, mask), ref(input_ids=ids, attention_mask=mask).logits, mask)
        assert_parity(model(ids, mask), ref_logits(ref, ids, mask), mask)
        ref64, model64 = ref.double(), model.double()
        assert_parity(model64(ids, mask), ref64(input_ids=ids, attention_mask=mask).logits, mask, tol=1e-9)


def test_llama_from_directory_and_unsupported_configs(tmp_path):
    ref = llama_ref("gqa")
    ref.save_pretrained(tmp_path)
    model = from_hf(tmp_path)
    assert model.config.rope_theta == 500.0
    ids, mask = batch(99, "left")
    with torch.no_grad():
        assert_parity(model(ids, mask), ref(input_ids=ids, attention_mask=mask).logits, mask)
    bad = T.LlamaForCausalLM(T.LlamaConfig(**{**LLAMA_CONFIGS["gqa"], "attention_bias": True}))
    with pytest.raises(ValueError, match="no biases"):
        from_hf(bad)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        from_hf(gpt2_ref(scale_attn_by_inverse_layer_idx=True))


# RoPE scaling, tiny: head_dim 8 and theta 10000 give wavelengths 6.3, 63, 628, 6283 positions; the llama3 one keeps
# the first (< 16/2), blends the second (8..64) and divides the others by factor; every scaling starts at 16 positions.
ROPE_SCALINGS = {
    "linear": ({"rope_type": "linear", "factor": 2.0}, 64),
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0}, 16),  # beyond max_position_embeddings: NTK base growth
    "llama3": ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 0.25, "high_freq_factor": 2.0,
                "original_max_position_embeddings": 16}, 64),
}


def scaled_llama_ref(kind, **kw):
    params, max_positions = ROPE_SCALINGS[kind]
    torch.manual_seed(0)
    cfg = {**LLAMA_CONFIGS["gqa"], "rope_parameters": {**params, "rope_theta": 10000.0},
           "max_position_embeddings": max_positions, "attn_implementation": "sdpa", **kw}
    ref = T.LlamaForCausalLM(T.LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.mul_(8) if "norm" not in n else p.uniform_(0.5, 1.5)  # peaked: rotation errors change the logits
    return ref


@pytest.mark.parametrize("kind", list(ROPE_SCALINGS))
def test_scaled_rope_parity(kind):
    """Llama 3.1 / 3.2 checkpoints (rope_type llama3) and linear / dynamic-NTK ones were refused ('rope_type default
    only'); they convert into zoo's rope_scaling and give transformers' logits beyond the original length."""
    ref = scaled_llama_ref(kind)
    model = from_hf(ref)
    assert model.config.rope_scaling["rope_type"] == kind
    if kind != "dynamic":  # transformers' table at init, bit for bit
        assert torch.equal(model.rope.inv_freq, ref.model.rotary_emb.inv_freq)
    else:
        assert model.config.max_positions == 32 and model.config.rope_scaling["original_max_position_embeddings"] == 16
    ids, mask = batch(99, "left", length=28)  # 28 positions, 16 of the original length
    with torch.no_grad():
        ours = model(ids, mask)
        assert_parity(ours, ref(input_ids=ids, attention_mask=mask).logits, mask)
        plain = from_hf(scaled_llama_ref(kind, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                          max_position_embeddings=64))
        assert (plain(ids, mask) - ours)[:, -4:].abs().max() > 1e-2  # the scaling changes these logits


@pytest.mark.parametrize("kind", list(ROPE_SCALINGS))
def test_scaled_rope_greedy_generation_equals_transformers(kind):
    """Token for token past the original length (dynamic: a new base at every step, cached keys kept)."""
    ref = scaled_llama_ref(kind)
    model = from_hf(ref)
    ids, mask = batch(99, "left", length=12, seed=3)
    with torch.no_grad():
        theirs = ref.generate(ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=14,
                              min_new_tokens=14, eos_token_id=None, pad_token_id=0)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=14, ignore_eos=True)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("kind", list(ROPE_SCALINGS))
def test_scaled_rope_roundtrip(kind, tmp_path):
    params, max_positions = ROPE_SCALINGS[kind]
    scaling = {"original_max_position_embeddings": 16, **params} if kind == "dynamic" else params
    model = zoo.create_model("llama_tiny", vocab_size=120, depth=2, dim=64, num_heads=8, mlp_hidden=96,
                             rope_scaling=scaling, max_positions=32 if kind == "dynamic" else 64).eval()
    to_hf(model, tmp_path)
    hf = T.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.rope_parameters["rope_type"] == kind and hf.config.max_position_embeddings == max_positions
    back = from_hf(tmp_path)
    assert back.config == replace(model.config, sampling=TRANSFORMERS_SAMPLING)
    ids, mask = batch(120, "left", length=28)
    with torch.no_grad():
        assert_parity(model(ids, mask), hf(input_ids=ids, attention_mask=mask).logits, mask)


def test_unsupported_rope_scaling_is_refused_naming_type_and_field():
    yarn = T.LlamaForCausalLM(T.LlamaConfig(**{**LLAMA_CONFIGS["gqa"], "rope_parameters": {
        "rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0}}))
    with pytest.raises(ValueError, match=r"cannot convert rope_parameters.rope_type='yarn'.*'linear', 'dynamic', 'llama3'"):
        from_hf(yarn)
    with pytest.raises(ValueError, match=r"^rope_scaling: rope_type 'longrope' is not supported"):
        zoo.create_model("llama_tiny", rope_scaling={"rope_type": "longrope", "factor": 2.0})
    with pytest.raises(ValueError, match=r"rope_scaling of rope_type 'llama3' takes .* missing low_freq_factor"):
        zoo.create_model("llama_tiny", rope_scaling={"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 64})
    with pytest.raises(ValueError, match=r"rope_scaling: factor must be a positive number, got '2'"):
        zoo.create_model("llama_tiny", rope_scaling={"rope_type": "linear", "factor": "2"})


def test_gpt2_legacy_checkpoint_without_prefix(tmp_path):
    """hub GPT-2 files: no `transformer.` prefix and the old attn.bias / attn.masked_bias buffers."""
    from safetensors.torch import load_file, save_file

    ref = gpt2_ref()
    ref.save_pretrained(tmp_path)
    sd = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(sd, tmp_path / "model.safetensors")
    model = from_hf(tmp_path)
    ids, mask = batch(99, "right")
    assert_parity(model(ids, mask), ref_logits(ref, ids, mask), mask)


def _roundtrip(model, cls, tmp_path):
    to_hf(model, tmp_path)
    hf = cls.from_pretrained(tmp_path).eval()
    back = from_hf(tmp_path)
    ids, mask = batch(model.config.vocab_size, "left")
    with torch.no_grad():
        ours = model.eval()(ids, mask)
        assert_parity(ours, ref_logits(hf, ids, mask), mask)
        assert torch.equal(back(ids, mask), ours)
    assert back.config == replace(model.config, sampling=TRANSFORMERS_SAMPLING)  # what transformers' generate does


def test_roundtrip_gpt2(tmp_path):
    import zoo

    _roundtrip(zoo.create_model("gpt2_tiny", vocab_size=120, depth=2), T.GPT2LMHeadModel, tmp_path)


@pytest.mark.parametrize("tied", [True, False])
def test_roundtrip_llama(tied, tmp_path):
    import zoo

    _roundtrip(zoo.create_model("llama_tiny", vocab_size=120, depth=2, tie_word_embeddings=tied), T.LlamaForCausalLM, tmp_path)


# -------------------------------------------------------------------------------------- generation
def refs():
    return {"gpt2": gpt2_ref(), "llama_gqa": llama_ref("gqa"), "llama_odd": llama_ref("odd")}


@pytest.mark.parametrize("which", ["gpt2", "llama_gqa", "llama_odd"])
def test_greedy_generation_equals_transformers(which):
    ref = refs()[which]
    model = from_hf(ref)
    ids, mask = batch(ref.config.vocab_size, "left", length=6, seed=3)
    eos = 5  # a frequent-enough id to end some rows early
    ref.generation_config.eos_token_id = eos
    with torch.no_grad():
        theirs = ref.generate(ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=10,
                              eos_token_id=eos, pad_token_id=0)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    assert ours.shape[1] <= theirs.shape[1]
    theirs = theirs[:, : ours.shape[1]] if (theirs[:, ours.shape[1]:] == 0).all() else theirs
    assert torch.equal(ours, theirs)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=10, ignore_eos=True, use_cache=False),
                       model.generate(ids, attention_mask=mask, max_new_tokens=10, ignore_eos=True))


@pytest.mark.parametrize("which", ["gpt2", "llama_odd"])
def test_cached_decoding_equals_recomputation(which):
    model = from_hf(refs()[which])
    from zoo.core import KVCache

    ids, mask = batch(model.config.vocab_size, "left", length=8, seed=4)
    with torch.no_grad():
        full = model(ids, mask)
        cache = KVCache()
        steps = [model.decode(ids[:, :5], cache=cache, attention_mask=mask[:, :5])]
        for t in range(5, 8):
            steps.append(model.decode(ids[:, t:t + 1], cache=cache, attention_mask=mask[:, : t + 1]))
    assert_parity(torch.cat(steps, 1), full, mask, tol=1e-5)


def _until_eos(out, prompt_len, eos):
    """Rows as lists: the prompt, then the new tokens up to and including the first EOS (what follows is fill:
    transformers' beam search fills with EOS where pad_token_id is 0)."""
    rows = []
    for row in out.tolist():
        new = row[prompt_len:]
        hits = [t for t, tok in enumerate(new) if tok in eos]
        rows.append(row[:prompt_len] + (new[: hits[0] + 1] if hits else new))
    return rows


@pytest.mark.parametrize("num_beams", [2, 3])
def test_beam_search_with_many_eos_ids_equals_transformers(num_beams):
    """With several EOS ids more than k of the 2k best candidates can end a hypothesis: the unfilled live beams got
    score 0 (the best possible) and row 0 of the batch, so other inputs continued input 0's prompt. transformers keeps
    (1 + number of EOS ids) * num_beams candidates."""
    torch.manual_seed(0)
    ref = T.LlamaForCausalLM(T.LlamaConfig(**{**LLAMA_CONFIGS["gqa"], "vocab_size": 30})).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "norm" not in n:
                p.mul_(8)  # peaked next-token distributions
    model = from_hf(ref)
    eos = list(range(3, 20))
    ids, mask = batch(30, "left", length=5, seed=0)
    kw = dict(attention_mask=mask, num_beams=num_beams, max_new_tokens=8, length_penalty=1.0, eos_token_id=eos, pad_token_id=0)
    with torch.no_grad():
        theirs = ref.generate(ids, do_sample=False, early_stopping=False, **kw)
    ours = model.generate(ids, **kw)
    assert _until_eos(ours, 5, eos) == _until_eos(theirs, 5, eos)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_list_of_eos_ids_in_the_config_survives_conversion(family, tmp_path):
    """Llama 3's config has eos_token_id=[128001, 128008, 128009]: the converter kept the first id only, so zoo's
    generate (eos from the config) ran past the other ids where transformers' stops."""
    ref = llama_ref("gqa") if family == "llama" else gpt2_ref()
    ids, mask = batch(99, "left", length=6, seed=3)
    with torch.no_grad():
        free = ref.generate(ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=8, eos_token_id=None,
                            pad_token_id=0)[:, 6:]
    eos = [98, int(free[0, 1]), int(free[2, 3])]  # 98 first: an id the rows are unlikely to meet
    ref.config.eos_token_id = ref.generation_config.eos_token_id = eos
    ref.config.pad_token_id = ref.generation_config.pad_token_id = 0
    model = from_hf(ref)
    assert model.config.eos_token_id == eos
    with torch.no_grad():
        theirs = ref.generate(ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=8)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=8)
    assert _until_eos(ours, 6, eos) == _until_eos(theirs, 6, eos) and ours.shape == theirs.shape
    to_hf(model, tmp_path)
    assert from_hf(tmp_path).config.eos_token_id == eos


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_eos_ids_of_the_generation_config_are_used(family, tmp_path):
    """Llama 3 checkpoints name one EOS id in config.json and three in generation_config.json, which transformers'
    generate uses; the converter read config.json only, so zoo's generate ran past <|eot_id|>."""
    ref = llama_ref("gqa") if family == "llama" else gpt2_ref()
    ids, mask = batch(99, "left", length=6, seed=3)
    with torch.no_grad():
        free = ref.generate(ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=8, eos_token_id=None,
                            pad_token_id=0)[:, 6:]
    eos = [98, int(free[0, 1]), int(free[2, 3])]
    ref.config.eos_token_id, ref.config.pad_token_id = 98, 0  # config.json: one id
    ref.generation_config.eos_token_id, ref.generation_config.pad_token_id = eos, 0
    ref.save_pretrained(tmp_path)
    hf = type(ref).from_pretrained(tmp_path).eval()
    assert hf.config.eos_token_id == 98 and hf.generation_config.eos_token_id == eos
    for source in (ref, tmp_path):
        model = from_hf(source)
        assert model.config.eos_token_id == eos
        with torch.no_grad():
            theirs = hf.generate(ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=8)
        ours = model.generate(ids, attention_mask=mask, max_new_tokens=8)
        assert _until_eos(ours, 6, eos) == _until_eos(theirs, 6, eos) and ours.shape == theirs.shape


@pytest.mark.parametrize("which", ["llama_gqa", "gpt2"])
def test_generate_without_mask_masks_pad_tokens_as_transformers(which):
    """transformers' generate infers a decoder-only prompt's mask from its pad tokens (when pad is not EOS); zoo's
    attended to the left padding, so a padded batch given without attention_mask generated other tokens."""
    ref = refs()[which]
    ref.config.pad_token_id = ref.generation_config.pad_token_id = 0 if which == "llama_gqa" else 2  # gpt2: pad = EOS
    model = from_hf(ref)
    ids, mask = batch(ref.config.vocab_size, "left", length=6, seed=3)
    ids = ids.masked_fill(mask == 0, ref.config.pad_token_id)
    inferred = which == "llama_gqa"
    eos = dict(eos_token_id=5) if inferred else {}  # gpt2: EOS from the config, = pad: no mask is inferred
    with torch.no_grad():
        theirs = ref.generate(ids, do_sample=False, num_beams=1, max_new_tokens=8, **eos)
    ours = model.generate(ids, max_new_tokens=8, **eos)
    stop = [5] if inferred else [2]
    assert _until_eos(ours, 6, stop) == _until_eos(theirs, 6, stop)
    assert torch.equal(ours, model.generate(ids, attention_mask=mask, max_new_tokens=8, **eos)) == inferred
    if inferred:
        with pytest.raises(ValueError, match="pads a prompt on the right.*inferred from the pad tokens, id 0"):
            model.generate(ids.flip(1), max_new_tokens=2)


def test_ignore_eos_does_not_turn_a_pad_that_is_eos_into_a_mask():
    """With pad = EOS (GPT-2's 50256) no mask is inferred, as in transformers; ignore_eos=True (benchmarks) dropped the
    EOS ids before that check, so every EOS token of a prompt was masked out."""
    model = zoo.create_model("gpt2_tiny", pad_token_id=2, eos_token_id=2).eval()
    ids = torch.tensor([[4, 2, 7, 9, 2, 3]])  # EOS inside the prompt: a document boundary, not padding
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=5, ignore_eos=True)
        ones = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, ignore_eos=True)
    assert torch.equal(plain, ones)


def _sampled_distributions(monkeypatch) -> list:
    """torch.multinomial replaced by the argmax of what it is given: the list fills with the next-token distributions
    each generate samples from (transformers' and zoo's both call torch.multinomial), and both pick the same tokens."""
    seen = []

    def first_best(probs, num_samples, *args, **kwargs):
        seen.append(probs.detach().float().clone())
        return probs.argmax(-1, keepdim=True)

    monkeypatch.setattr(torch, "multinomial", first_best)
    return seen


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("source", ["no generation_config.json", "generation_config.json samples"])
def test_converted_model_samples_as_transformers(family, source, tmp_path, monkeypatch):
    """transformers' generate samples with its GenerationConfig's top_k=50 unless told otherwise, and a
    generation_config.json with do_sample=true (Llama 3 Instruct: temperature 0.6, top_p 0.9) makes plain generate()
    sample. A converted zoo model sampled from every token (top_k None), and generate() stayed greedy."""
    ref = llama_ref("gqa") if family == "llama" else gpt2_ref()
    samples = source == "generation_config.json samples"
    if samples:
        ref.generation_config.do_sample, ref.generation_config.temperature, ref.generation_config.top_p = True, 0.6, 0.9
    ref.save_pretrained(tmp_path)
    if not samples:
        (tmp_path / "generation_config.json").unlink()
    hf = type(ref).from_pretrained(tmp_path).eval()
    model = from_hf(tmp_path)
    ids, mask = batch(99, "left", length=6, seed=3)
    call = dict(attention_mask=mask, max_new_tokens=4, eos_token_id=98, pad_token_id=0, **({} if samples else {"do_sample": True}))
    seen = _sampled_distributions(monkeypatch)
    with torch.no_grad():
        theirs = hf.generate(ids, **call)
    hf_probs, seen[:] = list(seen), []
    ours = model.generate(ids, **call)
    assert len(seen) == len(hf_probs) > 0 and _until_eos(ours, 6, [98]) == _until_eos(theirs, 6, [98])
    for a, b in zip(seen, hf_probs):
        assert torch.equal(a > 0, b > 0)  # the same tokens survive top-k / top-p
        assert (a - b).abs().max() < 1e-5
    kept = (hf_probs[0] > 0).sum(-1)
    assert (kept == 50).all() if not samples else (kept < 50).all()  # top_k=50; top_p=0.9 at temperature 0.6: fewer
    if samples:  # transformers would beam-sample here, which zoo's generate does not: refused, saying why
        with pytest.raises(ValueError, match=r"do_sample=True \(the model default, config.sampling\) with num_beams=2"):
            model.generate(ids, attention_mask=mask, num_beams=2, max_new_tokens=2)
        assert model.generate(ids, attention_mask=mask, num_beams=2, max_new_tokens=2, do_sample=False).shape[1] <= 8
        # back to transformers: its generate samples as before
        to_hf(model, tmp_path / "back")
        back = T.GenerationConfig.from_pretrained(tmp_path / "back")
        assert (back.do_sample, back.temperature, back.top_p, back.top_k) == (True, 0.6, 0.9, 50)
        assert from_hf(tmp_path / "back").config == model.config


def test_generation_settings_zoo_does_not_apply_are_named():
    ref = gpt2_ref()
    ref.generation_config.repetition_penalty, ref.generation_config.no_repeat_ngram_size = 1.3, 3
    with pytest.warns(UserWarning, match=r"sets repetition_penalty=1.3, no_repeat_ngram_size=3, which zoo's generate "
                                         r"does not apply"):
        from_hf(ref)
