"""Converted models on disk: safetensors weights + the zoo class and config in the file's metadata.

    save_converted(model, "bert.safetensors")
    model = load_converted("bert.safetensors")   # rebuilds the class from its config, checked load
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os

from torch import nn

from ..weights import load_state_dict_checked, save_safetensors


def save_converted(model: nn.Module, path: str | os.PathLike, source: str = "") -> None:
    cls, cfg = type(model), model.config
    meta = {
        "zoo_class": f"{cls.__module__}.{cls.__qualname__}",
        "zoo_config_class": f"{type(cfg).__module__}.{type(cfg).__qualname__}",
        "zoo_config": json.dumps(dataclasses.asdict(cfg)),
        "source": source,
    }
    save_safetensors(model, path, metadata=meta)


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
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if "zoo_class" not in meta:
        raise ValueError(f"{path} has no zoo metadata; load it with zoo.create_model(NAME, pretrained={str(path)!r})")
    cfg_cls = _zoo_attr(meta["zoo_config_class"])
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    cfg = cfg_cls(**{k: v for k, v in json.loads(meta["zoo_config"]).items() if k in fields})
    model = _zoo_attr(meta["zoo_class"])(cfg)
    load_state_dict_checked(model, load_file(str(path)))
    return model.eval()


def registered_name(model: nn.Module) -> str | None:
    """The registry name whose config equals the model's, if any."""
    from ..registry import _REGISTRY, _ensure_loaded

    _ensure_loaded()
    for name, entry in _REGISTRY.items():
        if entry.model_cls is type(model) and entry.config == model.config:
            return name
    return None
