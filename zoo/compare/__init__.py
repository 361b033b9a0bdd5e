"""`zoo compare`: variants of one recipe x seeds under one budget, with confidence intervals.

    zoo compare --config configs/compare/vit_mnist_ablation.yaml              # train what is missing, then report
    zoo compare --config configs/compare/vit_mnist_ablation.yaml --jobs 2     # two runs at a time, the cores split
    zoo compare --config configs/compare/vit_mnist_ablation.yaml --report     # re-render the table from the store
    zoo compare --config configs/compare/vit_mnist_ablation.yaml --validate   # check the study, train nothing
    zoo compare --config configs/compare/vit_mnist_ablation.yaml --executor submitit   # one job per run (SLURM)

A study file names a recipe (any configs/*.yaml), its variants (LightningCLI dotted overrides of that recipe),
the seeds, one budget for every run and the metric:

    name: vit_mnist_ablation
    recipe: configs/vit_mnist.yaml
    baseline: default
    variants:
      default: {}
      qk_norm: {overrides: {model.init_args.model_kwargs.qk_norm: true}}
    seeds: [0, 1, 2]
    budget: {max_epochs: 40}          # or max_steps: N, or max_minutes: M
    metric: test/acc
    store: results/compare/vit_mnist_ablation   # the default: results/compare/<name>
    jobs: 1

Every run is a real `zoo fit` of the recipe in a subprocess (which at the end tests the weights its `test_ckpt`
names, best or last), in `<store>/runs/<variant>/seed<S>/`. Finished runs are appended to `<store>/runs.jsonl`, one row each; a rerun
skips them and moves unfinished run folders aside (`seed<S>.unfinished-<time>`, never deleted). The report
(`table.md`, `table.csv`, `plot.png`) gives per variant the mean, sd and 95% t-interval over seeds and the
difference to the baseline paired by seed, with its interval, whether it excludes 0, and the paired t-test's
p-value with its Holm-Bonferroni adjustment over the study's variants.
"""
from __future__ import annotations

from .report import aggregate, t_interval
from .study import Study, StudyError, load_study, validate_study

__all__ = ["Study", "StudyError", "aggregate", "load_study", "main", "t_interval", "validate_study"]


def main(argv: list[str]) -> int:
    from .cli import main as _main

    return _main(argv)
