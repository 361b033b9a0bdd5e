"""Every recipe in configs/ runs one training and one validation batch (fast_dev_run) on shrunken data,
and the values the model needs (classes, vocabulary, special ids) arrive from the data module."""
from __future__ import annotations

import os

import pytest
import torch

from zoo.cli import lightning_main

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "configs"))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipes write runs/<name>/... relative to the working directory

# smaller data so that each run takes seconds; the recipe itself is unchanged
SHRINK = {
    "vit_mnist": ["--model.init_args.compile", "false"],  # compiling is covered by tests/test_compile.py
    "vit_digits": [],
    "swin_mnist": [],
    "cait_mnist": [],
    "vit_mnist_reg4": [],
    "eva02_mnist": [],
    "resnet_mnist_teacher": [],
    "vit_mnist_distill": ["--model.init_args.teacher", "timm_resnet18_mnist", "--model.init_args.teacher_ckpt", "null"],
    "clip_mnist": ["--data.batch_size", "16"],
    "clip_mnist_siglip": ["--data.batch_size", "16"],
    "caption_mnist": ["--data.batch_size", "8"],
    "transformer_numbers": ["--data.max_number", "300", "--data.n_test", "20", "--data.n_val", "20", "--data.vocab_size", "300"],
    "t5_numbers": ["--data.max_number", "300", "--data.n_test", "20", "--data.n_val", "20", "--data.vocab_size", "300"],
    "bert_mlm": ["--data.max_number", "300", "--data.n_test", "20", "--data.n_val", "20", "--data.vocab_size", "500"],
    "bert_pairs": ["--data.max_number", "300", "--data.n_test", "20", "--data.n_val", "20", "--data.vocab_size", "500",
                   "--data.pairs_per_split", "[64, 16, 16]"],
    "mae_mnist": ["--data.batch_size", "16"],
    "mae_mnist_finetune": ["--data.batch_size", "16"],
    "gpt_pydoc": ["--data.vocab_size", "400", "--data.max_length", "32", "--data.batch_size", "8",
                  "--model.init_args.model_kwargs", "{max_positions: 64, depth: 2}", "--model.init_args.max_new_tokens", "4"],
}


def fit(name: str, tmp_path, *extra: str, fast_dev_run: bool = True):
    args = ["fit", "--config", os.path.join(CONFIGS, f"{name}.yaml"), *(["--trainer.fast_dev_run", "1"] if fast_dev_run else []),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *SHRINK[name], *extra]
    return lightning_main(args)


@pytest.mark.parametrize("name", sorted(SHRINK))
def test_recipe_fast_dev_run(name, tmp_path):
    cli = fit(name, tmp_path)
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]), metrics
    assert any(k.startswith("val/") for k in metrics), metrics
    overrides = cli.datamodule.model_overrides
    cfg = cli.model.model.config
    for key in ("vocab_size", "pad_token_id", "num_classes", "eos_token_id", "decoder_start_token_id", "img_size"):
        if key in overrides and hasattr(cfg, key):
            assert getattr(cfg, key) == overrides[key], key  # flowed from the data, not typed by hand


def test_seq2seq_gets_special_ids_from_its_tokenizer(tmp_path):
    cli = fit("t5_numbers", tmp_path)
    tok, cfg = cli.datamodule.tokenizer, cli.model.model.config
    assert (cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id) == (len(tok), tok.pad_token_id, tok.eos_token_id)
    assert tok.convert_ids_to_tokens(cfg.eos_token_id) == "</s>"


def test_cifar10_recipe_names_the_missing_files(tmp_path):
    args = ["fit", "--config", os.path.join(CONFIGS, "cifar10_vit.yaml"), "--data.root", str(tmp_path / "nowhere"),
            "--trainer.fast_dev_run", "1"]
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*never downloads"):
        lightning_main(args)


def test_predict_prints_texts(tmp_path, capsys):
    args = ["predict", "--config", os.path.join(CONFIGS, "transformer_numbers.yaml"), *SHRINK["transformer_numbers"],
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--data.predict_texts", '["forty-two", "one hundred"]', "--model.max_new_tokens", "3"]
    cli = lightning_main(args)
    preds = [text for batch in cli.trainer.predict_loop.predictions for text in batch]
    assert len(preds) == 2 and all(isinstance(p, str) for p in preds)  # decoded texts (untrained: arbitrary words)
    assert capsys.readouterr().out.splitlines()[-2:] == preds


def _trainer_section(path: str) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f).get("trainer") or {}


def _checkpoint_callbacks(trainer: dict) -> list[dict]:
    return [c.get("init_args") or {} for c in trainer.get("callbacks") or [] if c.get("class_path", "").endswith("ModelCheckpoint")]


