"""Model registry: every variant is a (model class, config) pair registered under a name.

    zoo.create_model("vit_small_patch16_224", num_classes=10)
    zoo.list_models("vit_*")
    zoo.model_info("bert_base")
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    model_cls: type
    config: Any  # a dataclass instance holding the published hyper-parameters
    paper: str
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, family: str, model_cls: type, config: Any, paper: str, description: str = "") -> None:
    """Register a variant. `config` must be a dataclass instance accepted by `model_cls(config)`."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config of {name!r} must be a dataclass instance, got {type(config).__name__}")
    _REGISTRY[name] = ModelEntry(name, family, model_cls, config, paper, description)


def _entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} See zoo.list_models() for all {len(_REGISTRY)} names.")
    return _REGISTRY[name]


def list_models(pattern: str | None = None, family: str | None = None) -> list[str]:
    """Registered names, sorted, optionally filtered by a shell wildcard (`"vit_*"`) and family."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if family:
        families = sorted({e.family for e in _REGISTRY.values()})
        if family not in families:
            close = difflib.get_close_matches(family, families, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown family {family!r}.{hint} Known families: {', '.join(families)}")
        names = [n for n in names if _REGISTRY[n].family == family]
    return names


def get_config(name: str, **overrides) -> Any:
    """A copy of the variant's config with overrides applied; unknown keys raise naming the accepted ones."""
    return with_overrides(name, _entry(name).config, overrides)


def with_overrides(name: str, config: Any, overrides: dict) -> Any:
    """`config` with `overrides` applied, command-line strings read as the fields' types (see `_typed`); unknown keys
    raise naming the accepted ones. Every path that builds a model from a registered or stored config and a user's
    overrides goes through here. The result is a new object that shares nothing with `config`: a model keeps its
    config and may change it (reset_classifier sets num_classes), and the registered one must stay as registered."""
    import copy

    if not overrides:
        return copy.deepcopy(config)
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"{name} does not accept {', '.join(unknown)}; accepted overrides: {', '.join(sorted(fields))}")
    return copy.deepcopy(dataclasses.replace(config, **_typed(name, config, overrides)))


def accepted_overrides(name: str, overrides: dict) -> dict:
    """The overrides that the config of `name` (a registered name or name.tag) has fields for. Facts a data
    module passes every model (e.g. bos_token_id) are dropped where the family has no such field."""
    from .pretrained import split_tag

    fields = {f.name for f in dataclasses.fields(_entry(split_tag(name)[0]).config)}
    return {k: v for k, v in overrides.items() if k in fields}


def _typed(name: str, config: Any, overrides: dict) -> dict:
    """Command-line overrides of a dict (`--model.init_args.model_kwargs.dim 64`) arrive as strings: a string
    for a field that cannot hold one is read as YAML (64, 1e-3, true, [2, 2]) and must then fit the field."""
    import typing

    hints = typing.get_type_hints(type(config))
    out = dict(overrides)
    for key, value in overrides.items():
        hint = hints.get(key)
        if not isinstance(value, str) or hint is None or _accepts_str(hint):
            continue
        import yaml

        try:
            parsed = float(value) if _is_float(value) else yaml.safe_load(value)  # YAML 1.1 reads 1e-5 as a string
        except yaml.YAMLError:
            parsed = value
        default = getattr(config, key)
        if parsed is None and default is not None and type(None) not in typing.get_args(hint):
            parsed = value
        if isinstance(parsed, str) or (isinstance(parsed, bool) and not isinstance(default, bool) and default is not None):
            kind = getattr(hint, "__name__", str(hint))
            raise ValueError(f"{name}: {key}={value!r} is not {'an' if kind[:1] in 'aeiou' else 'a'} {kind} "
                            f"(default {default!r}); give a value of that type")
        out[key] = tuple(parsed) if isinstance(parsed, list) and isinstance(default, tuple) else parsed
    for key, value in out.items():
        _check_count(name, key, value, hints.get(key), getattr(config, key))
    return out


def _check_count(name: str, key: str, value: Any, hint: Any, default: Any) -> None:
    """A number given for an int field (a size, a count, an id) must be a whole number, and not negative where the
    registered value is a positive one (depth=-1, num_classes=-1 built broken models, depth=2.5 failed inside torch)."""
    import numbers
    import typing

    kinds = set(typing.get_args(hint)) or {hint}
    if int not in kinds or float in kinds or not isinstance(value, numbers.Number):
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: {key}={value!r} is not an int (default {default!r}); give a whole number")
    if value < 0 and isinstance(default, int) and default > 0:
        raise ValueError(f"{name}: {key}={value!r} is negative; it is a size or count (default {default!r}): give a "
                         "number >= 0")


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return not value.strip().lstrip("+-").isdigit() and value.strip().lower() not in ("nan", "inf", "infinity")


