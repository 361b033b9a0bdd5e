"""DeiT distilled ViTs, the distillation loss against its formula, teachers and a short training."""
import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.tasks.distill import ImageDistillation, distillation_loss, load_teacher


def test_distilled_vit_heads_train_tuple_and_eval_average():
    model = zoo.create_model("vit_mnist_distilled", depth=1)
    x = torch.randn(3, 1, 28, 28)
    feats = model.eval().forward_features(x)
    assert feats.shape == (3, 2 + 49, 128)  # class + distillation token + 7x7 patches
    cls = model.head(model.fc_norm(feats[:, 2:].mean(1)))  # vit_mnist pools the patch tokens
    dist = model.head_dist(model.fc_norm(feats[:, 1]))
    torch.testing.assert_close(model(x), (cls + dist) / 2)
    model.train()
    assert model(x).shape == (3, 10)  # a plain classifier unless distilled training is switched on
    model.set_distilled_training(True)
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == out[1].shape == (3, 10)
    model.reset_classifier(0)
    assert model.eval()(x).shape == (3, 128)


def test_distilled_param_counts_match_timm_deit():
    # timm deit_tiny_distilled_patch16_224: 5,910,800; deit_small_distilled: 22,436,432
    assert zoo.model_info("vit_tiny_patch16_224_distilled")["params"] == 5_910_800
    assert zoo.model_info("vit_small_patch16_224_distilled")["params"] == 22_436_432


def test_soft_loss_matches_formula_and_tau_squared_scaling():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    tau, alpha = 3.0, 0.7
    p_t = F.softmax(t / tau, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / tau, -1))).sum(-1).mean() * tau ** 2
    want = (1 - alpha) * F.cross_entropy(s, y) + alpha * kl
    got = distillation_loss(s, t, y, "soft", alpha, tau)
    torch.testing.assert_close(got["loss"], want)
    torch.testing.assert_close(got["distill"], kl)
    assert distillation_loss(t, t, y, "soft", 1.0, tau)["loss"].abs() < 1e-6  # equal logits: no KL


def test_hard_loss_uses_teacher_argmax_on_the_distillation_head():
    cls, dist, t = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([1, 1, 1, 1])
    got = distillation_loss((cls, dist), t, y, "hard", 0.5)
    want = 0.5 * F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(dist, t.argmax(-1))
    torch.testing.assert_close(got["loss"], want)


def test_seq2seq_logits_ignore_padding_positions():
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    y = torch.tensor([[1, 2, -100], [3, -100, -100]])
    keep = y != -100
    got = distillation_loss(s, t, y, "soft", 1.0, 2.0)["loss"]
    want = distillation_loss(s[keep], t[keep], y[keep], "soft", 1.0, 2.0)["loss"]
    torch.testing.assert_close(got, want)
    s2 = s.clone()
    s2[0, 2] += 100  # a padded position does not matter
    torch.testing.assert_close(distillation_loss(s2, t, y, "soft", 1.0, 2.0)["loss"], got)


def test_bad_arguments_name_the_fix():
    s = torch.randn(2, 3)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="mode must be one of"):
        distillation_loss(s, s, y, "medium")
    with pytest.raises(ValueError, match=r"alpha .* \[0, 1\]"):
        distillation_loss(s, s, y, "soft", alpha=2)
    with pytest.raises(ValueError, match="same classes"):
        distillation_loss(s, torch.randn(2, 4), y, "soft")
    with pytest.raises(ValueError, match="needs a teacher"):
        load_teacher()
    with pytest.raises(FileNotFoundError, match="train the teacher first"):
        load_teacher("timm_resnet18_mnist", "no/such.ckpt")


