"""The `zoo` command.

    zoo fit --config configs/vit_mnist.yaml        # LightningCLI: fit / validate / test / predict
    zoo test --ckpt_path runs/vit_mnist/version_0/checkpoints/last.ckpt   # the checkpoint carries its recipe
    zoo predict --model vit_mnist.mnist5k digit.png  # shipped weights (zoo.list_pretrained()), a directory or a checkpoint
    zoo models "vit_*"                             # list registered models with parameter counts
    zoo info vit_small_patch16_224                 # hyper-parameters and paper of one model
    zoo compare --config configs/compare/vit_mnist_ablation.yaml   # variants x seeds, with confidence intervals
    zoo export | viz | compress | bench | convert  # see `zoo <command> --help`

Errors end in one line that names the cause and the fix; `--verbose` (or ZOO_VERBOSE=1) shows the traceback.
Every `zoo fit` writes into a folder of its own, `<default_root_dir>/version_N/` (see zoo/rundir.py).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
KEEP_FREED_MEMORY = ("bench", "compare", *LIGHTNING_COMMANDS)  # zoo/allocator.py: steps reuse freed activations

# name -> ("module:function", help). Imported only when the command runs; library modules never import zoo.cli.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("zoo.cli:models_main", "list registered models (shell wildcard), with parameter counts"),
    "info": ("zoo.cli:info_main", "one model's family, hyper-parameters, parameter count and paper"),
    "export": ("zoo.export:main", "export a model or checkpoint to ONNX or torch.export with dynamic axes"),
    "viz": ("zoo.viz:main", "attention maps, cross-attention, position encodings, CLIP similarities as PNG"),
    "compress": ("zoo.compress:main", "quantize (int8) / prune a checkpoint; size, CPU latency and accuracy"),
    "compare": ("zoo.compare.cli:main", "variants of a recipe x seeds under one budget: mean, 95% CI, paired differences"),
    "bench": ("zoo.bench.cli:bench_main", "speed / quality / generation / serving / time-to-accuracy benchmarks (zoo bench speed --help)"),
    "convert": ("zoo.interop.cli:main", "convert transformers / timm checkpoints to zoo models and back"),
    "serve": ("zoo.serve.server:main", "serve a checkpoint over HTTP (LitServe, dynamic batching) with a demo page"),
}


def _command(name: str):
    module, func = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), func)


def models_main(argv: list[str]) -> int:
    import argparse

    from . import list_models, model_info

    p = argparse.ArgumentParser(allow_abbrev=False, prog="zoo models", description="List registered models with parameter counts.")
    p.add_argument("pattern", nargs="?", help='shell wildcard, e.g. "vit_*"')
    p.add_argument("--family", help="only this family (bert, t5, vit, ...)")
    a = p.parse_args(argv)
    names = list_models(a.pattern, a.family)
    if not names:
        raise ValueError(f"no registered model matches {a.pattern or '*'!r}{f' in family {a.family!r}' if a.family else ''}; "
                         "`zoo models` lists all")
    for name in names:
        info = model_info(name)
        print(f"{name:34s} {info['family']:12s} {info['params'] / 1e6:9.2f}M  {info['description']}")
    return 0


def info_main(argv: list[str]) -> int:
    import argparse

    from . import model_info

    p = argparse.ArgumentParser(allow_abbrev=False, prog="zoo info", description="Show one registered model's family, hyper-parameters, "
                                "parameter count and paper as JSON.")
    p.add_argument("model", help="registered model name (see `zoo models`)")
    a = p.parse_args(argv)
    print(json.dumps(model_info(a.model), indent=2))
    return 0


def _usage() -> None:
    print(__doc__)
    width = max(map(len, COMMANDS))
    print("commands:\n  " + "\n  ".join([f"{c:{width}s}  Lightning {c} (zoo {c} --help)" for c in LIGHTNING_COMMANDS]
                                         + [f"{c:{width}s}  {h}" for c, (_, h) in COMMANDS.items()]))


def lightning_main(args: list[str] | None = None, run: bool = True):
    from .trainer_cli import build_cli

    return build_cli(args, run)


def _with_stored_config(argv: list[str]) -> tuple[list[str], str | None]:
    """`zoo test|validate|predict --ckpt_path X` without --config: use the recipe stored in the checkpoint."""
    if argv[0] not in ("test", "validate", "predict") or any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv, None
    at = next((i for i, a in enumerate(argv) if a == "--ckpt_path" and i + 1 < len(argv) or a.startswith("--ckpt_path=")), None)
    if at is None:
        return argv, None
    given = argv[at + 1] if argv[at] == "--ckpt_path" else argv[at].split("=", 1)[1]
    if given in ("best", "last", "hpc") or given.startswith("registry") or "://" in given:  # Lightning's own names, URLs
        return argv, None
    from .rundir import resolve_checkpoint

    ckpt = resolve_checkpoint(given)  # a run folder stands for its newest last.ckpt
    if not Path(ckpt).is_file():
        what = "holds no checkpoints/last.ckpt" if Path(given).is_dir() else "does not exist"
        raise ValueError(f"--ckpt_path {given} {what}; pass a checkpoint written by `zoo fit` "
                         "(runs/<recipe>/version_N/checkpoints/last.ckpt) or its run folder")
    argv = [*argv[:at], "--ckpt_path", ckpt, *argv[at + (2 if argv[at] == "--ckpt_path" else 1):]]
    from .runs import read_checkpoint

    stored = (read_checkpoint(ckpt).get("zoo") or {}).get("cli_config")
    if not stored:
        raise ValueError(f"{ckpt} stores no recipe (written by an older zoo); pass --config configs/<recipe>.yaml")
    from .trainer_cli import recipe_file

    path = recipe_file(stored, argv[0])
    return [argv[0], "--config", path, *argv[1:]], path


def _split_positionals(args: list[str]) -> tuple[list[str], list[str]]:
    """Options (each `--name value` or `--name=value`) and the positional arguments among them."""
    options, positionals, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            take = 1 if "=" in a or i + 1 >= len(args) else 2
            options += args[i:i + take]
            i += take
        else:
            positionals.append(a)
            i += 1
    return options, positionals


def _refuse_unknown_source(command: str, source: str) -> None:
    """`--model X` that is no model source: Lightning's meaning (a task class path, `zoo.tasks.ImageClassification`,
    or a config) goes on; anything else, a mistyped tag or a path that is not there, is one readable error."""
    import difflib

    from .pretrained import list_pretrained

    last = source.rsplit(".", 1)[-1]
    if source.lstrip().startswith(("{", "[")) or last[:1].isupper() or source.endswith((".yaml", ".yml", ".json")):
        return
    close = difflib.get_close_matches(source, list_pretrained(), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    if Path(source).exists():
        what = "holds no zoo model (no checkpoint of `zoo fit`, save_pretrained files or zoo safetensors)"
    else:
        what = "does not exist" if ("/" in source or Path(source).suffix in (".ckpt", ".safetensors")) else "is no shipped tag"
    raise ValueError(f"--model {source} {what}; {hint}`zoo {command} --model` takes a shipped tag "
                     f"({', '.join(list_pretrained())}), a run folder or checkpoint of `zoo fit`, a save_pretrained "
                     "directory or hf-hub:org/name")


def _with_model_source(argv: list[str]) -> tuple[list[str], str | None]:
    """`zoo test|validate|predict --model SOURCE [inputs ...]`, where SOURCE is a shipped tag (`vit_mnist.mnist5k`),
    a save_pretrained directory, `hf-hub:org/name`, a checkpoint or a run folder: its stored recipe builds the
    task and data, its weights and tokenizer are loaded, and `predict` reads the positional inputs (image
    files or folders; texts, or text files). `--model <task class path>` keeps Lightning's meaning."""
    if argv[0] not in ("test", "validate", "predict"):
        return argv, None
    idx = next((i for i, a in enumerate(argv[:-1]) if a == "--model"), None)
    if idx is None:
        return argv, None
    source = argv[idx + 1]
    from .runs import describes_model, load_run

    if not describes_model(source):
        _refuse_unknown_source(argv[0], source)
        return argv, None
    options, inputs = _split_positionals(argv[1:idx] + argv[idx + 2:])
    run = load_run(source)
    stored = run.meta.get("cli_config")
    if not stored:
        raise ValueError(f"{source} stores no recipe; pass --config configs/<recipe>.yaml --model.init_args.pretrained {source}")
    import yaml

    recipe = yaml.safe_load(stored) or {}
    data_class = (recipe.get("data") or {}).get("class_path")
    task_class = (recipe.get("model") or {}).get("class_path") if isinstance(recipe.get("model"), dict) else None
    from .trainer_cli import init_params

    params = init_params(data_class) if data_class else set()
    # a recipe's root folder (runs/t5_numbers) stands for its newest checkpoint: weights and tokenizer are read
    # from that one file
    resolved = run.source if Path(str(run.source)).is_file() else source
    extra = ["--model.init_args.pretrained", resolved]
    task_params = init_params(task_class) if task_class else set()
    if "teacher_ckpt" in task_params:  # a distilled student: the weights are the student's alone; evaluating and
        # predicting never run the teacher, so it is not loaded (its checkpoint may be elsewhere or gone)
        extra += ["--model.init_args.distillation", "none", "--model.init_args.teacher", "null",
                  "--model.init_args.teacher_ckpt", "null"]
        if "hints" in task_params:
            extra += ["--model.init_args.hints", "null"]
    if run.tokenizer is not None and "tokenizer" in params:
        extra += ["--data.init_args.tokenizer", resolved]
    if inputs and argv[0] != "predict":
        raise ValueError(f"zoo {argv[0]} takes no inputs ({' '.join(inputs)}); it evaluates the recipe's test split")
    if inputs:
        if "predict_images" in params:
            extra += ["--data.init_args.predict_images", json.dumps(inputs)]
        elif "predict_texts" in params:
            from .data.textdata import read_text_files

            # texts and text files (one input per line) in the order given: the answers come in that order
            texts = [t for x in inputs for t in (read_text_files([x]) if Path(x).is_file() else [x])]
            extra += ["--data.init_args.predict_texts", json.dumps(texts)]
        else:
            raise ValueError(f"the data module of {source} ({data_class}) takes no predict inputs")
    from .trainer_cli import recipe_file

    path = recipe_file(stored, argv[0])
    return [argv[0], "--config", path, *options, *extra], path


