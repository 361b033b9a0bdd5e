"""One run loader: whatever a user points at becomes the model, its tokenizer and what its task needs.

    run = zoo.runs.load_run("runs/vit_mnist/version_0/checkpoints/last.ckpt")
    run.model, run.tokenizer, run.labels, run.image, run.task_class

Accepted sources: a checkpoint of `zoo fit` (.ckpt), a safetensors file that `zoo` wrote (its metadata
names the model and config), `NAME@weights.safetensors` for bare weights, or a registered name
(random weights). Every command (test, predict, export, viz, compress, distillation teachers) and
`create_model(name, pretrained=...)` go through `load_run`.

A checkpoint of `zoo fit` describes itself in `checkpoint["zoo"]` (written by `ZooTask.on_save_checkpoint`
through `run_metadata`): the model name and its full config (with the sizes the data decided), the
task class, the tokenizer (used as stored, never rebuilt), label names, image size and normalisation,
the recipe's config and the versions that wrote it. Loading never executes pickled code.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = 1
WEIGHT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


class RunError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the fix."""


@dataclass
class Run:
    model: nn.Module
    name: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None  # transformers.PreTrainedTokenizerFast, when the run has text
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str] | None:
        return self.meta.get("labels")

    @property
    def image(self) -> dict | None:
        """{"size", "in_chans", "mean", "std"} of image inputs, when the run has them."""
        return self.meta.get("image")

    @property
    def task_class(self) -> str | None:
        return self.meta.get("task") or self.hparams.get("_class_path")

    @property
    def cli_config(self) -> str | None:
        return self.meta.get("cli_config")


# -- writing -------------------------------------------------------------------------------------

def model_record(model: nn.Module) -> dict[str, Any]:
    """Name, family and full config of a zoo model (plain types: loads with weights_only=True)."""
    from .registry import _entry

    name = getattr(model, "model_name", None)
    if name is None:
        raise RunError(f"{type(model).__name__} was not built by zoo.create_model (no model_name) and no registered zoo "
                       "model has its class; cannot describe it (zoo.interop.save_converted(model, path) saves it)")
    return {"model": name, "family": _entry(name).family, "config": _plain(dataclasses.asdict(model.config))}


def run_metadata(model: nn.Module, task: Any = None, datamodule: Any = None, cli_config: str | None = None) -> dict[str, Any]:
    """What `checkpoint["zoo"]` holds; see the module docstring."""
    import lightning
    import zoo

    meta = {"format": FORMAT, **model_record(model),
            "versions": {"zoo": str(zoo.__version__), "torch": str(torch.__version__), "lightning": str(lightning.__version__)}}
    if task is not None:
        meta["task"] = f"{type(task).__module__}.{type(task).__qualname__}"
    if datamodule is not None:
        meta["data"] = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
        meta.update(_plain(getattr(datamodule, "run_metadata", None) or {}))
        tok = getattr(datamodule, "tokenizer", None)
        if tok is not None:
            from .data.tokenizers import tokenizer_to_state

            meta["tokenizer"] = tokenizer_to_state(tok)
    if cli_config:
        meta["cli_config"] = cli_config
    return meta


