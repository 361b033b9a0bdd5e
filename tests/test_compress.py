"""Quantization, magnitude and head pruning, gradient checkpointing, and `zoo compress`."""
import copy
import json
import pathlib

import pytest
import torch

import zoo
from zoo.compress import (
    accuracy, head_importance, classification_loss, load_compressed, make_pruning_permanent, num_heads, prune_heads,
    prune_heads_global, prunable_linears, prune_linear, quantize_int8, set_gradient_checkpointing, size_on_disk, sparsity,
)
from zoo.core import MultiHeadAttention


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return zoo.create_model("vit_mnist", depth=2).eval()


def _zero_head_columns(attn, heads):
    d = attn.head_dim
    with torch.no_grad():
        for h in heads:
            attn.proj.weight[:, h * d:(h + 1) * d] = 0


@pytest.mark.parametrize("fused", [True, False])
def test_prune_heads_equals_masking_those_heads(fused):
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, fused_qkv=fused).eval()
    ref = copy.deepcopy(attn)
    _zero_head_columns(ref, [0, 2])  # a removed head contributes nothing: zero its output columns
    x = torch.randn(2, 5, 32)
    prune_heads(attn, [0, 2])
    assert attn.num_heads == 2 and attn.proj.in_features == 16
    torch.testing.assert_close(attn(x), ref(x))
    prune_heads(attn, [1])  # indices are current heads: this is original head 3
    assert attn.pruned_heads == [0, 2, 3]
    with pytest.raises(ValueError, match="keep at least one"):
        prune_heads(attn, [0])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\)"):
        prune_heads(attn, [5])


def test_global_head_pruning_keeps_one_head_per_layer_and_round_trips(vit, tmp_path):
    from zoo.compress import save_compressed

    m = copy.deepcopy(vit)
    removed = prune_heads_global(m, 0.9)
    assert num_heads(m) == 2  # 8 heads, 7 requested, but every layer keeps one
    x = torch.randn(2, 1, 28, 28)
    save_compressed(m, tmp_path, "vit_mnist", {"depth": 2}, {n: a.pruned_heads for n, a in
                                                              zoo.compress.attention_modules(m).items()}, None)
    torch.testing.assert_close(load_compressed(tmp_path)(x), m(x))
    assert sum(len(v) for v in removed.values()) == 6


def test_head_importance_is_the_head_mask_gradient():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2).eval()
    x = torch.randn(3, 4, 16)
    loss_fn = lambda m, b: m(b).pow(2).sum()  # noqa: E731
    got = head_importance(attn, [x], loss_fn)[""]
    # reference: per example, d loss / d mask_h at mask = 1, mask scaling head h's input to proj
    want = torch.zeros(2)
    for b in range(3):
        mask = torch.ones(2, requires_grad=True)
        q, k, v = attn._project(x[b:b + 1], None)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v) * mask[None, :, None, None]
        loss = attn.proj(out.transpose(1, 2).reshape(1, 4, 16)).pow(2).sum()
        want += torch.autograd.grad(loss, mask)[0].abs()
    torch.testing.assert_close(got, want)


def test_magnitude_pruning_sparsity_and_which_weights(vit):
    m = prune_linear(copy.deepcopy(vit), 0.5)
    assert sparsity(m) == pytest.approx(0.5, abs=1e-3)
    lin = m.encoder.blocks[0].mlp.fc1
    kept = lin.weight_orig.abs()[lin.weight_mask.bool()]
    dropped = lin.weight_orig.abs()[~lin.weight_mask.bool()]
    assert kept.min() >= dropped.max()  # the smallest magnitudes went
    assert m.head.weight.ne(0).all()  # the classifier is left alone
    make_pruning_permanent(m)
    assert not any("mask" in k or "orig" in k for k in m.state_dict())
    s = prune_linear(copy.deepcopy(vit), 0.25, structured=True)
    rows = s.encoder.blocks[0].mlp.fc1.weight.eq(0).all(1)
    assert rows.float().mean() == pytest.approx(0.25, abs=0.01)
    with pytest.raises(ValueError, match="fraction of weights"):
        prune_linear(copy.deepcopy(vit), 1.5)


