"""Decoder-only families (GPT-2, Llama) and grouped-query attention in the core."""
import pytest
import torch
import transformers as T

import zoo
from zoo.core import BlockConfig, KVCache, MultiHeadAttention, TransformerBlock
from zoo.registry import count_parameters


# -- grouped-query attention in MultiHeadAttention ----------------------------------------------------
def test_gqa_equals_multi_head_attention_with_repeated_kv_heads():
    """num_kv_heads=2 of 6 heads: the same as plain MHA whose k/v weights repeat each kv head 3 times."""
    torch.manual_seed(0)
    gqa = MultiHeadAttention(24, 6, num_kv_heads=2, fused_qkv=False, qkv_bias=True)
    mha = MultiHeadAttention(24, 6, fused_qkv=False, qkv_bias=True)
    assert gqa.k.weight.shape == (8, 24) and gqa.v.weight.shape == (8, 24)
    expand = lambda t: t.view(2, 4, *t.shape[1:]).repeat_interleave(3, 0).reshape(24, *t.shape[1:])  # noqa: E731
    with torch.no_grad():
        mha.q.load_state_dict(gqa.q.state_dict())
        mha.proj.load_state_dict(gqa.proj.state_dict())
        for name in ("k", "v"):
            getattr(mha, name).weight.copy_(expand(getattr(gqa, name).weight))
            getattr(mha, name).bias.copy_(expand(getattr(gqa, name).bias))
    x = torch.randn(2, 7, 24)
    torch.testing.assert_close(gqa(x, causal=True), mha(x, causal=True))
    gqa.record_weights = True
    gqa(x, causal=True)
    assert gqa.last_weights.shape == (2, 6, 7, 7)


def test_gqa_fused_projection_and_cache_keep_kv_heads():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, num_kv_heads=1).eval()
    assert attn.qkv.weight.shape == (32 + 2 * 8, 32)
    x = torch.randn(2, 6, 32)
    full = attn(x, causal=True)
    cache = KVCache()
    steps = [attn(x[:, :4], causal=True, cache=cache)] + [attn(x[:, t:t + 1], causal=True, cache=cache) for t in (4, 5)]
    torch.testing.assert_close(torch.cat(steps, 1), full)
    assert cache.store[attn.layer_id][0].shape == (2, 1, 6, 8)  # the cache holds the kv heads only


def test_num_kv_heads_default_changes_nothing():
    torch.manual_seed(0)
    a = TransformerBlock(BlockConfig(32, 4, 64))
    torch.manual_seed(0)
    b = TransformerBlock(BlockConfig(32, 4, 64, num_kv_heads=4))
    assert list(a.state_dict()) == list(b.state_dict())
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(a(x, causal=True), b(x, causal=True))
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        MultiHeadAttention(32, 4, num_kv_heads=3)


# -- the families ----------------------------------------------------------------------------------
def test_parameter_counts_equal_transformers_on_meta():
    with torch.device("meta"):
        gpt2 = T.GPT2LMHeadModel(T.GPT2Config())
        medium = T.GPT2LMHeadModel(T.GPT2Config(n_embd=1024, n_layer=24, n_head=16))
        tiny_llama = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                                      num_attention_heads=32, num_key_value_heads=4))
    assert zoo.model_info("gpt2")["params"] == count_parameters(gpt2) == 124_439_808
    assert zoo.model_info("gpt2_medium")["params"] == count_parameters(medium) == 354_823_168
    assert zoo.model_info("tinyllama_1_1b")["params"] == count_parameters(tiny_llama) == 1_100_048_384
    assert zoo.model_info("gpt2_tiny")["params"] < 6_000_000 and zoo.model_info("llama_tiny")["params"] < 6_000_000


@pytest.fixture(params=["gpt2_tiny", "llama_tiny"])
def lm(request):
    torch.manual_seed(0)
    return zoo.create_model(request.param, vocab_size=64, depth=2, pad_token_id=0, eos_token_id=None).eval()