def test_teacher_is_frozen_outside_the_checkpoint_and_loads_from_timm_state_dict(tmp_path):
    import timm

    net = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    torch.save(net.state_dict(), tmp_path / "r.pt")
    task = ImageDistillation("vit_mnist_distilled", teacher="timm:resnet10t", teacher_ckpt=str(tmp_path / "r.pt"),
                             model_kwargs={"depth": 1}, data_overrides={"num_classes": 10, "in_chans": 1, "img_size": 28})
    teacher = task.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(k.startswith("model.") for k in task.state_dict())  # the teacher is not saved with the student
    assert task.hparams.teacher == "timm:resnet10t"
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(task.teacher_logits(x), net.eval()(x))
    task.train()
    assert not teacher.training  # the task's train() does not reach the teacher


def test_distillation_pulls_the_student_towards_the_teacher():
    # 40 steps on random images: the student's distillation head learns the teacher's labelling
    torch.manual_seed(0)
    teacher = zoo.create_model("vit_digits", depth=1).eval()
    task = ImageDistillation("vit_digits", teacher="vit_digits", model_kwargs={"depth": 1}, distillation="soft",
                             alpha=1.0, tau=1.0, data_overrides={"num_classes": 10, "in_chans": 1, "img_size": 8})
    task.set_teacher(teacher)
    task.log = lambda *a, **k: None
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    opt = torch.optim.Adam(task.model.parameters(), lr=3e-3)
    with torch.no_grad():
        t = teacher(x)
    kl = lambda: F.kl_div(task.model.eval()(x).log_softmax(-1), t.log_softmax(-1), reduction="batchmean", log_target=True)  # noqa: E731
    before = kl().item()
    task.train()
    for _ in range(40):
        loss = task.training_step((x, y), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert kl().item() < 0.2 * before and math.isfinite(before)


def test_text_and_seq2seq_tasks_distill_from_a_zoo_teacher():
    from zoo.tasks.distill import Seq2SeqDistillation, TextDistillation

    torch.manual_seed(0)
    tiny = {"depth": 1, "dim": 32, "num_heads": 2}
    task = TextDistillation("bert_tiny", teacher="bert_tiny", teacher_kwargs=tiny, model_kwargs=tiny, alpha=1.0, tau=2.0,
                            data_overrides={"vocab_size": 50, "pad_token_id": 0, "num_classes": 3})
    task.log = lambda *a, **k: None
    assert task.teacher.config.head == "cls" and task.teacher.num_classes == 3
    batch = {"input_ids": torch.randint(1, 50, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.long),
             "labels": torch.tensor([0, 1, 2, 0])}
    task.eval()  # no dropout: compare with the formula
    want = distillation_loss(task.model(batch["input_ids"], batch["attention_mask"]),
                             task.teacher(batch["input_ids"], batch["attention_mask"]), batch["labels"], "soft", 1.0, 2.0)
    torch.testing.assert_close(task.training_step(batch, 0), want["loss"])

    s2s = {"num_encoder_layers": 1, "num_decoder_layers": 1, "d_model": 32, "num_heads": 2, "dim_feedforward": 32}
    task = Seq2SeqDistillation("transformer_tiny", teacher="transformer_tiny", teacher_kwargs=s2s, model_kwargs=s2s,
                               data_overrides={"vocab_size": 40, "pad_token_id": 0})
    task.log = lambda *a, **k: None
    batch = {"input_ids": torch.randint(3, 40, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long),
             "labels": torch.tensor([[5, 6, 2, -100], [7, 2, -100, -100]])}
    loss = task.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.requires_grad


def test_soft_targets_from_mixup_give_the_probability_cross_entropy():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    one_hot = F.one_hot(y, 5).float()
    for mode in ("soft", "hard"):
        torch.testing.assert_close(distillation_loss(s, t, one_hot, mode, 0.3, 2.0)["loss"],
                                   distillation_loss(s, t, y, mode, 0.3, 2.0)["loss"])
    mixed = 0.6 * one_hot + 0.4 * one_hot.roll(1, 0)
    want = -(mixed * F.log_softmax(s, -1)).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(s, t, mixed, "soft", 0.0)["loss"], want)


