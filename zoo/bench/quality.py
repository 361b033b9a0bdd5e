"""Quality benchmark: train several variants on one embedded task under the same budget.

    zoo bench quality                                   # MNIST-5k ViT variants, 150 steps each
    zoo bench quality --task numbers                    # English->French numbers: Transformer vs LSTM vs GRU
    zoo bench quality --task mnist --variants vit_mnist "vit_mnist:dim=64,num_heads=2" --max-steps 300

Every variant is trained by the task's own LightningModule (the same code `zoo fit` runs), with
the same seed, data, optimiser recipe and step (or wall-clock) budget, then tested on the test
split. Reported per variant: the test metric, parameters, MACs per sample (FlopCounterMode),
training time and training throughput. Writes quality_<task>.csv / .json / .png (metric vs MACs
and vs training throughput).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable



@dataclass
class QualityTask:
    task_class: str  # import path of the LightningModule
    data: Callable[[], object]
    metric: str
    variants: list[str]
    task_kwargs: dict = field(default_factory=dict)
    macs_input: dict = field(default_factory=dict)  # example_inputs(...) sizes for MACs
    note: str = ""


def _mnist():
    from ..data.images import MNIST5k

    return MNIST5k(batch_size=128)


def _numbers():
    from ..data.numbers import NumberTranslation

    return NumberTranslation(tasks=["en-fr"], max_number=9999, n_test=1000, n_val=500, vocab_size=1000, batch_size=64)


TASKS = {
    "mnist": QualityTask(
        "zoo.tasks.image.ImageClassification", _mnist, "test/acc",
        ["vit_mnist", "vit_mnist_patch4", "vit_mnist:dim=64,num_heads=2", "vit_mnist:dim=192,num_heads=6"],
        dict(lr=2e-3, weight_decay=0.05, label_smoothing=0.1, warmup_steps=0.05),
        note="MNIST-5k (3,600 train / 1,000 test), batch 128, augmentation as configs/vit_mnist.yaml",
    ),
    "numbers": QualityTask(
        "zoo.tasks.text.Seq2Seq", _numbers, "test/exact_match",
        ["transformer_tiny:d_model=128,num_encoder_layers=2,num_decoder_layers=2,num_heads=4,dim_feedforward=256",
         "lstm_seq2seq", "gru_seq2seq"],
        dict(lr=1e-3, weight_decay=0.01, label_smoothing=0.1, warmup_steps=0.05, max_new_tokens=24),
        macs_input=dict(seq_len=16, tgt_len=16),
        note="English -> French number words (8,500 train / 1,000 unseen test numbers), batch 64, greedy decoding",
    ),
}


def parse_variant(spec: str) -> tuple[str, dict]:
    """"vit_mnist:dim=64,num_heads=2" -> ("vit_mnist", {"dim": 64, "num_heads": 2})."""
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad override {item!r} in {spec!r}; write MODEL:key=value,key=value")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    return name, kwargs


def _import(path: str):
    import importlib

    module, _, cls = path.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def train_variant(task: QualityTask, spec: str, max_steps: int, max_minutes: float | None, seed: int = 0) -> dict:
    import lightning as L

    from ..registry import count_parameters
    from .speed import count_macs, example_inputs, zoo_call

    name, kwargs = parse_variant(spec)
    L.seed_everything(seed, verbose=False)
    dm = task.data()
    module = _import(task.task_class)(model=name, model_kwargs=kwargs, data_overrides=dm.model_overrides, **task.task_kwargs)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps if max_minutes is None else -1, max_epochs=-1 if max_minutes is None else 10_000,
        max_time={"minutes": max_minutes} if max_minutes else None, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tempfile.mkdtemp(prefix="zoo_quality_"),  # data modules save tokenizers here
    )
    dm.setup("fit")  # load / tokenise the data outside the timed training
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    test_s = time.perf_counter() - t0
    model = module.model
    inputs, _, _ = example_inputs(model, 1, **task.macs_input)
    batch = dm.hparams.batch_size if hasattr(dm, "hparams") and "batch_size" in dm.hparams else getattr(dm, "batch_size", None)
    return {
        "variant": spec, "model": name, "overrides": kwargs, "metric": task.metric, "value": float(metrics[task.metric]),
        "params": count_parameters(model), "macs_per_sample": count_macs(model, zoo_call, inputs),
        "steps": trainer.global_step, "train_seconds": train_s, "test_seconds": test_s,
        "train_samples_per_s": trainer.global_step * batch / train_s if batch else None,
        "load_avg_1m": os.getloadavg()[0],
    }


def plot(rows: list[dict], task_name: str, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "macs_per_sample", "MACs per sample (forward)"),
                           (axes[1], "train_samples_per_s", "training throughput (samples/s)")):
        xs, ys = [r[key] for r in rows], [r["value"] for r in rows]
        ax.scatter(xs, ys, s=40)
        for i, (r, x, y) in enumerate(zip(rows, xs, ys)):  # alternate above / below so that labels do not collide
            ax.annotate(_short(r["variant"]), (x, y), textcoords="offset points", xytext=(4, 5 if i % 2 == 0 else -11), fontsize=7)
        ax.set_xscale("log")
        ax.margins(x=0.3, y=0.15)  # room for the labels
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    budget = rows[0].get("budget", "")
    fig.suptitle(f"zoo bench quality --task {task_name} ({budget})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(spec: str) -> str:
    name, _, rest = spec.partition(":")
    return name + (f" ({rest[:24]}...)" if len(rest) > 24 else f" ({rest})" if rest else "")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="zoo bench quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="mnist")
    ap.add_argument("--variants", nargs="+", help="MODEL or MODEL:key=value,... (default: the task's set)")
    ap.add_argument("--max-steps", type=int, default=150, help="optimiser steps per variant (the default budget)")
    ap.add_argument("--max-minutes", type=float, help="wall-clock budget per variant instead of steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/bench")
    a = ap.parse_args(argv)
    task = TASKS[a.task]
    variants = a.variants or task.variants
    budget = f"{a.max_minutes:g} min" if a.max_minutes else f"{a.max_steps} steps"
    rows = []
    for spec in variants:
        print(f"- training {spec} on {a.task} for {budget} ...", flush=True)
        row = {"task": a.task, "budget": budget, **train_variant(task, spec, a.max_steps, a.max_minutes, a.seed)}
        rows.append(row)
        print(f"  {task.metric} = {row['value']:.4f}, {row['params'] / 1e6:.2f}M params, {row['macs_per_sample'] / 1e6:.1f}M MACs, "
              f"{row['train_seconds']:.0f} s training ({row['train_samples_per_s']:.0f} samples/s), load {row['load_avg_1m']:.1f}",
              flush=True)
    print(f"\n{'variant':70s} {task.metric:>16s} {'params':>8s} {'MACs':>9s} {'train s':>8s} {'samples/s':>9s}")
    for r in rows:
        print(f"{r['variant'][:70]:70s} {r['value']:16.4f} {r['params'] / 1e6:7.2f}M {r['macs_per_sample'] / 1e6:8.1f}M "
              f"{r['train_seconds']:8.0f} {r['train_samples_per_s']:9.0f}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from .cli import write_rows
    from .speed import machine_info

    stem = out / f"quality_{a.task}"
    write_rows([{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows], stem.with_suffix(".csv"))
    stem.with_suffix(".json").write_text(json.dumps({
        "task": a.task, "note": task.note, "budget": budget, "machine": machine_info(), "rows": rows,
        "command": ("zoo bench quality " + " ".join(argv)).strip(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1))
    plot(rows, a.task, task.metric, stem.with_suffix(".png"))
    print(f"wrote {stem}.csv, .json and .png")
    return 0
