"""Every recipe, end to end through the CLI a user runs: a one-batch `zoo fit` writes a checkpoint into
its own run folder; that checkpoint loads through the one run loader and `create_model(pretrained=...)`,
and `zoo test` (with no --config: the checkpoint carries its recipe), `zoo predict` on the user's own
inputs, `zoo export`, `zoo compress` and `zoo viz` (where they apply) accept it.

Which command applies is read from the model's declared kind, never from a recipe or family name;
only the user inputs (image files, texts) are chosen per data format."""
from __future__ import annotations

import fnmatch
import os

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.cli import main
from zoo.contract import example_inputs, kind_of
from zoo.runs import load_run

from test_configs import CONFIGS, SHRINK, fit

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # recipes write runs/<name>/version_N relative to the working directory

ONE_BATCH = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
             "--test_after_fit", "false"]
TEXTS = {  # the user's own texts, in each text data module's format
    "zoo.data.numbers.NumberTranslation": ["forty-two", "three hundred and twelve"],
    "zoo.data.numbers.NumberComparison": ["forty-two ||| sept", "cent ||| ninety-nine"],
    "zoo.data.corpus.PydocMLM": ["the [MASK] of a module", "a [MASK] number"],
    "zoo.data.corpus.PydocLM": ["The import statement", "A class definition"],  # prompts to continue
}


def run_cli(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    assert e.value.code == 0, f"zoo {' '.join(argv)} exited {e.value.code}:\n{out.err[-2000:]}"
    return out.out


def user_images(folder, in_chans: int, n: int = 2) -> str:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):  # different sizes than the data: the loader resizes
        arr = rng.integers(0, 255, (40, 30) if in_chans == 1 else (40, 30, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"mine_{i}.png")
    return str(folder)


@pytest.mark.parametrize("name", sorted(SHRINK))
def test_recipe_checkpoint_works_with_every_command(name, tmp_path, capsys):
    cli = fit(name, tmp_path, *ONE_BATCH, fast_dev_run=False)
    run_dir = cli.trainer.default_root_dir
    assert run_dir == os.path.join("runs", name, "version_0")
    ckpt = os.path.join(run_dir, "checkpoints", "last.ckpt")
    assert os.path.isfile(ckpt)

    # the one run loader and the registry give the trained model, with the sizes the data decided
    run = load_run(ckpt)
    task_model = cli.model.model.eval()
    ex = example_inputs(run.model, 2, 8)
    with torch.no_grad():
        torch.testing.assert_close(run.model(*ex.args), task_model(*ex.args))
    assert zoo.create_model(run.name, pretrained=ckpt).config == task_model.config
    tok = getattr(cli.datamodule, "tokenizer", None)
    if tok is not None:  # the stored tokenizer is the one the run used, byte for byte
        from zoo.data.tokenizers import same_tokenizer

        assert same_tokenizer(run.tokenizer, tok)
    kind = kind_of(run.model)

    # zoo test: no --config, the checkpoint carries its recipe; with --config, the recipe's root folder stands for
    # its newest checkpoint as --ckpt_path
    run_cli(["test", "--ckpt_path", ckpt, "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"], capsys)
    run_cli(["test", "--config", os.path.join(CONFIGS, f"{name}.yaml"), *SHRINK[name], "--ckpt_path", os.path.join("runs", name),
             "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"], capsys)

    # what the test logs is what the task declares (zoo compare checks a study's metric against it before training)
    cli.trainer.limit_test_batches = 1
    logged = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    declared = type(cli.model).test_metrics
    assert declared and logged and all(any(fnmatch.fnmatchcase(k, p) for p in declared) for k in logged), (logged, declared)

    # zoo predict on the user's own inputs
    if run.image:
        inputs = ["--data.predict_images", f"[{user_images(tmp_path / 'mine', run.image['in_chans'])}]"]
        if kind == "dual_encoder":
            inputs += ["--data.predict_labels", '["a three", "a seven"]']
    else:
        inputs = ["--data.predict_texts", str(TEXTS[run.meta["data"]]).replace("'", '"')]
    out = run_cli(["predict", "--ckpt_path", ckpt, *inputs, "--trainer.enable_progress_bar", "false"], capsys)
    lines = out.splitlines()  # one line per input (an untrained seq2seq may print an empty text)
    assert len(lines) >= 2, out
    if run.image:  # each line ends with its file, in the order of the folder
        assert [line.split("\t")[-1] for line in lines[-2:]] == [str(tmp_path / "mine" / f"mine_{i}.png") for i in (0, 1)], lines
    if kind == "dual_encoder":  # class, probability, the candidate text, the file
        assert all(line.split("\t")[2] in ("a three", "a seven") for line in lines[-2:]), lines
    if not run.image:  # zoo predict --model <the recipe's root folder> TEXT ...: its newest checkpoint and tokenizer
        out = run_cli(["predict", "--model", os.path.join("runs", name), *TEXTS[run.meta["data"]],
                       "--trainer.enable_progress_bar", "false"], capsys)
        assert len(out.splitlines()) >= 2, out

    # zoo export (ONNX, verified in onnxruntime at another batch/length) and zoo compress (int8)
    onnx = tmp_path / "model.onnx"
    run_cli(["export", "--model", ckpt, "--out", str(onnx)], capsys)
    assert onnx.stat().st_size > 0
    run_cli(["compress", "--ckpt", ckpt, "--quantize", "int8", "--out", str(tmp_path / "int8")], capsys)
    assert (tmp_path / "int8" / "compress.json").is_file()
    small = load_run(str(tmp_path / "int8"))  # the folder is a run: its model, labels, image settings, tokenizer
    assert small.name == run.name and small.labels == run.labels and small.image == run.image
    assert (small.tokenizer is None) == (run.tokenizer is None)

    # zoo viz, where it applies (images: attention; encoder-decoders: cross-attention; dual encoders: similarity)
    figures = []
    if run.model.image_tower() is not None:
        figures.append(["attention"])
    if kind == "dual_encoder":
        figures.append(["clip-similarity"])
    if kind == "image_to_text":
        figures.append(["cross-attention"])
    if kind == "encoder_decoder":
        figures.append(["cross-attention", "--text", TEXTS[run.meta["data"]][0]])
    for args in figures:
        png = tmp_path / f"{args[0]}.png"
        run_cli(["viz", *args, "--ckpt", ckpt, "--out", str(png)], capsys)
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path / "runs" / name)) == ["version_0"]  # none of the commands wrote a run folder


