"""Faults a trained model must survive: kill -9 mid-training, SIGINT, two runs at once, an unwritable
output folder, a checkpoint of another recipe, an edited checkpoint. Nothing a run wrote is lost or mixed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from zoo import rundir
from zoo.runs import RunError, load_run

pytestmark = pytest.mark.slow

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ZOO = os.path.join(os.path.dirname(sys.executable), "zoo")
DIGITS = os.path.join(ROOT, "configs", "vit_digits.yaml")
QUICK = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--test_after_fit", "false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "ZOO_TENSORBOARD": "0"}


def start_fit(cwd, *extra, epochs: int = 200):
    # a terminal's Ctrl-C: SIGINT at its default (pytest-xdist workers and background shells ignore it, and
    # a child inherits that), so that Python raises KeyboardInterrupt in the run
    return subprocess.Popen([ZOO, "fit", "--config", DIGITS, "--trainer.max_epochs", str(epochs), *QUICK, *extra],
                            cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path, proc, timeout=120.0):
    end = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.2)


def test_kill_9_mid_training_leaves_a_whole_checkpoint_and_last_resumes(tmp_path):
    proc = start_fit(tmp_path)
    last = tmp_path / "runs/vit_digits/version_0/checkpoints/last.ckpt"
    try:
        wait_for(last, proc)
        time.sleep(1.5)  # let it write a few more checkpoints, then kill it wherever it is (possibly mid-write)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # the file under the final name is always whole
    assert ckpt["global_step"] >= 2
    resumed = subprocess.run([ZOO, "fit", "--config", DIGITS, "--ckpt_path", "last", "--trainer.max_epochs",
                              str(ckpt["epoch"] + 2), *QUICK], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = sorted(os.listdir(tmp_path / "runs/vit_digits"))
    assert [r for r in runs if r.startswith("version_")] == ["version_0", "version_1"]  # the killed run's files stay
    # the killed run's lock names a dead process: it is taken over, never a reason to refuse
    assert torch.load(tmp_path / "runs/vit_digits/version_1/checkpoints/last.ckpt", weights_only=True)["global_step"] > ckpt["global_step"]


def test_two_runs_at_once_get_two_folders_and_sigint_stops_cleanly(tmp_path):
    a, b = start_fit(tmp_path), start_fit(tmp_path)
    runs = tmp_path / "runs/vit_digits"
    try:
        for v in ("version_0", "version_1"):
            wait_for(runs / v / "checkpoints" / "last.ckpt", a if v == "version_0" else b)
    finally:
        for p in (a, b):
            p.send_signal(signal.SIGINT)  # Ctrl-C: Lightning stops the loop, the process exits
        outs = [p.communicate(timeout=120)[0] for p in (a, b)]
    assert [p.returncode for p in (a, b)] == [130, 130], outs  # a shell's code for Ctrl-C, not an error's 1
    said = sorted(line.split()[3] for out in outs for line in out.splitlines() if line.startswith("zoo fit: interrupted; "))
    assert said == ["runs/vit_digits/version_0", "runs/vit_digits/version_1"], outs
    assert all("keeps the checkpoints written so far" in out for out in outs), outs
    for v in ("version_0", "version_1"):
        torch.load(runs / v / "checkpoints" / "last.ckpt", weights_only=True)
        assert not rundir.lock_path(runs / v).exists(), f"{v} is still locked after Ctrl-C"
    assert not list(runs.rglob(".*.tmp"))


def test_an_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the run folder should go")
    out = subprocess.run([ZOO, "fit", "--config", DIGITS, "--trainer.default_root_dir", str(blocker / "runs"),
                          "--trainer.max_epochs", "1", *QUICK], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert out.returncode != 0 and "cannot create the run folder" in out.stderr and "Traceback" not in out.stderr
    assert str(blocker) in out.stderr and "--trainer.default_root_dir" in out.stderr


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("digits")
    out = subprocess.run([ZOO, "fit", "--config", DIGITS, "--trainer.max_epochs", "1", *QUICK], cwd=cwd, env=ENV,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd / "runs/vit_digits/version_0/checkpoints/last.ckpt"


def test_a_checkpoint_of_another_recipe_gets_one_line_naming_both(digits_ckpt, tmp_path):
    out = subprocess.run([ZOO, "test", "--config", os.path.join(ROOT, "configs", "bert_pairs.yaml"), "--ckpt_path",
                          str(digits_ckpt)], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    line = [x for x in out.stderr.splitlines() if x.startswith("zoo test: error")][0]
    assert "vit_digits" in line and "bert_tiny" in line


def test_an_edited_checkpoint_is_refused_not_loaded_as_another_model(digits_ckpt, tmp_path):
    ckpt = torch.load(digits_ckpt, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["model_kwargs"] = {"num_heads": 2}  # still fits the weights: qkv is (3*dim, dim) either way
    edited = tmp_path / "edited.ckpt"
    torch.save(ckpt, edited)
    with pytest.raises(RunError, match="num_heads=2"):
        load_run(edited)
    assert load_run(digits_ckpt).model.config.num_heads != 2


def test_export_over_its_own_checkpoint_is_refused_and_the_checkpoint_survives(digits_ckpt):
    before = digits_ckpt.read_bytes()
    out = subprocess.run([ZOO, "export", "--model", str(digits_ckpt), "--format", "torch-export", "--out", str(digits_ckpt)],
                         env=ENV, capture_output=True, text=True)
    assert out.returncode != 0 and "being exported" in out.stderr
    assert digits_ckpt.read_bytes() == before
