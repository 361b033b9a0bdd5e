"""Resuming with --ckpt_path last repeats an uninterrupted run exactly; checkpoints load with
weights_only=True; two-process DDP and FSDP2 (ModelParallelStrategy) train on CPU through gloo."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap

import torch

from zoo import create_model
from zoo.callbacks import AtomicCheckpointIO
from zoo.cli import lightning_main

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIG = os.path.join(ROOT, "configs", "vit_digits.yaml")


def _fit(*extra: str):
    # 4 epochs x 5 batches; Digits augments every batch, so the RNG state matters
    return lightning_main(["fit", "--config", CONFIG, "--trainer.max_epochs", "4", "--trainer.limit_train_batches", "5",
                           "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1", "--test_after_fit", "false",
                           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra])


def _losses(cli) -> dict[int, float]:
    path = os.path.join(cli.trainer.logger.log_dir, "metrics.csv")
    with open(path) as fh:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


def test_resume_from_last_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    for sub in ("full", "resumed"):
        (tmp_path / sub).mkdir()
    monkeypatch.chdir(tmp_path / "full")
    full = _losses(_fit())
    assert len(full) == 20
    monkeypatch.chdir(tmp_path / "resumed")
    # the same run, stopped after 2 of its 4 epochs (schedule unchanged), then resumed from last.ckpt
    first = _fit("--trainer.callbacks+=zoo.callbacks.StopAfter", "--trainer.callbacks.epochs=2")
    assert isinstance(first.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert os.listdir(os.path.join(first.trainer.logger.log_dir, "tensorboard"))  # TensorBoard events beside the CSV
    assert os.path.exists("runs/vit_digits/version_0/checkpoints/last.ckpt")
    second = _fit("--ckpt_path", "last")
    # the resumed run writes a folder of its own; the first run's files stay as they were
    assert second.trainer.default_root_dir.endswith("version_1") and os.path.exists("runs/vit_digits/version_0/checkpoints/last.ckpt")
    resumed = {**_losses(first), **_losses(second)}
    assert sorted(_losses(first)) == list(range(10)) and sorted(_losses(second)) == list(range(10, 20))
    diffs = [abs(full[s] - resumed[s]) for s in range(20)]
    assert max(diffs) <= 1e-6, [(s, d) for s, d in enumerate(diffs) if d]

    # a checkpoint written by `zoo fit` loads as pretrained weights without unpickling code
    ckpt = "runs/vit_digits/version_1/checkpoints/last.ckpt"
    torch.load(ckpt, map_location="cpu", weights_only=True)
    model = create_model("vit_digits", pretrained=ckpt).eval()
    task = second.model.eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(model(x), task.model(x), atol=1e-6)


def _run(cmd: list[str], cwd, timeout: int = 240) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_two_process_ddp_on_cpu(tmp_path):
    zoo = os.path.join(os.path.dirname(sys.executable), "zoo")
    _run([zoo, "fit", "--config", CONFIG, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
          "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
          "--trainer.enable_progress_bar", "false", "--test_after_fit", "false"], cwd=tmp_path)
    assert os.listdir(tmp_path / "runs" / "vit_digits") == ["version_0"]  # both ranks wrote into one run folder
    ckpts = os.listdir(tmp_path / "runs" / "vit_digits" / "version_0" / "checkpoints")
    assert "last.ckpt" in ckpts
    sd = torch.load(tmp_path / "runs/vit_digits/version_0/checkpoints/last.ckpt", weights_only=True)
    assert sd["global_step"] == 3


FSDP_SCRIPT = textwrap.dedent("""
    import lightning as L, torch
    from torch.distributed.tensor import DTensor
    from lightning.pytorch.strategies import ModelParallelStrategy
    from zoo.data.images import Digits
    from zoo.tasks.image import ImageClassification

    class Check(L.Callback):
        def on_train_start(self, trainer, task):
            p = task.model.encoder.blocks[0].attn.qkv.weight
            assert isinstance(p, DTensor), type(p)
            print(f"rank {trainer.global_rank}: local {tuple(p.to_local().shape)} of {tuple(p.shape)}", flush=True)

        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            print(f"rank {trainer.global_rank}: step {trainer.global_step} loss {float(outputs['loss']):.4f}", flush=True)

    if __name__ == "__main__":
        L.seed_everything(0)
        task = ImageClassification("vit_digits", data_overrides={"num_classes": 10, "in_chans": 1, "img_size": 8})
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
                            max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[Check()])
        trainer.fit(task, datamodule=Digits(batch_size=32))
