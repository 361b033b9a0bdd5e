"""Preprocessing as the weights expect it, timm-style: `resolve_data_config` then `create_transform`.

    model = zoo.create_model("vit_mnist.mnist5k", pretrained=True)
    config = zoo.resolve_data_config(model)      # {"input_size": (1, 28, 28), "mean": (0.1307,), "std": (0.3081,), ...}
    transform = zoo.create_transform(config)     # PIL image -> normalised float tensor (C, H, W)
    logits = model(transform(Image.open("digit.png"))[None])

The values come from the model's `pretrained_cfg` (a shipped tag, a save_pretrained directory or a
`zoo fit` checkpoint records how its training data was read), else from the model's config with
mean = std = 0.5. `zoo predict` reads image files through the same transform.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _channels(value: Any, in_chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),)
    if len(values) == 1:
        return values * in_chans
    if len(values) != in_chans:
        raise ValueError(f"{len(values)} normalisation values for {in_chans} channels; give one per channel or one for all")
    return values


def _fitting(value: Any, in_chans: int) -> Any:
    """Normalisation values for `in_chans` channels: as given when one or one per channel, else their mean."""
    if isinstance(value, (list, tuple)) and len(value) not in (1, in_chans):
        return sum(float(v) for v in value) / len(value)
    return value


def data_config(size: int | tuple[int, int], in_chans: int, mean: Any = 0.5, std: Any = 0.5,
                interpolation: str = "bilinear") -> dict[str, Any]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return {"input_size": (int(in_chans), int(h), int(w)), "interpolation": interpolation,
            "mean": _channels(mean, in_chans), "std": _channels(std, in_chans), "crop_pct": 1.0}


def resolve_data_config(source: Any = None, **overrides) -> dict[str, Any]:
    """timm's data config (input_size, interpolation, mean, std, crop_pct) for a model, a `zoo.runs.Run`,
    or anything `zoo.load_run` accepts (a shipped tag, a directory, a checkpoint); `overrides` win."""
    from .runs import Run, load_run

    if isinstance(source, (str,)) or hasattr(source, "__fspath__"):
        source = load_run(source)
    image = None
    if isinstance(source, Run):
        image, model = source.image, source.model
    else:
        model = source
        image = (getattr(model, "pretrained_cfg", None) or {}).get("image")
    cfg = getattr(model, "config", None)
    size, chans = getattr(cfg, "img_size", None), getattr(cfg, "in_chans", None)
    if image is None:
        if size is None or chans is None:
            raise ValueError(f"{type(model).__name__} does not read images (its config has no img_size / in_chans)")
        image = {"size": size, "in_chans": chans, "mean": 0.5, "std": 0.5}
    elif size is not None and chans is not None and (image.get("size"), image.get("in_chans")) != (size, chans):
        # weights loaded into a model built for another size or channel count (create_model(..., img_size=56)): the
        # model as built decides the input, the record the normalisation (per-channel values that do not fit the
        # channels become their mean)
        image = {**image, "size": size, "in_chans": chans,
                 **{k: _fitting(image.get(k, 0.5), chans) for k in ("mean", "std")}}
    config = data_config(image["size"], image["in_chans"], image.get("mean", 0.5), image.get("std", 0.5))
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(f"unknown data config key {key!r}; known: {', '.join(config)}")
        config[key] = value
    return config


def to_mode(image, mode: str):
    """`image.convert(mode)` ("L" or "RGB"), reading 16-bit and 32-bit grey images on their own scale: Pillow's
    convert clips their values at 255, so a 16-bit PNG became black and white."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        import numpy as np
        from PIL import Image

        values = np.asarray(image, dtype=np.float64)
        top = values.max() if values.size else 0.0
        scale = 1.0 if image.mode == "F" and top <= 1.0 else 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        image = Image.fromarray(np.clip(values / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return image.convert(mode)


class ImageTransform(nn.Module):
    """PIL image -> (C, H, W) float tensor: grey or RGB by the channels, resized, scaled to [0, 1], normalised."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from torchvision.transforms import InterpolationMode, v2

        chans, h, w = config["input_size"]
        self.mode = "L" if chans == 1 else "RGB"
        self.ops = v2.Compose([
            v2.Resize((h, w), interpolation=InterpolationMode(config.get("interpolation", "bilinear"))),
            v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(config["mean"]), list(config["std"])),
        ])

    def forward(self, image) -> torch.Tensor:
        return self.ops(to_mode(image, self.mode))


def create_transform(config: dict[str, Any]) -> ImageTransform:
    """The transform of a data config from `resolve_data_config`."""
    return ImageTransform(config)
