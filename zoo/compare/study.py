"""Study files: loading, the `zoo fit` arguments of each run, and validation before any training."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..yamlfile import YAMLFileError
from ..yamlfile import load as load_yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository (configs/ lives here in a source checkout)
BUDGET_KEYS = ("max_epochs", "max_steps", "max_minutes")
STUDY_KEYS = ("name", "description", "recipe", "baseline", "variants", "seeds", "budget", "metric", "store", "jobs", "cost")
VARIANT_KEYS = ("overrides", "description")
MODEL_KWARGS = "model.init_args.model_kwargs"
# set by the study itself (seed, budget, run folder): a variant may not override them. limit_train_batches and
# min_epochs / min_steps change how much a run trains as surely as max_*: a variant at limit_train_batches 0.5
# trained on half the batches of each epoch under a table saying "budget N epochs for every run"
RESERVED = ("seed_everything", "trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.default_root_dir",
            "trainer.limit_train_batches", "trainer.min_epochs", "trainer.min_steps", "test_after_fit", "ckpt_path", "config")
RECORDER = "zoo.compare.recorder.RunRecorder"
SEED_MAX = 2**32 - 1  # lightning's seed_everything accepts 0 .. 2**32 - 1 (numpy's seed range)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class StudyError(ValueError):
    """A study file that cannot run; the message names the problem in one line."""


@dataclass
class Study:
    name: str
    path: Path
    recipe: Path
    baseline: str
    variants: dict[str, dict[str, Any]]  # name -> {dotted key: value}
    seeds: list[int]
    budget: dict[str, float]  # exactly one of BUDGET_KEYS
    metric: str = "test/acc"
    store: Path = field(default_factory=Path)
    jobs: int = 1
    description: str = ""
    descriptions: dict[str, str] = field(default_factory=dict)
    cost: Any = None  # zoo.compare.cost.CostSpec: lengths etc. of `zoo compare --cost`; None: no cost block

    def budget_text(self) -> str:
        (key, value), = self.budget.items()
        return {"max_epochs": f"{value:g} epochs", "max_steps": f"{value:g} steps", "max_minutes": f"{value:g} min"}[key]

    def where(self) -> str:
        """How errors name the study: its name and its file."""
        return f"study {self.name} ({self.path})"

    def runs(self) -> list[tuple[str, int]]:
        """(variant, seed) of every run, seed-major: a partial study has every variant at its first seeds."""
        return [(v, s) for s in self.seeds for v in self.variants]

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.store / "runs" / variant / f"seed{seed}"


def _find(path: str, study_path: Path) -> Path | None:
    p = Path(path)
    for cand in (p, study_path.parent / p, ROOT / p) if not p.is_absolute() else (p,):
        if cand.is_file():
            return cand.resolve()
    return None


def find_study(path: str) -> Path:
    p = _find(path, Path.cwd() / "x")
    if p is None:
        raise StudyError(f"study file {path} does not exist; shipped studies: "
                         f"{', '.join(sorted(str(s.relative_to(ROOT)) for s in (ROOT / 'configs' / 'compare').glob('*.yaml')))}")
    return p


def read_mapping(path: Path, keys: tuple[str, ...], kind: str) -> dict:
    """A YAML file that must be a mapping with only these keys; errors name the file and the accepted keys."""
    try:
        raw = load_yaml(path)
    except YAMLFileError as e:
        raise StudyError(f"{kind} {e}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{kind} {path} must be a mapping with keys {', '.join(keys)}")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise StudyError(f"{kind} {path}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(keys)}")
    return raw


def load_study(path: str | Path, store: str | Path | None = None) -> Study:
    """Read and check a study file (its structure; `validate_study` checks the overrides against the recipe)."""
    path = find_study(str(path))
    raw = read_mapping(path, STUDY_KEYS, "study file")
    name = str(raw.get("name") or path.stem)
    if not _NAME.match(name):
        raise StudyError(f"study name {name!r} must be letters, digits, '_', '-', '.' or '+' (it names the store folder)")
    where = f"study {name} ({path})"
    if not raw.get("recipe"):
        raise StudyError(f"{where} names no recipe; add `recipe: configs/<recipe>.yaml`")
    recipe = _find(str(raw["recipe"]), path)
    if recipe is None:
        raise StudyError(f"{where}: recipe {raw['recipe']} does not exist (looked in the working directory, "
                         f"{path.parent} and {ROOT})")
    read_recipe(recipe, where)  # a key given twice in the recipe is refused here, before any run
    variants_raw = raw.get("variants")
    if not variants_raw:
        raise StudyError(f"{where} has no variants; list at least one under `variants:` (name: {{overrides: {{key: value}}}})")
    if not isinstance(variants_raw, dict):
        raise StudyError(f"{where}: variants must be a mapping name -> {{overrides: {{dotted.key: value}}}}, "
                         f"got a {type(variants_raw).__name__}")
    variants, descriptions = {}, {}
    for vname, spec in variants_raw.items():
        vname = str(vname)
        if not _NAME.match(vname):
            raise StudyError(f"{where}: variant name {vname!r} must be letters, digits, '_', '-', '.' or '+' (it names a folder)")
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - set(VARIANT_KEYS):
            bad = sorted(set(spec) - set(VARIANT_KEYS)) if isinstance(spec, dict) else spec
            raise StudyError(f"{where}: variant {vname}: unknown key(s) {bad}; write {vname}: {{overrides: {{dotted.key: value}}}}")
        overrides = spec.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise StudyError(f"{where}: variant {vname}: overrides must be a mapping dotted.key -> value")
        for key in overrides:
            k = str(key).lstrip("-")
            if k in RESERVED or k.startswith("trainer.max_"):
                raise StudyError(f"{where}: variant {vname}: override {key} is set by the study (seeds, budget, run folder), "
                                 "not by a variant; every variant gets the same budget")
        variants[vname] = {str(k).lstrip("-"): v for k, v in overrides.items()}
        if spec.get("description"):
            descriptions[vname] = str(spec["description"])
    baseline = str(raw.get("baseline") or next(iter(variants)))
    if baseline not in variants:
        raise StudyError(f"{where}: baseline {baseline!r} is not one of its variants ({', '.join(variants)})")
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds:
        raise StudyError(f"{where}: seeds must be a non-empty list of integers, e.g. seeds: [0, 1, 2]")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise StudyError(f"{where}: seeds must be distinct integers, got {seeds}")
    if not all(0 <= s <= SEED_MAX for s in seeds):  # seed_everything refuses others: every run would fail at its start
        raise StudyError(f"{where}: seeds must be integers from 0 to {SEED_MAX} (what seed_everything accepts), got {seeds}")
    budget = raw.get("budget")
    if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in BUDGET_KEYS:
        raise StudyError(f"{where}: budget must be exactly one of {', '.join(BUDGET_KEYS)}, e.g. budget: {{max_epochs: 40}}; "
                         f"got {budget!r}")
    (bkey, bval), = budget.items()
    if isinstance(bval, bool) or not isinstance(bval, (int, float)) or not math.isfinite(bval) or bval <= 0 or \
            (bkey != "max_minutes" and int(bval) != bval):
        raise StudyError(f"{where}: budget {bkey} must be a positive {'number' if bkey == 'max_minutes' else 'integer'}, got {bval!r}")
    metric = str(raw.get("metric") or "test/acc")
    if not metric.startswith("test/"):
        raise StudyError(f"{where}: metric {metric!r} must be a test metric (test/...): every run is compared on its test split")
    jobs = raw.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise StudyError(f"{where}: jobs must be a positive integer, got {jobs!r}")
    store = Path(store or raw.get("store") or Path("results") / "compare" / name).resolve()
    from .cost import parse_cost

    cost = parse_cost(raw.get("cost"), where, list(variants))
    return Study(name=name, path=path, recipe=recipe, baseline=baseline, variants=variants, seeds=list(seeds),
                 budget={bkey: bval}, metric=metric, store=store, jobs=jobs, description=str(raw.get("description") or ""),
                 descriptions=descriptions, cost=cost)


# ---------------------------------------------------------------------------- the arguments of one run
def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def read_recipe(recipe: Path, where: str = "") -> dict:
    """A recipe file as a mapping ({} when empty); a key given twice or invalid YAML is a StudyError."""
    try:
        raw = load_yaml(recipe)
    except YAMLFileError as e:
        raise StudyError(f"{where + ': ' if where else ''}recipe {e}") from None
    return raw if isinstance(raw, dict) else {}


def _recipe_model_kwargs(recipe: Path) -> dict:
    raw = read_recipe(recipe)
    init = ((raw.get("model") or {}).get("init_args") or {}) if isinstance(raw.get("model"), dict) else {}
    return dict(init.get("model_kwargs") or {})


def data_overrides(study: Study, variant: str, fields: set[str]) -> dict:
    """What the recipe's data module is expected to pass the model that can be read without building it: its
    `vocab_size` (the variant's data.init_args.vocab_size override, else the recipe's), when the model takes one.
    The tokenizer's real size can be a little smaller; pad/eos ids do not change sizes."""
    if "vocab_size" not in fields:
        return {}
    vocab = study.variants[variant].get("data.init_args.vocab_size")
    if vocab is None:
        raw = read_recipe(study.recipe, f"study {study.name}")
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        vocab = (data.get("init_args") or {}).get("vocab_size") if isinstance(data.get("init_args"), dict) else None
    return {"vocab_size": vocab} if isinstance(vocab, int) and not isinstance(vocab, bool) else {}