def test_left_padded_prompt_gives_what_it_gives_alone(lm):
    torch.manual_seed(1)
    prompt = torch.randint(3, 64, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1)
    mask = (torch.arange(8) >= 3).long()[None]
    with torch.no_grad():
        torch.testing.assert_close(lm(padded, mask)[:, 3:], lm(prompt), atol=1e-5, rtol=1e-5)
    batch = torch.cat([padded, torch.randint(3, 64, (1, 8))])
    masks = torch.cat([mask, torch.ones(1, 8, dtype=torch.long)])
    out = lm.generate(batch, attention_mask=masks, max_new_tokens=6)
    assert torch.equal(out[0, 3:], lm.generate(prompt, max_new_tokens=6)[0])
    assert torch.equal(out, lm.generate(batch, attention_mask=masks, max_new_tokens=6, use_cache=False))


def test_causality_and_length_limit(lm):
    ids = torch.randint(3, 64, (2, 10))
    with torch.no_grad():
        a, b = lm(ids), lm(torch.cat([ids[:, :6], torch.randint(3, 64, (2, 4))], 1))
    torch.testing.assert_close(a[:, :6], b[:, :6])
    with pytest.raises(ValueError, match="max_positions"):
        lm(torch.randint(3, 64, (1, lm.config.max_positions + 1)))


# -- the causal-LM task and its data ------------------------------------------------------------------
def test_causal_lm_loss_ignores_padding_and_ppl_is_exp_of_the_token_mean():
    from zoo.tasks.text import CausalLM

    torch.manual_seed(0)
    task = CausalLM("gpt2_tiny", model_kwargs=dict(vocab_size=50, depth=1, dropout=0.0, pad_token_id=0)).eval()
    a, b = torch.randint(3, 50, (1, 7)), torch.randint(3, 50, (1, 4))
    padded = torch.cat([a, torch.cat([b, torch.zeros(1, 3, dtype=torch.long)], 1)])
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        total, n = task._losses({"input_ids": padded, "attention_mask": mask})
        ta, na = task._losses({"input_ids": a})
        tb, nb = task._losses({"input_ids": b})
    assert n == na + nb == 6 + 3
    torch.testing.assert_close(total, ta + tb)
    with torch.no_grad():  # the same sum by hand: -log p(x_t | x_<t)
        logp = task.model(a).log_softmax(-1)[0, :-1]
        torch.testing.assert_close(ta, -logp.gather(-1, a[0, 1:, None]).sum())


def test_pydoc_lm_splits_whole_documents():
    from zoo.data.corpus import pydoc_documents, split_documents

    splits = split_documents(pydoc_documents(), (0.05, 0.05), seed=0)
    topics = {k: {t for t, _ in docs} for k, docs in splits.items()}
    assert not (topics["train"] & topics["val"]) and not (topics["train"] & topics["test"]) and not (topics["val"] & topics["test"])
    assert sum(map(len, topics.values())) == len({text for _, text in pydoc_documents()})  # one per distinct text
    total = sum(len(t) for _, t in pydoc_documents())
    for split in ("val", "test"):
        assert 0.05 <= sum(len(t) for _, t in splits[split]) / total < 0.2
    assert split_documents(pydoc_documents(), (0.05, 0.05), seed=0) == splits  # deterministic


def test_pydoc_lm_splits_share_no_text():
    """The help topics "if" and "else" are one text: it was a test document and a training one."""
    from zoo.data.corpus import PydocLM

    examples = PydocLM().make_examples()
    texts = {split: {e["text"] for e in rows} for split, rows in examples.items()}
    assert texts["test"] and texts["val"]
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["val"] and not texts["val"] & texts["test"]
    assert sum(len(rows) for rows in examples.values()) == 78  # 79 topics, 78 distinct texts


def test_causal_lm_task_generates_with_the_models_sampling_defaults(monkeypatch):
    """The task passed do_sample=False to generate, so a model that declares sampling (a converted Llama 3 Instruct:
    generation_config do_sample=true) was decoded greedily by `zoo predict`; unset, the model's defaults apply."""
    from zoo.tasks.text import CausalLM

    sampled = []
    monkeypatch.setattr(torch, "multinomial", lambda probs, n, **kw: sampled.append(probs) or probs.argmax(-1, keepdim=True))
    kwargs = dict(vocab_size=50, depth=1, dropout=0.0, pad_token_id=0, sampling={"do_sample": True, "top_k": 3})
    task = CausalLM("gpt2_tiny", model_kwargs=kwargs, max_new_tokens=2).eval()
    task.generate({"input_ids": torch.randint(3, 50, (2, 4))})
    assert len(sampled) == 2 and ((sampled[0] > 0).sum(-1) == 3).all()  # the declared top_k
    sampled.clear()
    CausalLM("gpt2_tiny", model_kwargs=kwargs, max_new_tokens=2, do_sample=False).eval().generate(
        {"input_ids": torch.randint(3, 50, (2, 4))})
    assert not sampled
    with pytest.raises(ValueError, match=r"^sampling: top_k must be an int >= 0, got -1"):
        zoo.create_model("gpt2_tiny", sampling={"do_sample": True, "top_k": -1})


