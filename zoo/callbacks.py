"""Trainer add-ons used by the `zoo` CLI: atomic checkpoints, exactly reproducible resumption, stopping early.

Why `AtomicCheckpointIO`: Lightning's `TorchCheckpointIO` writes through fsspec's transaction, which
puts the temporary file in the system temp folder and then `shutil.move`s it. When the run folder
is on another file system than /tmp, that move is a copy, and a crash part-way leaves half a
checkpoint under the final name. Writing the temporary file next to the target and `os.replace`-ing
it is atomic on every POSIX file system.

Why `StepSeed`: Lightning restores model, optimiser, scheduler and loop counters on `--ckpt_path`,
but not the random number generators, so dropout masks and augmentations after a resume differ from
those of an uninterrupted run; and from a checkpoint written mid-epoch it restarts a plain DataLoader at the
epoch's first batch. Shuffling from a generator seeded by (seed, epoch), skipping the batches of the epoch already
trained, and re-seeding every global generator from (seed, epoch, batch) before each training batch is drawn and
before each step (dropout, masking, augmentation) make every random draw a function of the position in training
alone, so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import itertools
import os
import random
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from .weights import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the checkpoint's own folder, fsync, then os.replace."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options; use Lightning's TorchCheckpointIO for remote storage")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path)  # remote file systems: fsspec's own transaction

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())

        atomic_write(str(path).removeprefix("file://"), write)


class _ResumingSampler:
    """The training loader's sampler as StepSeed serves it: each epoch's order as the wrapped sampler draws it,
    minus the batches of the epoch the restored trainer has already trained (a checkpoint written mid-epoch: Lightning
    restarts a plain DataLoader at the epoch's first batch), and the global generators seeded from the batch's
    position (epoch, batch) when its first index is drawn, i.e. before it is collated and augmented."""

    def __init__(self, inner, batch_size: int, callback: "StepSeed", trainer):
        self.inner, self.batch_size, self.callback, self.trainer = inner, batch_size, callback, trainer
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self):
        done = int(self.trainer.fit_loop.epoch_loop.batch_progress.current.ready)  # batches of this epoch trained
        for i, index in enumerate(itertools.islice(iter(self.inner), done * self.batch_size, None)):
            if i % self.batch_size == 0:
                self.callback._seed(self.trainer, "data", self.epoch, done + i // self.batch_size)
            yield index


class StepSeed(L.Callback):
    """Seed torch, numpy and random from the position in training: before each training batch is drawn
    (augmentation, random captions) and before each training step (dropout, masking), from (seed, epoch, batch).

    Dropout, augmentation and masking then depend only on the position, so `--ckpt_path last` resumes
    bit-for-bit, from a checkpoint written at the end of an epoch or in the middle of one (the batches of the
    epoch already trained are skipped). Every micro-batch of a gradient-accumulation window has a position of
    its own (seeding by optimiser step gave them all the same dropout masks and augmentation).
    `seed=None` takes the seed given to `seed_everything` (PL_GLOBAL_SEED), else 0.
    """

    _KINDS = {"data": 1, "step": 2}

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def _seed(self, trainer, kind: str, epoch: int, batch: int) -> None:
        # distinct per rank, so data-parallel replicas do not draw identical dropout masks
        words = [self._base() % 2**32, self._KINDS[kind], int(epoch), int(batch), int(trainer.global_rank)]
        seed = int(np.random.SeedSequence(words).generate_state(1)[0]) % (2**31 - 1)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def _base(self) -> int:
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_start(self, trainer, pl_module):
        # Shuffling: give a RandomSampler its own generator, re-seeded from (seed, epoch) by the
        # `set_epoch` call Lightning makes before every epoch (as it does for DistributedSampler).
        loaders = trainer.train_dataloader
        loaders = loaders.values() if isinstance(loaders, dict) else loaders if isinstance(loaders, (list, tuple)) else [loaders]
        for dl in loaders:
            if isinstance(dl, torch.utils.data.DataLoader) and dl.generator is None:
                # iterating a loader draws worker seeds from the global generator; keep that off it
                dl.generator = torch.Generator().manual_seed(self._base())
            sampler = getattr(getattr(dl, "batch_sampler", None), "sampler", None) or getattr(dl, "sampler", None)
            if isinstance(sampler, torch.utils.data.RandomSampler) and not hasattr(sampler, "set_epoch"):
                sampler.generator = torch.Generator()
                base = self._base()
                sampler.set_epoch = lambda epoch, s=sampler: s.generator.manual_seed(base * 1_000_003 + 104_729 * (epoch + 1))
                sampler.set_epoch(trainer.current_epoch)
            batches = getattr(dl, "batch_sampler", None)
            # a plain BatchSampler (Lightning's DistributedSampler goes inside it too) iterates its `.sampler` lazily,
            # at the first batch of each epoch: the position is known by then, even on a restart
            if type(batches) is torch.utils.data.BatchSampler and not isinstance(batches.sampler, _ResumingSampler):
                batches.sampler = _ResumingSampler(batches.sampler, batches.batch_size, self, trainer)
                batches.sampler.set_epoch(trainer.current_epoch)
        if all(isinstance(getattr(getattr(dl, "batch_sampler", None), "sampler", None), _ResumingSampler) for dl in loaders):
            # Lightning's warning that a plain DataLoader cannot resume mid-epoch: these loaders can
            from lightning.fabric.utilities.warnings import PossibleUserWarning

            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended",
                                    category=PossibleUserWarning)

    def on_train_epoch_start(self, trainer, pl_module):
        # loaders StepSeed cannot wrap: their first batch is augmented before on_train_batch_start
        self._seed(trainer, "data", trainer.current_epoch, 0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._seed(trainer, "step", trainer.current_epoch, batch_idx)


class StopAfter(L.Callback):
    """Stop after `epochs` epochs or `steps` optimiser steps of *this* run, keeping the schedule of the full run.

    Lets a long run be trained in slices (e.g. cluster time limits): each slice resumes with
    `--ckpt_path last`, and the learning-rate schedule still spans `max_epochs`.
    """

    def __init__(self, epochs: int | None = None, steps: int | None = None):
        if epochs is None and steps is None:
            raise ValueError("StopAfter needs epochs= or steps=")
        self.epochs, self.steps = epochs, steps
        self._start_epoch = self._start_step = None

    def on_train_start(self, trainer, pl_module):
        self._start_epoch, self._start_step = trainer.current_epoch, trainer.global_step
        self._mid_epoch = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.steps is not None and trainer.global_step - self._start_step >= self.steps:
            trainer.should_stop = True
            self._mid_epoch = batch_idx + 1 < trainer.num_training_batches

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        """Stopped by `steps` inside an epoch: Lightning still closes the epoch (validation, epoch-end checkpoints)
        and records it as finished, so `--ckpt_path last` went on with the next epoch and the rest of this one was
        never trained. The checkpoints written at the stop record the epoch as started, not finished: the resumed
        run trains its remaining batches (StepSeed skips those already trained)."""
        if not getattr(self, "_mid_epoch", False):
            return
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
        for counts in (progress or {}).values():
            if isinstance(counts, dict) and "started" in counts:
                counts["processed"] = counts["completed"] = counts["started"] - 1

    def on_train_epoch_end(self, trainer, pl_module):
        if self.epochs is not None and trainer.current_epoch + 1 - self._start_epoch >= self.epochs:
            trainer.should_stop = True


def default_trainer_extras(trainer: L.Trainer) -> None:
    """Add `StepSeed`, a TensorBoard logger beside a CSV one when tensorboard is installed, and, where
    the strategy saves through a CheckpointIO, `AtomicCheckpointIO` unless given."""
    if not any(isinstance(cb, StepSeed) for cb in trainer.callbacks):
        trainer.callbacks.append(StepSeed())
    add_tensorboard(trainer)
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    strategy = trainer.strategy
    # Sharded strategies (FSDP, ModelParallel) write distributed checkpoints themselves; leave them alone.
    if type(strategy) in (SingleDeviceStrategy, DDPStrategy) and type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


def add_tensorboard(trainer: L.Trainer) -> None:
    """CSV logs always; TensorBoard event files next to them (same folder and version) when tensorboard is installed."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = trainer.loggers
    if os.environ.get("ZOO_TENSORBOARD", "1") == "0" or any(isinstance(lg, TensorBoardLogger) for lg in loggers):
        return
    csv = [lg for lg in loggers if isinstance(lg, CSVLogger)]
    if not csv:
        return
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return
    trainer.loggers = [*loggers, TensorBoardLogger(csv[0].save_dir, name=csv[0].name,
                                                   version=csv[0].version, sub_dir="tensorboard")]