def test_int8_quantization_is_close_and_smaller(vit):
    x = torch.randn(4, 1, 28, 28)
    q = quantize_int8(vit, "torch.ao")
    ref = vit(x)
    assert (q(x) - ref).abs().max() < 0.05 * ref.abs().max()
    assert size_on_disk(q) < 0.5 * size_on_disk(vit)
    assert isinstance(vit.head, torch.nn.Linear)  # the original is untouched
    with pytest.raises(ValueError, match="unknown quantization backend"):
        quantize_int8(vit, "int4")


def test_sparsity_of_an_int8_model_counts_its_int8_weights(vit):
    pruned = make_pruning_permanent(prune_linear(copy.deepcopy(vit), 0.5))
    q = quantize_int8(pruned, "torch.ao")
    # the float zeros stay zeros in int8, and small weights that round to the zero point are zeros too
    want_zeros = want_total = 0
    for name, lin in prunable_linears(pruned):
        scale = q.get_submodule(name).weight().q_scale()  # symmetric int8: |w| < scale / 2 rounds to 0
        want_zeros += int((lin.weight.abs() < scale / 2).sum())
        want_total += lin.weight.numel()
    assert sparsity(q) == pytest.approx(want_zeros / want_total, abs=2e-4)
    assert 0.5 <= sparsity(q) < 0.6
    assert sparsity(quantize_int8(vit, "torch.ao")) < 0.1  # not NaN, and the head is not counted:
    assert sparsity(q, include_heads=True) != sparsity(q)


def test_gradient_checkpointing_same_outputs_and_grads():
    torch.manual_seed(0)
    models = {"vit": (zoo.create_model("vit_digits", depth=2), (torch.randn(2, 1, 8, 8),)),
              "bert": (zoo.create_model("bert_tiny", head="cls", depth=2, dropout=0.0, attn_dropout=0.0),
                       (torch.randint(3, 100, (2, 7)),))}
    for name, (m, args) in models.items():
        m.train()
        ref_out = m(*args)
        ref_out.sum().backward()
        ref = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        m.zero_grad()
        assert set_gradient_checkpointing(m, True) >= 1
        out = m(*args)
        out.sum().backward()
        torch.testing.assert_close(out, ref_out)
        for n, p in m.named_parameters():
            if n in ref:
                torch.testing.assert_close(p.grad, ref[n], msg=f"{name}: {n}")
        set_gradient_checkpointing(m, False)
        assert all(not s.gradient_checkpointing for s in m.modules() if isinstance(s, zoo.core.TransformerStack))
    with pytest.raises(ValueError, match="no zoo TransformerStack"):
        set_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_zoo_compress_command_writes_weights_and_report(vit, tmp_path):
    from zoo.compress import main
    from zoo.weights import save_safetensors

    save_safetensors(vit, tmp_path / "w.safetensors")
    out = tmp_path / "out"
    rc = main(["--ckpt", str(tmp_path / "w.safetensors"), "--model", "vit_mnist", "--model-kwargs", '{"depth": 2}',
               "--quantize", "int8", "--backend", "torch.ao", "--prune", "0.5", "--prune-kind", "heads", "--out", str(out)])
    assert rc == 0
    rows = json.loads((out / "report.json").read_text())
    assert [r["heads"] for r in rows] == ["8/8", "4/8", "4/8"]
    assert rows[2]["size_MB"] < rows[1]["size_MB"] < rows[0]["size_MB"]
    meta = json.loads((out / "compress.json").read_text())
    assert meta["quantized"] == "torch.ao" and sum(map(len, meta["pruned_heads"].values())) == 4
    x = torch.randn(2, 1, 28, 28)
    reloaded = load_compressed(out)
    assert reloaded(x).shape == (2, 10) and num_heads(reloaded) == 4


