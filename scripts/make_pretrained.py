"""Regenerate the weights that ship with zoo (zoo/pretrained_weights/ and its index.json) from the recipes.

    python scripts/make_pretrained.py                                   # train every tag's recipe, then ship it
    python scripts/make_pretrained.py --tag vit_mnist.mnist5k --run runs/vit_mnist/version_3   # ship a finished run
    python scripts/make_pretrained.py --check                           # re-measure every shipped tag

For each tag the checkpoint `zoo fit` tested (the best one, or the last where the recipe says `test_ckpt: last`) is written with `save_pretrained` in
float16 and in float32, and each file is evaluated with the recipe's own test step on its held-out test
split. float16 ships when its metric is within 0.1 point of float32's (else float32). The index records
the shipped file's metric, both measurements, every file's sha256, the input settings and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zoo.pretrained import INDEX, WEIGHTS_DIR, evaluate, sha256_file  # noqa: E402

TAGS = {
    "vit_mnist.mnist5k": {"recipe": "vit_mnist", "metric": "test/acc", "default": True,
                          "split": "MNIST-5k test split (1,000 images never seen in training)"},
    "vit_digits.sklearn_digits": {"recipe": "vit_digits", "metric": "test/acc", "default": True,
                                  "split": "scikit-learn digits test split (20%, seed 0)"},
    "transformer_numbers.en_fr": {"recipe": "transformer_numbers", "metric": "test/exact_match", "default": True,
                                  "split": "1,000 held-out numbers 100-9,999 (0-99 always train), English words -> French words"},
    "clip_mnist.mnist5k": {"recipe": "clip_mnist", "metric": "test/zero_shot_acc", "default": True,
                           "split": "MNIST-5k test split, zero-shot over 10 held-out prompt templates in 4 languages"},
    "vit_captioner_mnist.mnist5k": {"recipe": "caption_mnist", "metric": "test/exact_match", "default": True,
                                    "split": "MNIST-5k test split x 4 languages, greedy caption == reference"},
}
HALF_TOLERANCE = 0.001  # float16 ships when it loses at most 0.1 point


def train(recipe: str) -> Path:
    """`zoo fit` of the recipe (its own run folder); returns the run folder."""
    before = time.time()
    subprocess.run([sys.executable, "-m", "zoo.cli", "fit", "--config", str(ROOT / "configs" / f"{recipe}.yaml")],
                   check=True, cwd=ROOT)
    from zoo.rundir import versions

    runs = [p for p in versions(ROOT / "runs" / recipe) if p.stat().st_mtime >= before]
    return max(runs, key=lambda p: p.stat().st_mtime)


def tested_checkpoint(run: Path) -> Path:
    """The checkpoint `zoo fit` tested: last.ckpt where the run's recipe says `test_ckpt: last`, else its best one."""
    from zoo import yamlfile

    if (yamlfile.load(run / "config.yaml").get("test_ckpt") or "best") == "last":
        last = run / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise SystemExit(f"{run}'s recipe tests its last checkpoint, and {last} is missing")
        return last
    best = sorted((run / "checkpoints").glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not best:
        raise SystemExit(f"{run} has no best*.ckpt; pass a run folder written by `zoo fit` of the recipe")
    return best[-1]


def ship(tag: str, run: Path) -> dict:
    from zoo.hub import save_pretrained
    from zoo.runs import load_run

    spec = TAGS[tag]
    ckpt = tested_checkpoint(run)
    source = load_run(ckpt)
    recipe_yaml = source.meta["cli_config"]
    measured = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float16"):
            folder = save_pretrained(source, Path(tmp) / dtype, dtype=dtype)
            measured[dtype] = evaluate(str(folder), spec["metric"], recipe_yaml)
            print(f"{tag}: {spec['metric']} = {measured[dtype]:.4f} with {dtype} weights", flush=True)
    dtype = "float16" if measured["float16"] >= measured["float32"] - HALF_TOLERANCE else "float32"
    command = (f"zoo fit --config configs/{spec['recipe']}.yaml && python scripts/make_pretrained.py --tag {tag} "
               f"--run runs/{spec['recipe']}/version_N")
    metric = {"name": spec["metric"], "value": round(measured[dtype], 4), "split": spec["split"],
              "float32_value": round(measured["float32"], 4), "float16_value": round(measured["float16"], 4)}
    meta = {"tag": tag, "metric": metric, "command": command, "license": "apache-2.0"}
    out = WEIGHTS_DIR / tag
    save_pretrained(source, out, meta=meta, dtype=dtype, overwrite=True)
    files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
    inputs = dict(source.image or {})
    if source.tokenizer is not None:
        inputs["tokenizer"] = source.meta.get("tokenizer", {}).get("kind") or "tokenizer.json"
        inputs["vocab_size"] = len(source.tokenizer)
    return {"model": source.name, "files": files, "license": "apache-2.0",
            "source": f"trained from scratch by `zoo fit` on the offline data of configs/{spec['recipe']}.yaml",
            "recipe": f"configs/{spec['recipe']}.yaml", "command": command, "dtype": dtype, "metric": metric,
            "input": inputs, "default": bool(spec.get("default"))}


def write_index(entries: dict) -> None:
    index = json.loads(INDEX.read_text()) if INDEX.is_file() else {}
    index.update(entries)
    tmp = INDEX.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    os.replace(tmp, INDEX)


def check() -> int:
    """Re-measure every shipped tag against its index (what tests/test_pretrained.py also does)."""
    from zoo.pretrained import list_pretrained, pretrained_cfg

    bad = 0
    for tag in list_pretrained():
        cfg = pretrained_cfg(tag)
        value = evaluate(tag, cfg.metric["name"])
        ok = abs(value - cfg.metric["value"]) <= 0.005
        bad += not ok
        print(f"{tag}: {cfg.metric['name']} = {value:.4f} (index: {cfg.metric['value']}) {'ok' if ok else 'DIFFERS'}")
    return int(bad > 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", action="append", choices=sorted(TAGS), help="only these tags (repeatable)")
    p.add_argument("--run", help="ship this finished run folder (with --tag) instead of training")
    p.add_argument("--check", action="store_true", help="re-measure the shipped tags")
    a = p.parse_args()
    if a.check:
        return check()
    tags = a.tag or sorted(TAGS)
    if a.run and len(tags) != 1:
        raise SystemExit("--run needs exactly one --tag")
    WEIGHTS_DIR.mkdir(exist_ok=True)
    for tag in tags:
        run = Path(a.run) if a.run else train(TAGS[tag]["recipe"])
        write_index({tag: ship(tag, run)})
        print(f"{tag}: shipped from {run}", flush=True)
    total = sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file())
    print(f"zoo/pretrained_weights: {total / 1e6:.2f} MB in all")
    if os.environ.get("ZOO_KEEP_TMP") is None:
        shutil.rmtree(ROOT / "lightning_logs", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