def test_mixup_mixes_images_and_targets_and_the_teacher_sees_the_mixed_batch():
    torch.manual_seed(0)
    task = ImageDistillation("vit_mnist_distilled", teacher="vit_mnist", model_kwargs={"depth": 1},
                             teacher_kwargs={"depth": 1}, distillation="soft", mixup=1.0, label_smoothing=0.0)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    mixed, targets, smoothing = task.mix(x.clone(), y)
    assert targets.shape == (8, 10) and smoothing == 0.0
    torch.testing.assert_close(targets.sum(-1), torch.ones(8))
    lam = targets[0, y[0]].item()  # timm mixes the batch with its flip: x[i] and x[7 - i]
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    odd, labels, smoothing = task.mix(x[:7].clone(), y[:7])  # timm mixes pairs: an odd batch stays as it is
    assert labels.dtype == torch.long and torch.equal(odd, x[:7]) and smoothing == task.hparams.label_smoothing
    seen = []
    task.teacher.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    torch.manual_seed(1)
    task.training_step((x.clone(), y), 0)
    assert len(seen) == 1 and not torch.allclose(seen[0], x)
    with pytest.raises(ValueError, match="mixup and cutmix"):
        ImageDistillation("vit_mnist_distilled", teacher="vit_mnist", mixup=-1.0)


def test_hint_loss_compares_layer_normalised_positions_on_the_coarser_grid():
    from zoo.tasks.distill import hint_loss

    s, t = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)
    pooled = s.reshape(2, 8, 2, 2, 2, 2).mean((3, 5))  # 2x2 average pooling of the finer student map
    ln = lambda m: F.layer_norm(m.flatten(2).transpose(1, 2), (8,))  # noqa: E731
    torch.testing.assert_close(hint_loss(s, t), ((ln(pooled) - ln(t)) ** 2).mean())
    # per-position normalisation: the teacher's scale and offset do not matter
    assert hint_loss(3 * t + 1, t).item() < 1e-8
    with pytest.raises(ValueError, match="channels"):
        hint_loss(torch.randn(2, 4, 2, 2), t)


def test_feature_map_reads_the_vit_grid_after_the_prefix_tokens():
    from zoo.tasks.distill import feature_map

    vit = zoo.create_model("vit_mnist_distilled", depth=1)
    tokens = torch.randn(2, vit.num_prefix + 49, 128)
    grid = feature_map(tokens, vit)
    assert grid.shape == (2, 128, 7, 7)
    torch.testing.assert_close(grid[:, :, 3, 5], tokens[:, vit.num_prefix + 3 * 7 + 5])
    with pytest.raises(ValueError, match="map or a zoo ViT"):
        feature_map(torch.randn(2, 5), vit)


def _hint_task(**kwargs):
    import timm

    task = ImageDistillation("vit_mnist_distilled", teacher="timm:resnet10t", model_kwargs={"depth": 2},
                             data_overrides={"num_classes": 10, "in_chans": 1, "img_size": 28}, distillation="soft",
                             alpha=0.5, tau=2.0, hints=[["encoder.blocks.0", "net.layer2"]], **kwargs)
    task.log = lambda *a, **k: None
    return task, timm


def test_hints_train_a_projection_that_stays_out_of_the_student_checkpoint(tmp_path):
    task, _ = _hint_task(hint_weight=2.0)
    (proj,) = task.hint_proj
    assert (proj.in_channels, proj.out_channels) == (128, 128)  # ViT width -> resnet10t layer2 channels
    assert any(p is proj.weight for g in task.param_groups() for p in g["params"])
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    task.train()
    loss = task.training_step((x, y), 0)
    loss.backward()
    assert proj.weight.grad.abs().sum() > 0
    assert task.model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.teacher.parameters())
    task.eval()
    task.model(x)
    assert not task._hint_out  # evaluation keeps no features
    # the hint term adds hint_weight x hint_loss to the logit losses
    task.hparams.hint_weight = 0.0
    torch.manual_seed(0)
    task.train()
    without = task.training_step((x, y), 0)
    task.hparams.hint_weight = 2.0
    torch.manual_seed(0)
    with_hint = task.training_step((x, y), 0)
    assert with_hint.item() > without.item()
    # the student's checkpoint loads as the plain model
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": {}}, tmp_path / "s.ckpt")
    assert any(k.startswith("hint_proj.") for k in task.state_dict())
    zoo.create_model("vit_mnist_distilled", depth=2, pretrained=str(tmp_path / "s.ckpt"))