def test_accuracy_on_text_batches_ignores_minus_100():
    class Echo(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return torch.nn.functional.one_hot(input_ids, 4).float()

    batch = {"input_ids": torch.tensor([[0, 1, 2]]), "labels": torch.tensor([[0, 3, -100]])}
    assert accuracy(Echo(), [batch]) == 0.5
    assert classification_loss(Echo(), batch) > 0


def test_compress_data_defaults_to_the_runs_own_settings(capsys):
    """`--data X` for the data module the run trained on takes the run's stored arguments (then --data-args):
    built with its class defaults, a text module would have another vocabulary, numbers and test split."""
    from types import SimpleNamespace

    from zoo.compress import _data

    recipe = "data:\n  class_path: zoo.data.images.MNIST5k\n  init_args: {batch_size: 32, label_fraction: 0.5, predict_images: null}\n"
    run = SimpleNamespace(cli_config=recipe, tokenizer=None, source="unused.ckpt")
    dm = _data("zoo.data.MNIST5k", {"batch_size": 16}, run)  # another path to the same class
    assert dm.batch_size == 16 and dm.hparams.label_fraction == 0.5 and len(dm.splits["train"]) == 1800
    assert "with the run's own settings" in capsys.readouterr().err
    other = _data("zoo.data.images.Digits", {}, run)  # another data module: its own defaults, no notice
    assert other.hparams.label_fraction == 1.0 and capsys.readouterr().err == ""


def test_cli_arguments_are_checked_and_named(tmp_path, capsys):
    from zoo.cli import main

    for argv, words in ((["latency", "--model", "vit_digits", "--batch", "0"], "argument --batch: must be an integer >= 1"),
                        (["--model", "vit_digits", "--prune", "-0.1", "--out", str(tmp_path / "a")],
                         "argument --prune: is the fraction to remove and must lie in [0, 1), got -0.1"),
                        (["--model", "vit_digits", "--data", "zoo.data.images.Digits", "--data-args", "{bad",
                          "--out", str(tmp_path / "b")], "--data-args is not JSON")):
        with pytest.raises(SystemExit) as e:
            main(["compress", *argv])
        err = capsys.readouterr().err
        assert e.value.code in (1, 2) and words in err and "zoo compress: error: zoo compress" not in err, err
    # --model alone: the registered model with random weights (it crashed on the missing --ckpt)
    with pytest.raises(SystemExit) as e:
        main(["compress", "--model", "vit_digits", "--quantize", "int8", "--out", str(tmp_path / "c")])
    assert e.value.code == 0 and (tmp_path / "c" / "compress.json").is_file()


def test_a_compressed_folder_works_with_predict_export_and_serve(tmp_path, capsys, monkeypatch):
    """`zoo compress --out DIR` writes what every command takes as a model: zoo predict / export / serve --model DIR."""
    from PIL import Image
    from test_configs import fit

    from zoo.cli import main
    from zoo.serve.limits import Limits
    from zoo.serve.server import build_server

    monkeypatch.chdir(tmp_path)
    fit("vit_digits", tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "1", "--test_after_fit", "false", fast_dev_run=False)
    for argv in (["compress", "--ckpt", "runs/vit_digits", "--prune", "0.5", "--prune-kind", "heads", "--out", "heads"],
                 ["predict", "--model", "heads", "digit.png", "--trainer.enable_progress_bar", "false"],
                 ["export", "--model", "heads", "--out", "heads.onnx"]):
        if argv[0] == "predict":
            Image.new("L", (8, 8), 120).save("digit.png")
        with pytest.raises(SystemExit) as e:
            main(argv)
        out = capsys.readouterr()
        assert e.value.code == 0, out.err[-1500:]
    assert out.out and (tmp_path / "heads.onnx").is_file()
    _, meta = build_server("heads", Limits())
    assert meta["model"] == "vit_digits" and meta["use"] == "image-classification"


def test_an_int8_folder_loads_without_torch_s_typedstorage_warning(vit, tmp_path):
    """`zoo predict --model DIR` of an int8 folder prints no deprecation warning from inside torch's unpickler
    (quantized tensors are rebuilt through TypedStorage there, which says nothing to the user)."""
    import warnings

    from zoo.compress import save_compressed

    save_compressed(quantize_int8(vit, "torch.ao"), tmp_path, "vit_mnist", {"depth": 2}, {}, "torch.ao")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_compressed(tmp_path)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_compress_never_writes_into_an_existing_folder_or_the_tag_it_reads(tmp_path, monkeypatch, capsys):
    """`--out` was written into whatever folder it named: a shipped tag's own folder (`--ckpt vit_digits.sklearn_digits
    --out <its folder>` replaced the checksummed weights, and the tag no longer loaded), or a user's folder, whose
    report.md was replaced and whose other files stayed beside the new ones."""
    import hashlib
    import shutil

    from zoo import pretrained
    from zoo.cli import main

    folder = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, folder)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
    tag_dir = folder / "vit_digits.sklearn_digits"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")

    def digest(d):
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}

    before = {d: digest(d) for d in (tag_dir, mine)}
    for out, words in ((tag_dir, "is the input vit_digits.sklearn_digits"), (mine, "already holds files"),
                       (mine / "report.md" / "sub", "is an existing file")):
        for extra in ([], ["--quantize", "int8"]):
            with pytest.raises(SystemExit) as e:
                main(["compress", "--ckpt", "vit_digits.sklearn_digits", "--prune", "0.5", *extra, "--out", str(out)])
            err = capsys.readouterr().err
            assert e.value.code == 1 and words in err and "Traceback" not in err, err
    assert {d: digest(d) for d in (tag_dir, mine)} == before
    zoo.create_model("vit_digits.sklearn_digits", pretrained=True)  # the checksums still hold
    # a new folder, or an empty one, is written whole: weights, compress.json and the report, nothing else
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new" / "c", tmp_path / "empty"):
        with pytest.raises(SystemExit) as e:
            main(["compress", "--ckpt", "vit_digits.sklearn_digits", "--quantize", "int8", "--out", str(out)])
        assert e.value.code == 0
        assert sorted(f.name for f in out.iterdir()) == ["compress.json", "model_int8.pt", "report.json", "report.md"]
    assert not [p for p in tmp_path.rglob(".*") if p.name.startswith(".")]  # no temporary folder left behind


