"""`zoo compare` (listed in zoo.cli.COMMANDS)."""
from __future__ import annotations

import argparse


def _param(text: str) -> tuple[str, object]:
    import yaml

    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected key=value (e.g. slurm_partition=gpu), got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str], prog: str = "zoo compare", study: str | None = None) -> int:
    """`zoo compare`; `prog` and a default `study` for the commands that are aliases of it (`zoo bench quality`)."""
    from . import __doc__ as doc

    ap = argparse.ArgumentParser(allow_abbrev=False, prog=prog, description=doc.split("\n\n")[0],
                                 epilog="A study file " + doc.split("A study file ", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=study is None, default=study,
                    help=f"the study (default: {study})" if study else "the study, e.g. configs/compare/quick_mnist.yaml")
    only = ap.add_mutually_exclusive_group()  # each does one thing and returns: two of them would drop one silently
    only.add_argument("--report", action="store_true", help="only re-render table.md / table.csv / plot.png from the "
                                                            "store (refused where its rows no longer match the study)")
    only.add_argument("--validate", action="store_true", help="only check the study (every override, every model), train nothing")
    only.add_argument("--cost", action="store_true",
                    help="only measure forward and training-step time versus sequence length (the study's `cost` block; "
                         "random weights, one thread) into <store>/cost.csv and cost.png, train nothing")
    ap.add_argument("--jobs", type=int, help="runs at a time (default: the study's `jobs`); the cores are split between them")
    ap.add_argument("--limit", type=int, help="train at most this many of the missing runs, then report")
    ap.add_argument("--store", help="the store folder (default: the study's `store`, else results/compare/<name>)")
    ap.add_argument("--executor", choices=("local", "submitit"), default="local",
                    help="local: subprocesses on this machine; submitit: one job per run (SLURM where present)")
    ap.add_argument("--cluster", choices=("slurm", "local", "debug"),
                    help="submitit's cluster (default: SLURM if available, else local processes)")
    ap.add_argument("--executor-param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                    help="submitit parameter, e.g. slurm_partition=gpu or mem_gb=8 (repeatable)")
    a = ap.parse_args(argv)
    if a.jobs is not None and a.jobs < 1:
        ap.error("--jobs must be at least 1")
    if a.limit is not None and a.limit < 0:
        ap.error("--limit must be at least 0")

    from .report import render
    from .runner import plan, read_rows, run_study
    from .study import load_study, validate_study

    study = load_study(a.config, a.store)
    if a.cost:
        from .cost import markdown as cost_markdown
        from .cost import read_csv, run_cost

        paths = run_cost(study)
        print(cost_markdown(read_csv(paths[0])))
        rows = read_rows(study.store)
        if rows:  # table.md gains the cost section (from a store that still matches the study, as --report)
            plan(study)
            paths += render(study, rows)[1]
        print(f"zoo compare: wrote {', '.join(str(p) for p in paths)}")
        return 0
    if a.report:
        _, done = plan(study)  # a store whose finished rows the study no longer describes is refused, as a training run refuses it
        rows = read_rows(study.store)
        if not done:  # nothing of this study's variants and seeds: an empty table would replace the last one
            held = f"holds no finished runs of its variants and seeds ({len(rows)} of others)" if rows else "holds no finished runs yet"
            raise FileNotFoundError(f"the store {study.store} {held}; run `zoo compare --config {a.config}` first")
        _, paths = render(study, rows)
        print(f"zoo compare: wrote {', '.join(str(p) for p in paths)}")
        return 0
    print(f"zoo compare: checking study {study.name}: {len(study.variants)} variants against {study.recipe.name} ...", flush=True)
    validate_study(study, verbose=True)
    if a.validate:
        print(f"zoo compare: study {study.name} is valid: {len(study.runs())} runs at {study.budget_text()} "
              f"(store {study.store})")
        return 0
    failures = run_study(study, jobs=a.jobs, limit=a.limit, executor=a.executor, cluster=a.cluster,
                         params=dict(a.executor_param))
    rows = read_rows(study.store)
    if rows:
        summaries, paths = render(study, rows)
        print((study.store / "table.md").read_text())
        print(f"zoo compare: wrote {', '.join(str(p) for p in paths)}")
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed ({failures[0]}{' ...' if len(failures) > 1 else ''}); "
                           "rerun the same command to retry them (finished runs are kept)")
    return 0
