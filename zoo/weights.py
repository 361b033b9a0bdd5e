"""Loading and saving weights safely: safetensors, or torch.load(weights_only=True). Never pickle."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn


class StateDictMismatch(RuntimeError):
    """Raised with every missing, unexpected and shape-mismatched key listed by name."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file, a zoo/Lightning checkpoint (.ckpt) or a plain torch state dict (.pt/.pth/.bin)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist; pass a .safetensors file or a checkpoint written by `zoo fit`")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:  # Lightning checkpoint: strip the task's "model." prefix
        sd = obj["state_dict"]
        prefix = "model."
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        return sd
    for key in ("model", "module"):  # other common wrappers around a state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return obj


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], ignore: tuple[str, ...] = ()) -> None:
    """Strict load that reports every problem at once instead of stopping at the first."""
    own = model.state_dict()
    state_dict = _fill_tied(own, dict(state_dict))
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own and not any(k.startswith(p) for p in ignore))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state_dict and state_dict[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        lines = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                lines.append(f"{title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise StateDictMismatch(
            f"weights do not fit {type(model).__name__}:\n  " + "\n  ".join(lines)
            + "\nCheck that the model name and overrides (num_classes, img_size, vocab_size, ...) match the run that saved them."
        )
    model.load_state_dict({k: state_dict[k] for k in own}, strict=True)


def _fill_tied(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied parameters (e.g. an LM head sharing the word embeddings) are saved once; restore the aliases."""
    groups: dict[int, list[str]] = {}
    for k, t in own.items():
        if t.device.type != "meta":
            groups.setdefault(t.data_ptr(), []).append(k)
    for keys in groups.values():
        present = [k for k in keys if k in state_dict]
        if present and len(keys) > 1:
            for k in keys:
                state_dict.setdefault(k, state_dict[present[0]])
    return state_dict


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    load_state_dict_checked(model, read_state_dict(path))
    return model


def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_safetensors(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save weights as safetensors (tied tensors stored once), atomically."""
    from safetensors.torch import save_model

    atomic_write(path, lambda tmp: save_model(model, tmp, metadata=metadata))