def test_causal_lm_predict_keeps_the_end_of_a_prompt_too_long_for_the_positions():
    """`zoo predict` on gpt_pydoc with a prompt longer than the model's positions (the data module keeps <s> and the
    last max_length - 1 tokens: exactly max_positions) failed after one step: "input_ids of 129 positions exceeds the
    model's maximum of 128". The task now keeps the prompt's <s> and its end, leaving room for max_new_tokens, with a
    warning (transformers' text-generation pipeline, handle_long_generation="hole")."""
    from zoo.tasks.text import CausalLM

    torch.manual_seed(0)
    task = CausalLM("gpt2_tiny", model_kwargs=dict(vocab_size=50, depth=1, dim=32, num_heads=4, max_positions=12,
                                                   bos_token_id=1, pad_token_id=0, eos_token_id=None),
                    max_new_tokens=4).eval()
    bos = torch.ones(1, 1, dtype=torch.long)
    long, short = torch.randint(3, 50, (1, 11)), torch.randint(3, 50, (1, 3))
    ids = torch.cat([torch.cat([bos, long], 1), torch.cat([torch.zeros(1, 8, dtype=torch.long), bos, short], 1)])
    mask = (torch.arange(12) >= torch.tensor([[0], [8]])).long()
    with pytest.warns(UserWarning, match=r"a prompt of 12 tokens and max_new_tokens=4 do not fit the 12 positions of GPT "
                                         r"\(max_positions\): keeping the prompt's first token and its last 7"):
        out = task.generate({"input_ids": ids, "attention_mask": mask})
    kept = torch.cat([bos, long[:, -7:]], 1)  # <s> and the end of the long prompt
    assert torch.equal(out[0], task.model.generate(kept, max_new_tokens=4)[0])
    assert torch.equal(out[1, 4:], task.model.generate(torch.cat([bos, short], 1), max_new_tokens=4)[0])
    assert (out[1, :4] == 0).all()
    with pytest.warns(UserWarning, match="keeping the prompt's first token and its last 7"):
        assert torch.equal(task.generate({"input_ids": ids[:1]}), out[:1])  # no mask: no padding


@pytest.mark.parametrize("kwargs, message", [(dict(temperature=0.5), "temperature=0.5 only applies to sampling"),
                                             (dict(do_sample=True, top_p=0.0), "top_p must be in (0, 1], got 0.0"),
                                             (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1, got 0")])
def test_causal_lm_refuses_bad_generation_settings_before_training(kwargs, message):
    """CausalLM generates only in `zoo predict`: `zoo fit --model.init_args.temperature 0.5` (without do_sample) trained
    the whole recipe and the checkpoint's first predict failed. The settings are checked when the task is built."""
    import re

    from zoo.tasks.text import CausalLM

    with pytest.raises(ValueError, match=re.escape(message)):
        CausalLM("gpt2_tiny", model_kwargs=dict(vocab_size=50, depth=1, dim=32, num_heads=4), **kwargs)


def test_causal_lm_temperature_without_do_sample_is_valid_when_the_model_samples():
    """The task's early check of generation settings read do_sample=None as greedy, so a model that declares sampling
    (config.sampling, a converted Llama 3 Instruct) was refused `temperature` that generate itself accepts."""
    from zoo.tasks.text import CausalLM

    kwargs = dict(vocab_size=50, depth=1, dim=32, num_heads=4)
    task = CausalLM("gpt2_tiny", model_kwargs={**kwargs, "sampling": {"do_sample": True}}, temperature=0.5)
    assert task.hparams.temperature == 0.5
    with pytest.raises(ValueError, match="temperature=0.5 only applies to sampling but do_sample=False"):
        CausalLM("gpt2_tiny", model_kwargs=kwargs, temperature=0.5)
