"""Helpers shared by the converters: activation names, weight reading, checked loading."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..weights import load_state_dict_checked, read_state_dict

# transformers `hidden_act` / `activation_function` strings -> zoo.core activation names.
# gelu_new and gelu_pytorch_tanh are the same tanh approximation to 2.4e-7 (parity_facts §0).
HF_TO_ZOO_ACT = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu", "swish": "silu",
}
ZOO_TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu"}


def zoo_activation(name: str, where: str) -> str:
    if name not in HF_TO_ZOO_ACT:
        raise ValueError(f"{where}: activation {name!r} has no zoo equivalent; supported: {sorted(HF_TO_ZOO_ACT)}")
    return HF_TO_ZOO_ACT[name]


def hf_activation(name: str) -> str:
    if name not in ZOO_TO_HF_ACT:
        raise ValueError(f"activation {name!r} has no transformers equivalent; supported: {sorted(ZOO_TO_HF_ACT)}")
    return ZOO_TO_HF_ACT[name]


def hf_eos(value) -> int | list[int] | None:
    """transformers' eos_token_id (an id or a list of ids, e.g. Llama 3's [128001, 128009]) as a zoo config keeps it:
    one id as an int, several as a list; generate stops at any of them, as transformers' does."""
    if value is None or isinstance(value, int):
        return value
    ids = [int(i) for i in value]
    return ids[0] if len(ids) == 1 else ids


def generation_ids(hf, generation_config=None) -> tuple:
    """(eos, pad) as transformers' generate takes them: the generation config's where it sets them (Llama 3's
    generation_config.json lists three EOS ids while config.json names one), else the model config's."""
    def get(name):
        value = getattr(generation_config, name, None) if generation_config is not None else None
        return getattr(hf, name, None) if value is None else value

    return hf_eos(get("eos_token_id")), get("pad_token_id")


# transformers' generate without a generation_config setting: greedy; sampling at temperature 1 from the 50 best tokens
HF_SAMPLING = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
# generation_config settings that change the next token which zoo's generate does not apply, and their neutral value
_UNAPPLIED = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_p": None, "typical_p": 1.0,
              "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_new_tokens": None, "bad_words_ids": None,
              "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None}


def hf_sampling(generation_config=None) -> dict:
    """The sampling defaults (zoo's `config.sampling`) that make zoo's generate decode as transformers' generate does
    for this generation config: its do_sample / temperature / top_k / top_p where set, else transformers' own
    (HF_SAMPLING). Settings zoo's generate does not apply (repetition_penalty, min_p, ...) get a warning."""
    got = {k: getattr(generation_config, k, None) for k in HF_SAMPLING} if generation_config is not None else {}
    out = {k: default if got.get(k) is None else got[k] for k, default in HF_SAMPLING.items()}
    out["do_sample"] = bool(out["do_sample"])
    unapplied = [f"{k}={v!r}" for k, neutral in _UNAPPLIED.items()
                 if (v := getattr(generation_config, k, None)) is not None and v != neutral]
    if unapplied:
        import warnings

        warnings.warn(f"the generation config sets {', '.join(unapplied)}, which zoo's generate does not apply: its "
                      "tokens can differ from transformers' generate", stacklevel=3)
    return out


def hf_generation_settings(sampling: dict | None) -> dict:
    """The generation_config fields transformers' generate needs to sample as zoo's generate with `sampling` does
    (none unless it samples by default: transformers refuses sampling settings in a greedy generation config)."""
    return {k: sampling[k] for k in HF_SAMPLING if k in sampling} if sampling and sampling.get("do_sample") else {}


def first_id(value: int | list[int] | None) -> int | None:
    return value[0] if isinstance(value, list) else value


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file, or a weights-only torch file (never unpickles code)."""
    return read_state_dict(path)


def read_hf_dir_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """model.safetensors, sharded safetensors (index json) or pytorch_model.bin (weights_only) of a save_pretrained dir."""
    d = Path(directory)
    if (d / "model.safetensors").is_file():
        return read_weights(d / "model.safetensors")
    index = d / "model.safetensors.index.json"
    if index.is_file():
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            sd.update(read_weights(d / shard))
        return sd
    if (d / "pytorch_model.bin").is_file():
        return read_weights(d / "pytorch_model.bin")
    raise FileNotFoundError(
        f"{d} holds no model.safetensors, model.safetensors.index.json or pytorch_model.bin; "
        "pass a directory written by transformers' save_pretrained"
    )


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` where present (task models nest the base model under e.g. 'bert.')."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], ignore: tuple[str, ...] = ()) -> nn.Module:
    """Checked strict load (every missing / unexpected / mis-shaped key named), then eval mode; the model gets
    the zoo name save_pretrained describes it by (`files.name_converted`)."""
    from .files import name_converted

    load_state_dict_checked(model, sd, ignore=ignore)
    return name_converted(model).eval()


def mlp_ratio_for(dim: int, hidden: int) -> float:
    """A float ratio with int(dim * ratio) == hidden (the zoo families store ratios)."""
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise ValueError(f"FFN size {hidden} is not representable as int({dim} * ratio)")
    return ratio
