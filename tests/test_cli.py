"""The `zoo` command's edges: help for every command, one readable line for every error, the command table,
run folders and their locks."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import zoo
import zoo.trainer_cli  # noqa: F401  (lightning's log handler binds stderr on import: pytest's, not a test's capsys)
from zoo import rundir
from zoo.cli import COMMANDS, main

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def zoo_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    code, out, err = zoo_cli([command, "--help"], capsys)
    assert code == 0 and "usage:" in out and "Traceback" not in out + err


@pytest.mark.parametrize("argv, message", [
    (["models", "nonexist*"], "no registered model matches 'nonexist*'"),
    (["info", "vit_mnits"], "Did you mean: vit_mnist"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["export", "--model", "vit_mnist", "--model-kwargs", "{depth: 2}", "--out", "x.onnx"], "--model-kwargs is not JSON"),
    (["fit", "--config", os.path.join(ROOT, "configs", "vit_digits.yaml"), "--model.init_args.model", "vit_nope"],
     "unknown model 'vit_nope'"),
    (["test", "--ckpt_path", "last", "--config", os.path.join(ROOT, "configs", "vit_digits.yaml")], "no run under"),
    (["test", "--ckpt_path", "runs/nothing.ckpt"], "--ckpt_path runs/nothing.ckpt does not exist"),
    (["predict", "--ckpt_path=."], "--ckpt_path . holds no checkpoints/last.ckpt"),
    (["fit", "--config", os.path.join(ROOT, "configs", "vit_digits.yaml"), "--data.init_args.batch_size", "-4",
      "--trainer.max_epochs", "1"], "batch_size should be a positive integer value"),  # fails after config.yaml is written
])
def test_errors_end_in_one_readable_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = zoo_cli(argv, capsys)
    assert code not in (0, None) and message in err, err[-1500:]
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("zoo")]) == 1
    assert not list(tmp_path.rglob("version_*")) and not list(tmp_path.rglob(".version_*"))  # no empty run, no lock


@pytest.mark.parametrize("command", [*sorted(set(COMMANDS) - {"bench"}), "compress latency", "compress sweep", "bench speed",
                                     "bench quality", "bench generate", "bench serve", "bench tta", "fit", "validate", "test",
                                     "predict"])
def test_no_parser_takes_an_abbreviated_option(command, capsys, tmp_path, monkeypatch):
    """argparse's prefix matching is off in every parser: `--hel` is a mistyped option (exit 2), not `--help`
    (`zoo bench` alone only dispatches to its subcommands)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = zoo_cli([*command.split(), "--hel"], capsys)
    assert code == 2 and "usage:" not in out and "Traceback" not in err, out[-500:] + err[-1500:]


@pytest.mark.parametrize("flag, value", [("--optimizer", "torch.optim.SGD"),
                                         ("--lr_scheduler", "torch.optim.lr_scheduler.StepLR")])
def test_lightnings_optimizer_options_are_refused_naming_zoos(flag, value, capsys, tmp_path, monkeypatch):
    """LightningCLI's --optimizer / --lr_scheduler would replace the task's optimiser and schedule with only a warning;
    zoo refuses them, naming its own options. Their null (as stored recipes and config.yaml files list them) is fine."""
    monkeypatch.chdir(tmp_path)
    recipe = ["fit", "--config", os.path.join(ROOT, "configs", "vit_digits.yaml"), "--trainer.fast_dev_run", "1",
              "--trainer.default_root_dir", str(tmp_path / "runs")]
    code, _, err = zoo_cli([*recipe, flag, value], capsys)
    assert code == 2 and f"error: {flag} is not a zoo option:" in err, err[-1500:]
    assert "--model.init_args.optimizer (adamw, adamw_foreach, adafactor)" in err and len(err.strip().splitlines()) == 2
    assert not (tmp_path / "runs").exists()
    (tmp_path / "nulls.yaml").write_text("optimizer: null\nlr_scheduler: null\n")
    code, out, _ = zoo_cli([*recipe, "--config", "nulls.yaml", "--print_config"], capsys)
    assert code == 0 and "optimizer: null" in out