""")


def test_fsdp2_model_parallel_strategy_on_cpu(tmp_path):
    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT)
    out = _run([sys.executable, str(script)], cwd=ROOT)
    # the (192, 64) fused qkv weight of the first block is split in half along dim 0 on each rank
    assert "rank 0: local (96, 64) of (192, 64)" in out and "rank 1: local (96, 64) of (192, 64)" in out, out[-2000:]
    assert "rank 0: step 3 loss" in out and "rank 1: step 3 loss" in out


def _fit_mid(*extra: str):
    # 2 epochs x 6 batches, stopped or checkpointed after 3 batches of the first epoch
    return lightning_main(["fit", "--config", CONFIG, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "6",
                           "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1", "--test_after_fit", "false",
                           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra])


def test_resume_in_the_middle_of_an_epoch_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    """A checkpoint written mid-epoch (ModelCheckpoint every_n_train_steps, or StopAfter(steps=) inside an epoch):
    the resumed run trains the epoch's remaining batches, not its first ones again (plain DataLoader), and not the
    next epoch (StopAfter's stop closed the epoch); losses and final weights equal the uninterrupted run's."""
    for sub in ("full", "sliced"):
        (tmp_path / sub).mkdir()
    monkeypatch.chdir(tmp_path / "full")
    full = _fit_mid("--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=3",
                    "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.filename=at{step}")
    full_losses, full_weights = _losses(full), full.model.state_dict()
    assert sorted(full_losses) == list(range(12))
    from_step = _fit_mid("--ckpt_path", "runs/vit_digits/version_0/checkpoints/atstep=3.ckpt")
    assert _losses(from_step) == {s: full_losses[s] for s in range(3, 12)}
    assert all(torch.equal(full_weights[k], v) for k, v in from_step.model.state_dict().items())

    monkeypatch.chdir(tmp_path / "sliced")
    first = _fit_mid("--trainer.callbacks+=zoo.callbacks.StopAfter", "--trainer.callbacks.steps=3")
    assert first.trainer.global_step == 3
    second = _fit_mid("--ckpt_path", "last")
    assert second.trainer.global_step == 12  # was 9: the 3 batches left of the first epoch were skipped
    assert {**_losses(first), **_losses(second)} == full_losses
    assert all(torch.equal(full_weights[k], v) for k, v in second.model.state_dict().items())


def test_every_micro_batch_of_an_accumulation_window_draws_its_own_randomness():
    """StepSeed seeds from the position in training: with accumulate_grad_batches=2 the two micro-batches of one
    optimiser step got the same seed (dropout masks, augmentation) when it was seeded by global_step."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from zoo.callbacks import StepSeed

    class Draws(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.draws = []

        def training_step(self, batch, batch_idx):
            self.draws.append(torch.rand(4))
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    task = Draws()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[StepSeed(0)])
    trainer.fit(task, DataLoader(TensorDataset(torch.randn(8, 1)), batch_size=2, shuffle=True))
    assert trainer.global_step == 2 and len(task.draws) == 4
    assert len({tuple(d.tolist()) for d in task.draws}) == 4


VALIDATE_SCRIPT = textwrap.dedent("""
    import json, sys
    from zoo.cli import lightning_main

    devices, ckpt, config = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    cli = lightning_main(["validate", "--config", config, "--ckpt_path", ckpt, "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
                          "--trainer.strategy", "ddp" if devices > 1 else "auto", "--trainer.enable_progress_bar", "false"])
    if cli.trainer.is_global_zero:
        print("METRICS " + json.dumps({k: float(v) for k, v in cli.trainer.callback_metrics.items()}))
""")


def _validate(script, devices: int, ckpt: str, cwd) -> dict:
    import json

    out = _run([sys.executable, str(script), str(devices), ckpt, CONFIG], cwd=cwd)
    return json.loads(next(line for line in out.splitlines() if line.startswith("METRICS "))[len("METRICS "):])


def test_two_process_validation_counts_every_sample_once(tmp_path):
    """The digits validation split has 179 samples: Lightning's DistributedSampler padded it to 180 (a sample
    counted twice), so val/acc over 2 processes differed from the one-process figure; val/loss was process 0's."""
    zoo = os.path.join(os.path.dirname(sys.executable), "zoo")
    _run([zoo, "fit", "--config", CONFIG, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
          "--trainer.enable_progress_bar", "false", "--test_after_fit", "false"], cwd=tmp_path)
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE_SCRIPT)
    ckpt = str(tmp_path / "runs/vit_digits/version_0/checkpoints/last.ckpt")
    one, two = _validate(script, 1, ckpt, tmp_path), _validate(script, 2, ckpt, tmp_path)
    assert abs(one["val/acc"] * 179 - round(one["val/acc"] * 179)) < 1e-4  # a count out of the 179 samples
    assert abs(two["val/acc"] - one["val/acc"]) < 1e-6, (one, two)
    # val/loss is the mean over the whole split, not process 0's half of it (it was logged without sync_dist)
    assert abs(two["val/loss"] - one["val/loss"]) < 1e-5, (one, two)
