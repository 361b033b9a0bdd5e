"""The vanilla Transformer and T5: contract, masking, causality, parameter counts, T5 specifics."""
import math
import time

import pytest
import torch

import zoo.registry as registry
from zoo.core import RelativePositionBias, relative_position_bucket
from zoo.generation import shift_right

V = 50
TINY = {
    "post": ("transformer_tiny", dict(vocab_size=V, d_model=32, num_encoder_layers=2, num_decoder_layers=2,
                                      num_heads=4, dim_feedforward=64, dropout=0.0, max_len=64)),
    "pre": ("transformer_tiny", dict(vocab_size=V, d_model=32, num_encoder_layers=2, num_decoder_layers=2,
                                     num_heads=4, dim_feedforward=64, dropout=0.0, max_len=64, norm_first=True)),
    "t5": ("t5_small", dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, dropout_rate=0.0,
                            relative_attention_num_buckets=8, relative_attention_max_distance=20)),
    "t5v11": ("t5_v1_1_small", dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
                                    num_heads=4, dropout_rate=0.0, relative_attention_num_buckets=8,
                                    relative_attention_max_distance=20)),
}


def tiny(kind, **extra):
    torch.manual_seed(0)
    name, kw = TINY[kind]
    return registry.create_model(name, **{**kw, **extra}).eval()




@pytest.fixture(params=list(TINY))
def model(request):
    return tiny(request.param)


def test_contract_shapes(model):
    src, tgt = torch.randint(3, V, (2, 7)), torch.randint(3, V, (2, 5))
    logits = model(src, tgt)
    d = model.config.d_model
    assert logits.shape == (2, 5, V)
    assert model.forward_features(src, tgt).shape == (2, 5, d)
    memory = model.encode(src)
    assert memory.shape == (2, 7, d)
    torch.testing.assert_close(model.decode(tgt, memory), logits)
    for field in ("vocab_size", "pad_token_id", "eos_token_id", "decoder_start_token_id", "max_len"):
        assert hasattr(model.config, field)


def test_padding_invariance(model):
    """A padded batch gives each sequence the outputs it gets alone, at its real positions."""
    lengths, tlengths = [9, 5, 3], [6, 4, 2]
    seqs = [torch.randint(3, V, (n,)) for n in lengths]
    tseqs = [torch.randint(3, V, (n,)) for n in tlengths]
    src = torch.zeros(3, 9, dtype=torch.long)
    tgt = torch.zeros(3, 6, dtype=torch.long)
    mask, tmask = torch.zeros_like(src), torch.zeros_like(tgt)
    for i, (s, t) in enumerate(zip(seqs, tseqs)):
        src[i, : len(s)], mask[i, : len(s)] = s, 1
        tgt[i, : len(t)], tmask[i, : len(t)] = t, 1
    batch = model(src, tgt, attention_mask=mask, decoder_attention_mask=tmask)
    memory = model.encode(src, mask)
    for i, (s, t) in enumerate(zip(seqs, tseqs)):
        alone = model(s[None], t[None])[0]
        torch.testing.assert_close(batch[i, : len(t)], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(memory[i, : len(s)], model.encode(s[None])[0], atol=1e-5, rtol=1e-5)
    # the pad tokens themselves must be masked out, not merely be harmless: other pad ids give the same result
    src2 = src.masked_fill(mask == 0, 7)
    torch.testing.assert_close(model(src2, tgt, attention_mask=mask, decoder_attention_mask=tmask), batch)


def test_decoder_is_causal(model):
    src, tgt = torch.randint(3, V, (2, 6)), torch.randint(3, V, (2, 8))
    ref = model(src, tgt)
    changed = tgt.clone()
    changed[:, 5] = (changed[:, 5] + 1 - 3) % (V - 3) + 3
    out = model(src, changed)
    torch.testing.assert_close(out[:, :5], ref[:, :5], atol=0, rtol=0)
    assert not torch.allclose(out[:, 5:], ref[:, 5:])


def test_encoder_sees_the_whole_source(model):
    src = torch.randint(3, V, (1, 6))
    changed = src.clone()
    changed[0, -1] = (changed[0, -1] + 1 - 3) % (V - 3) + 3
    assert not torch.allclose(model.encode(src)[:, 0], model.encode(changed)[:, 0])


def test_too_long_input_raises():
    model = tiny("post")
    with pytest.raises(ValueError, match="exceeds the model's maximum of 64"):
        model(torch.randint(3, V, (1, 65)), torch.randint(3, V, (1, 3)))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.randint(3, V, (1, 5)), torch.randint(3, V, (1, 65)))
    t5 = tiny("t5")
    assert t5.config.max_len is None  # relative positions: any length works
    assert t5(torch.randint(3, V, (1, 300)), torch.randint(3, V, (1, 3))).shape == (1, 3, V)
    with pytest.raises(ValueError, match="exceeds the model's maximum of 16"):
        tiny("t5", max_len=16)(torch.randint(3, V, (1, 17)), torch.randint(3, V, (1, 3)))


