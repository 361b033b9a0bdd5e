"""CLIP: published sizes, feature normalisation, EOT pooling, the contrastive loss (one process and
two gloo processes), zero-shot prompt ensembling and the multimodal data (the recipe itself runs in test_configs.py)."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.data import multimodal as mm
from zoo.models.clip import clip_loss


@pytest.mark.parametrize("name,published", [("clip_vit_b32", 151_277_313), ("clip_vit_b16", 149_620_737)])
def test_published_parameter_counts(name, published):
    assert abs(zoo.model_info(name)["params"] - published) <= 0.01 * published


def tiny(**kw):
    torch.manual_seed(0)
    return zoo.create_model("clip_tiny", **kw).eval()


def test_features_logits_and_scale():
    m = tiny(eos_token_id=2)
    images, ids = torch.randn(3, 3, 32, 32), torch.randint(3, 1000, (4, 7))
    ids[:, -1] = 2
    img, txt = m.encode_image(images), m.encode_text(ids)
    assert img.shape == (3, 32) and txt.shape == (4, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(4))
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    torch.testing.assert_close(m(images, ids), img @ txt.T / 0.07, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)  # exp(10) would be 22026: clamped to 100
    assert m.scale().item() == pytest.approx(100.0)
    # the projections have no bias and the image tower has CLIP's ln_pre and no classifier
    assert m.visual_projection.bias is None and m.text_projection.bias is None
    assert isinstance(m.visual.norm_pre, torch.nn.LayerNorm) and m.visual.num_classes == 0
    assert m.visual.norm_pre.eps == 1e-5


def test_text_pooled_at_end_of_text_token():
    m = tiny(eos_token_id=2)
    ids = torch.tensor([[5, 6, 7, 2, 0, 0], [5, 6, 7, 2, 9, 9]])
    f = m.encode_text(ids)
    torch.testing.assert_close(f[0], f[1])  # tokens after EOT cannot reach it (causal)
    # the pooled vector is the ln_final state at the EOT position, projected
    hidden = m.text.forward_features(ids)
    torch.testing.assert_close(f, F.normalize(m.text_projection(hidden[:, 3]), dim=-1))
    changed = ids.clone()
    changed[0, 1] = 8
    assert not torch.allclose(m.encode_text(changed)[0], f[0])  # tokens before EOT do matter
    with pytest.raises(ValueError, match="end-of-text"):
        m.encode_text(torch.tensor([[5, 6, 7]]))
    # OpenAI convention: no eos id -> pool at the largest id of the row
    m2 = tiny()
    ids2 = torch.tensor([[5, 999, 6, 0]])
    torch.testing.assert_close(m2.text(ids2), m2.text.forward_features(ids2)[:, 1])


def test_clip_loss_formula():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    logits = 10 * a @ b.T
    expected = 0
    for i in range(5):  # -log softmax of the matching pair, both directions
        expected += -logits[i].log_softmax(0)[i] - logits[:, i].log_softmax(0)[i]
    torch.testing.assert_close(clip_loss(a, b, a, b, torch.tensor(10.0)), expected / 10)
    # label targets (UniCL): distinct labels give CLIP's loss; shared labels spread the target
    torch.testing.assert_close(clip_loss(a, b, a, b, torch.tensor(10.0), labels=torch.arange(5), all_labels=torch.arange(5)),
                               expected / 10)
    labels = torch.tensor([0, 0, 1, 2, 2])
    same = (labels[:, None] == labels[None]).float()
    manual = -(same / same.sum(1, keepdim=True) * (logits.log_softmax(1) + logits.T.log_softmax(1))).sum(1).mean() / 2
    torch.testing.assert_close(clip_loss(a, b, a, b, torch.tensor(10.0), labels=labels, all_labels=labels), manual)


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    from zoo.models.clip import distributed_clip_loss

    def run(rank, port, out):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        torch.manual_seed(0)
        img, txt = torch.randn(8, 6), torch.randn(8, 6)
        a = torch.nn.functional.normalize(img[rank * 4:(rank + 1) * 4], dim=-1).requires_grad_()
        b = torch.nn.functional.normalize(txt[rank * 4:(rank + 1) * 4], dim=-1).requires_grad_()
        loss = distributed_clip_loss(a, b, torch.tensor(5.0))
        loss.backward()
        labels = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])[rank * 4:(rank + 1) * 4]
        label_loss = distributed_clip_loss(a.detach(), b.detach(), torch.tensor(5.0), labels)
        torch.save({"loss": loss.detach(), "ga": a.grad, "gb": b.grad, "label_loss": label_loss}, f"{out}/rank{rank}.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        mp.start_processes(run, args=(port, sys.argv[1]), nprocs=2, start_method="fork")
""")


