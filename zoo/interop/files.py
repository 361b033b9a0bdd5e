"""Converted models on disk: safetensors weights + the zoo class and config in the file's metadata.

    save_converted(model, "bert.safetensors")
    model = load_converted("bert.safetensors")   # rebuilds the class from its config, checked load
    model = zoo.from_pretrained("bert.safetensors")   # the same: the file also holds a zoo record

A converted model is named after a registered model of its class (`name_converted`), and its record holds its
full config, so `save_pretrained`, `from_pretrained`, `zoo export` and `zoo predict` take it like any zoo model.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os

from torch import nn

from ..weights import load_state_dict_checked, save_safetensors


def save_converted(model: nn.Module, path: str | os.PathLike, source: str = "") -> None:
    from ..runs import model_record

    cls, cfg = type(model), model.config
    meta = {
        "zoo_class": f"{cls.__module__}.{cls.__qualname__}",
        "zoo_config_class": f"{type(cfg).__module__}.{type(cfg).__qualname__}",
        "zoo_config": json.dumps(dataclasses.asdict(cfg)),
        "source": source,
    }
    if name_converted(model).model_name is not None:  # the record zoo.runs.load_run reads (from_pretrained, export)
        meta["zoo"] = json.dumps({**model_record(model), "source": source})
    save_safetensors(model, path, metadata=meta)


def name_converted(model: nn.Module) -> nn.Module:
    """Give a converted model the `model_name` zoo describes it by: the registered name whose config equals its
    own, else the first registered name of its class and config class (its stored config then gives the sizes).
    A class no registered name builds keeps none."""
    if getattr(model, "model_name", None) is None:
        model.model_name = registered_name(model) or _registered_of_kind(type(model), type(getattr(model, "config", None)))
    return model


def _registered_of_kind(model_cls: type, config_cls: type) -> str | None:
    """The first registered name (sorted) that builds `model_cls` from a `config_cls`."""
    from ..registry import _REGISTRY, _ensure_loaded

    _ensure_loaded()
    return next((n for n, e in sorted(_REGISTRY.items()) if e.model_cls is model_cls and type(e.config) is config_cls), None)


def _zoo_attr(dotted: str):
    module, _, name = dotted.rpartition(".")
    if not module.startswith("zoo.models."):  # never import anything a file names outside the zoo families
        raise ValueError(f"refusing to build {dotted!r}: converted files may only name zoo.models classes")
    return getattr(importlib.import_module(module), name)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_converted(path: str | os.PathLike) -> nn.Module:
    """The model saved by `save_converted` / `zoo convert`, in eval mode."""
    from ..weights import read_state_dict

    state = read_state_dict(path)  # a damaged or truncated file is an error naming it
    meta = read_metadata(path)
    if "zoo_class" not in meta:
        raise ValueError(f"{path} has no zoo metadata; load it with zoo.create_model(NAME, pretrained={str(path)!r})")
    cfg_cls = _zoo_attr(meta["zoo_config_class"])
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    stored = {k: v for k, v in json.loads(meta["zoo_config"]).items() if k in fields}
    model_cls = _zoo_attr(meta["zoo_class"])
    name = _registered_of_kind(model_cls, cfg_cls)
    if name is not None:  # the registered config rebuilds tuples and nested configs that JSON stored as lists
        from ..runs import config_from_record

        cfg = config_from_record(name, stored)
    else:
        cfg = cfg_cls(**stored)
    model = model_cls(cfg)
    load_state_dict_checked(model, state)
    return name_converted(model).eval()


def registered_name(model: nn.Module) -> str | None:
    """The registry name whose config equals the model's (generation defaults aside), if any."""
    from ..registry import _REGISTRY, _ensure_loaded

    _ensure_loaded()
    def architecture(config):  # fields that shape the model: a config's generation defaults do not
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("architecture", True)}

    for name, entry in _REGISTRY.items():
        if entry.model_cls is type(model) and architecture(entry.config) == architecture(model.config):
            return name
    return None