def test_vanilla_embedding_sharing_and_scaling():
    model = tiny("post")
    assert model.src_embed is model.tgt_embed and model.lm_head.weight is model.src_embed.weight
    assert model.embed_scale == math.sqrt(32)
    assert model.config.final_norm is None and isinstance(model.encoder.norm, torch.nn.Identity)  # the paper has none
    assert isinstance(tiny("pre").encoder.norm, torch.nn.LayerNorm)  # pre-norm needs a final norm
    assert isinstance(tiny("post", final_norm=True).decoder.norm, torch.nn.LayerNorm)  # torch.nn.Transformer layout
    sep = tiny("post", share_embeddings=False, src_vocab_size=30)
    assert sep.src_embed.num_embeddings == 30 and sep.lm_head.weight is sep.tgt_embed.weight
    assert sep(torch.randint(0, 30, (1, 4)), torch.randint(0, V, (1, 3))).shape == (1, 3, V)
    untied = tiny("post", share_embeddings=False, tie_output=False)
    assert untied.lm_head.weight is not untied.tgt_embed.weight
    with pytest.raises(ValueError, match="share_embeddings=False"):
        tiny("post", src_vocab_size=30)


def _vanilla_count(d, ff, n_enc, n_dec, vocab):
    attn = 4 * (d * d + d)
    ffn = 2 * d * ff + ff + d
    return n_enc * (attn + ffn + 2 * 2 * d) + n_dec * (2 * attn + ffn + 3 * 2 * d) + vocab * d


def test_vanilla_param_counts():
    """Paper Table 3 with its 37k shared BPE vocabulary (WMT14 En-De). Big: 213M, within 1%.
    Base: the exact count is 63.1M, 3% under the 65M the paper prints; no layout of the described
    architecture with a 37k shared vocabulary gives 65M (it would need ~39.5k tokens, which would
    push big out of its 1%), so base is checked against the formula and a 3% bound."""
    big, base = registry.model_info("transformer_big"), registry.model_info("transformer_base")
    assert big["config"]["vocab_size"] == base["config"]["vocab_size"] == 37000
    assert abs(big["params"] / 213e6 - 1) < 0.01
    assert base["params"] == _vanilla_count(512, 2048, 6, 6, 37000) == 63_082_496
    assert big["params"] == _vanilla_count(1024, 4096, 6, 6, 37000)
    assert abs(base["params"] / 65e6 - 1) < 0.03
    assert registry.model_info("transformer_tiny")["params"] == _vanilla_count(128, 512, 3, 3, 8000)


@pytest.mark.parametrize("name,hf_count", [
    ("t5_small", 60_506_624), ("t5_base", 222_903_552), ("t5_large", 737_668_096),
    ("t5_v1_1_small", 76_961_152), ("t5_v1_1_base", 247_577_856),
])
def test_t5_param_counts_match_transformers(name, hf_count):
    # counts of transformers' T5ForConditionalGeneration for the same hub configs (tied weights once)
    assert abs(registry.model_info(name)["params"] / hf_count - 1) < 0.01
    assert registry.model_info(name)["params"] == hf_count