def _config_files(argv: list[str]) -> list[str]:
    """The files given as `--config X`, `--config=X` or `-c X` (a value that is not a file, e.g. inline YAML, is
    left to the parser)."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return [f for f in files if Path(f).is_file()]


def _check_config_files(argv: list[str]) -> None:
    """Refuse a config file that is not there, naming the recipe meant (`--config vit_mnist` from anywhere ->
    configs/vit_mnist.yaml of this checkout), or that gives a key twice in one mapping (the parser would keep the
    last one silently)."""
    from .yamlfile import load

    given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    given += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for value in given:
        if Path(value).is_file() or any(c in value for c in ":{\n"):  # a file, or inline YAML for the parser
            continue
        raise FileNotFoundError(f"config file {value} does not exist{_recipe_hint(value)}")
    for path in _config_files(argv):
        load(path)


def _recipe_hint(value: str) -> str:
    """"; did you mean configs/x.yaml?" for the recipes of this checkout (and of the working directory) closest to
    `value`, as paths from the working directory."""
    import difflib

    roots = [Path("configs"), Path(__file__).resolve().parents[1] / "configs"]
    recipes = {}
    for root in roots:
        for f in sorted(root.glob("**/*.yaml")) if root.is_dir() else []:
            recipes.setdefault(str(f.relative_to(root).with_suffix("")), f)
    stem = str(Path(value).with_suffix("")).removeprefix("configs/")
    close = difflib.get_close_matches(stem, list(recipes), n=1, cutoff=0.7)
    if not close:
        return "; the recipes are the YAML files in configs/ of the zoo checkout"
    rel = os.path.relpath(recipes[close[0]])
    return f"; did you mean {rel if not rel.startswith('..') else recipes[close[0]]}?"


def _one_line(e: BaseException) -> str:
    """The innermost useful message of an exception chain (jsonargparse wraps the cause in its own errors)."""
    seen = e
    while seen.__cause__ is not None or (seen.__context__ is not None and not seen.__suppress_context__):
        nxt = seen.__cause__ or seen.__context__
        if isinstance(nxt, (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError, OSError)):
            seen = nxt
        else:
            break
    msg = str(seen).strip().splitlines()
    text = " ".join(line.strip() for line in msg if line.strip()) or type(seen).__name__
    return f"{type(seen).__name__}: {text}" if isinstance(seen, KeyError) else text


class _DropTips:
    """A logging filter that drops Lightning's advertisements ("💡 Tip: ... try installing litlogger") and, for
    commands whose output is the answer (`zoo predict`), its lines about the set-up ("Seed set to 0", "GPU available:
    False, used: False", "TPU available: ...")."""

    SETUP = ("Seed set to", "GPU available:", "TPU available:", "HPU available:")

    def __init__(self, setup: bool = False):
        self.setup = setup

    def filter(self, record) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("💡 Tip") or (self.setup and msg.startswith(self.SETUP)))