@pytest.mark.parametrize("name", sorted(os.path.splitext(f)[0] for f in os.listdir(CONFIGS) if f.endswith(".yaml")))
def test_recipe_writes_last_ckpt_every_epoch(name):
    """`--ckpt_path last` resumes from last.ckpt, so it must be the newest epoch. Lightning's ModelCheckpoint(save_last=True)
    writes last.ckpt only when that callback writes a best checkpoint, so a recipe keeps a callback of its own for it."""
    trainer = _trainer_section(os.path.join(CONFIGS, f"{name}.yaml"))
    callbacks = _checkpoint_callbacks(trainer)
    if not callbacks:
        pytest.skip(f"{name} writes no checkpoints")
    assert not any(c.get("save_last") is True for c in callbacks), f"{name}: save_last: true (last.ckpt = the last best epoch)"
    last = [c for c in callbacks if c.get("filename") == "last" and c.get("monitor") is None]
    assert last, f"{name}: no last.ckpt callback"
    every = trainer.get("check_val_every_n_epoch", 1)
    if every != 1:  # it would write only when validation runs, every `every` epochs
        assert last[0].get("save_on_train_epoch_end") is True, f"{name}: validates every {every} epochs; last.ckpt needs save_on_train_epoch_end"


def test_last_ckpt_is_the_final_epoch_when_the_best_is_earlier(tmp_path):
    """With lr 0 (and no BatchNorm, whose statistics would still move: the patch-embedding model) the validation accuracy
    never improves after epoch 0, so the best checkpoint stays at epoch 0, and last.ckpt must still be the third epoch
    (with save_last: true it was the epoch-0 state)."""
    fit("vit_mnist", tmp_path, "--trainer.max_epochs", "3", "--trainer.precision", "32-true", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--model.init_args.lr", "0",
        "--model.init_args.model", "vit_mnist_patch4", fast_dev_run=False)
    ckpts = tmp_path / "runs" / "vit_mnist" / "version_0" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-epoch=00.ckpt", "last.ckpt"]
    last = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")
    assert (last["epoch"], last["global_step"]) == (2, 6)


@pytest.mark.parametrize("which", ["best", "last"])
def test_test_ckpt_picks_the_weights_the_final_test_evaluates(which, tmp_path):
    """`--test_ckpt best` tests the best-validation checkpoint (Lightning restores it); `last` the final weights in memory."""
    cli = fit("vit_digits", tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
              "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--test_ckpt", which,
              fast_dev_run=False)
    assert cli.model._zoo_tested == which
    if which == "best":
        assert os.path.basename(cli.trainer.ckpt_path).startswith("best-epoch=")
    else:
        assert cli.trainer.ckpt_path is None


def test_final_test_takes_the_monitored_checkpoint_wherever_it_is_listed(tmp_path):
    """Lightning's ckpt_path="best" is the first ModelCheckpoint's best; with the unmonitored last.ckpt callback
    listed first that would be last.ckpt. zoo fit tests the monitored callback's best checkpoint."""
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text("""trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {filename: last, enable_version_counter: false}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/acc, mode: max, filename: "best-{epoch:02d}"}
""")
    cli = fit("vit_digits", tmp_path, "--config", str(swapped), "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
              "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", fast_dev_run=False)
    assert cli.model._zoo_tested == "best"
    assert cli.trainer.ckpt_path == cli.trainer.checkpoint_callbacks[1].best_model_path
    assert os.path.basename(cli.trainer.ckpt_path).startswith("best-epoch=")


def test_test_ckpt_refuses_other_values(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fit("vit_digits", tmp_path, "--test_ckpt", "newest")
    assert "test_ckpt" in capsys.readouterr().err


def test_cpu_has_bf16_reads_the_flags():
    from zoo.compare.runner import cpu_has_bf16

    x86 = "processor\t: 0\nmodel name\t: {}\nflags\t\t: fpu sse2 avx2 {}\n"
    assert cpu_has_bf16(x86.format("Intel Xeon", "avx512f avx512_bf16 amx_bf16")) is True
    assert cpu_has_bf16(x86.format("AMD EPYC", "avx512f avx512_bf16")) is True
    assert cpu_has_bf16(x86.format("AMD EPYC", "fma")) is False  # Zen 3: AVX2 only
    assert cpu_has_bf16("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n") is True  # ARM (Graviton 3)
    assert cpu_has_bf16("processor\t: 0\nFeatures\t: fp asimd\n") is False
    assert cpu_has_bf16("") is None  # no /proc/cpuinfo: leave the precision alone


@pytest.mark.parametrize("fallback", [True, False])
def test_bf16_recipe_runs_in_float32_on_a_cpu_without_bf16_units(fallback, tmp_path, monkeypatch, capsys):
    import zoo.compare.runner as runner

    monkeypatch.setattr(runner, "cpu_has_bf16", lambda text=None: False)
    cli = fit("vit_digits", tmp_path, "--trainer.precision", "bf16-mixed", "--bf16_fallback", str(fallback).lower())
    err = capsys.readouterr().err
    if fallback:
        assert cli.trainer.precision == "32-true" and "has no bf16 units" in err and "--bf16_fallback false" in err
        assert "precision: 32-true" in cli.model._zoo_recipe  # the stored recipe says what ran
    else:
        assert cli.trainer.precision == "bf16-mixed" and "no bf16 units" not in err


def test_bf16_recipe_keeps_bf16_where_the_cpu_has_bf16_units(tmp_path, monkeypatch, capsys):
    import zoo.compare.runner as runner

    monkeypatch.setattr(runner, "cpu_has_bf16", lambda text=None: True)
    cli = fit("vit_digits", tmp_path, "--trainer.precision", "bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed" and "no bf16 units" not in capsys.readouterr().err