def override_args(study: Study, variant: str) -> list[str]:
    """The variant's overrides as `--key=value` arguments. Keys under model.init_args.model_kwargs are merged
    into the recipe's model_kwargs and passed as one JSON mapping (the parser would read `model_kwargs.dim=4`
    as the string "4")."""
    args, kwargs, whole = [], None, None
    for key, value in study.variants[variant].items():
        if key == MODEL_KWARGS:
            whole = dict(value or {})
        elif key.startswith(MODEL_KWARGS + "."):
            kwargs = kwargs or {}
            kwargs[key[len(MODEL_KWARGS) + 1:]] = value
        else:
            args.append(f"--{key}={_cli_value(value)}")
    if kwargs is not None or whole is not None:
        merged = {**(whole if whole is not None else _recipe_model_kwargs(study.recipe)), **(kwargs or {})}
        args.append(f"--{MODEL_KWARGS}={json.dumps(merged)}")
    return args


def budget_args(study: Study) -> list[str]:
    (key, value), = study.budget.items()
    if key == "max_epochs":
        return [f"--trainer.max_epochs={int(value)}", "--trainer.max_steps=-1", "--trainer.max_time=null"]
    if key == "max_steps":
        return [f"--trainer.max_steps={int(value)}", "--trainer.max_epochs=-1", "--trainer.max_time=null"]
    s = int(round(value * 60))
    return [f"--trainer.max_time={s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}",
            "--trainer.max_epochs=-1", "--trainer.max_steps=-1"]


