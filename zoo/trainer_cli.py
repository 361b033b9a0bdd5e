"""`zoo fit|validate|test|predict`: LightningCLI with zoo's defaults.

- every `fit` writes into a run folder of its own (`zoo.rundir`); `--ckpt_path last` resumes the newest run;
- the data decides what the model must accept (classes, channels, vocabulary): linked into the model;
- a checkpoint's tokenizer is used as stored: `--ckpt_path X` (test, predict, resume) and
  `--model.init_args.init_from X` hand it to the data module instead of training a new one;
- a checkpoint of another recipe is refused in one line naming both;
- the recipe as given is stored in every checkpoint, so `zoo test --ckpt_path X` needs no --config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from . import rundir


def init_params(class_path: str) -> set[str]:
    """Constructor parameter names of a class and its bases (data modules pass **kwargs up)."""
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return {p for klass in cls.__mro__ if "__init__" in vars(klass) for p in inspect.signature(klass.__init__).parameters}


def condense_parser_error(message: str) -> str:
    """jsonargparse's report of a bad option (about 60 lines with the usage) as one line that names the flag, the
    value and the fix: a misspelled init argument of the task or data class (with the closest names), a value of
    the wrong type, a value outside a choice (with the choices)."""
    import difflib
    import re

    outer = re.search(r'Parser key "([^"]+)"', message)
    key = outer.group(1) if outer else None
    given = re.search(r"Given value: (.*)", message)
    cls = re.search(r"Problem with given class_path '([^']+)'", message)
    unknown = re.search(r"Option '([^']+)' is not accepted", message)
    if cls and unknown and key:
        name = unknown.group(1)
        close = difflib.get_close_matches(name, sorted(init_params(cls.group(1))), n=3)
        hint = f"; did you mean {' or '.join(f'--{key}.init_args.{c}' for c in close)}?" if close else ""
        return f"--{key}.init_args.{name}: {cls.group(1)} has no argument {name!r}{hint}"
    inner = re.search(r"Problem with given class_path '[^']+':\s*Parser key \"([^\"]+)\":\s*(.+)", message)
    if cls and inner and key:
        return f"--{key}.init_args.{inner.group(1)}: {inner.group(2).strip()} ({cls.group(1)})"
    literals = re.findall(r"Literal\[([^\]]*)\]", message)
    given = given or re.search(r"Got value: (.*)", message)
    if key and literals and given:
        choices = list(dict.fromkeys(c.strip() for lit in literals for c in lit.split(",")))
        value = given.group(1).strip()
        close = difflib.get_close_matches(repr(value), choices, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"--{key} {value} is not one of {', '.join(choices)}{hint}"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " ".join(lines)[:400]


class ZooArgumentParser(LightningArgumentParser):
    """Lightning's parser, whose errors are one readable line (`condense_parser_error`) and exit status 2. An option
    is taken only as spelled in full: argparse's prefix matching (`--trainer.max_epoch` for `--trainer.max_epochs`)
    is off for the main parser and each subcommand's, which LightningCLI makes with this class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        import re
        import sys

        if not self.exit_on_error or _jsonargparse_debug():  # a nested parser inside a check: jsonargparse catches it
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        words = (parser.prog or "").split()
        prog = "zoo " + words[-1] if words and words[-1] in ("fit", "validate", "test", "predict") else "zoo"
        line = condense_parser_error(message)
        lightning_optim = re.search(r'Parser key "(%s)"' % "|".join(LIGHTNING_OPTIMIZER_KEYS), message)
        if lightning_optim:  # a value LightningCLI would have used in place of the task's optimiser (see ZooCLI)
            line = f"--{lightning_optim.group(1)} is not a zoo option: {zoo_optimizer_hint()}"
        elif message.startswith("unrecognized arguments:"):
            import difflib

            flags = [f for a in parser._actions for f in a.option_strings if f.startswith("--")]
            wrong = [w.split("=")[0] for w in message.split(":", 1)[1].split() if w.startswith("--")]
            close = [c for w in wrong for c in difflib.get_close_matches(w, flags, n=1)]
            line += f"; did you mean {' or '.join(close)}?" if close else ""
        sys.stderr.write(f"{prog}: error: {line}\n(`{prog} --help` lists the options)\n")
        self.exit(2)


def _jsonargparse_debug() -> bool:
    try:
        from jsonargparse._common import debug_mode_active
    except ImportError:  # another jsonargparse layout: its own default
        return False
    return debug_mode_active()


