"""What bf16 autocast buys a recipe's training step on this CPU (issue 22: "bf16 is the recipes' fast path").

    python scripts/recipe_step_precision.py [RECIPE ...]     # default: every configs/*.yaml that trains in float32

For each recipe: its model, optimiser and data module as `zoo fit --config configs/<recipe>.yaml` builds them,
one training batch of the recipe's size, and the task's own training step (the data module's and the task's
batch hooks as Lightning's loop calls them, e.g. batched augmentation; forward, loss, backward, the optimiser's
step) timed in float32 and under bf16 autocast in the same interleaved rounds (zoo.bench.speed's time_interleaved;
median of 6 rounds x 3 steps, 2 threads, under zoo fit's heap policy). Only the step: start-up, data loading,
validation and testing are not in it; `zoo bench tta` measures whole runs. A recipe whose step is not faster in
bf16 has no reason to switch; one that is must still keep its accuracy (a `zoo bench tta` file with a float32
setting: configs/bench/tta_*.yaml).
"""
from __future__ import annotations

import statistics
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(recipe: Path):
    """The task (model) and data module of a recipe, as LightningCLI instantiates them, without a run folder."""
    from zoo.trainer_cli import ZooCLI, build_cli

    class Builder(ZooCLI):  # no subcommand: instantiate only, claim no run folder, store no recipe
        def before_instantiate_classes(self):
            pass

        def after_instantiate_classes(self):
            pass

    cli = build_cli(["--config", str(recipe), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                     "--trainer.enable_model_summary", "false"], run=False, cli_class=Builder)
    return cli.model, cli.datamodule


def step_times(recipe: Path, rounds: int = 6, per_round: int = 3) -> dict:
    from zoo.bench.speed import time_interleaved
    from zoo.tasks.base import make_optimizer

    task, data = build(recipe)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    hp = task.hparams  # the optimiser configure_optimizers builds (its schedule does not change a step's time)
    opt = make_optimizer(hp.optimizer, task.param_groups(), hp.lr, tuple(hp.betas))
    task.log = task.log_dict = lambda *a, **k: None  # no loop to log into
    task.train()

    def step(bf16: bool):
        def run():  # the batch hooks as Lightning's loop calls them (batched augmentation, collation), then the step
            b = batch
            for hooks in (data, task):
                b = hooks.on_before_batch_transfer(b, 0)
            for hooks in (data, task):
                b = hooks.on_after_batch_transfer(b, 0)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = task.training_step(b, 0)
            (out["loss"] if isinstance(out, dict) else out).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    times = time_interleaved({"fp32": step(False), "bf16": step(True)}, warmup=2, rounds=rounds, per_round=per_round)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"recipe": recipe.stem, "params_m": sum(p.numel() for p in task.parameters()) / 1e6,
            "fp32_ms": ms["fp32"], "bf16_ms": ms["bf16"], "speedup": ms["fp32"] / ms["bf16"]}


def float32_recipes() -> list[Path]:
    import yaml

    out = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer") or {}
        if str(trainer.get("precision", "32-true")).startswith("32"):
            out.append(path)
    return out


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore")
    from zoo.allocator import keep_freed_memory
    from zoo.bench.speed import machine_info
    from zoo.cli import _quiet_lightning

    _quiet_lightning()  # as the zoo commands do: no Lightning advertisement between the rows
    keep_freed_memory()
    torch.set_num_threads(2)
    recipes = [ROOT / "configs" / f"{Path(r).stem}.yaml" for r in argv] or float32_recipes()
    info = machine_info()
    print(f"# python scripts/recipe_step_precision.py {' '.join(argv)}  ({info.get('cpu')}, 2 threads, torch {torch.__version__})")
    print(f"{'recipe':24s} {'params':>7s} {'fp32 ms':>8s} {'bf16 ms':>8s} {'bf16 speed-up':>13s}")
    for recipe in recipes:
        try:
            r = step_times(recipe)
        except Exception as e:  # a recipe whose data is not on this machine (cifar10_vit), or that needs a run first
            print(f"{recipe.stem:24s} not measured: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}")
            continue
        print(f"{r['recipe']:24s} {r['params_m']:6.2f}M {r['fp32_ms']:8.1f} {r['bf16_ms']:8.1f} {r['speedup']:12.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