def test_text_families_take_vocab_override():
    for name in ("transformer_base", "t5_small"):
        assert registry.model_info(name, vocab_size=1000, pad_token_id=3)["config"]["vocab_size"] == 1000


def test_t5_relative_bias_is_shared_per_stack():
    model = tiny("t5")
    biases = [m for m in model.modules() if isinstance(m, RelativePositionBias)]
    assert len(biases) == 2
    assert {b.bidirectional for b in biases} == {True, False}
    assert sum("rel_bias" in n for n, _ in model.named_parameters()) == 2
    # the encoder bias reaches every encoder layer: zeroing it changes layer-1 input attention too
    src = torch.randint(3, V, (1, 6))
    ref = model.encode(src)
    with torch.no_grad():
        model.encoder_rel_bias.embedding.weight.zero_()
    assert not torch.allclose(model.encode(src), ref)


def test_t5_head_tying_and_rescale():
    v10, v11 = tiny("t5"), tiny("t5v11")
    assert v10.lm_head.weight is v10.shared.weight and v10.output_scale == 32 ** -0.5
    assert v11.lm_head.weight is not v11.shared.weight and v11.output_scale == 1.0
    assert v11.decoder.blocks[0].mlp.gate is not None and v10.decoder.blocks[0].mlp.gate is None
    assert len(v11.decoder.blocks) == 3 and len(v11.encoder.blocks) == 2
    src, tgt = torch.randint(3, V, (1, 5)), torch.randint(3, V, (1, 4))
    feats = v10.forward_features(src, tgt)
    torch.testing.assert_close(v10(src, tgt), feats @ v10.shared.weight.T * 32 ** -0.5)
    assert not any(n.endswith("bias") for n, _ in v10.named_parameters())  # no biases anywhere
    with pytest.raises(ValueError, match="feed_forward_proj"):
        tiny("t5", feed_forward_proj="swish")


@pytest.mark.parametrize("kind, table", [("t5", "shared"), ("post", "src_embed")])
def test_training_looks_both_stacks_ids_up_at_once_with_the_same_gradients(kind, table):
    """A training forward embeds encoder and decoder ids in one lookup of the shared table (one dense gradient
    instead of two summed); features and every gradient equal those of one lookup per stack, and inference keeps
    one per stack."""
    import zoo.core.position as position

    model = tiny(kind).train()
    calls = []
    getattr(model, table).register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    src, tgt = torch.randint(3, V, (2, 5)), torch.randint(3, V, (2, 4))
    torch.manual_seed(0)
    out = model.forward_features(src, tgt)
    assert calls == [torch.Size([18])]  # 2 x 5 + 2 x 4 ids, one call
    out.square().mean().backward()
    joint = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    calls.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(position, "embed_both", lambda table, a, b, head=None: (None, None, None))
        torch.manual_seed(0)
        separate = model.forward_features(src, tgt)
        separate.square().mean().backward()
    assert calls == [src.shape, tgt.shape]
    torch.testing.assert_close(out, separate, rtol=0, atol=0)
    for n, p in model.named_parameters():
        if n in joint:
            torch.testing.assert_close(joint[n], p.grad, rtol=1e-6, atol=1e-7, msg=n)
    calls.clear()
    with torch.no_grad():
        model(src, tgt)
    assert calls == [src.shape, tgt.shape]
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(src, torch.full((2, 4), V))  # an id out of range is named before the lookup
    assert position.embed_both(getattr(model, table).requires_grad_(False), src, tgt) == (None, None, None)  # frozen


def _ranges(spec):
    out = {}
    for rng, bucket in spec:
        lo, hi = rng
        for r in range(lo, hi + 1):
            out[r] = bucket
    return out