def test_a_failed_start_releases_only_a_run_folder_with_nothing_of_value(tmp_path):
    """A start that fails before the first step gives its version folder back (and its lock) when it holds only
    what a run writes itself; a folder with a checkpoint, or any other file, is never removed."""
    empty, written, trained, user, linked = (rundir.claim(tmp_path) for _ in range(5))
    for run in (written, trained, user, linked):
        (run / "config.yaml").write_text("seed_everything: 0\n")
        (run / "tensorboard").mkdir()
        (run / "tensorboard" / "events.out.tfevents.1.vm.1.0").write_bytes(b"")
        (run / "tokenizer").mkdir()
        (run / "tokenizer" / "tokenizer.json").write_text("{}")
        (run / "checkpoints").mkdir()
    (trained / "checkpoints" / "best-epoch=00.ckpt").write_bytes(b"weights")
    (user / "notes.txt").write_text("mine")
    (linked / "data").symlink_to(tmp_path)
    for run in (empty, written):
        assert rundir.release_unused(run) and not run.exists() and not rundir.lock_path(run).exists()
    for run in (trained, user, linked):
        assert not rundir.release_unused(run) and (run / "config.yaml").exists()
    assert (trained / "checkpoints" / "best-epoch=00.ckpt").exists() and (user / "notes.txt").exists()
    assert rundir.claim(tmp_path).name == "version_5"  # numbering goes on from the newest folder left


def test_fast_dev_run_leaves_no_run_folder(capsys, tmp_path, monkeypatch):
    """fast_dev_run writes no checkpoint: its version folder is given back, and the last line says so."""
    monkeypatch.chdir(tmp_path)
    code, out, err = zoo_cli(["fit", "--config", os.path.join(ROOT, "configs", "vit_digits.yaml"),
                              "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", "runs"], capsys)
    assert code == 0, err[-1500:]
    assert "zoo fit: fast_dev_run writes no checkpoint, so its run folder runs/version_0 was removed" in out
    assert not list(tmp_path.rglob("version_*")) and not list(tmp_path.rglob(".version_*"))


def test_verbose_shows_the_traceback(capsys):
    with pytest.raises(ValueError, match="no registered model"):
        main(["models", "nonexist*", "--verbose"])


def test_models_lists_and_the_package_never_imports_the_cli_on_import():
    code = "import zoo, zoo.runs, zoo.export, zoo.viz, zoo.compress, zoo.bench.cli, sys; print('zoo.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_pretrained_true_without_shipped_weights_says_so():
    with pytest.raises(ValueError, match="no shipped weights"):
        zoo.create_model("vit_tiny_patch16_224", pretrained=True)  # vit_mnist ships weights (zoo.list_pretrained())


def test_run_folders_are_claimed_once_and_locked(tmp_path):
    a, b = rundir.claim(tmp_path), rundir.claim(tmp_path)
    assert (a.name, b.name) == ("version_0", "version_1")
    # a folder held by another live process is refused; a lock left by a dead one is taken over
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rundir.lock_path(tmp_path / "shared").write_text(f"{other.pid} {os.uname().nodename}\n")
        with pytest.raises(rundir.RunFolderBusy, match=f"in use by process {other.pid}"):
            rundir.lock(tmp_path / "shared")
    finally:
        other.kill()
        other.wait()
    (tmp_path / "shared" / ".last.ckpt.abc.tmp").write_bytes(b"half a checkpoint")
    rundir.lock(tmp_path / "shared")  # the dead process's lock is taken over, its partial write removed
    assert not (tmp_path / "shared" / ".last.ckpt.abc.tmp").exists()
    rundir.unlock(tmp_path / "shared")
    assert not rundir.lock_path(tmp_path / "shared").exists()
    with pytest.raises(FileNotFoundError, match="no run under"):
        rundir.latest_checkpoint(tmp_path)


def test_quiet_lightning_drops_only_lightnings_own_chatter(caplog):
    import logging
    import warnings

    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    from zoo.cli import _quiet_lightning

    with warnings.catch_warnings(record=True) as seen:
        _quiet_lightning()
        _quiet_lightning()  # idempotent: main() runs many times in one process
        rank_zero_warn("Precision bf16-mixed is not supported by the model summary.  Estimated model size in MB will "
                       "not be accurate. Using 32 bits instead.", category=UserWarning)
        rank_zero_warn("Precision 16-true is something a user should read")
    assert [str(w.message) for w in seen] == ["Precision 16-true is something a user should read"]
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(type(f).__name__ == "_DropTips" for f in log.filters) == 1
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    caplog.clear()
    _quiet_lightning("predict")  # its output is the answers: Lightning's set-up lines go too, the rest stays
    with caplog.at_level(logging.INFO):
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("Restoring states from the checkpoint path at runs/x/last.ckpt")
        logging.getLogger("lightning.fabric.utilities.seed").info("Seed set to 0")
    assert [r.getMessage() for r in caplog.records] == ["Restoring states from the checkpoint path at runs/x/last.ckpt"]
    _quiet_lightning("fit")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("GPU available: False, used: False")
    assert caplog.records[-1].getMessage() == "GPU available: False, used: False"


