"""Collect the runs of scripts/mae_precision_study.sh into results/studies/mae_mnist_precision.json.

    python scripts/mae_precision_summary.py [runs/mae_precision]

Per pre-training (float32, bf16 autocast): its test reconstruction loss, seconds and the linear probe of its
encoder (10% and 100% of the labels); per fine-tuning seed: test/acc of the float32 fine-tune from each encoder,
and from the bf16 encoder fine-tuned in bf16, with the paired (same seed, same labels) difference of each to the
float32 arm and its Student-t interval.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from mae_mnist_summary import in_study, interval, metrics, probe_splits, run_folder, settings, summarise  # noqa: E402

PRECISIONS = ("fp32", "bf16")
# arm -> run-name prefix: float32 fine-tunes from each pre-training, and bf16 throughout
ARMS = {"ft10_from_fp32": "ft10_fp32", "ft10_from_bf16": "ft10_bf16", "ft10_bf16_pipeline": "ft10_bf16all"}


def test_loss(folder: Path) -> float | None:
    with open(folder / "metrics.csv") as fh:
        rows = [float(r["test/loss"]) for r in csv.DictReader(fh) if r.get("test/loss")]
    return round(rows[-1], 4) if rows else None


def probe(ckpt: Path) -> dict:
    from zoo.runs import load_run
    from zoo.tasks.mae import linear_probe

    model = load_run(str(ckpt)).model.eval()
    return {f"{int(fraction * 100)}pct": round(linear_probe(model, *probe_splits(fraction)), 4) for fraction in (0.1, 1.0)}


def main(out: Path) -> None:
    times = {}
    if (out / "log.tsv").exists():
        times = {line.split("\t")[0]: int(line.split("\t")[1]) for line in (out / "log.tsv").read_text().splitlines()}
    pretraining, arms = {}, {}
    for p in PRECISIONS:
        run = run_folder(out, f"mae_{p}")
        if run is not None:
            pretraining[p] = {"run": in_study(run, out), "seconds": times.get(f"mae_{p}"), "test_loss": test_loss(run),
                              "linear_probe_test_acc": probe(run / "checkpoints" / "last.ckpt")}
    for arm, prefix in ARMS.items():
        rows = []
        for seed in (0, 1, 2):
            ft = run_folder(out, f"{prefix}_seed{seed}")
            if ft is None or not (ft / "metrics.csv").exists():
                continue
            row = {"seed": seed, **metrics(ft), **settings(ft), "seconds": times.get(f"{prefix}_seed{seed}"),
                   "run": in_study(ft, out)}
            row["init_from"] = in_study(row["init_from"], out)
            rows.append(row)
        if rows:
            arms[arm] = summarise(rows)
    result = {
        "study": "MAE pre-training (configs/mae_mnist.yaml, seed 0) in float32 and in bf16 autocast, then vit_mnist_patch4 "
                 "fine-tuned in float32 from each encoder on 10% of the labels (configs/mae_mnist_finetune.yaml, 720 steps), "
                 "and in bf16 from the bf16 encoder",
        "command": "bash scripts/mae_precision_study.sh",
        "budget": "the two arms of a seed share fine-tuning recipe, labels, seed and steps; only the pre-training's "
                  "precision (--trainer.precision 32-true / bf16-mixed) differs; the pipeline arm also fine-tunes in bf16",
        "metric": "test/acc on the 1,000 MNIST-5k test images, best-val checkpoint",
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU VM, torch {torch.__version__} CPU, OMP_NUM_THREADS="
                   f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; runs one after another",
        "date": time.strftime("%Y-%m-%d"),
        "paths": "<study> is the study folder, the OUT of scripts/mae_precision_study.sh (default runs/mae_precision)",
        "pretraining": pretraining,
        "arms": arms,
    }
    ref = {r["seed"]: r["test_acc"] for r in arms.get("ft10_from_fp32", {}).get("runs", [])}
    for arm in ("ft10_from_bf16", "ft10_bf16_pipeline"):
        diffs = [round(r["test_acc"] - ref[r["seed"]], 4) for r in arms.get(arm, {}).get("runs", []) if r["seed"] in ref]
        if diffs:
            result[f"{arm}_minus_fp32_points"] = {"mean": round(100 * statistics.mean(diffs), 2),
                                                   "per_seed": [round(100 * d, 2) for d in diffs], **interval(diffs)}
    path = ROOT / "results" / "studies" / "mae_mnist_precision.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "arms"}, indent=1))
    for arm, s in arms.items():
        print(arm, s["mean"], [r["test_acc"] for r in s["runs"]])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mae_precision"))