def _plain(obj):
    """Tuples -> lists, recursively (what yaml and weights_only loading agree on)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# -- reading -------------------------------------------------------------------------------------

def read_checkpoint(path: str | Path) -> dict:
    """A `zoo fit` checkpoint as a dict (weights_only: plain tensors and containers, nothing executed)."""
    from .weights import WeightsFileError, _load_torch

    try:
        obj = _load_torch(Path(path), what="checkpoint")
    except WeightsFileError as e:  # truncated, empty, not a torch file, or pickled objects weights_only refuses
        raise RunError(str(e)) from None
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise RunError(f"{path} is not a checkpoint of `zoo fit` (no state_dict); pass a .ckpt that `zoo fit` wrote, "
                       "or NAME@FILE for bare weights")
    return obj


def config_from_record(name: str, config: dict) -> Any:
    """The registered config of `name` with the stored fields (nested dataclasses rebuilt)."""
    from .registry import get_config

    base = get_config(name)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise RunError(f"the stored config of {name} has fields this version of zoo does not know: {', '.join(unknown)}; "
                       "upgrade zoo or load the weights with NAME@FILE and explicit overrides")
    return dataclasses.replace(base, **{k: _restore(fields[k], v) for k, v in config.items()})


def _restore(default, value):
    """Undo `_plain` where the registered config had tuples or nested dataclasses."""
    if dataclasses.is_dataclass(default) and isinstance(value, dict):
        return type(default)(**value)
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(_restore(default[i] if i < len(default) else None, v) for i, v in enumerate(value))
    if isinstance(default, dict) and isinstance(value, dict):
        return {k: _restore(default.get(k), v) for k, v in value.items()}
    return value


def _legacy_overrides(hp: dict) -> dict:
    """Checkpoints written before `checkpoint["zoo"]` existed: rebuild the overrides from the task's
    hyper-parameters (data overrides, model_kwargs, and the head a text task picks by its class)."""
    import importlib

    from .registry import get_config

    overrides = {**(hp.get("data_overrides") or {}), **(hp.get("model_kwargs") or {})}
    fields = {f.name for f in dataclasses.fields(get_config(hp["model"]))}
    overrides = {k: v for k, v in overrides.items() if k in fields}
    path = hp.get("_class_path", "")
    if "head" in fields and "head" not in overrides and "." in path:
        try:
            head = getattr(getattr(importlib.import_module(path.rsplit(".", 1)[0]), path.rsplit(".", 1)[1]), "head", None)
        except (ImportError, AttributeError):
            head = None
        if isinstance(head, str):
            overrides["head"] = head
    return overrides


def _check_hparams_agree(path, name: str, config: Any, hp: dict) -> None:
    """The task's hyper-parameters and the stored model config must describe one model: an edited
    checkpoint or one that mixes two runs is refused instead of loading as a different model."""
    claimed = {**(hp.get("data_overrides") or {}), **(hp.get("model_kwargs") or {})}
    if hp.get("model") not in (None, name):
        raise RunError(f"{path}: the task's hyper-parameters name model {hp['model']!r} but the stored model is {name!r}; "
                       "the file was edited or mixes two runs")
    from .registry import _typed

    claimed = {k: v for k, v in claimed.items() if hasattr(config, k)}
    try:  # command-line overrides of model_kwargs are stored as the strings they arrived as ('100' for dim=100)
        claimed = _typed(name, config, claimed)
    except ValueError:
        pass  # a value the config cannot hold: reported below as it is
    differ = [f"{k}={v!r} (stored config: {getattr(config, k)!r})" for k, v in claimed.items()
              if _plain(getattr(config, k)) != _plain(v)]
    if differ:
        raise RunError(f"{path}: hyper-parameters disagree with the stored model config: {', '.join(differ)}; "
                       "the file was edited or mixes two runs - retrain, or load the weights with NAME@FILE")


def load_run(source: str | Path, model_kwargs: dict | None = None, strict_config: bool = True, name: str | None = None) -> Run:
    """Turn `source` (see the module docstring) into a `Run` with the model in eval mode. `name` is the model
    to build for a checkpoint that names none (a state dict saved by hand in a checkpoint's layout). The model
    carries what its weights came with (`pretrained_cfg`: input size and normalisation, labels), as the model of
    `create_model(name, pretrained=source)` does, so `resolve_data_config(run.model)` reads images as it was trained."""
    from .registry import with_run_info

    run = _load_run(source, model_kwargs, strict_config, name)
    if run.meta:
        with_run_info(run)
    return run


def _load_run(source: str | Path, model_kwargs: dict | None = None, strict_config: bool = True, name: str | None = None) -> Run:
    from .registry import _entry, create_model, with_overrides
    from .weights import load_state_dict_checked, read_state_dict

    from .rundir import resolve_checkpoint

    kwargs = dict(model_kwargs or {})
    shipped = _pretrained_source(source, kwargs)
    if shipped is not None:
        return shipped
    src = resolve_checkpoint(source)
    if "@" in src and not Path(src).exists():
        name, path = src.split("@", 1)
        model = create_model(name, **kwargs)
        load_state_dict_checked(model, read_state_dict(path))
        return Run(model.eval(), name, path)
    path = Path(src)
    if path.suffix not in WEIGHT_SUFFIXES and not path.exists() and "/" not in src:  # names have no "/": a path
        _entry(src)  # a registered name, or an error listing close names
        return Run(create_model(src, **kwargs).eval(), src, src)
    if not path.exists():
        raise FileNotFoundError(f"{src} does not exist; pass a checkpoint written by `zoo fit`, a .safetensors file "
                                "written by zoo, NAME@FILE, or a registered model name")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, kwargs)
    from .compress import is_compressed_dir

    if is_compressed_dir(path):  # a folder written by `zoo compress`
        return _load_compressed_run(path, kwargs)
    if path.is_dir():
        from .hub import HubError, foreign_dir_problem

        if problem := foreign_dir_problem(path):
            raise HubError(problem)
        raise RunError(f"{src} holds no checkpoint (no checkpoints/last.ckpt under it or its version_N folders; a run "
                       "that failed before its first checkpoint has none); pass another run folder or a checkpoint file")
    if path.suffix != ".ckpt":
        raise RunError(f"{src} holds weights without a model name; pass NAME@{src} (e.g. vit_mnist@{src})")
    ckpt = read_checkpoint(path)
    hp = dict(ckpt.get("hyper_parameters") or {})
    meta = dict(ckpt.get("zoo") or {})
    if meta:
        name = meta["model"]
        config = config_from_record(name, meta["config"])
        if strict_config:
            _check_hparams_agree(path, name, config, hp)
        config = with_overrides(name, config, kwargs)
        model = _build(name, config)
    elif "model" in hp:  # an older checkpoint: the hyper-parameters name the model
        name = hp["model"]
        model = create_model(name, **{**_legacy_overrides(hp), **kwargs})
        meta = {"model": name, "task": hp.get("_class_path")}
        from .data.tokenizers import checkpoint_tokenizer_state

        state = checkpoint_tokenizer_state(ckpt)
        if state:
            meta["tokenizer"] = state
    elif name is not None:
        model = create_model(name, **kwargs)
        meta = {"model": name}
    else:
        raise RunError(f"{src} names no model (no zoo record and no hyper_parameters.model); pass NAME@{src}")
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        load_state_dict_checked(model, state)
    except Exception as e:
        raise RunError(f"{src}: the weights do not fit the model {name} it names: {e}") from None
    tokenizer = None
    if meta.get("tokenizer"):
        from .data.tokenizers import tokenizer_from_state

        tokenizer = tokenizer_from_state(meta["tokenizer"])
    return Run(model.eval(), name, src, meta, tokenizer, hp)


def _load_compressed_run(path: Path, kwargs: dict) -> Run:
    """A `zoo compress` folder as a Run: the compressed model (heads removed, re-quantized if it was) with the
    record of the run it came from (labels, image settings, tokenizer, recipe)."""
    import json

    from .compress import load_compressed

    meta = json.loads((path / "compress.json").read_text())
    record = {**(meta.get("record") or {}), "model": meta["model"]}
    tokenizer = None
    if record.get("tokenizer"):
        from .data.tokenizers import tokenizer_from_state

        tokenizer = tokenizer_from_state(record["tokenizer"])
    model = load_compressed(path)
    model.model_name = meta["model"]
    differ = sorted(k for k, v in kwargs.items() if getattr(model.config, k, v) != v)
    if differ:  # the data's sizes (classes, channels, image size) are welcome when they are the model's own
        raise RunError(f"{path} holds a compressed {meta['model']}, whose sizes are fixed; it cannot take "
                       + ", ".join(f"{k}={kwargs[k]!r} (it has {getattr(model.config, k)!r})" for k in differ))
    return Run(model.eval(), meta["model"], str(path), record, tokenizer)


def _pretrained_source(source: str | Path, kwargs: dict) -> Run | None:
    """A shipped tag (`vit_mnist.mnist5k`, checksummed), a Hub repo (`hf-hub:org/name`) or a save_pretrained
    directory, as a Run; None for every other source."""
    from .hub import HF_HUB_PREFIX, hub_snapshot, is_pretrained_dir, load_pretrained_dir
    from .pretrained import is_tag, pretrained_cfg, verified_path

    if isinstance(source, str) and is_tag(source):
        run = load_pretrained_dir(verified_path(source), kwargs)
        run.meta["pretrained_cfg"] = pretrained_cfg(source).as_dict()
    elif isinstance(source, str) and source.startswith(HF_HUB_PREFIX):
        run = load_pretrained_dir(hub_snapshot(source), kwargs)
    elif is_pretrained_dir(source):
        run = load_pretrained_dir(source, kwargs)
    else:
        return None
    run.source = str(source)
    return run


def describes_model(source: str | Path) -> bool:
    """True for a source that names its model: a `zoo fit` checkpoint (or run folder), safetensors with zoo
    metadata, a save_pretrained directory, a shipped tag or an `hf-hub:` repository."""
    from .hub import HF_HUB_PREFIX, is_pretrained_dir
    from .pretrained import is_tag
    from .rundir import resolve_checkpoint

    if isinstance(source, str) and (is_tag(source) or source.startswith(HF_HUB_PREFIX)):
        return True
    if is_pretrained_dir(source):
        return True
    from .compress import is_compressed_dir

    if is_compressed_dir(source):
        return True
    path = Path(resolve_checkpoint(source))
    if path.suffix == ".ckpt":
        return True
    if path.suffix == ".safetensors" and path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return "zoo" in (f.metadata() or {})
        except Exception:  # noqa: BLE001 - a damaged file: the loader that follows names the problem
            return False
    return False


def _build(name: str, config: Any) -> nn.Module:
    from .registry import _entry

    entry = _entry(name)
    model = entry.model_cls(config)
    model.model_name = name
    return model


def _load_safetensors(path: Path, kwargs: dict) -> Run:
    from safetensors import safe_open

    from .registry import with_overrides
    from .weights import load_state_dict_checked, read_state_dict

    state = read_state_dict(path)
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    if "zoo" not in meta:
        raise RunError(f"{path} has no zoo metadata naming its model; pass NAME@{path} (e.g. vit_mnist@{path})")
    record = json.loads(meta["zoo"])
    config = with_overrides(record["model"], config_from_record(record["model"], record["config"]), kwargs)
    model = _build(record["model"], config)
    load_state_dict_checked(model, state)
    tokenizer = None
    if record.get("tokenizer"):
        from .data.tokenizers import tokenizer_from_state

        tokenizer = tokenizer_from_state(record["tokenizer"])
    return Run(model.eval(), record["model"], str(path), record, tokenizer)


def save_run(run: Run | nn.Module, path: str | Path, tokenizer: Any = None, meta: dict | None = None) -> Path:
    """Weights as safetensors with the zoo record in the metadata: `load_run(path)` rebuilds the model."""
    from .weights import save_safetensors

    model = run.model if isinstance(run, Run) else run
    record = {**(run.meta if isinstance(run, Run) else {}), **(meta or {}), **model_record(model)}
    tokenizer = tokenizer if tokenizer is not None else getattr(run, "tokenizer", None)
    if tokenizer is not None:
        from .data.tokenizers import tokenizer_to_state

        record["tokenizer"] = tokenizer_to_state(tokenizer)
    record.pop("cli_config", None)
    save_safetensors(model, path, metadata={"zoo": json.dumps(record)})
    return Path(path)