def test_contrastive_loss_gathers_across_two_processes(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch.manual_seed(0)
    img, txt = torch.randn(8, 6), torch.randn(8, 6)
    a = F.normalize(img, dim=-1).requires_grad_()
    b = F.normalize(txt, dim=-1).requires_grad_()
    full = clip_loss(a, b, a, b, torch.tensor(5.0))
    full.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # the mean of the per-process losses is the loss of the global batch of 8 ...
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, full.detach())
    # ... and each process's feature gradient is world_size x the global one (DDP then averages)
    full_labels = clip_loss(a.detach(), b.detach(), a.detach(), b.detach(), torch.tensor(5.0),
                            labels=torch.tensor([0, 1, 2, 0, 1, 1, 2, 0]), all_labels=torch.tensor([0, 1, 2, 0, 1, 1, 2, 0]))
    torch.testing.assert_close((ranks[0]["label_loss"] + ranks[1]["label_loss"]) / 2, full_labels)
    for r in range(2):
        torch.testing.assert_close(ranks[r]["ga"], 2 * a.grad[r * 4:(r + 1) * 4])
        torch.testing.assert_close(ranks[r]["gb"], 2 * b.grad[r * 4:(r + 1) * 4])


def test_zero_shot_classifier_ensembles_templates():
    m = tiny(eos_token_id=2)
    torch.manual_seed(1)
    ids = torch.randint(3, 1000, (6, 5))  # 2 templates x 3 classes, template-major
    ids[:, -1] = 2
    cls = m.zero_shot_classifier(ids, num_classes=3)
    feats = m.encode_text(ids)
    torch.testing.assert_close(cls, F.normalize(feats[:3] + feats[3:], dim=-1))
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m.zero_shot_logits(images, cls), m.scale() * m.encode_image(images) @ cls.T)
    with pytest.raises(ValueError, match="whole number of templates"):
        m.zero_shot_classifier(ids[:5], num_classes=3)


def test_captions_and_held_out_templates():
    for lang in mm.LANGUAGES:  # zero-shot prompts never appear among the training templates
        assert not set(mm.HELD_OUT_TEMPLATES[lang]) & set(mm.TRAIN_TEMPLATES[lang])
    assert mm.digit_word(7, "fr") == "sept" and mm.digit_word(7, "de") == "sieben" and mm.digit_word(7, "es") == "siete"
    caps = mm.captions(mm.TRAIN_TEMPLATES)
    assert "a photo of the digit seven" in caps[7] and "sept" in caps[7] and "seven" not in caps[6]
    prompts = mm.class_prompts(languages=("en", "de"))
    n_templates = len(mm.HELD_OUT_TEMPLATES["en"]) + len(mm.HELD_OUT_TEMPLATES["de"])
    assert len(prompts) == 10 * n_templates and prompts[3] == mm.HELD_OUT_TEMPLATES["en"][0].format("three")
    with pytest.raises(ValueError, match="unknown caption languages"):
        mm.captions(mm.TRAIN_TEMPLATES, languages=("xx",))
    tok = mm.build_tokenizer()
    ids = tok("una foto del dígito siete")["input_ids"]
    assert ids[-1] == tok.eos_token_id == 2 and tok.decode(ids, skip_special_tokens=True) == "una foto del dígito siete"
    tok2 = mm.tokenizer_from_state(mm.tokenizer_state(tok))
    assert tok2("ein foto der ziffer acht")["input_ids"] == tok("ein foto der ziffer acht")["input_ids"]


def test_word_dropout_keeps_the_number_word():
    dm = mm.MNISTCaptionsContrastive(word_dropout=0.5)
    labels = torch.arange(10).repeat(5)
    train_captions = {c for per_digit in mm.captions(mm.TRAIN_TEMPLATES) for c in per_digit}
    words = [{mm.digit_word(d, lang) for lang in mm.LANGUAGES} for d in range(10)]
    caps = dm.augmented_captions(labels)
    for d, cap in zip(labels.tolist(), caps):
        assert set(cap.split()) & words[d], cap  # the number word always survives
        assert set(cap.split()) <= {w for c in train_captions for w in c.split()}  # nothing new is invented
    assert any(c not in train_captions for c in caps)  # words were dropped
    with pytest.raises(ValueError, match="word_dropout"):
        mm.MNISTCaptionsContrastive(word_dropout=1.0)