def test_a_model_from_load_run_reads_images_as_its_weights_expect(tmp_path):
    """zoo.load_run(DIR).model (README: a compressed DIR loads like a run) carried no pretrained_cfg, so
    zoo.resolve_data_config(model) gave the default mean/std 0.5 instead of the run's (MNIST's 0.1307 / 0.3081 for the
    shipped tag): user images were normalised differently from training, silently."""
    from zoo.compress import quantize_int8, save_compressed
    from zoo.runs import load_run

    image = {"size": 8, "in_chans": 1, "mean": 0.2, "std": 0.3}
    save_compressed(quantize_int8(zoo.create_model("vit_digits").eval(), "torch.ao"), tmp_path / "c", "vit_digits", {}, {},
                    "torch.ao", record={"image": image, "labels": [str(i) for i in range(10)]})
    for source, mean, std in ((str(tmp_path / "c"), 0.2, 0.3), ("vit_mnist.mnist5k", 0.1307, 0.3081)):
        model = load_run(source).model
        cfg = zoo.resolve_data_config(model)
        assert (cfg["mean"], cfg["std"]) == ((mean,), (std,)), (source, cfg)
        assert cfg == zoo.resolve_data_config(load_run(source))  # the model alone says what the run says


def test_latency_compares_float32_int8_and_bf16_as_lesson_9_says(capsys):
    """Lesson 9: '`zoo compress latency` compares float32, int8 and bf16'; it measured float32 and int8 only."""
    from zoo.compress import latency_main

    assert latency_main(["--model", "vit_digits", "--rounds", "1", "--backends", "torch.ao"]) == 0
    rows = {r.split("|")[2].strip(): [c.strip() for c in r.split("|")[1:-1]] for r in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["fp32", "int8 torch.ao", "bf16 autocast"], rows
    size, diff = (lambda r: (float(r[5]), float(r[8])))(rows["bf16 autocast"])
    assert size == float(rows["fp32"][5]) and 0 < diff < 0.1  # float32 weights; bf16's rounding, not another model
    lesson = (pathlib.Path(__file__).parents[1] / "docs" / "lessons" / "09_compression.py").read_text()
    assert "compares float32, int8 and bf16" in " ".join(lesson.replace("#", " ").split())


def test_accuracy_of_language_models_scores_the_next_or_target_token():
    """`zoo compress --data` on a decoder-only LM compared each position's prediction with its own input token (the
    labels are the inputs; the task shifts them): a random GPT scored 0.75, copying. On an encoder-decoder it crashed
    (forward needs decoder_input_ids). Now: the next token, and the target token under teacher forcing."""
    from zoo.compress import accuracy, classification_loss
    from zoo.generation import shift_right

    torch.manual_seed(0)
    gpt = zoo.create_model("gpt2_tiny", depth=1, dim=32, num_heads=2, vocab_size=50, max_positions=16).eval()
    ids = torch.randint(3, 50, (4, 12))
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        logits = gpt(ids, mask)
    nxt, tgt = logits[:, :-1].argmax(-1), labels[:, 1:]
    keep = tgt != -100
    assert accuracy(gpt, [batch]) == pytest.approx(float((nxt[keep] == tgt[keep]).float().mean()))
    assert accuracy(gpt, [batch]) < 0.5 < float((logits.argmax(-1)[mask == 1] == ids[mask == 1]).float().mean())  # not copying
    torch.testing.assert_close(classification_loss(gpt, batch),
                               torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), tgt.reshape(-1), ignore_index=-100))

    t5 = zoo.create_model("transformer_tiny", num_encoder_layers=1, num_decoder_layers=1, d_model=32, num_heads=2,
                          dim_feedforward=64, vocab_size=50).eval()
    src, tgt = torch.randint(3, 50, (3, 7)), torch.randint(3, 50, (3, 5))
    tgt[1, 3:] = -100
    with torch.no_grad():
        dec = shift_right(tgt, t5.config.decoder_start_token_id, t5.config.pad_token_id)
        pred = t5(src, dec, attention_mask=torch.ones_like(src)).argmax(-1)
    keep = tgt != -100
    batch = {"input_ids": src, "attention_mask": torch.ones_like(src), "labels": tgt}
    assert accuracy(t5, [batch]) == pytest.approx(float((pred[keep] == tgt[keep]).float().mean()))

    from zoo.compress import check_scored

    with pytest.raises(ValueError, match=r"--data: .*clip_tiny is a dual_encoder model: drop --data"):
        check_scored(zoo.create_model("clip_tiny"))