def test_a_config_file_that_is_not_there_names_the_recipe_meant(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    code, _, err = zoo_cli(["fit", "--config", "vit_mnist.yaml"], capsys)
    assert code == 1 and "config file vit_mnist.yaml does not exist; did you mean configs/vit_mnist.yaml?" in err, err
    monkeypatch.chdir(tmp_path)  # elsewhere: the checkout's recipe, by its full path
    code, _, err = zoo_cli(["test", "--config=configs/vit_mnst.yaml"], capsys)
    assert code == 1 and f"did you mean {os.path.join(ROOT, 'configs', 'vit_mnist.yaml')}?" in err, err


def test_a_stored_recipe_is_evaluated_on_the_whole_split(capsys):
    """`zoo test|predict --ckpt_path X` rebuild the run from its stored recipe, but not its shortcuts through the data."""
    import yaml

    from zoo.trainer_cli import recipe_file

    stored = "trainer:\n  max_epochs: 3\n  limit_test_batches: 1\n  fast_dev_run: false\nmodel:\n  init_args: {model: vit_digits}\n"
    path = recipe_file(stored)
    try:
        config = yaml.safe_load(open(path).read())
    finally:
        os.remove(path)
    assert config["trainer"] == {"max_epochs": 3, "limit_test_batches": None, "fast_dev_run": False}
    assert config["model"] == {"init_args": {"model": "vit_digits"}}
    assert "trainer.limit_test_batches=1; this command does not repeat them" in capsys.readouterr().err
    # a notice names only what would have limited this command: predicting reads no val or test split
    smoke = "trainer:\n  limit_val_batches: 2\n  limit_test_batches: 2\n"
    for command, said in [("predict", None), ("validate", "zoo validate: the run was trained with trainer.limit_val_batches=2;"),
                          ("test", "zoo test: the run was trained with trainer.limit_test_batches=2;")]:
        path = recipe_file(smoke, command)
        try:
            assert yaml.safe_load(open(path).read())["trainer"] == {"limit_val_batches": None, "limit_test_batches": None}
        finally:
            os.remove(path)
        err = capsys.readouterr().err
        assert (said in err and "limit_" not in err.replace(said, "")) if said else err == "", (command, err)
    plain = "trainer:\n  max_epochs: 3\n"
    path = recipe_file(plain)
    try:
        assert open(path).read() == plain and capsys.readouterr().err == ""
    finally:
        os.remove(path)


@pytest.mark.parametrize("flag, value, words", [
    ("--model.init_args.lrr", "0.1", "--model.init_args.lrr: zoo.tasks.image.ImageClassification has no argument 'lrr'; "
                                     "did you mean --model.init_args.lr?"),
    ("--data.batch_sise", "8", "zoo.data.images.Digits has no argument 'batch_sise'; did you mean --data.init_args.batch_size?"),
    ("--data.batch_size", "abc", "--data.init_args.batch_size: Expected a <class 'int'>. Got value: abc"),
    ("--trainer.precision", "bf17", "--trainer.precision bf17 is not one of 64, 32, 16,"),
    ("--trainer.max_epochss", "3", "unrecognized arguments: --trainer.max_epochss 3; did you mean --trainer.max_epochs?"),
    ("--trainer.max_epoch", "3", "unrecognized arguments: --trainer.max_epoch 3; did you mean --trainer.max_epochs?"),
])
def test_a_mistyped_option_is_one_line_naming_it_and_the_fix(flag, value, words, capsys, tmp_path, monkeypatch):
    """jsonargparse's report (usage and a nested union dump, about 60 lines) becomes one line and exit status 2."""
    monkeypatch.chdir(tmp_path)
    code, _, err = zoo_cli(["fit", "--config", os.path.join(ROOT, "configs", "vit_digits.yaml"), flag, value], capsys)
    assert code == 2 and words in err, err
    assert err.startswith("zoo fit: error: ") and len(err.strip().splitlines()) == 2, err
    assert not (tmp_path / "runs").exists()