def _accepts_str(hint: Any) -> bool:
    import typing

    return hint is str or hint is Any or str in typing.get_args(hint) or typing.get_origin(hint) is typing.Literal


def create_model(name: str, pretrained: str | bool | None = None, features_only: bool = False,
                 out_indices: int | list[int] | None = None, **overrides) -> nn.Module:
    """Build a registered model, timm-style.

    name: a registered name, `name.tag` for a shipped pretrained config (`zoo.list_pretrained()`), or, as in timm,
    `hf-hub:<org>/<repo>[@revision]` for a Hub repository's architecture (its weights with pretrained=True).
    pretrained: True loads the tag's weights (a plain name: its default tag), checksummed; a string is a
    shipped tag, `hf-hub:<org>/<repo>[@revision]`, a save_pretrained directory, a checkpoint of `zoo fit`, a run
    folder, or a safetensors file (one that zoo wrote describes its model: sizes come from it; a bare one
    must fit the config). `model.pretrained_cfg` says what the weights expect (input size, normalisation)."""
    if features_only:  # timm's features_only: a backbone whose forward returns feature maps
        return _features_only(name, pretrained, out_indices, overrides)
    if out_indices is not None:
        raise ValueError(f"out_indices={out_indices!r} needs features_only=True")
    from .hub import HF_HUB_PREFIX

    if name.startswith(HF_HUB_PREFIX):
        return _hub_model(name, pretrained, overrides)
    from .pretrained import is_tag, pretrained_cfg, resolve, split_tag

    base, tag = split_tag(name)
    entry = _entry(base)
    tag_cfg = pretrained_cfg(name) if tag else None  # an unknown tag is an error naming the known ones
    if pretrained is True or (isinstance(pretrained, str) and is_tag(pretrained)):
        chosen = pretrained if isinstance(pretrained, str) else name
        pretrained = resolve(chosen)  # checksummed; no weights for the name is an error naming the fix
        tag_cfg = pretrained_cfg(chosen)
    if pretrained is not None and not isinstance(pretrained, bool):
        from .runs import describes_model, load_run

        if describes_model(pretrained):  # a zoo checkpoint, directory or safetensors file: its own config decides the sizes
            # timm's fine-tuning call: num_classes other than the weights' builds the pretrained model with a new,
            # freshly initialised head (reset_classifier); everything else is loaded
            new_head = overrides.pop("num_classes", None) if hasattr(entry.model_cls, "reset_classifier") else None
            run = load_run(pretrained, overrides or None, name=base)
            if run.name != base:
                raise ValueError(f"{pretrained} holds a {run.name}, not a {base}; call create_model({run.name!r}, pretrained=...) "
                                 "or zoo.runs.load_run(path)")
            if new_head is not None and new_head != getattr(run.model, "num_classes", new_head):
                run.model.reset_classifier(new_head)
                run.meta = {k: v for k, v in run.meta.items() if k not in ("labels", "cli_config")}
            return with_run_info(run, tag_cfg).train()
    # a tag's architecture (its sizes) with random weights, as timm does
    config = _tag_config(base, tag_cfg, overrides) if tag_cfg is not None else get_config(base, **overrides)
    model = entry.model_cls(config)
    model.model_name = base
    set_pretrained_cfg(model, _pretrained_info({}, tag_cfg))
    if pretrained:
        from .weights import load_pretrained

        load_pretrained(model, pretrained)
    return model


def _hub_model(name: str, pretrained: Any, overrides: dict) -> nn.Module:
    """timm's `create_model("hf-hub:org/repo[@revision]")`: the repository's architecture and config (with
    `overrides`), random weights; its weights with pretrained=True (through the snapshot lookup from_pretrained uses)."""
    import json

    from .hub import CONFIG_NAME, hub_snapshot
    from .runs import config_from_record

    if pretrained not in (None, False, True):
        raise ValueError(f"create_model({name!r}, pretrained={pretrained!r}): a Hub repository brings its own weights; "
                         "pass pretrained=True for them, or create_model(<registered name>, pretrained=...) for others")
    record = json.loads((hub_snapshot(name) / CONFIG_NAME).read_text(encoding="utf-8"))["zoo"]
    base = record["model"]
    if pretrained:
        return create_model(base, pretrained=name, **overrides)
    model = _entry(base).model_cls(with_overrides(base, config_from_record(base, record["config"]), overrides))
    model.model_name = base
    return set_pretrained_cfg(model, _pretrained_info(record))