def _init_args(c) -> dict:
    """The task's init arguments of a subcommand's config as plain values ({} when there are none)."""
    model = c.get("model") if c is not None else None
    args = model.get("init_args") if model is not None and _class_name(model) else None
    if args is None:
        return {}
    return {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in dict(args.items()).items()}


def _class_name(ns) -> str | None:
    return getattr(ns, "class_path", None) if ns is not None and not isinstance(ns, (str, bool)) else None


def _task_class(c) -> type | None:
    """The task class a subcommand's config names (its declarations: training_sources, runtime_args), or None."""
    import importlib

    module, _, name = (_class_name(c.get("model")) or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        return None  # the parser names a class it cannot import: it says so itself


LIGHTNING_OPTIMIZER_KEYS = ("optimizer", "lr_scheduler")


def zoo_optimizer_hint() -> str:
    """How zoo's tasks are given their optimiser (zoo.tasks.base), for LightningCLI's --optimizer / --lr_scheduler."""
    from .tasks.base import OPTIMIZERS

    return ("zoo's tasks build their own optimiser and warm-up/cosine schedule; choose it with --model.init_args.optimizer "
            f"({', '.join(OPTIMIZERS)}) and set --model.init_args.lr, weight_decay, betas, warmup_steps, min_lr_ratio "
            "(also under model.init_args in a config)")


class ZooCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after `fit`, evaluate a checkpoint (--test_ckpt) on the test split and print the metrics")
        parser.add_argument("--test_ckpt", type=Literal["best", "last"], default="best",
                            help="the weights that test evaluates: 'best' (the checkpoint of the best validation metric) or "
                                 "'last' (the final weights, as in last.ckpt; steadier when the validation split is small)")
        parser.add_argument("--bf16_fallback", type=bool, default=True,
                            help="on a CPU without bf16 units (AVX512-BF16, AMX, ARM bf16), run a bf16 trainer.precision in "
                                 "float32 (32-true) instead, with a notice: there bf16 is emulated and several times slower")
        parser.link_arguments("data", "model.init_args.data_overrides", compute_fn=lambda dm: dm.model_overrides,
                              apply_on="instantiate")

    # -- LightningCLI's --optimizer / --lr_scheduler: zoo's tasks build their own -----------------
    def _add_arguments(self, parser) -> None:
        super()._add_arguments(parser)
        for action in parser._actions:
            if action.dest in LIGHTNING_OPTIMIZER_KEYS:
                action.help = f"not used by zoo (refused): {zoo_optimizer_hint()}"

    def parse_arguments(self, parser, args) -> None:
        """Refuse LightningCLI's --optimizer / --lr_scheduler, which would replace the task's optimiser and schedule
        (its weight-decay groups, warm-up and cosine decay, --model.init_args.lr ...) with only Lightning's warning.
        They stay in the parser, null: stored recipes and config.yaml files list them so."""
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        c = self.config[sub] if sub else self.config
        given = [k for k in LIGHTNING_OPTIMIZER_KEYS if c.get(k) is not None]
        if given:
            sub_parser = getattr(self, "_subcommand_parsers", {}).get(sub, parser)
            sub_parser.error(f"--{given[0]} is not a zoo option: {zoo_optimizer_hint()}")

    # -- checkpoint paths: "last", and checkpoints of another recipe ----------------------------
    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        c = self.config[sub] if sub else None
        if c is not None and c.get("ckpt_path") == "last":
            root = c.trainer.default_root_dir or "runs"
            chosen = rundir.latest_checkpoint(root)
            c.ckpt_path = str(chosen)
            runs, run = rundir.versions(root), chosen.parent.parent
            newer = [v.name for v in runs[runs.index(run) + 1:]] if run in runs else []
            if newer:  # a run stopped before its first checkpoint: say which run `last` continues instead
                import sys

                print(f"zoo {sub}: --ckpt_path last continues {run} ({', '.join(newer)} has no checkpoint: it "
                      "stopped before the end of its first epoch)", file=sys.stderr, flush=True)
        elif c is not None and c.get("ckpt_path") and Path(c.ckpt_path).is_dir():
            c.ckpt_path = rundir.resolve_checkpoint(c.ckpt_path)  # a run folder stands for its newest last.ckpt
        if c is not None and c.get("ckpt_path"):
            self._check_recipe(c)
        asked = _init_args(c)
        super()._parse_ckpt_path()
        if asked and sub:
            self._say_checkpoint_settings(sub, asked)

    def _say_checkpoint_settings(self, sub: str, asked: dict) -> None:
        """LightningCLI puts a checkpoint's hyper-parameters over the recipe and the command line. A run continues
        with the settings it was trained with, said in one line; evaluating keeps the user's choice of what only
        changes how it runs (the task's `runtime_args`: compile, generation lengths)."""
        import sys

        c = self.config[sub]
        now = _init_args(c)
        changed = {k: (v, now[k]) for k, v in asked.items() if k in now and k != "data_overrides" and v != now[k]}
        if not changed:
            return
        runtime = getattr(_task_class(c), "runtime_args", ())
        if sub != "fit":
            for k in [k for k in changed if k in runtime]:
                c.model.init_args[k] = asked[k]
                del changed[k]
        if changed:
            said = "; ".join(f"{k}: {theirs!r} (asked: {mine!r})" for k, (mine, theirs) in sorted(changed.items()))
            print(f"zoo {sub}: the checkpoint's settings are used, as it was trained: {said}"
                  + ("; to train with other settings, start a new run from it (--model.init_args.init_from CKPT)"
                     if sub == "fit" else ""), file=sys.stderr, flush=True)

    def _check_recipe(self, c) -> None:
        from .runs import RunError, read_checkpoint

        path = c.ckpt_path
        if not Path(path).is_file():
            what = "holds no checkpoints/last.ckpt" if Path(path).is_dir() else "does not exist"
            raise FileNotFoundError(f"--ckpt_path {path} {what}; `zoo fit` writes <default_root_dir>/version_N/checkpoints/ "
                                    "(pass a checkpoint, a run folder or `last`)")
        ckpt = read_checkpoint(path)
        hp = ckpt.get("hyper_parameters") or {}
        meta = ckpt.get("zoo") or {}
        short = lambda path: path.rsplit(".", 1)[-1] if path else None  # noqa: E731  (zoo.tasks.X == zoo.tasks.image.X)
        theirs = (meta.get("model") or hp.get("model"), short(meta.get("task") or hp.get("_class_path")))
        ours = (c.model.init_args.get("model") if c.model and c.model.get("init_args") else None, short(_class_name(c.model)))
        if None not in theirs and None not in ours and theirs != ours:
            fix = ("pass that run's recipe (configs/<recipe>.yaml)" if self.config.get("subcommand") == "fit" else
                   "pass that run's recipe, or omit --config to use the one stored in the checkpoint")
            raise RunError(f"{path} is a checkpoint of model {theirs[0]} ({theirs[1]}), but this recipe "
                           f"builds {ours[0]} ({ours[1]}); {fix}")

    # -- run folder, tokenizer, stored recipe -------------------------------------------------
    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        c = self.config[sub]
        self._bf16_fallback(c)
        self._recipe = self._recipe_yaml()
        source = c.get("ckpt_path") or (c.model.init_args.get("init_from") if sub == "fit" else None)
        pretrained = c.model.init_args.get("pretrained") if c.get("model") and c.model.get("init_args") else None
        if not source and isinstance(pretrained, str):
            from .runs import describes_model

            source = pretrained if describes_model(pretrained) else None  # shipped tag, directory or checkpoint
        data_args = c.data.get("init_args") if c.get("data") else None
        source = rundir.resolve_checkpoint(source) if source else None
        if sub != "fit" and source:
            self._drop_training_sources(c)
        if sub == "fit" and c.model.init_args.get("init_from"):
            c.model.init_args.init_from = source
        if source and data_args is not None and "tokenizer" in data_args and not data_args.tokenizer:
            data_args.tokenizer = str(source)  # the run's own tokenizer, never a rebuilt one
        if sub == "fit":
            self._run_folder(c)
        elif c.trainer.get("logger") is not None:
            c.trainer.logger = False  # evaluating or predicting writes nothing into the run folders

    @staticmethod
    def _drop_training_sources(c) -> None:
        """Evaluating a checkpoint (which holds every weight) needs neither a pre-trained start nor a teacher: the
        task's declared `training_sources` are set to None (a stored recipe names them by relative path)."""
        task = _task_class(c)
        args = c.model.get("init_args") if task is not None else None
        if args is None:
            return
        for arg in getattr(task, "training_sources", ()):
            if args.get(arg) is not None:
                args[arg] = None

    def _bf16_fallback(self, c) -> None:
        """A bf16 precision on a CPU that has no bf16 units becomes 32-true (the stored recipe says what ran)."""
        import sys

        import torch

        from .compare.runner import cpu_has_bf16, cpu_name

        precision = str(c.trainer.get("precision") or "")
        accelerator = str(c.trainer.get("accelerator") or "auto")
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                          and not torch.backends.mps.is_available())
        if not precision.startswith("bf16") or not c.get("bf16_fallback", True) or not on_cpu or cpu_has_bf16() is not False:
            return
        c.trainer.precision = "32-true"
        print(f"zoo {self.subcommand}: this CPU ({cpu_name()}) has no bf16 units (AVX512-BF16, AMX or ARM bf16), so bf16 would "
              f"run emulated and several times slower: running in float32 (trainer.precision 32-true) instead of {precision}; "
              "--bf16_fallback false keeps bf16", file=sys.stderr)

    def _recipe_yaml(self) -> str:
        self._dump_config()
        recipe = dict(self.config_dump)
        recipe.pop("ckpt_path", None)
        model = dict(recipe.get("model") or {})
        if isinstance(model.get("init_args"), dict):
            model["init_args"] = {k: v for k, v in model["init_args"].items() if k != "data_overrides"}
        recipe["model"] = model
        del self.config_dump  # LightningCLI dumps again later, after our changes
        return yaml.safe_dump(recipe, sort_keys=False)

    def _run_folder(self, c) -> None:
        root = Path(c.trainer.default_root_dir or "runs")
        run = self._claimed = rundir.claim(root)
        c.trainer.default_root_dir = str(run)
        loggers = c.trainer.get("logger")
        if loggers is None or loggers is True:
            loggers = _csv_logger()
            c.trainer.logger = loggers
        for lg in loggers if isinstance(loggers, list) else [loggers]:
            args = lg.get("init_args") if _class_name(lg) else None
            if args is not None and "save_dir" in args:  # CSV / TensorBoard: <root>/version_N
                args.save_dir, args.name, args.version = str(root), "", run.name
        for cb in c.trainer.get("callbacks") or []:
            if (_class_name(cb) or "").endswith("ModelCheckpoint"):
                if cb.init_args.get("dirpath"):
                    rundir.lock(cb.init_args.dirpath)  # a folder the user named: no other live run may share it
                else:
                    cb.init_args.dirpath = str(run / "checkpoints")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BaseException:  # a recipe that cannot be built (a bad value, a missing teacher) trained nothing
            claimed = getattr(self, "_claimed", None)
            if claimed is not None:
                rundir.release_unused(claimed)
            raise

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        self.model._zoo_recipe = self._recipe

    def instantiate_trainer(self, **kwargs):
        from .callbacks import default_trainer_extras

        trainer = super().instantiate_trainer(**kwargs)
        default_trainer_extras(trainer)
        if self.subcommand != "fit":  # evaluating or predicting writes nothing into the runs (no config.yaml either)
            from lightning.pytorch.cli import SaveConfigCallback

            trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, SaveConfigCallback)]
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SystemExit as e:  # Lightning ends a run stopped by Ctrl-C / SIGTERM with exit(1): say so, exit 130
            if e.code != 1 or not getattr(self.trainer, "interrupted", False):
                raise
            import sys

            folder = self.trainer.default_root_dir
            if subcommand != "fit":
                kept = "nothing was written"
            elif any(Path(folder, "checkpoints").glob("*.ckpt")):
                kept = f"{folder} keeps the checkpoints written so far (`--ckpt_path {folder}` resumes from its last.ckpt)"
            else:
                kept = f"{folder} holds no checkpoint yet (they are written at the end of each epoch)"
            print(f"zoo {subcommand}: interrupted; {kept}", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except Exception:  # a run that failed before its first step leaves no useless version_N (the error says why)
            if subcommand == "fit" and self.trainer.global_step == 0 and getattr(self, "_claimed", None):
                rundir.release_unused(self._claimed)
            raise
        finally:
            if subcommand == "fit":
                rundir.unlock(self.trainer.default_root_dir)

    def after_fit(self):
        if self.config[self.subcommand].get("test_after_fit") and not self.trainer.fast_dev_run:
            which = self.config[self.subcommand].get("test_ckpt") or "best"
            ckpt = self._best_checkpoint() if which == "best" else None  # None: the weights in memory, the final ones
            self.model._zoo_tested = "best" if ckpt else "last"  # recorded with the test metrics (zoo.compare)
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
        if not self.trainer.is_global_zero:
            return
        if self.trainer.fast_dev_run and getattr(self, "_claimed", None) and rundir.release_unused(self._claimed):
            print(f"zoo fit: fast_dev_run writes no checkpoint, so its run folder {self._claimed} was removed")
        else:
            print(f"zoo fit: this run's files are in {self.trainer.default_root_dir}")

    def _best_checkpoint(self) -> str | None:
        """The best checkpoint of the monitored ModelCheckpoint (rundir.monitored_checkpoint), else the first one's."""
        cb = rundir.monitored_checkpoint(self.trainer) or self.trainer.checkpoint_callback
        return (cb.best_model_path or None) if cb is not None else None

    def after_predict(self):
        """Print one line per prediction, ending with the input's file name where the inputs were files."""
        lines = [line for batch in self.trainer.predict_loop.predictions or [] for line in prediction_lines(batch)]
        names = getattr(self.datamodule, "predict_names", None)
        if names and len(names) == len(lines):
            lines = [f"{line}\t{name}" for line, name in zip(lines, names)]
        for line in lines:
            print(line)


# A run's own shortcuts through its data (`zoo fit ... --trainer.limit_test_batches 1`), which `zoo test|validate|
# predict` on its checkpoint do not repeat: they evaluate the whole split unless told otherwise on their command line.
EVALUATION_SHORTCUTS = {"limit_val_batches": None, "limit_test_batches": None, "limit_predict_batches": None,
                        "fast_dev_run": False, "overfit_batches": 0.0}
# the shortcuts that would have changed what each command reads (the notice names only these)
SHORTCUTS_OF = {"validate": ("limit_val_batches", "fast_dev_run", "overfit_batches"),
                "test": ("limit_test_batches", "fast_dev_run"),
                "predict": ("limit_predict_batches", "fast_dev_run")}


def recipe_file(recipe: str, command: str = "test") -> str:
    """A stored recipe (YAML text) as a temporary file to pass as --config, for `zoo <command>` (test, validate or
    predict) with the run's checkpoint: the run's shortcuts through the data (EVALUATION_SHORTCUTS) are dropped,
    with a notice where one would have limited what this command reads. The caller removes the file."""
    import os
    import sys
    import tempfile

    import yaml

    config = yaml.safe_load(recipe) or {}
    trainer = config.get("trainer") if isinstance(config, dict) else None
    if isinstance(trainer, dict):
        dropped = {k: trainer[k] for k, default in EVALUATION_SHORTCUTS.items() if trainer.get(k, default) != default}
        if dropped:
            trainer.update({k: EVALUATION_SHORTCUTS[k] for k in dropped})
            recipe = yaml.safe_dump(config, sort_keys=False)
        said = {k: v for k, v in dropped.items() if k in SHORTCUTS_OF.get(command, EVALUATION_SHORTCUTS)}
        if said:
            what = "predicts every input" if command == "predict" else "evaluates the whole split"
            print(f"zoo {command}: the run was trained with {', '.join(f'trainer.{k}={v}' for k, v in said.items())}; "
                  f"this command does not repeat them: it {what} unless its own command line limits it", file=sys.stderr)
    fd, path = tempfile.mkstemp(prefix="zoo-recipe-", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        fh.write(recipe)
    return path


def _csv_logger():
    from jsonargparse import Namespace

    return Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir="runs", name="", version=None))


def prediction_lines(batch) -> list[str]:
    """Tasks return a list of strings (texts, captions) or a dict with "pred"/"prob" (and "label")."""
    if isinstance(batch, dict) and "pred" in batch:
        labels = batch.get("label") or [None] * len(batch["pred"])
        return [f"{int(p)}\t{float(q):.4f}" + (f"\t{name}" if name is not None else "")
                for p, q, name in zip(batch["pred"].tolist(), batch["prob"].tolist(), labels)]
    if isinstance(batch, (list, tuple)):
        return [str(x) for x in batch]
    return [str(batch)]


def build_cli(args: list[str] | None = None, run: bool = True, cli_class: type[ZooCLI] | None = None) -> ZooCLI:
    """zoo's LightningCLI over `args`; `cli_class`: a subclass of ZooCLI (one that only parses or instantiates)."""
    from .tasks.base import ZooTask

    return (cli_class or ZooCLI)(
        ZooTask,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"} if _has_omegaconf() else None,
        parser_class=ZooArgumentParser,
    )


def _has_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True