def test_t5_buckets_match_transformers_ranges():
    """nb=32, md=128 bucket ranges as read off transformers (parity_facts.md §2)."""
    bi = [((0, 0), 0)] + [((-i, -i), i) for i in range(1, 8)] + [
        ((-11, -8), 8), ((-15, -12), 9), ((-22, -16), 10), ((-31, -23), 11), ((-45, -32), 12), ((-63, -46), 13),
        ((-90, -64), 14), ((-400, -91), 15)] + [((i, i), 16 + i) for i in range(1, 8)] + [
        ((8, 11), 24), ((12, 15), 25), ((16, 22), 26), ((23, 31), 27), ((32, 45), 28), ((46, 63), 29),
        ((64, 90), 30), ((91, 400), 31)]
    causal = [((0, 400), 0)] + [((-i, -i), i) for i in range(1, 16)] + [
        ((-18, -16), 16), ((-20, -19), 17), ((-23, -21), 18), ((-26, -24), 19), ((-30, -27), 20), ((-34, -31), 21),
        ((-39, -35), 22), ((-45, -40), 23), ((-51, -46), 24), ((-58, -52), 25), ((-66, -59), 26), ((-76, -67), 27),
        ((-86, -77), 28), ((-98, -87), 29), ((-112, -99), 30), ((-400, -113), 31)]
    rel = torch.arange(-400, 401)
    for bidirectional, spec in ((True, bi), (False, causal)):
        expected = _ranges(spec)
        got = relative_position_bucket(rel, bidirectional, 32, 128)
        assert got.tolist() == [expected[r] for r in rel.tolist()]
    assert 16 not in relative_position_bucket(rel, True, 32, 128).tolist()


def test_shift_right():
    labels = torch.tensor([[5, 6, 7, 1], [8, 1, -100, -100]])
    assert shift_right(labels, 0).tolist() == [[0, 5, 6, 7], [0, 8, 1, 0]]
    assert shift_right(labels, 2, pad_id=9).tolist() == [[2, 5, 6, 7], [2, 8, 1, 9]]


@pytest.mark.parametrize("kind,lr", [("post", 3e-3), ("t5", 1e-2)])
def test_tiny_model_overfits(kind, lr):
    """Teacher-forced training on 8 reversal pairs reaches ~0 loss, then greedy decoding reproduces them."""
    torch.manual_seed(0)
    model = tiny(kind)
    model.train()
    cfg = model.config
    src = torch.randint(3, V, (8, 6))
    labels = torch.cat([src.flip(1), torch.full((8, 1), cfg.eos_token_id)], dim=1)
    dec_in = shift_right(labels, cfg.decoder_start_token_id, cfg.pad_token_id)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.process_time()  # CPU time: wall time on a shared machine says little
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(src, dec_in).flatten(0, 1), labels.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.05
    assert time.process_time() - start < 20
    out = model.generate(src, max_new_tokens=10)
    assert out[:, 1:].tolist() == labels.tolist()
    assert model.training  # generate restores the mode


@pytest.mark.parametrize("kind", ["post", "t5", "t5v11"])
def test_safetensors_round_trip_keeps_ties(kind, tmp_path):
    from zoo.weights import load_pretrained, save_safetensors

    model = tiny(kind)
    save_safetensors(model, tmp_path / "w.safetensors")
    torch.manual_seed(123)
    fresh = registry.create_model(TINY[kind][0], **TINY[kind][1]).eval()  # a different random init
    load_pretrained(fresh, tmp_path / "w.safetensors")
    src, tgt = torch.randint(3, V, (2, 5)), torch.randint(3, V, (2, 4))
    torch.testing.assert_close(fresh(src, tgt), model(src, tgt), atol=0, rtol=0)
    table = fresh.src_embed if kind == "post" else fresh.shared
    assert (fresh.lm_head.weight is table.weight) == (kind != "t5v11")  # ties survive loading
