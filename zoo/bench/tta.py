"""`zoo bench tta`: time to accuracy. What a user feels is the time from `zoo fit` to a trained model.

A time-to-accuracy file names a recipe, its settings (each a set of overrides of the recipe with its own
budget: precision, compile, batch size, schedule, model size), the seeds, the metric and the target:

    name: tta_vit_mnist
    recipe: configs/vit_mnist.yaml
    metric: test/acc
    target: 0.97
    mode: max                           # max: reach target from below (accuracy); min: from above (perplexity, loss)
    reference: fp32_eager_40ep          # the row every speed-up is measured against
    seeds: [0, 1, 2]
    settings:
      recipe: {description: the recipe as committed}                   # budget: the recipe's own
      fp32_eager_40ep: {overrides: {...}, budget: {max_epochs: 40}}

Every run is a real `zoo fit` of the recipe (at the end it tests the weights its `test_ckpt` names: best or last), run one at a time with
all the machine's threads, through `zoo compare`'s runner: one store per setting under
results/bench/<name>/<setting>/, resumable. The time of a run is the wall time of the whole `zoo fit`
process (start-up, data, training, validation and the final test), as a user waits for it. A setting
reaches the target when every seed's test metric does (≥ target; with `mode: min`, ≤ target); the table gives the median time, the metric's
mean and 95% t-interval, and the speed-up of the median time over the reference setting.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..compare.report import t_interval
from ..compare.study import BUDGET_KEYS, ROOT, Study, StudyError, _find, load_study, read_recipe

KEYS = ("name", "description", "recipe", "metric", "target", "mode", "reference", "seeds", "settings", "store")
MODES = ("max", "min")
SETTING_KEYS = ("description", "overrides", "budget")


@dataclass
class TTA:
    name: str
    path: Path
    metric: str
    target: float
    reference: str
    store: Path
    studies: dict[str, Study]  # setting -> a one-variant study with the setting's budget
    description: str = ""
    mode: str = "max"  # "max": higher is better (accuracy); "min": lower is better (perplexity, loss)

    def reaches(self, value: float) -> bool:
        return value >= self.target if self.mode == "max" else value <= self.target

    def worst(self, values: list[float]) -> float:
        return min(values) if self.mode == "max" else max(values)


def _recipe_budget(recipe: Path, path: Path) -> dict:
    raw = read_recipe(recipe, str(path))
    epochs = (raw.get("trainer") or {}).get("max_epochs")
    if not isinstance(epochs, int) or epochs <= 0:
        raise StudyError(f"recipe {recipe.name} sets no trainer.max_epochs; give the setting a budget: {{max_epochs: N}}")
    return {"max_epochs": epochs}


def load_tta(path: str | Path, store: str | Path | None = None) -> TTA:
    """Read a time-to-accuracy file; each setting becomes a one-variant `zoo compare` study (checked the same way)."""
    from ..compare.study import find_study, read_mapping

    path = find_study(str(path))
    raw = read_mapping(path, KEYS, "time-to-accuracy file")
    name = str(raw.get("name") or path.stem)
    target = raw.get("target")
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise StudyError(f"{path}: target must be a number (the test metric to reach, e.g. target: 0.97), got {target!r}")
    mode = raw.get("mode", "max")
    if mode not in MODES:
        raise StudyError(f"{path}: mode must be 'max' (the metric reaches the target from below, e.g. accuracy) or 'min' "
                         f"(from above, e.g. perplexity), got {mode!r}")
    settings = raw.get("settings")
    if not isinstance(settings, dict) or not settings:
        raise StudyError(f"{path}: settings must be a non-empty mapping name -> {{overrides: ..., budget: ...}}")
    reference = str(raw.get("reference") or next(iter(settings)))
    if reference not in settings:
        raise StudyError(f"{path}: reference {reference!r} is not one of the settings ({', '.join(map(str, settings))})")
    root = Path(store or raw.get("store") or Path("results") / "bench" / name).resolve()
    studies = {}
    for sname, spec in settings.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - set(SETTING_KEYS):
            raise StudyError(f"{path}: setting {sname}: write {sname}: {{description: ..., overrides: {{...}}, budget: {{...}}}}"
                             f"; unknown: {sorted(set(spec) - set(SETTING_KEYS)) if isinstance(spec, dict) else spec}")
        budget = spec.get("budget")
        if budget is not None and (not isinstance(budget, dict) or set(budget) - set(BUDGET_KEYS)):
            raise StudyError(f"{path}: setting {sname}: budget must be one of {', '.join(BUDGET_KEYS)}, got {budget!r}")
        study_raw = {"name": f"{name}.{sname}", "recipe": raw.get("recipe"), "metric": raw.get("metric", "test/acc"),
                     "seeds": raw.get("seeds", [0, 1, 2]), "variants": {str(sname): {k: v for k, v in spec.items() if k != "budget"}},
                     "jobs": 1}
        if not raw.get("recipe"):
            raise StudyError(f"{path} names no recipe; add `recipe: configs/<recipe>.yaml`")
        if budget is None:
            budget = _recipe_budget(_abs_recipe(raw["recipe"], path), path)
        study_raw["budget"] = budget
        studies[str(sname)] = _study_from(study_raw, path, root / str(sname))
    return TTA(name=name, path=path, metric=studies[reference].metric, target=float(target), reference=reference,
               store=root, studies=studies, description=str(raw.get("description") or ""), mode=mode)


def _study_from(raw: dict, path: Path, store: Path) -> Study:
    """A Study through load_study's own checks (read from a temporary file; nothing is written to the store)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "setting.yaml"
        spec.write_text(yaml.safe_dump({**raw, "recipe": str(_abs_recipe(raw["recipe"], path))}, sort_keys=False))
        study = load_study(spec, store)
    study.path = path  # run_study copies it into the store as study.yaml
    return study


