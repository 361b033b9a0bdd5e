"""The weights that ship with zoo: tags, checksums, accuracy re-measured on the held-out splits, and use with no training."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo import pretrained
from zoo.pretrained import PretrainedError

SHIPPED = ["clip_mnist.mnist5k", "transformer_numbers.en_fr", "vit_captioner_mnist.mnist5k", "vit_digits.sklearn_digits",
           "vit_mnist.mnist5k"]
BUDGET_BYTES = 15_000_000


def test_every_promised_tag_ships_within_the_size_budget():
    assert set(SHIPPED) <= set(zoo.list_pretrained())
    assert zoo.list_pretrained("vit_*") == ["vit_captioner_mnist.mnist5k", "vit_digits.sklearn_digits", "vit_mnist.mnist5k"]
    total = sum(f.stat().st_size for f in pretrained.WEIGHTS_DIR.rglob("*") if f.is_file())
    assert total <= BUDGET_BYTES, f"shipped weights take {total / 1e6:.1f} MB"


@pytest.mark.parametrize("tag", SHIPPED)
def test_tag_loads_checksummed_with_its_pretrained_config(tag):
    cfg = zoo.pretrained_cfg(tag)
    assert cfg.license and cfg.command and cfg.recipe and cfg.metric["name"] and 0 < cfg.metric["value"] <= 1
    assert set(cfg.files) >= {"config.json", "model.safetensors", "README.md"}
    assert all(len(h) == 64 for h in cfg.files.values())
    model = zoo.create_model(tag, pretrained=True)
    assert model.model_name == cfg.model and model.pretrained_cfg["tag"] == tag
    default = zoo.create_model(cfg.model, pretrained=True)  # the name's default tag
    for (k, a), b in zip(model.state_dict().items(), default.state_dict().values()):
        assert torch.equal(a, b), k
    random = zoo.create_model(tag)  # the tag's architecture with random weights, as timm does
    assert random.config == model.config and not torch.equal(next(iter(random.state_dict().values())),
                                                             next(iter(model.state_dict().values())))
    card = (cfg.path / "README.md").read_text()
    assert "library_name: zoo" in card and str(cfg.metric["value"]) in card


@pytest.mark.slow
@pytest.mark.parametrize("tag", SHIPPED)
def test_shipped_metric_is_re_measured_on_the_held_out_split(tag):
    cfg = zoo.pretrained_cfg(tag)
    measured = pretrained.evaluate(tag)
    assert abs(measured - cfg.metric["value"]) <= 0.005, f"{tag}: {measured:.4f} vs card {cfg.metric['value']}"


@pytest.fixture
def copied_weights(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, folder)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
    return folder


def test_corrupted_or_missing_file_is_named_with_the_fix(copied_weights):
    weights = copied_weights / "vit_mnist.mnist5k" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match=r"model.safetensors' of vit_mnist.mnist5k is corrupted.*make_pretrained.py --tag vit_mnist.mnist5k"):
        zoo.create_model("vit_mnist.mnist5k", pretrained=True)
    weights.unlink()
    with pytest.raises(PretrainedError, match=r"model.safetensors' of vit_mnist.mnist5k is missing.*make_pretrained.py"):
        zoo.create_model("vit_mnist", pretrained=True)


def test_unknown_tags_and_names_without_weights_are_named():
    with pytest.raises(PretrainedError, match=r"no pretrained weights 'vit_mnist.imagenet'; vit_mnist has: vit_mnist.mnist5k"):
        zoo.create_model("vit_mnist.imagenet")
    with pytest.raises(PretrainedError, match="vit_tiny_patch16_224 has no shipped weights"):
        zoo.create_model("vit_tiny_patch16_224", pretrained=True)


def test_translation_with_the_shipped_weights_and_no_training():
    model = zoo.create_model("transformer_numbers.en_fr", pretrained=True).eval()
    tok = zoo.get_tokenizer("transformer_numbers.en_fr")
    enc = tok(["three hundred and twelve", "forty-two"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=24)
    texts = [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    assert texts == ["trois cent douze", "quarante-deux"]
    # a user's first tries are small numbers: the recipe trains on every one of 0..99 (the tag answered "one" with
    # "mille" while it got 99.6% of the held-out numbers right)
    from zoo.data.numbers import render

    enc = tok([render(n, "en") for n in range(100)], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=24)
    wrong = [(n, t) for n, t in enumerate(tok.batch_decode(out, skip_special_tokens=True)) if t.strip() != render(n, "fr")]
    assert not wrong


def _digit_pngs(folder: Path, n: int = 4) -> tuple[list[str], list[int]]:
    """Held-out MNIST-5k test digits written as PNG files, as a user would have them."""
    from PIL import Image

    from zoo.data.images import MNIST5k

    dm = MNIST5k()
    dm.setup("test")
    x, y = dm.splits["test"].tensors
    paths = []
    for i in range(n):
        pixels = ((x[i, 0] * dm.std + dm.mean).clamp(0, 1) * 255).round().byte().numpy()
        path = folder / f"digit_{i}.png"
        Image.fromarray(np.asarray(pixels)).save(path)
        paths.append(str(path))
    return paths, y[:n].tolist()


def test_zoo_predict_on_a_png_with_a_shipped_tag(tmp_path):
    paths, labels = _digit_pngs(tmp_path, n=20)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "zoo.cli", "predict", "--model", "vit_mnist.mnist5k", *paths],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if "\t" in line]
    assert [line.rsplit("\t", 1)[-1] for line in lines] == paths  # one line per file, in order
    right = sum(int(line.split("\t")[0]) == y for line, y in zip(lines, labels))
    assert right >= 18, (right, lines)  # the tag measures 97% on the whole test split; chance is 10%
    assert not (tmp_path / "runs").exists()  # predicting writes nothing
    # only what concerns the run on stderr: not Lightning's advertisement nor its own deprecation warnings
    assert "litlogger" not in out.stderr and "LeafSpec" not in out.stderr, out.stderr
    assert "GPU available" not in out.stderr and "Seed set" not in out.stderr, out.stderr  # set-up chatter, not answers


def test_a_mistyped_tag_or_a_missing_folder_is_one_line_naming_the_tags(tmp_path, capsys):
    from zoo.cli import main

    for source, what in (("vit_mnist.mnist6k", "is no shipped tag; did you mean vit_mnist.mnist5k"),
                         (str(tmp_path / "runs" / "nothing"), "does not exist"),
                         (str(tmp_path), "holds no zoo model")):
        with pytest.raises(SystemExit) as e:
            main(["predict", "--model", source, "digit.png"])
        err = capsys.readouterr().err
        assert e.value.code == 1 and f"--model {source} {what}" in err, err
        assert "vit_mnist.mnist5k, " in err or "vit_mnist.mnist5k)" in err  # the shipped tags are named
        assert len(err.strip().splitlines()) == 2  # the error and the --verbose hint, not a usage dump


def test_model_info_of_a_tag_is_the_architecture_of_its_weights_and_what_they_measured():
    for tag in zoo.list_pretrained():
        info = zoo.model_info(tag)
        model = zoo.create_model(tag, pretrained=True)
        assert info["params"] == sum(p.numel() for p in model.parameters()), tag
        assert info["config"] == dataclasses.asdict(model.config), tag
        assert info["pretrained"]["metric"] == zoo.pretrained_cfg(tag).metric and "files" not in info["pretrained"]
    assert "pretrained" not in zoo.model_info("vit_mnist")
    with pytest.raises(ValueError, match="vit_mnist has: vit_mnist.mnist5k"):
        zoo.model_info("vit_mnist.mnist9k")


def test_user_images_through_resolve_data_config_and_create_transform(tmp_path):
    from PIL import Image

    from zoo.data.images import read_images

    paths, labels = _digit_pngs(tmp_path, n=2)
    model = zoo.create_model("vit_mnist.mnist5k", pretrained=True).eval()
    config = zoo.resolve_data_config(model)
    assert config["input_size"] == (1, 28, 28) and config["mean"] == (model.pretrained_cfg["image"]["mean"],) * 1
    transform = zoo.create_transform(config)
    with Image.open(paths[0]) as im:
        x = transform(im)[None]
    image = model.pretrained_cfg["image"]
    torch.testing.assert_close(x, read_images(paths[:1], image["size"], image["in_chans"], image["mean"], image["std"]))
    with torch.no_grad():
        assert model(x).argmax(-1).item() == labels[0]
    # the same digit saved as a 16-bit PNG reads as the 8-bit one (Pillow's convert("L") clipped it to black and white)
    import numpy as np

    with Image.open(paths[0]) as im:
        grey = np.asarray(im.convert("L"), dtype=np.uint16)
    deep = tmp_path / "deep.png"
    Image.fromarray(grey * 257).save(deep)  # 0..255 -> 0..65535
    with Image.open(deep) as im:
        assert im.mode.startswith("I") and float(np.asarray(im).max()) > 255
        torch.testing.assert_close(transform(im)[None], x)
    torch.testing.assert_close(read_images([str(deep)], image["size"], image["in_chans"], image["mean"], image["std"]), x)


def test_pretrained_with_other_num_classes_gets_a_new_head_as_in_timm():
    """create_model(name, pretrained=True, num_classes=5): every pretrained tensor but the head's, and a zeroed head
    of 5 classes (timm's fine-tuning call); the tag's 10 labels do not travel with it."""
    ref = zoo.create_model("vit_mnist", pretrained=True)
    model = zoo.create_model("vit_mnist", pretrained=True, num_classes=5)
    new, old = model.state_dict(), ref.state_dict()
    assert model.num_classes == 5 and model.get_classifier().weight.shape == (5, ref.num_features)
    assert all(torch.equal(new[k], old[k]) for k in new if not k.startswith("head."))
    assert float(model.get_classifier().weight.abs().sum()) == 0.0
    assert "labels" not in model.pretrained_cfg and model(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    same = zoo.create_model("vit_mnist", pretrained=True, num_classes=10)  # the weights' own head: loaded
    assert torch.equal(same.get_classifier().weight, ref.get_classifier().weight)


def test_zoo_predict_answers_texts_and_text_files_in_the_order_given(tmp_path, capsys, monkeypatch):
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "two.txt").write_text("three hundred and twelve\n\nninety-nine\n")
    with pytest.raises(SystemExit) as e:
        main(["predict", "--model", "transformer_numbers.en_fr", "forty-two", "two.txt", "seven",
              "--trainer.enable_progress_bar", "false"])
    out = capsys.readouterr().out.splitlines()
    assert e.value.code == 0 and out == ["quarante-deux", "trois cent douze", "quatre-vingt-dix-neuf", "sept"], out


def test_zoo_predict_names_a_file_a_text_model_cannot_read(tmp_path, capsys, monkeypatch):
    """An image given to a text model: one line naming the file and why (it said "'utf-8' codec can't decode byte
    0x89 in position 0" and named neither)."""
    from PIL import Image

    from zoo.cli import main
    from zoo.data.textdata import read_text_files

    monkeypatch.chdir(tmp_path)
    Image.new("L", (28, 28)).save(tmp_path / "d3.png")
    with pytest.raises(SystemExit) as e:
        main(["predict", "--model", "transformer_numbers.en_fr", "three", "d3.png"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" not in err
    assert ("zoo predict: error: d3.png is not a UTF-8 text file (a text model reads texts and text files with one "
            "input per line; it looks like a PNG image, and byte 0x89 at position 0 is not UTF-8)") in err, err
    (tmp_path / "latin.txt").write_bytes("trois\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.txt is not a UTF-8 text file .*byte 0xe9 at position 9 is not UTF-8\)"):
        read_text_files(["latin.txt"])


def test_timm_data_config_reads_what_the_weights_expect():
    """timm.data.resolve_model_data_config(model) read none of zoo's keys: every zoo model got ImageNet's 3x224x224
    input and normalisation. A tag's architecture without its weights (timm's create_model(name.tag)) now reads
    images as the tag does too (it fell back to mean = std = 0.5)."""
    timm_data = pytest.importorskip("timm.data")
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct")
    for model in (zoo.create_model("vit_mnist.mnist5k", pretrained=True), zoo.create_model("vit_mnist.mnist5k"),
                  zoo.create_model("vit_digits"), zoo.create_model("clip_mnist.mnist5k")):
        ours = zoo.resolve_data_config(model)
        theirs = timm_data.resolve_model_data_config(model)
        assert {k: theirs[k] for k in keys} == ours
    assert zoo.resolve_data_config(zoo.create_model("vit_mnist.mnist5k"))["std"] == (0.3081,)
    assert zoo.resolve_data_config(zoo.create_model("vit_digits"))["input_size"] == (1, 8, 8)
    assert zoo.create_model("gpt2_tiny").pretrained_cfg == {}  # no images in: no data keys
