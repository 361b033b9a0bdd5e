"""zoo.runs: the one run loader, for every source a user can point at."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.runs import RunError, load_run, save_run


def _ckpt(path, model, hparams, zoo_record=None):
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    obj = {"state_dict": state, "hyper_parameters": hparams}
    if zoo_record is not None:
        obj["zoo"] = zoo_record
    torch.save(obj, path)
    return path


def test_an_older_checkpoint_is_rebuilt_from_its_hyper_parameters(tmp_path):
    """Before checkpoints carried a zoo record: data overrides + model_kwargs + the head the task picks."""
    model = zoo.create_model("bert_tiny", vocab_size=50, num_classes=3, head="cls", max_positions=64)
    hp = {"model": "bert_tiny", "_class_path": "zoo.tasks.text.SequenceClassification", "model_kwargs": {"max_positions": 64},
          "data_overrides": {"vocab_size": 50, "pad_token_id": 0, "num_classes": 3, "mask_token_id": 4}}
    run = load_run(_ckpt(tmp_path / "old.ckpt", model, hp))
    assert (run.model.config.head, run.model.config.vocab_size, run.model.config.num_classes) == ("cls", 50, 3)
    ids = torch.randint(5, 50, (2, 7))
    torch.testing.assert_close(run.model(ids), model.eval()(ids))


def test_safetensors_written_by_zoo_describe_their_model_and_tokenizer(tmp_path):
    from zoo.data.tokenizers import same_tokenizer, train_tokenizer

    tok = train_tokenizer("bpe", ["one two three", "four five six"] * 20, vocab_size=300)
    model = zoo.create_model("timm_resnet18_mnist", num_classes=4)  # a nested dict of tuples in its config
    path = save_run(model, tmp_path / "m.safetensors", tokenizer=tok, meta={"labels": ["a", "b", "c", "d"]})
    run = load_run(path)
    assert run.name == "timm_resnet18_mnist" and run.model.config == model.config and run.labels == ["a", "b", "c", "d"]
    assert same_tokenizer(run.tokenizer, tok)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(run.model(x), model.eval()(x))
    assert zoo.create_model("timm_resnet18_mnist", pretrained=str(path)).config.num_classes == 4


def test_bare_weights_need_a_name_and_a_run_folder_stands_for_its_newest_checkpoint(tmp_path):
    from zoo.weights import save_safetensors

    model = zoo.create_model("vit_digits")
    save_safetensors(model, tmp_path / "bare.safetensors")
    with pytest.raises(RunError, match="NAME@"):
        load_run(tmp_path / "bare.safetensors")
    assert load_run(f"vit_digits@{tmp_path / 'bare.safetensors'}").name == "vit_digits"
    with pytest.raises(ValueError, match="holds a vit_digits, not a vit_mnist"):
        zoo.create_model("vit_mnist", pretrained=str(save_run(model, tmp_path / "d.safetensors")))
    record = {"model": "vit_digits", "config": {"img_size": 8, "num_classes": 10}}
    for v in ("version_0", "version_3"):
        (tmp_path / "runs" / v / "checkpoints").mkdir(parents=True)
        _ckpt(tmp_path / "runs" / v / "checkpoints" / "last.ckpt", model, {"model": "vit_digits"}, record)
    assert load_run(tmp_path / "runs").source.endswith("version_3/checkpoints/last.ckpt")
    with pytest.raises(ValueError, match="unknown model 'vit_digts'"):
        load_run("vit_digts")


def test_a_missing_path_is_named_as_a_path_and_a_mistyped_name_as_a_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="runs/vit_mnist does not exist"):
        load_run(str(tmp_path / "runs" / "vit_mnist"))
    with pytest.raises(ValueError, match="unknown model 'vit_mnsit'. Did you mean: vit_mnist"):
        load_run("vit_mnsit")


def test_a_run_folder_without_checkpoints_is_named_so(tmp_path):
    folder = tmp_path / "runs" / "vit_mnist" / "version_0"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("trainer: {}\n")  # what a run that failed at once leaves
    with pytest.raises(RunError, match="holds no checkpoint"):
        load_run(str(folder))


def test_model_kwargs_given_on_the_command_line_load_as_the_model_they_built(tmp_path):
    """`--model.init_args.model_kwargs.dim 64` reaches the task as the string '64' (the model is built with 64):
    the checkpoint is the run's own, not an edited one. A stored value that disagrees is still refused."""
    model = zoo.create_model("vit_digits", dim=64, depth=2)
    record = {"model": "vit_digits", "config": {"dim": 64, "depth": 2}}
    hp = {"model": "vit_digits", "model_kwargs": {"dim": "64", "depth": "2"}}
    run = load_run(_ckpt(tmp_path / "cli.ckpt", model, hp, record))
    assert (run.model.config.dim, run.model.config.depth) == (64, 2)
    # the same strings as overrides of the stored config (zoo predict|serve|export --model <that run>)
    for path in (tmp_path / "cli.ckpt", save_run(model, tmp_path / "cli.safetensors")):
        assert load_run(path, model_kwargs={"dim": "64", "depth": "2"}).model.config.dim == 64
    saved = tmp_path / "pretrained"
    zoo.hub.save_pretrained(model, saved)
    assert zoo.create_model("vit_digits", pretrained=str(saved), dim="64").config.dim == 64
    with pytest.raises(RunError, match=r"dim=48 \(stored config: 64\)"):
        load_run(_ckpt(tmp_path / "mixed.ckpt", model, {"model": "vit_digits", "model_kwargs": {"dim": "48"}}, record))