def _abs_recipe(recipe: Any, path: Path) -> Path:
    found = _find(str(recipe), path)  # the working directory, next to the file, the repository: as study files
    if found is None:
        raise StudyError(f"{path}: recipe {recipe!r} does not exist (looked in the working directory, {path.parent} and {ROOT})")
    return found


def summarise(tta: TTA, rows_by_setting: dict[str, list[dict]]) -> list[dict]:
    """One row per setting that has runs: median wall time (min, max), the metric's t-interval, the seeds at the
    target, and the speed-up of the median time over the reference setting's."""
    out = []
    for sname, rows in rows_by_setting.items():
        if not rows:
            continue
        walls = [r["wall_seconds"] for r in rows]
        values = [r["metrics"][tta.metric] for r in rows]
        ci = t_interval(values)
        out.append({"setting": sname, "budget": tta.studies[sname].budget_text(), "seeds": sorted(r["seed"] for r in rows),
                    "wall_median_s": statistics.median(walls), "wall_min_s": min(walls), "wall_max_s": max(walls),
                    "train_median_s": statistics.median(r["train_seconds"] for r in rows),
                    "mean": ci["mean"], "low": ci["low"], "high": ci["high"], "worst": tta.worst(values),
                    "reached": sum(tta.reaches(v) for v in values), "threads": rows[0].get("threads"),
                    "git_revs": sorted({str(r["git_rev"]) for r in rows if r.get("git_rev")})})
    ref = next((s for s in out if s["setting"] == tta.reference), None)
    for s in out:
        s["speedup"] = ref["wall_median_s"] / s["wall_median_s"] if ref else None
    return out