def fit_args(study: Study, variant: str, seed: int, run_dir: Path | None = None) -> list[str]:
    """`zoo fit` arguments of one run: the recipe, the seed, the variant's overrides, the budget, its folder."""
    run_dir = run_dir or study.run_dir(variant, seed)
    return ["fit", "--config", str(study.recipe), f"--seed_everything={seed}", *override_args(study, variant),
            *budget_args(study), f"--trainer.default_root_dir={run_dir}", "--test_after_fit=true",
            f"--trainer.callbacks+={RECORDER}"]


# ---------------------------------------------------------------------------- validation
class _Parsed(Exception):
    pass


def recipe_parser(args: list[str]):
    """The parser of `zoo fit` (zoo.trainer_cli.build_cli), built in-process after parsing `args`, without
    instantiating anything: returns the parser."""
    from unittest import mock

    from .. import trainer_cli

    class ParseOnly(trainer_cli.ZooCLI):
        def before_instantiate_classes(self):
            raise _Parsed(self)

    err = io.StringIO()
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to 0": nothing is trained here
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    with mock.patch.object(sys, "argv", sys.argv[:1]), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            trainer_cli.build_cli(args, run=True, cli_class=ParseOnly)
        except _Parsed as done:
            return done.args[0].parser
        except SystemExit:
            raise StudyError(_parser_error(err.getvalue())) from None
        finally:
            seed_log.setLevel(level)
    raise StudyError("the recipe parser did not stop before instantiation")  # pragma: no cover


