"""Intermediate features of vision models, shared by every family (timm's `forward_intermediates`).

A vision model that offers its intermediate maps declares

    feature_info: list[dict]   one entry per block (ViT, CaiT, EVA) or stage (Swin), in order:
                               {"num_chs": channels, "reduction": input pixels per map pixel,
                                "module": the module's name in the model, e.g. "encoder.blocks.3"}
    forward_intermediates(x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                          intermediates_only=False, ...)

with timm's semantics: `indices` None = every entry of feature_info, an int n = the last n, a list =
those entries (negative = from the end); each taken map is the output of that block or stage
(before the final norm; `norm=True` applies the final norm to it). NCHW maps are (B, C, H', W'),
NLC maps (B, H'·W', C) without the prefix (class / register) tokens. It returns
`(final features, [maps])`, where the final features equal `forward_features(x)`, or only the maps
with `intermediates_only=True`. `stop_early=True` skips the blocks after the last one taken (then the
"final" output is the normed output of that block, as in timm; use it with intermediates_only).

How a family writes its `forward_intermediates` with these helpers:

    take, last = feature_take_indices(len(self.blocks), indices)        # validated, absolute
    check_output_fmt(output_fmt)
    x, maps = run_blocks(self.blocks, x, take, stop_early=stop_early, checkpoint=...)
    maps = [self.norm(m) if norm else m for m in maps]
    maps = split_prefix_maps(maps, num_prefix, grid, output_fmt, return_prefix_tokens)  # drop / return the prefix

`prune_intermediate_layers(indices, prune_norm=False, prune_head=True)` (ViT-like models, with `prune_blocks`) trims a
model to a backbone for those indices, as timm's does.

`FeatureExtractor(model, out_indices)` (what `zoo.create_model(name, features_only=True)` returns)
works for any model with `forward_intermediates` and `feature_info`, or whose `image_tower()` has them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

OUTPUT_FORMATS = ("NCHW", "NLC")


def feature_take_indices(num_blocks: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Absolute indices to take out of `num_blocks` features, and the largest of them (timm's rule).

    None: all; an int n: the last n (1 <= n <= num_blocks); a sequence: those indices, negative ones
    counted from the end (-1 = last). Raises ValueError naming the bad index and the valid range."""
    if indices is None:
        indices = num_blocks
    if isinstance(indices, bool) or not isinstance(indices, (int, Sequence)) or isinstance(indices, str):
        raise TypeError(f"indices must be None, an int (the last n) or a list of ints, got {indices!r}")
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"indices={indices} asks for the last {indices} features; the model has {num_blocks} "
                             f"(use 1..{num_blocks}, a list of indices, or None for all)")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        take = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"indices must hold ints, got {i!r} in {list(indices)}")
            idx = num_blocks + i if i < 0 else i
            if not 0 <= idx < num_blocks:
                raise ValueError(f"feature index {i} is out of range for {num_blocks} features "
                                 f"(use 0..{num_blocks - 1}, or -{num_blocks}..-1 from the end)")
            take.append(idx)
        if not take:
            raise ValueError("indices is an empty list; pass None for all features or at least one index")
    return take, max(take)


def check_output_fmt(output_fmt: str) -> None:
    if output_fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_fmt must be 'NCHW' (B, C, H, W maps) or 'NLC' (B, tokens, C), got {output_fmt!r}")


def tokens_to_nchw(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, gh·gw, C) spatial tokens in row-major order -> (B, C, gh, gw) maps (contiguous)."""
    gh, gw = grid
    if tokens.ndim != 3 or tokens.shape[1] != gh * gw:
        raise ValueError(f"expected (B, {gh}*{gw}={gh * gw}, C) spatial tokens for grid {grid}, got {tuple(tokens.shape)}; "
                         "split the prefix (class / register) tokens off first")
    return rearrange(tokens, "b (gh gw) c -> b c gh gw", gh=gh, gw=gw).contiguous()


def split_prefix_maps(maps: Sequence[torch.Tensor], num_prefix: int, grid: tuple[int, int], output_fmt: str = "NCHW",
                      return_prefix_tokens: bool = False) -> list:
    """Block outputs (B, num_prefix + gh·gw, C) -> the spatial part of each, as (B, C, gh, gw) maps ("NCHW") or
    (B, gh·gw, C) tokens ("NLC"); with return_prefix_tokens (and a prefix) each entry is (map, prefix (B, num_prefix, C)),
    as timm's ViTs return them."""
    check_output_fmt(output_fmt)
    spatial = [m[:, num_prefix:] for m in maps]
    if output_fmt == "NCHW":
        spatial = [tokens_to_nchw(m, grid) for m in spatial]
    if return_prefix_tokens and num_prefix:
        return list(zip(spatial, [m[:, :num_prefix] for m in maps]))
    return spatial