def test_two_runs_keep_both_checkpoints_and_last_resumes_the_later(tmp_path):
    first = fit("vit_digits", tmp_path, *ONE_BATCH, fast_dev_run=False)
    second = fit("vit_digits", tmp_path, *ONE_BATCH, "--seed_everything", "1", fast_dev_run=False)
    runs = tmp_path / "runs" / "vit_digits"
    a, b = (torch.load(runs / v / "checkpoints" / "last.ckpt", weights_only=True) for v in ("version_0", "version_1"))
    assert first.trainer.default_root_dir.endswith("version_0") and second.trainer.default_root_dir.endswith("version_1")
    assert not torch.equal(a["state_dict"]["model.head.weight"], b["state_dict"]["model.head.weight"])  # two runs, two files
    third = fit("vit_digits", tmp_path, "--ckpt_path", "last", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1",
                "--trainer.limit_val_batches", "1", "--test_after_fit", "false", fast_dev_run=False)
    assert os.path.abspath(third.config.fit.ckpt_path) == str(runs / "version_1" / "checkpoints" / "last.ckpt")
    assert third.trainer.global_step == 2 and third.trainer.default_root_dir.endswith("version_2")
    # --trainer.default_root_dir puts everything the run writes under that folder
    elsewhere = tmp_path / "elsewhere"
    fit("vit_digits", tmp_path, *ONE_BATCH, "--trainer.default_root_dir", str(elsewhere), fast_dev_run=False)
    written = {p.relative_to(elsewhere).parts[0] for p in elsewhere.rglob("*") if p.is_file()}
    assert written == {"version_0"} and (elsewhere / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert sorted(os.listdir(runs)) == ["version_0", "version_1", "version_2"]


def test_fine_tuning_from_mlm_keeps_its_token_ids(tmp_path):
    """bert_pairs started from bert_mlm (`init_from` a run folder) uses the MLM's tokenizer as stored, so every
    token id means the same embedding row before and after; the whole encoder is carried over."""
    from zoo.data.tokenizers import same_tokenizer

    mlm = fit("bert_mlm", tmp_path, *ONE_BATCH, fast_dev_run=False)
    pairs = fit("bert_pairs", tmp_path, *ONE_BATCH, "--model.init_args.init_from", "runs/bert_mlm",
                "--data.vocab_size", "400", fast_dev_run=False)  # a different size asked for: the stored tokenizer wins
    assert same_tokenizer(pairs.datamodule.tokenizer, mlm.datamodule.tokenizer)
    texts = ["trois cent douze", "ninety-nine", "the module"]
    assert pairs.datamodule.tokenizer(texts)["input_ids"] == mlm.datamodule.tokenizer(texts)["input_ids"]
    report = pairs.model.init_report
    assert "embeddings.word.weight" in report["loaded"] or any("word" in k for k in report["loaded"]), report["loaded"][:5]
    assert not [k for k in report["new"] if not k.startswith(("classifier", "pooler", "head"))], report["new"]


def test_a_resumed_run_keeps_the_best_score_of_the_run_it_continues(tmp_path, capsys):
    """The resumed run writes into version_1; its best checkpoint is still version_0's until it validates better
    (Lightning's ModelCheckpoint forgot the best score when the folder changed: the first validation after a resume
    became "best" however bad), and version_0's files stay."""
    first = fit("vit_digits", tmp_path, *ONE_BATCH, fast_dev_run=False)
    best = first.trainer.checkpoint_callbacks[0]
    assert best.monitor and best.best_model_score is not None
    before = sorted(p.name for p in (tmp_path / "runs" / "vit_digits" / "version_0" / "checkpoints").iterdir())
    (tmp_path / "runs" / "vit_digits" / "version_1").mkdir()  # a run stopped before its first checkpoint
    capsys.readouterr()
    again = fit("vit_digits", tmp_path, "--ckpt_path", "last", "--trainer.max_epochs", "1", "--test_after_fit", "false",
                "--model.init_args.lr", "0.5", fast_dev_run=False)  # nothing left to train: only what was restored
    err = capsys.readouterr().err
    assert ("zoo fit: --ckpt_path last continues runs/vit_digits/version_0 (version_1 has no checkpoint: it stopped "
            "before the end of its first epoch)") in err, err
    # Lightning puts the checkpoint's hyper-parameters over the command line: said, not silent
    assert again.model.hparams.lr == first.model.hparams.lr != 0.5
    assert f"zoo fit: the checkpoint's settings are used, as it was trained: lr: {first.model.hparams.lr!r} (asked: 0.5)" \
        in err
    cb = again.trainer.checkpoint_callbacks[0]
    assert again.trainer.default_root_dir.endswith("version_2")
    assert cb.best_model_score == best.best_model_score and cb.best_model_path == best.best_model_path
    assert os.path.abspath(cb.best_model_path).startswith(str(tmp_path / "runs" / "vit_digits" / "version_0"))
    assert sorted(p.name for p in (tmp_path / "runs" / "vit_digits" / "version_0" / "checkpoints").iterdir()) == before


def test_evaluating_a_fine_tuned_run_needs_not_the_run_it_started_from(tmp_path, capsys):
    """A fine-tuned checkpoint holds every weight: `zoo test` / `predict` of it work with the pre-trained run moved
    away (the stored recipe names it by a relative path; the task declares init_from a training source)."""
    import shutil

    fit("mae_mnist", tmp_path, *ONE_BATCH, fast_dev_run=False)
    fit("mae_mnist_finetune", tmp_path, *ONE_BATCH, "--model.init_args.init_from", "runs/mae_mnist", fast_dev_run=False)
    shutil.move(tmp_path / "runs" / "mae_mnist", tmp_path / "moved")
    run_cli(["test", "--ckpt_path", os.path.join("runs", "mae_mnist_finetune"), "--trainer.limit_test_batches", "1",
             "--trainer.enable_progress_bar", "false"], capsys)
    digits = user_images(tmp_path / "mine", 1)
    out = run_cli(["predict", "--model", os.path.join("runs", "mae_mnist_finetune"), digits,
                   "--trainer.enable_progress_bar", "false"], capsys)
    assert len(out.splitlines()) == 2, out


def test_evaluating_keeps_the_users_runtime_options_over_the_checkpoints(tmp_path, capsys):
    """`zoo validate --ckpt_path X --model.init_args.compile_backend aot_eager`: how the model runs (the task's
    runtime_args) is the user's choice at evaluation, though Lightning puts the checkpoint's hyper-parameters first."""
    fit("vit_digits", tmp_path, *ONE_BATCH, "--model.init_args.compile_backend", "eager", fast_dev_run=False)
    with pytest.raises(SystemExit) as e:
        main(["validate", "--ckpt_path", os.path.join("runs", "vit_digits"), "--model.init_args.compile_backend", "aot_eager",
              "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"])
    err = capsys.readouterr().err
    assert e.value.code == 0 and "the checkpoint's settings are used" not in err, err
    from zoo.trainer_cli import ZooCLI

    seen = {}

    class Probe(ZooCLI):  # the same parsing, then look at what the task is given
        def before_instantiate_classes(self):
            seen.update(self.config[self.subcommand].model.init_args.as_dict())
            raise SystemExit(0)

    from zoo.trainer_cli import build_cli

    with pytest.raises(SystemExit):
        build_cli(["validate", "--config", os.path.join(CONFIGS, "vit_digits.yaml"), "--ckpt_path", os.path.join("runs", "vit_digits"),
                   "--model.init_args.compile_backend", "aot_eager"], cli_class=Probe)
    assert seen["compile_backend"] == "aot_eager"
