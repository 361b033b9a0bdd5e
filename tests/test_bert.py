"""BERT: heads, masking, tying, parameter counts against the reference figures, errors, and a tiny overfit."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo.weights import load_pretrained, save_safetensors

TINY = dict(vocab_size=50, dim=32, depth=2, num_heads=2, max_positions=16, dropout=0.0, attn_dropout=0.0)

# transformers.BertModel(BertConfig(hidden_size=H, num_hidden_layers=L, num_attention_heads=H//64,
# intermediate_size=4H)) built on the meta device, pooler included (transformers 5.24). The base and
# large figures are also the published bert-base-uncased / bert-large-uncased counts.
REFERENCE_PARAMS = {
    "bert_tiny": 4_385_920,
    "bert_mini": 11_170_560,
    "bert_small": 28_763_648,
    "bert_medium": 41_373_184,
    "bert_base": 109_482_240,
    "bert_large": 335_141_888,
}


def tiny(**kw):
    torch.manual_seed(0)
    return zoo.create_model("bert_tiny", **{**TINY, **kw}).eval()


def batch(b=3, length=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("head, shape", [("mlm", (3, 10, 50)), ("cls", (3, 4)), ("token", (3, 10, 4)), ("none", (3, 10, 32))])
def test_head_shapes_and_contract(head, shape):
    m = tiny(head=head, num_classes=4)
    ids, mask = batch()
    out = m(ids, mask)
    assert out.shape == shape
    feats = m.forward_features(ids, mask)
    assert feats.shape == (3, 10, 32)
    torch.testing.assert_close(m.forward_head(feats), out)


def test_registered_default_head_is_mlm_and_cls_override():
    assert zoo.get_config("bert_base").head == "mlm"
    with torch.device("meta"):  # full size without allocating 110M parameters
        m = zoo.create_model("bert_base", head="cls", num_classes=2).eval()
        assert m.forward_head(torch.empty(1, 8, 768)).shape == (1, 2)
    assert m.num_classes == 2 and len(m.encoder.blocks) == 12 and m.classifier.weight.shape == (2, 768)


def test_cls_head_reset_and_pooled_features():
    m = tiny(head="cls", num_classes=3)
    ids, mask = batch()
    pooled = m.forward_head(m.forward_features(ids, mask), pre_logits=True)
    assert pooled.shape == (3, 32) and pooled.abs().max() < 1  # tanh pooler
    m.reset_classifier(5)
    assert m(ids, mask).shape == (3, 5) and m.num_classes == 5
    m.reset_classifier(0)
    torch.testing.assert_close(m(ids, mask), pooled)  # num_classes=0 returns pooled features


def test_padding_invariance():
    m = tiny(head="token", num_classes=4)
    ids, mask = batch()
    padded = m.forward_features(ids, mask)
    for i in range(3):
        n = int(mask[i].sum())
        alone = m.forward_features(ids[i: i + 1, :n])
        torch.testing.assert_close(padded[i, :n], alone[0], atol=1e-5, rtol=0)
    cls = tiny(head="cls", num_classes=2)
    logits = cls(ids, mask)
    torch.testing.assert_close(logits[2], cls(ids[2:, :3])[0], atol=1e-5, rtol=0)


def test_mlm_decoder_is_tied_to_word_embeddings(tmp_path):
    m = tiny()
    assert m.mlm_head.decoder.weight is m.embeddings.word_embeddings.weight
    assert m.mlm_head.decoder.bias.shape == (50,)
    assert zoo.registry.count_parameters(m) == sum(p.numel() for p in m.parameters())  # counted once
    save_safetensors(m, tmp_path / "w.safetensors")
    m2 = zoo.create_model("bert_tiny", **TINY)
    load_pretrained(m2, tmp_path / "w.safetensors")
    assert m2.mlm_head.decoder.weight is m2.embeddings.word_embeddings.weight
    ids, mask = batch()
    torch.testing.assert_close(m2.eval()(ids, mask), m(ids, mask))


def test_token_type_none_equals_zeros_and_types_matter():
    m = tiny(head="none")
    ids, mask = batch()
    zeros = torch.zeros_like(ids)
    assert torch.equal(m(ids, mask), m(ids, mask, zeros))
    assert not torch.allclose(m(ids, mask), m(ids, mask, torch.ones_like(ids)))


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_param_counts_match_reference(name):
    ref = REFERENCE_PARAMS[name]
    with_pooler = zoo.model_info(name, head="cls", num_classes=0)["params"]  # = BertModel (embeddings + encoder + pooler)
    assert abs(with_pooler - ref) / ref < 0.01
    mlm = zoo.model_info(name)["params"]  # default head: no pooler, MLM transform + V-sized bias
    assert abs(mlm - ref) / ref < 0.01
    cfg = zoo.get_config(name)
    assert (cfg.vocab_size, cfg.max_positions, cfg.type_vocab_size, cfg.dim // cfg.num_heads) == (30522, 512, 2, 64)


def test_errors_name_the_problem():
    m = tiny()
    with pytest.raises(ValueError, match="exceeds the model's maximum of 16"):
        m(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown BERT head 'seq2seq'"):
        tiny(head="seq2seq")
    with pytest.raises(ValueError, match="outside \\[0, 50\\)"):
        m(torch.full((1, 4), 50))
    with pytest.raises(ValueError, match="token_type_ids must lie in"):
        m(torch.ones(1, 4, dtype=torch.long), token_type_ids=torch.full((1, 4), 2))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        m(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="pad_token_id=60"):
        tiny(pad_token_id=60)
    with pytest.raises(ValueError, match="has no classifier"):
        m.reset_classifier(3)


def test_overrides_reach_the_modules():
    m = zoo.create_model("bert_tiny", vocab_size=77, pad_token_id=3, dropout=0.3, max_positions=40)
    assert m.embeddings.word_embeddings.weight.shape == (77, 128)
    assert m.embeddings.word_embeddings.padding_idx == 3
    assert torch.all(m.embeddings.word_embeddings.weight[3] == 0)
    assert m.embeddings.position_embeddings.weight.shape == (40, 128)
    assert m.embeddings.drop.p == 0.3 and m.encoder.blocks[0].attn.proj_drop.p == 0.3
    assert not m.encoder.blocks[0].norm_first and m.encoder.blocks[0].norm1.eps == 1e-12




def test_tiny_bert_overfits_a_handful_of_sequences(one_thread):
    torch.manual_seed(0)
    m = zoo.create_model("bert_tiny", **{**TINY, "dim": 64, "num_heads": 4}, head="cls", num_classes=4).train()
    ids, mask = batch(b=12, length=12, seed=2)
    mask[:] = 1
    labels = torch.arange(12) % 4
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(60):  # reaches ~0.004 after 50 steps (about 0.5 s of CPU)
        loss = F.cross_entropy(m(ids, mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    final = F.cross_entropy(m(ids, mask), labels).item()
    assert final < 0.02, final


def test_cls_head_forward_computes_the_last_block_for_the_first_token_only():
    """The "cls" head reads the first token: forward's last block computes that row only, with the same logits and
    gradients as forward_head(forward_features(...)) (float64, padded batch, dropout off); capture_attention still
    records full maps; the other heads read every token."""
    torch.manual_seed(0)
    model = zoo.create_model("bert_tiny", head="cls", num_classes=3, **TINY).double()
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    model.train()  # dropout is 0 in TINY: training mode only switches the path, not the numbers
    with FlopCounterMode(display=False) as short:
        losses = [model(ids, mask).square().sum()]
    with FlopCounterMode(display=False) as full:
        losses.append(model.forward_head(model.forward_features(ids, mask)).square().sum())
    assert short.get_total_flops() < full.get_total_flops()
    torch.testing.assert_close(losses[0], losses[1], atol=1e-12, rtol=1e-12)
    grads = [torch.autograd.grad(loss, list(model.parameters()), allow_unused=True) for loss in losses]
    for with_shortcut, every_row in zip(*grads):
        if every_row is not None:
            torch.testing.assert_close(with_shortcut, every_row, atol=1e-10, rtol=1e-8)
    with zoo.core.capture_attention(model.eval()) as maps:
        model(ids, mask)
    assert maps["encoder.blocks.1.attn"].shape == (3, 2, 9, 9)
    for head in ("mlm", "token", "none"):
        assert zoo.create_model("bert_tiny", head=head, **TINY).head_queries() is None