def _parser_error(text: str) -> str:
    """jsonargparse's multi-line error as one line: what is wrong, without the usage and the type listing."""
    text = text.split("\nerror: ", 1)[-1] if "\nerror: " in text else text.rsplit("error:", 1)[-1]
    skip = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:", "- Expected a <class 'NoneType'>",
            "tip:")
    lines = [ln.strip().lstrip("- ").strip().rstrip(":") for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Given value: NestedArg")]
    return "; ".join(ln for ln in lines if not any(ln.startswith(s.lstrip("- ")) for s in skip)) or "parse error"


def _parse(parser, args: list[str]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser.parse_args(args), None
        except SystemExit:
            return None, _parser_error(err.getvalue())


def check_metric(study: Study, variant: str, ns) -> None:
    """The study's metric must be one the recipe's task logs at test (its `test_metrics`), or every run would
    train to the end and then fail."""
    import fnmatch

    task = _task_class(ns.fit.model.get("class_path") if ns.fit.get("model") else None)
    if task is None:
        return  # the parser has accepted it; nothing declared to check against
    declared = getattr(task, "test_metrics", ())
    if declared and not any(fnmatch.fnmatchcase(study.metric, p) for p in declared):
        raise StudyError(f"{study.where()}: variant {variant}: metric {study.metric} is not logged by {task.__name__} at "
                         f"test; it logs {', '.join(declared)} (e.g. metric: {declared[0]})")


def _task_class(path) -> type | None:
    """The task class a `model.class_path` names, or None where it names none that imports."""
    import importlib

    if not isinstance(path, str) or "." not in path:
        return None
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def metric_range(study: Study) -> tuple[float, float] | None:
    """The range the study's metric lies in, as the recipe's task declares it (`metric_ranges`), read from the
    recipe file and the variants' `model.class_path` overrides without parsing; None where undeclared or where the
    variants' tasks disagree."""
    import fnmatch

    raw = read_recipe(study.recipe)
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    found = set()
    for overrides in study.variants.values():
        task = _task_class(overrides.get("model.class_path", model.get("class_path")))
        declared = getattr(task, "metric_ranges", ())
        found.add(next((tuple(r) for p, r in declared if fnmatch.fnmatchcase(study.metric, p)), None))
    return found.pop() if len(found) == 1 else None


def validate_study(study: Study, verbose: bool = False) -> dict[str, tuple[str, dict]]:
    """Parse every variant's `zoo fit` arguments with the recipe's own parser and build each model's config
    (zoo.registry.get_config), before any training. Returns variant -> (model name, model_kwargs); raises
    StudyError naming the study, the variant and the override."""
    from ..registry import get_config, model_info

    where = study.where()
    seed, tmp = study.seeds[0], Path("/nonexistent-zoo-compare-run")
    base = ["fit", "--config", str(study.recipe)]
    try:
        parser = recipe_parser(base)
    except StudyError as e:
        raise StudyError(f"{where}: recipe {study.recipe} does not parse: {e}") from None
    out, seen = {}, {}
    for variant in study.variants:
        args = fit_args(study, variant, seed, tmp)
        ns, error = _parse(parser, args)
        if error:  # find the override at fault: add them one at a time
            culprit = None
            extras = override_args(study, variant)
            for i in range(len(extras)):
                _, e1 = _parse(parser, base + extras[:i + 1])
                if e1:
                    culprit, error = extras[i].split("=", 1)[0].lstrip("-"), e1
                    break
            what = f"override {culprit} is not accepted by recipe {study.recipe.name}" if culprit else \
                f"the study's own arguments ({' '.join(args[3:])}) fail on recipe {study.recipe.name}"
            raise StudyError(f"{where}: variant {variant}: {what}: {error}")
        check_metric(study, variant, ns)
        init = ns.fit.model.init_args if ns.fit.get("model") and ns.fit.model.get("init_args") else None
        model = init.get("model") if init is not None else None
        kwargs = dict(init.get("model_kwargs") or {}) if init is not None else {}
        params, data = None, {}
        if model:
            try:  # unknown kwargs name the accepted ones; the model is built on the meta device (no memory)
                model_info(model, **kwargs)
                # the size the run will have: the data module's vocabulary (model_kwargs still win)
                data = data_overrides(study, variant, set(dataclasses.asdict(get_config(model))))
                params = model_info(model, **{**data, **kwargs})["params"]
            except (ValueError, TypeError) as e:
                raise StudyError(f"{where}: variant {variant}: {e}") from None
        out[variant] = (model, kwargs)
        # what the run will train: the parsed arguments, the model's kwargs resolved to its whole config (an override
        # that sets the registered default, e.g. qk_norm: false, changes nothing)
        run = ns.fit.clone().as_dict()
        if model:
            run["model"]["init_args"]["model_kwargs"] = dataclasses.asdict(get_config(model, **{**data, **kwargs}))
        same = next((v for v, r in seen.items() if r == run), None)
        if same is not None:
            raise StudyError(f"{where}: variants {same} and {variant} train the same run (every override of one is the "
                             f"recipe's or the model's default value in the other); drop one or change its overrides")
        seen[variant] = run
        if verbose:
            at = f"at the recipe's vocab_size {data['vocab_size']}" if data else "as registered"
            size = f"{params / 1e6:.3f}M params {at}" if params else "?"
            print(f"  {variant:24s} ok  {model} ({size}): {' '.join(override_args(study, variant)) or 'the recipe as is'}")
    if study.cost is not None:  # the cost block's variants must be sequence-to-sequence models
        from .cost import check_cost_models

        check_cost_models(study, out)
    return out
