"""`zoo bench quality`: a thin alias of `zoo compare` on the shipped quick study.

    zoo bench quality                 # = zoo compare --config configs/compare/quick_mnist.yaml
    zoo bench quality --jobs 2        # any `zoo compare` option
    zoo bench quality --report        # re-render the quick study's table from its store

It used to train four ViT variants once each for 150 steps; differences at that budget and one seed
are noise. `zoo compare` runs every variant over several seeds as real `zoo fit` runs and reports
means with 95% confidence intervals and paired differences to a baseline (see zoo/compare/).
"""
from __future__ import annotations

STUDY = "configs/compare/quick_mnist.yaml"


def main(argv: list[str]) -> int:
    from ..compare.cli import main as compare_main

    argv = list(argv)
    if "-h" not in argv and "--help" not in argv:
        given = any(a == "--config" or a.startswith("--config=") for a in argv)
        print(f"zoo bench quality is an alias of: zoo compare {' '.join(argv if given else ['--config', STUDY, *argv])}",
              flush=True)
    return compare_main(argv, prog="zoo bench quality", study=STUDY)