def test_hints_pull_student_features_towards_the_teacher():
    task, _ = _hint_task(hint_weight=1.0)
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    opt = torch.optim.Adam([p for g in task.param_groups() for p in g["params"]], lr=2e-3)
    task.train()

    def hint():
        with task._capturing():
            task.model(x), task.teacher_logits(x)
            return task.hint_term().item()

    before = hint()
    for _ in range(30):
        loss = task.training_step((x, y), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert hint() < 0.5 * before


def test_bad_hints_name_the_fix():
    with pytest.raises(ValueError, match="student has no module 'encoder.blocks.9'"):
        ImageDistillation("vit_mnist_distilled", teacher="vit_mnist", model_kwargs={"depth": 1},
                          hints=[["encoder.blocks.9", "encoder.blocks.0"]])
    with pytest.raises(ValueError, match=r"\[student module, teacher module\] pair"):
        ImageDistillation("vit_mnist_distilled", teacher="vit_mnist", model_kwargs={"depth": 1}, hints=[["encoder"]])
    with pytest.raises(ValueError, match="need a teacher"):
        ImageDistillation("vit_mnist_distilled", hints=[["encoder.blocks.0", "net.layer2"]])


def test_a_distilled_student_predicts_and_tests_without_its_teacher(tmp_path, monkeypatch, capsys):
    """`zoo predict|test --model RUN` rebuild the run's recipe; the distillation recipe's teacher_ckpt (a path relative
    to where it was trained) was loaded too, so the student failed with 'teacher checkpoint ... does not exist' once
    the teacher was gone or the command ran elsewhere, although inference never runs the teacher."""
    import numpy as np
    from PIL import Image

    from zoo.cli import main
    from zoo.weights import save_safetensors

    from test_configs import SHRINK, fit
    from test_recipe_matrix import ONE_BATCH

    monkeypatch.chdir(tmp_path)
    teacher = tmp_path / "teacher.safetensors"
    save_safetensors(zoo.create_model("timm_resnet18_mnist"), teacher)
    shrink = SHRINK["vit_mnist_distill"][:2] + ["--model.init_args.teacher_ckpt", str(teacher)]
    monkeypatch.setitem(SHRINK, "vit_mnist_distill", shrink)  # the recipe's four hints, a teacher with weights
    cli = fit("vit_mnist_distill", tmp_path, *ONE_BATCH, fast_dev_run=False)
    assert len(cli.model.hint_proj) == 4
    student = cli.model.model.eval()
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(image)
    teacher.unlink()  # the teacher is gone; the student alone answers
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = str(tmp_path / "runs" / "vit_mnist_distill")
    for argv in (["predict", "--model", run, str(image)], ["test", "--model", run, "--trainer.limit_test_batches", "1"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv)
        out = capsys.readouterr()
        assert e.value.code == 0, out.err[-800:]
        assert "teacher" not in out.err
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", "--model", run, str(image), "--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true"])
    out_predict = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
    predicted = int(out_predict[0])
    with torch.no_grad():
        loaded = zoo.create_model("vit_mnist_distilled", pretrained=run).eval()  # the student alone, with the run's preprocessing
        x = zoo.create_transform(zoo.resolve_data_config(loaded))(Image.open(image))[None]
        torch.testing.assert_close(loaded(x), student(x))
        probs = student(x).softmax(-1)[0]
    assert predicted == int(probs.argmax()) and abs(float(out_predict[1]) - float(probs.max())) < 1e-4