def _quiet_lightning(command: str = "") -> None:
    """What Lightning prints about itself, not about the run: its advertisement, its own deprecated use of torch's
    pytree API (lightning/pytorch/utilities/_pytree.py under torch >= 2.10), and that the model summary sizes a
    mixed-precision model at 32 bits a parameter, which is what autocast keeps them in. `zoo predict` prints answers,
    so Lightning's set-up lines go too (a training run keeps them: they say which devices it used)."""
    import logging
    import warnings

    setup = command == "predict"
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed"):
        log = logging.getLogger(name)
        for f in [f for f in log.filters if isinstance(f, _DropTips)]:
            log.removeFilter(f)
        log.addFilter(_DropTips(setup))
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")
    warnings.filterwarnings("ignore", message=r"Precision (bf16|16)-mixed is not supported by the model summary")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = os.environ.get("ZOO_VERBOSE") == "1"
    if "--verbose" in argv:
        argv.remove("--verbose")
        verbose = True
    if not argv or argv[0] in ("-h", "--help"):
        _usage()
        raise SystemExit(0)
    name = argv[0]
    if name not in COMMANDS and name not in LIGHTNING_COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, [*COMMANDS, *LIGHTNING_COMMANDS], n=3)
        print(f"zoo: unknown command {name!r}{'; did you mean ' + ' or '.join(close) + '?' if close else ''} "
              "(`zoo --help` lists the commands)", file=sys.stderr)
        raise SystemExit(2)
    tmp = None
    _quiet_lightning(name)
    try:
        if name in KEEP_FREED_MEMORY:
            from .allocator import keep_freed_memory

            keep_freed_memory()
        if name in COMMANDS:
            rc = _command(name)(argv[1:])
        else:
            argv, tmp = _with_model_source(argv)
            if tmp is None:
                argv, tmp = _with_stored_config(argv)
            _check_config_files(argv)
            saved, sys.argv = sys.argv, [sys.argv[0], *argv]  # LightningCLI reads sys.argv (and warns if given both)
            try:
                lightning_main(None)
            finally:
                sys.argv = saved
            rc = 0
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"zoo {name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # `zoo models | head`: the reader left; as other commands, end quietly (128 + SIGPIPE)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout would fail again
        raise SystemExit(141) from None
    except Exception as e:  # noqa: BLE001 - the CLI's one readable line
        if verbose:
            raise
        print(f"zoo {name}: error: {_one_line(e)}\n(run with --verbose for the full traceback)", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if tmp:
            os.remove(tmp)
    raise SystemExit(rc or 0)


if __name__ == "__main__":
    main()