def with_run_info(run: Any, tag_cfg: Any = None) -> nn.Module:
    """The run's model carrying what its weights came with: `pretrained_cfg` (input size, normalisation: what
    resolve_data_config reads), the run's record and its tokenizer (save_pretrained writes both again)."""
    set_pretrained_cfg(run.model, _pretrained_info(run.meta, tag_cfg))
    run.model.zoo_record = run.meta
    run.model.zoo_tokenizer = run.tokenizer
    return run.model


def set_pretrained_cfg(model: nn.Module, info: dict[str, Any]) -> nn.Module:
    """model.pretrained_cfg = info, plus, for a model that reads images, timm's data keys (input_size, interpolation,
    mean, std, crop_pct) as zoo.resolve_data_config resolves them: timm.data.resolve_model_data_config(model) read
    none of zoo's keys and gave ImageNet's 3x224x224 input and normalisation to every zoo model."""
    from .transforms import resolve_data_config

    model.pretrained_cfg = info
    try:
        data = resolve_data_config(model)
    except ValueError:  # no images in
        return model
    model.pretrained_cfg = {**info, **data}
    return model


def _pretrained_info(meta: dict, tag_cfg: Any = None) -> dict[str, Any]:
    """What the weights expect, timm's `pretrained_cfg`: the tag's config, else the run's record."""
    info = dict(meta.get("pretrained_cfg") or (tag_cfg.as_dict() if tag_cfg is not None else {}))
    for key in ("labels", "image"):
        if meta.get(key) is not None:
            info.setdefault(key, meta[key])
    shipped = info.get("input")
    if info.get("image") is None and isinstance(shipped, dict) and {"size", "in_chans"} <= set(shipped):
        # a tag's architecture without its weights reads images as the tag's weights do (as timm's pretrained_cfg)
        info["image"] = {k: shipped[k] for k in ("size", "in_chans", "mean", "std") if k in shipped}
    return info


def _features_only(name: str, pretrained, out_indices, overrides: dict) -> nn.Module:
    """`create_model(name, features_only=True, out_indices=...)`: the model wrapped in a
    `zoo.features.FeatureExtractor`, whose forward returns the maps of `forward_intermediates` at
    out_indices (None: all entries of the model's feature_info; n: the last n; a list: those); for a
    model that declares them only on its `image_tower()` (CLIP, the captioner), the tower's maps."""
    from .features import FeatureExtractor

    # a model without intermediate features (nor an image tower with them) is a TypeError naming it
    return FeatureExtractor(create_model(name, pretrained, **overrides), out_indices)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _tag_config(base: str, tag_cfg: Any, overrides: dict) -> Any:
    """The config a shipped tag's weights were trained with (its config.json), with `overrides` applied."""
    from .hub import CONFIG_NAME
    from .runs import config_from_record

    stored = json.loads((tag_cfg.path / CONFIG_NAME).read_text(encoding="utf-8"))["zoo"]
    return with_overrides(base, config_from_record(base, stored["config"]), overrides)


def model_info(name: str, **overrides) -> dict[str, Any]:
    """Family, hyper-parameters, parameter count and reference paper of a registered model; for a shipped tag
    (`vit_mnist.mnist5k`) the architecture its weights have and, under "pretrained", what they measured, their
    recipe, license and inputs (`zoo.pretrained_cfg`)."""
    from .pretrained import pretrained_cfg, split_tag

    base, tag = split_tag(name)
    entry = _entry(base)
    tag_cfg = pretrained_cfg(name) if tag else None  # an unknown tag is an error naming the known ones
    cfg = _tag_config(base, tag_cfg, overrides) if tag_cfg is not None else get_config(base, **overrides)
    with torch.device("meta"):  # count parameters without allocating them
        model = entry.model_cls(cfg)
    info = {
        "name": name,
        "family": entry.family,
        "paper": entry.paper,
        "description": entry.description,
        "params": count_parameters(model),
        "config": dataclasses.asdict(cfg),
    }
    if tag_cfg is not None:
        info["pretrained"] = {k: v for k, v in tag_cfg.as_dict().items() if k != "files"}
    return info


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (importing registers every family)
