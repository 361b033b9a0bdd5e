"""The callback `zoo compare` adds to each `zoo fit` (`--trainer.callbacks+=zoo.compare.recorder.RunRecorder`).

It only observes: training time (validation excluded), samples seen, steps, the best validation score, and,
after the test that `zoo fit` runs (on the weights --test_ckpt names), the test metrics, parameters, MACs per sample
and the peak resident memory of the process. It writes them as JSON to the file named by
$ZOO_COMPARE_RECORD (atomically: a temporary file, then a rename); without that variable it does nothing.
"""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from ..rundir import monitored_checkpoint

ENV = "ZOO_COMPARE_RECORD"
MACS_INPUT = {"seq_len": 16, "tgt_len": 16}  # sequence models: MACs per sample at 16 source / 16 target tokens


def batch_size(batch) -> int:
    """Samples in a batch: the leading size of its first tensor (tensors, tuples, lists, dicts)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = batch_size(item)
            if n:
                return n
    return 0


class RunRecorder(Callback):
    def __init__(self):
        self.samples = 0
        self.t_train = self.t_val = None
        self.val_seconds = 0.0
        self.fit = {}

    def on_train_start(self, trainer, pl_module):
        self.samples, self.val_seconds = 0, 0.0
        self.t_train = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += batch_size(batch)

    def on_validation_start(self, trainer, pl_module):
        if self.t_train is not None:
            self.t_val = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if self.t_val is not None:
            self.val_seconds += time.perf_counter() - self.t_val
            self.t_val = None

    def on_train_end(self, trainer, pl_module):
        fit_s = time.perf_counter() - self.t_train
        train_s = max(fit_s - self.val_seconds, 1e-9)
        best = monitored_checkpoint(trainer)
        score = best.best_model_score if best is not None else None
        self.fit = {
            "train_seconds": train_s, "val_seconds": self.val_seconds, "samples": self.samples,
            "train_samples_per_s": self.samples / train_s, "steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
            "precision": str(trainer.precision),  # what ran (zoo fit runs bf16 as 32-true on a CPU without bf16 units)
            "best_val": {"monitor": best.monitor, "value": float(score) if score is not None else None,
                         "checkpoint": best.best_model_path or None} if best is not None else None,
        }

    def on_test_end(self, trainer, pl_module):
        path = os.environ.get(ENV)
        if not path or not self.fit or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        record = {**self.fit, "tested": getattr(pl_module, "_zoo_tested", "best"), "metrics": metrics,
                  **_model_cost(pl_module), "peak_rss_mb": _peak_rss_mb(), "run_dir": str(trainer.default_root_dir)}
        if torch.cuda.is_available():
            record["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        with open(tmp, "w") as fh:
            json.dump(record, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _model_cost(pl_module) -> dict:
    from ..registry import count_parameters

    model = getattr(pl_module, "model", pl_module)
    out = {"params": count_parameters(model), "macs_per_sample": None}
    try:
        from ..bench.speed import count_macs, example_inputs, zoo_call

        device = next(model.parameters()).device
        inputs, _, _ = example_inputs(model, 1, device=str(device), **MACS_INPUT)
        out["macs_per_sample"] = count_macs(model, zoo_call, inputs)
        if "images" not in inputs:
            out["macs_input"] = MACS_INPUT
    except Exception as e:  # noqa: BLE001 - a model without declared inputs still gets its row
        out["macs_error"] = f"{type(e).__name__}: {e}"
    return out
