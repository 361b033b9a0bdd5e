"""transformers <-> zoo: `from_hf` (model object or save_pretrained directory) and `to_hf`.

The family converters live in hf_<family>.py; this module reads the source and dispatches on
the config's `model_type`.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._common import read_hf_dir_weights

# model_type -> converter module; each has from_hf(config, state_dict, arch) and to_hf(model, out_dir)
_FAMILIES = {"vit": "hf_vit", "bert": "hf_bert", "t5": "hf_t5", "marian": "hf_marian", "clip": "hf_clip",
             "gpt2": "hf_gpt2", "llama": "hf_llama"}
_FAMILIES["vit_mae"] = "hf_mae"  # ViTMAEForPreTraining -> zoo.models.mae (MAE)
_FAMILIES["siglip"] = "hf_siglip"  # SiglipModel: both towers, attention-pooling head, logit bias
_GENERATION_RULES = {"marian", "llama", "gpt2"}  # llama / gpt2: the EOS and pad ids generate uses (Llama 3 lists its EOS ids there)
# zoo model class -> converter module for to_hf
_ZOO_FAMILIES = {"zoo.models.vit.VisionTransformer": "hf_vit", "zoo.models.bert.Bert": "hf_bert", "zoo.models.t5.T5": "hf_t5",
                 "zoo.models.gpt.GPT": "hf_gpt2", "zoo.models.llama.Llama": "hf_llama"}


def read_hf_source(source: Any) -> tuple[Any, dict[str, torch.Tensor], str | None]:
    """(config, state_dict, architecture name) from a transformers model or a save_pretrained directory."""
    if isinstance(source, nn.Module):
        if not hasattr(source, "config") or not hasattr(source.config, "model_type"):
            raise TypeError(f"{type(source).__name__} is not a transformers model (no .config.model_type)")
        return source.config, source.state_dict(), type(source).__name__
    if isinstance(source, (str, os.PathLike)):
        d = Path(source)
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{str(d)!r} has no config.json; pass a directory written by save_pretrained or a model object")
        from ..hub import is_pretrained_dir

        if is_pretrained_dir(d):
            raise ValueError(f"{str(d)!r} is a zoo folder (written by zoo's save_pretrained), not a transformers one: "
                             f"load it with zoo.from_pretrained({str(d)!r}); it needs no conversion")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(d))  # reads config.json only
        arch = config.architectures[0] if getattr(config, "architectures", None) else None
        return config, read_hf_dir_weights(d), arch
    raise TypeError(f"from_hf expects a transformers model or a directory path, got {type(source).__name__}")


def read_generation_config(source: Any, config: Any):
    """transformers' GenerationConfig of a model object or a save_pretrained directory (None when absent)."""
    if isinstance(source, nn.Module):
        return getattr(source, "generation_config", None)
    path = Path(source) / "generation_config.json"
    if not path.is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(str(Path(source)))


def _family(model_type: str):
    if model_type not in _FAMILIES:
        raise ValueError(f"no zoo converter for transformers model_type {model_type!r}; supported: {sorted(_FAMILIES)}")
    return importlib.import_module(f"{__package__}.{_FAMILIES[model_type]}")


def from_hf(source: Any, dtype: torch.dtype | None = None) -> nn.Module:
    """The zoo model equivalent to a transformers model (head included), in eval mode.

    `source`: a transformers model object, or a local directory written by `save_pretrained`
    (config.json + model.safetensors). Hyper-parameters come from the source's config.
    """
    config, sd, arch = read_hf_source(source)
    # families whose converted models carry generation rules (forced EOS, suppressed ids) get them too
    extra = {"generation_config": read_generation_config(source, config)} if config.model_type in _GENERATION_RULES else {}
    try:
        model = _family(config.model_type).from_hf(config, sd, arch, **extra)
    except KeyError as e:
        raise ValueError(
            f"the {config.model_type} weights lack {e.args[0]!r}, which {arch or config.model_type} needs; "
            "the checkpoint is incomplete or its config.json does not describe it"
        ) from None
    return model.to(dtype) if dtype is not None else model


def to_hf(model: nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write `model` as a directory that transformers' `from_pretrained` loads (BERT, T5, ViT, GPT-2, Llama).

    Returns the directory. The written model reproduces the zoo model's outputs."""
    for dotted, mod in _ZOO_FAMILIES.items():
        module, _, name = dotted.rpartition(".")
        if isinstance(model, getattr(importlib.import_module(module), name)):
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            importlib.import_module(f"{__package__}.{mod}").to_hf(model, out)
            return out
    raise ValueError(f"to_hf supports zoo ViT, BERT, T5, GPT-2 and Llama models, not {type(model).__name__}")
