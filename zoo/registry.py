"""Model registry: every variant is a (model class, config) pair registered under a name.

    zoo.create_model("vit_small_patch16_224", num_classes=10)
    zoo.list_models("vit_*")
    zoo.model_info("bert_base")
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
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
        names = [n for n in names if _REGISTRY[n].family == family]
    return names


def get_config(name: str, **overrides) -> Any:
    """The variant's config with overrides applied; unknown keys raise naming the accepted ones."""
    entry = _entry(name)
    fields = {f.name for f in dataclasses.fields(entry.config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"{name} does not accept {', '.join(unknown)}; accepted overrides: {', '.join(sorted(fields))}")
    return dataclasses.replace(entry.config, **overrides)


def create_model(name: str, pretrained: str | bool | None = None, features_only: bool = False,
                 out_indices: int | list[int] | None = None, **overrides) -> nn.Module:
    """Build a registered model; `pretrained` is a checkpoint of `zoo fit`, a run folder, or a safetensors file
    (one that zoo wrote describes its model: sizes come from it; a bare one must fit the config)."""
    if features_only:  # timm's features_only: a backbone whose forward returns feature maps
        return _features_only(name, pretrained, out_indices, overrides)
    if out_indices is not None:
        raise ValueError(f"out_indices={out_indices!r} needs features_only=True")
    entry = _entry(name)
    if pretrained is not None and not isinstance(pretrained, bool):
        from .runs import describes_model, load_run

        if describes_model(pretrained):  # a zoo checkpoint or safetensors file: its own config decides the sizes
            run = load_run(pretrained, overrides or None, name=name)
            if run.name != name:
                raise ValueError(f"{pretrained} holds a {run.name}, not a {name}; call create_model({run.name!r}, pretrained=...) "
                                 "or zoo.runs.load_run(path)")
            return run.model.train()
    elif pretrained:
        raise ValueError(f"{name} has no shipped weights; pass pretrained=<path> to a checkpoint of `zoo fit` "
                         "or a safetensors file")
    model = entry.model_cls(get_config(name, **overrides))
    model.model_name = name
    if pretrained:
        from .weights import load_pretrained

        load_pretrained(model, pretrained)
    return model


def _features_only(name: str, pretrained, out_indices, overrides: dict) -> nn.Module:
    """`create_model(name, features_only=True, out_indices=...)`: the model wrapped in a
    `zoo.features.FeatureExtractor`, whose forward returns the maps of `forward_intermediates` at
    out_indices (None: all entries of the model's feature_info; n: the last n; a list: those)."""
    from .features import FeatureExtractor

    model = create_model(name, pretrained, **overrides)
    if not callable(getattr(model, "forward_intermediates", None)):
        raise TypeError(f"{name} has no forward_intermediates, so features_only=True / out_indices= do not apply; "
                        "the vision models that declare feature_info support it (see zoo/features.py)")
    return FeatureExtractor(model, out_indices)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def model_info(name: str, **overrides) -> dict[str, Any]:
    """Family, hyper-parameters, parameter count and reference paper of a registered model."""
    entry = _entry(name)
    cfg = get_config(name, **overrides)
    with torch.device("meta"):  # count parameters without allocating them
        model = entry.model_cls(cfg)
    return {
        "name": name,
        "family": entry.family,
        "paper": entry.paper,
        "description": entry.description,
        "params": count_parameters(model),
        "config": dataclasses.asdict(cfg),
    }


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (importing registers every family)
