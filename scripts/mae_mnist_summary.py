"""Collect the runs of scripts/mae_mnist_study.sh into results/studies/mae_mnist.json, with the linear probes.

    python scripts/mae_mnist_summary.py [runs/mae_study]

For every run: test/acc and best val/acc from its metrics.csv, and from its stored config the settings that
must agree between the two arms (seed, label fraction and seed, epochs, batch) and whether init_from was set.
Linear probes: logistic regression on the frozen mean-pooled encoder tokens (zoo.tasks.mae.linear_probe), for
the MAE encoder and for the same encoder at its random initialisation, on 10% and on 100% of the labels.
"""
from __future__ import annotations

import csv
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_folder(out: Path, name: str) -> Path | None:
    found = sorted((out / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return found[-1] if found else None


def metrics(folder: Path) -> dict:
    with open(folder / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    test = [float(r["test/acc"]) for r in rows if r.get("test/acc")]
    val = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    return {"test_acc": test[-1] if test else None, "best_val_acc": max(val) if val else None}


def in_study(path, out: Path) -> str | None:
    """A path of this study as "<study>/..." (relative to the study folder), not as this machine's path."""
    if path is None:
        return None
    try:
        return str(Path("<study>") / Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def settings(folder: Path) -> dict:
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    data, model = cfg["data"]["init_args"], cfg["model"]["init_args"]
    return {"seed": cfg["seed_everything"], "label_fraction": data.get("label_fraction"), "label_seed": data.get("label_seed"),
            "max_epochs": cfg["trainer"]["max_epochs"], "batch_size": data.get("batch_size"), "lr": model.get("lr"),
            "init_from": model.get("init_from")}


def summarise(runs: list[dict]) -> dict:
    accs = [r["test_acc"] for r in runs if r.get("test_acc") is not None]
    out = {"runs": runs, "mean": round(statistics.mean(accs), 4) if accs else None}
    if len(accs) > 1:
        out["sd"] = round(statistics.stdev(accs), 4)
    return out


def interval(diffs: list[float], level: float = 0.95) -> dict:
    """Student-t interval of the mean paired (same seed) difference, in points."""
    if len(diffs) < 2:
        return {}
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    mean = statistics.mean(diffs)
    return {f"ci{int(level * 100)}": [round(100 * (mean - half), 2), round(100 * (mean + half), 2)]}


def probe_splits(fraction: float) -> tuple:
    """The (train, test) tensors of MNIST-5k with `fraction` of the training labels (label_seed 0)."""
    from zoo.data import MNIST5k

    dm = MNIST5k(label_fraction=fraction, label_seed=0)
    dm.setup()
    return dm.splits["train"].tensors, dm.splits["test"].tensors


def probes(mae_ckpt: Path) -> dict:
    import zoo
    from zoo.runs import load_run
    from zoo.tasks.mae import linear_probe

    torch.set_num_threads(1)
    trained = load_run(str(mae_ckpt)).model.eval()
    torch.manual_seed(0)
    untrained = zoo.create_model("mae_mnist").eval()
    out = {}
    for fraction in (0.1, 1.0):
        train, test = probe_splits(fraction)
        for label, model in (("mae", trained), ("random_init", untrained)):
            start = time.time()
            out[f"{label}_{int(fraction * 100)}pct"] = {"test_acc": round(linear_probe(model, train, test), 4),
                                                         "train_images": len(train[1]), "seconds": round(time.time() - start, 1)}
    return out


def main(out: Path) -> None:
    times = {}
    if (out / "log.tsv").exists():
        times = {line.split("\t")[0]: int(line.split("\t")[1]) for line in (out / "log.tsv").read_text().splitlines()}
    mae = run_folder(out, "mae")
    if "mae" not in times and mae is not None:  # the pre-training's own run folder: first file to last checkpoint
        times["mae"] = round((mae / "checkpoints" / "last.ckpt").stat().st_mtime - (mae / "hparams.yaml").stat().st_mtime)
    arms: dict[str, list] = {}
    for folder in sorted(out.glob("ft*_seed*")):
        run = run_folder(out, folder.name)
        if run is None or not (run / "metrics.csv").exists():
            continue
        arm, seed = folder.name.rsplit("_seed", 1)
        row = {"seed": int(seed), **metrics(run), **settings(run), "seconds": times.get(folder.name), "run": in_study(run, out)}
        row["init_from"] = in_study(row["init_from"], out)
        arms.setdefault(arm, []).append(row)
    result = {
        "study": "MAE pre-training on the 3,600 MNIST-5k training images (no labels), then vit_mnist_patch4 (mean pooling) "
                 "fine-tuned from its encoder vs from scratch, same recipe and labels (configs/mae_mnist_finetune.yaml)",
        "command": "bash scripts/mae_mnist_study.sh   # zoo fit --config configs/mae_mnist.yaml once; then per seed S "
                   "zoo fit --config configs/mae_mnist_finetune.yaml --seed_everything S --data.init_args.label_seed S "
                   "[--model.init_args.init_from runs/mae_study/mae] (120 epochs of 360 images = 720 steps); 100%: "
                   "--data.init_args.label_fraction 1.0 --trainer.max_epochs 20 --trainer.check_val_every_n_epoch 5 "
                   "(1,140 steps)",
        "budget": "the two arms of a row share recipe, labels, seed and number of steps; only init_from differs",
        "metric": "test/acc on the 1,000 MNIST-5k test images, best-val checkpoint",
        "machine": f"{platform.machine()} 2-core CPU VM, torch {torch.__version__} CPU, OMP_NUM_THREADS=1; runs one "
                   "after another, another one-thread training on the other core",
        "date": time.strftime("%Y-%m-%d"),
        "paths": "<study> is the study folder, the OUT of scripts/mae_mnist_study.sh (default runs/mae_study)",
        "pretraining": {"run": in_study(mae, out), "seconds": times.get("mae"), "recipe": "configs/mae_mnist.yaml"},
        "arms": {arm: summarise(sorted(rows, key=lambda r: r["seed"])) for arm, rows in sorted(arms.items())},
    }
    if "ft10x4_scratch" in result["arms"]:
        result["control"] = ("ft10x4_scratch: the 10% scratch arm of seed 0 with 4x the fine-tuning steps (--trainer.max_epochs "
                             "480 --trainer.check_val_every_n_epoch 40, 2,880 steps): how much of the gain is the scratch "
                             "ViT still learning when the 720-step budget ends")
    for pct in ("10", "100"):
        a, b = result["arms"].get(f"ft{pct}_mae"), result["arms"].get(f"ft{pct}_scratch")
        if a and b:
            pairs = {r["seed"]: r["test_acc"] for r in a["runs"]}
            diffs = [round(pairs[r["seed"]] - r["test_acc"], 4) for r in b["runs"] if r["seed"] in pairs]
            result[f"gain_{pct}pct_points"] = {"mean": round(100 * statistics.mean(diffs), 2) if diffs else None,
                                               "per_seed": [round(100 * d, 2) for d in diffs], **interval(diffs)}
    if mae is not None:
        result["linear_probe"] = {"features": "mean of the encoder's patch tokens after its final norm, no masking",
                                  "classifier": "sklearn LogisticRegression(C=1) on standardised features; label_seed 0",
                                  **probes(mae / "checkpoints" / "last.ckpt")}
    path = ROOT / "results" / "studies" / "mae_mnist.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "arms"}, indent=1))
    for arm, s in result["arms"].items():
        print(arm, s["mean"], [r["test_acc"] for r in s["runs"]])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mae_study"))