def test_sweep_without_fine_tuning_reports_no_fine_tuned_accuracy(tmp_path):
    """With --finetune-epochs 0 the baseline row said nan under test_acc_finetuned, but every pruned row repeated its
    un-fine-tuned accuracy there, as if fine-tuning had been measured (and changed nothing)."""
    import csv
    import math

    from zoo.compress import sweep_main

    out = tmp_path / "sweep.csv"
    assert sweep_main(["--ckpt", "vit_digits.sklearn_digits", "--data", "zoo.data.images.Digits", "--kinds", "unstructured",
                       "--amounts", "0.5", "--finetune-epochs", "0", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["kind"] for r in rows] == ["none", "unstructured"]
    assert all(math.isnan(float(r["test_acc_finetuned"])) for r in rows), rows
    assert 0.5 < float(rows[0]["test_acc_pruned"]) and float(rows[1]["linear_sparsity"]) == pytest.approx(0.5, abs=0.01)


def test_sweep_never_replaces_an_existing_file(tmp_path, capsys):
    """`zoo compress sweep --out FILE` replaced whatever FILE was (open(..., "w") after the sweep's minutes)."""
    from zoo.cli import main

    mine = tmp_path / "results.csv"
    mine.write_text("my results\n")
    with pytest.raises(SystemExit) as e:  # refused first: the checkpoint is not even read
        main(["compress", "sweep", "--ckpt", str(tmp_path / "none.ckpt"), "--data", "zoo.data.images.Digits",
              "--out", str(mine)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "--out" in err and "already exists" in err and "Traceback" not in err, err
    assert mine.read_text() == "my results\n"