def markdown(tta: TTA, summary: list[dict]) -> str:
    at = "≥" if tta.mode == "max" else "≤"
    lines = [f"# Time to accuracy: {tta.name}", "", tta.description.strip(), "",
             f"Target: {tta.metric} {at} {tta.target:g}. Time = wall time of the whole `zoo fit` (start-up, training, "
             f"validation, final test), one run at a time. Speed-up: median time of `{tta.reference}` ÷ median time.", "",
             "| setting | budget | seeds | median time s (min–max) | train s | "
             f"{tta.metric} mean (95% CI) | worst seed | seeds {at} target | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        ci = "" if s["low"] is None else f" ({s['low']:.4f}–{s['high']:.4f})"
        speedup = "" if s["speedup"] is None else f"{s['speedup']:.2f}×"
        lines.append(f"| {s['setting']} | {s['budget']} | {len(s['seeds'])} | {s['wall_median_s']:.0f} "
                     f"({s['wall_min_s']:.0f}–{s['wall_max_s']:.0f}) | {s['train_median_s']:.0f} | {s['mean']:.4f}{ci} | "
                     f"{s['worst']:.4f} | {s['reached']}/{len(s['seeds'])} | "
                     f"{speedup} |")
    revs = {rev for s in summary for rev in s.get("git_revs", [])}
    if len(revs) > 1:  # the speed-ups then compare code as well as settings
        lines += ["", "The settings ran at different git revisions, so a speed-up compares code as well as settings: "
                  + "; ".join(f"`{s['setting']}` at {', '.join(s.get('git_revs') or ['?'])}" for s in summary) + "."]
    measured = {s["setting"] for s in summary}
    for sname, study in tta.studies.items():
        desc = study.descriptions.get(sname)
        if desc:
            lines.append(f"\n- `{sname}`: {desc}" + ("" if sname in measured else " (not run yet)"))
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def report(tta: TTA) -> list[Path]:
    from ..compare.runner import read_rows

    rows = {s: [r for r in read_rows(st.store) if r.get("variant") == s] for s, st in tta.studies.items()}
    summary = summarise(tta, rows)
    if not summary:
        return []
    md, table = tta.store / "table.md", tta.store / "table.csv"
    tmp = md.with_suffix(".tmp")
    tmp.write_text(markdown(tta, summary), encoding="utf-8")
    tmp.replace(md)
    tmp = table.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[k for k in summary[0] if k != "seeds"] + ["seeds"])
        w.writeheader()
        for s in summary:
            w.writerow({**s, "seeds": " ".join(map(str, s["seeds"])), "git_revs": " ".join(s.get("git_revs", []))})
    tmp.replace(table)
    return [md, table]


def main(argv: list[str]) -> int:
    import argparse

    from ..compare.runner import run_study
    from ..compare.study import validate_study
    from .cli import _at_least

    ap = argparse.ArgumentParser(allow_abbrev=False, prog="zoo bench tta", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the time-to-accuracy file, e.g. configs/bench/tta_vit_mnist.yaml")
    ap.add_argument("--settings", nargs="*", help="run only these settings (default: all)")
    ap.add_argument("--limit", type=_at_least(0), help="train at most this many missing runs per setting (0: none)")
    ap.add_argument("--report", action="store_true", help="only re-render table.md / table.csv from the stores")
    ap.add_argument("--validate", action="store_true", help="only check every setting against the recipe, train nothing")
    ap.add_argument("--store", help="default: the file's `store`, else results/bench/<name>")
    a = ap.parse_args(argv)
    tta = load_tta(a.config, a.store)
    chosen = a.settings or list(tta.studies)
    bad = [s for s in chosen if s not in tta.studies]
    if bad:
        ap.error(f"unknown setting(s) {', '.join(bad)}; the file has {', '.join(tta.studies)}")
    for s in chosen:
        validate_study(tta.studies[s])
    if a.validate:
        print(f"zoo bench tta: {tta.name}: {len(chosen)} setting(s) valid")
        return 0
    failures = [] if a.report else [f for s in chosen for f in run_study(tta.studies[s], jobs=1, limit=a.limit)]
    paths = report(tta)
    if paths:
        print(paths[0].read_text(encoding="utf-8"))
        print(f"zoo bench tta: wrote {', '.join(str(p) for p in paths)}")
    elif not failures:
        print(f"zoo bench tta: {tta.name}: no finished run in {tta.store} yet, so no table; `zoo bench tta --config "
              f"{a.config}` trains the runs")
    for f in failures:
        print(f"zoo bench tta: FAILED {f}")
    return 1 if failures else 0