def run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, take: Sequence[int], stop_early: bool = False,
               checkpoint: bool = False, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run `blocks` in order on x, keeping the outputs of the blocks whose index is in `take`.

    stop_early: stop after the last taken block (the returned x is then that block's output).
    checkpoint: recompute each block in the backward pass (torch.utils.checkpoint, non-reentrant).
    kwargs go to every block. Returns (x after the last block run, [taken outputs])."""
    wanted, last = set(take), max(take)
    maps = []
    for i, block in enumerate(blocks):
        if checkpoint:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, **kwargs)
        else:
            x = block(x, **kwargs)
        if i in wanted:
            maps.append(x)
        if stop_early and i >= last:
            break
    return x, maps


def prune_blocks(blocks: nn.ModuleList, indices: int | Sequence[int] | None = 1) -> list[int]:
    """Drop the blocks after the last one that `indices` takes (timm's `prune_intermediate_layers`); returns the
    absolute indices, which `forward_intermediates` then takes from the shorter stack."""
    take, last = feature_take_indices(len(blocks), indices)
    del blocks[last + 1:]
    return take


def block_feature_info(depth: int, num_chs: int, reduction: int, module: str = "encoder.blocks") -> list[dict]:
    """feature_info of a plain stack of `depth` blocks of width num_chs on a grid of stride `reduction`."""
    return [{"num_chs": num_chs, "reduction": reduction, "module": f"{module}.{i}"} for i in range(depth)]


def _declares_features(m: nn.Module | None) -> bool:
    if m is None:
        return False
    return callable(getattr(m, "forward_intermediates", None)) and isinstance(getattr(m, "feature_info", None), list)


class FeatureExtractor(nn.Module):
    """A backbone that returns feature maps: forward(x) -> [maps of the out_indices] (timm's features_only).

    The model's own forward_intermediates / feature_info are used; a model without them whose declared
    `image_tower()` has them (CLIP, the captioner) gives its image tower's maps (then `self.model` is the
    tower). `feature_info` lists the taken entries of the feature_info, in order; `channels()` and
    `reduction()` read them. The model keeps all its modules; the blocks after the last taken one are
    skipped (stop_early). Like timm's, it keeps the model's `pretrained_cfg` and `config`, so
    `zoo.resolve_data_config(extractor)` reads images as the weights expect."""

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None, output_fmt: str = "NCHW",
                 norm: bool = False):
        super().__init__()
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
        self.config = getattr(model, "config", None)
        if not _declares_features(model):
            tower = model.image_tower() if callable(getattr(model, "image_tower", None)) else None
            if not _declares_features(tower):
                name = getattr(model, "model_name", type(model).__name__)
                raise TypeError(f"{name} has no forward_intermediates / feature_info (nor an image tower with them), so it "
                                "has no intermediate features; features_only works for the vision models that declare "
                                "them (see zoo/features.py for how to add them)")
            model = tower
        check_output_fmt(output_fmt)
        self.out_indices, _ = feature_take_indices(len(model.feature_info), out_indices)
        self.model = model
        self.output_fmt, self.norm = output_fmt, norm
        self.feature_info = [dict(model.feature_info[i], index=i) for i in self.out_indices]

    def set_grad_checkpointing(self, enable: bool = True) -> int:
        """Recompute the model's blocks in the backward pass (as timm's feature wrappers): the model's own switch."""
        return self.model.set_grad_checkpointing(enable)

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.out_indices, norm=self.norm, stop_early=True,
                                                output_fmt=self.output_fmt, intermediates_only=True)
