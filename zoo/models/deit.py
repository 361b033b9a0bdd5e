"""DeiT distillation (Touvron et al. 2021) and timm teachers.

`DistilledVisionTransformer` is zoo's `VisionTransformer` plus a learned distillation token,
placed right after the class token, with its own classifier `head_dist`. The class head learns
from the labels and the distillation head from a teacher (see `zoo.tasks.distill`).

    distilled_training on and model.train():  forward -> (class logits, distillation logits)
    otherwise:                                forward -> (class logits + distillation logits) / 2

The flag is off by default so that the model is a drop-in classifier for every other task;
the distillation task switches it on (as timm's `set_distilled_training`).

`TimmClassifier` wraps any timm model as a registered zoo model (family "timm"), so a timm
network (e.g. the ResNet teacher of configs/resnet_mnist_teacher.yaml) trains through the same
tasks and CLI: `model: timm_resnet18` with `model_kwargs: {timm_name: resnet34}` for others.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import nn

from ..core.position import check_images
from ..contract import IMAGE_AXES, Inputs, ZooModel, image_batch
from ..features import check_output_fmt, feature_take_indices
from ..registry import _REGISTRY, register_model
from .vit import ViTConfig, VisionTransformer


@dataclass
class DistilledViTConfig(ViTConfig):
    """The ViT hyper-parameters; the distillation token adds one prefix token and one head."""


class DistilledVisionTransformer(VisionTransformer):
    def __init__(self, cfg: DistilledViTConfig):
        if cfg.reg_tokens:
            raise ValueError(f"the distilled ViT has no register tokens (reg_tokens={cfg.reg_tokens}); use reg_tokens=0")
        if cfg.pooler:
            raise ValueError("the distilled ViT's heads read the tokens directly (pooler=True is for ViT); use pooler=False")
        if cfg.pos_embed != "learn":
            raise ValueError(f"the distilled ViT has learned positions only (pos_embed={cfg.pos_embed!r}); use pos_embed='learn'")
        super().__init__(cfg)
        self.dist_index = self.num_prefix  # right after the class token (or first, without one)
        self.num_prefix += 1
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self._pos_slots() + self.grid[0] * self.grid[1], cfg.dim))
        self.head_dist = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.distilled_training = False
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        if cfg.num_classes > 0:
            nn.init.trunc_normal_(self.head_dist.weight, std=0.02)
            nn.init.zeros_(self.head_dist.bias)

    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"dist_token"}

    def _prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        """[cls, dist] (timm's order)."""
        return super()._prefix_tokens(batch) + [self.dist_token.expand(batch, -1, -1)]

    def head_queries(self) -> int | None:
        """The class branch's tokens and the distillation token (None with mean pooling: every token)."""
        queries = super().head_queries()
        return None if queries is None else max(queries, self.dist_index + 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        # The class branch pools as the base ViT does (class token or mean of the patch tokens);
        # the distillation branch reads the distillation token through the same norm.
        x_cls = super().forward_head(x, pre_logits=True)
        x_dist = self.head_drop(self.fc_norm(x[:, self.dist_index]))
        if pre_logits:
            return (x_cls + x_dist) / 2
        x_cls, x_dist = self.head(x_cls), self.head_dist(x_dist)
        if self.distilled_training and self.training:
            return x_cls, x_dist
        return (x_cls + x_dist) / 2

    def get_classifier(self) -> nn.Module:
        return nn.ModuleList([self.head, self.head_dist])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        self.head_dist = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.zeros_(self.head_dist.weight)
            nn.init.zeros_(self.head_dist.bias)


_PAPER = "Touvron et al. 2021, Training data-efficient image transformers & distillation through attention (arXiv:2012.12877)"


def _register(name: str, description: str, base: str):
    cfg = DistilledViTConfig(**dataclasses.asdict(_REGISTRY[base].config))
    register_model(name, "deit", DistilledVisionTransformer, cfg, _PAPER, description)


_register("vit_tiny_patch16_224_distilled", "DeiT-Ti/16 with a distillation token, 224px", "vit_tiny_patch16_224")
_register("vit_small_patch16_224_distilled", "DeiT-S/16 with a distillation token, 224px", "vit_small_patch16_224")
_register("vit_base_patch16_224_distilled", "DeiT-B/16 with a distillation token, 224px", "vit_base_patch16_224")
_register("vit_mnist_distilled", "vit_mnist with a distillation token (student of configs/vit_mnist_distill.yaml)", "vit_mnist")


# --- timm models as zoo models (teachers) ---------------------------------------------------

@dataclass
class TimmConfig:
    timm_name: str = "resnet18"
    num_classes: int = 1000
    in_chans: int = 3
    img_size: int = 224  # informational (timm CNNs take any size); filled by the data module
    stem_pool: bool = True  # False drops a ResNet's stem max-pool (4x the compute, finer maps for tiny images)
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model


class TimmClassifier(ZooModel, nn.Module):
    """A randomly initialised timm model behind the zoo model contract (weights: `pretrained=` path)."""

    kind = "image_classifier"
    no_split_modules = ()  # a CNN: no transformer blocks

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        cfg = self.config
        return Inputs({"images": image_batch(batch, cfg.in_chans, cfg.img_size, generator)}, {"images": IMAGE_AXES})

    def set_grad_checkpointing(self, enable: bool = True) -> int:
        self.net.set_grad_checkpointing(enable)
        return 1

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict) -> dict:
        """A plain timm state dict (keys without the wrapper's `net.`) fits this wrapper too."""
        if any(k.startswith("net.") for k in state_dict):
            return state_dict
        return {f"net.{k}": v for k, v in state_dict.items()}

    def __init__(self, cfg: TimmConfig):
        super().__init__()
        import timm

        if not timm.is_model(cfg.timm_name):
            raise ValueError(f"timm has no model {cfg.timm_name!r}; see timm.list_models('{cfg.timm_name.split('_')[0]}*')")
        self.config = cfg
        self.net = timm.create_model(cfg.timm_name, pretrained=False, num_classes=cfg.num_classes, in_chans=cfg.in_chans,
                                     **cfg.timm_kwargs)
        if not cfg.stem_pool:
            if not hasattr(self.net, "maxpool"):
                raise ValueError(f"stem_pool=False needs a model with a stem `maxpool` (a ResNet); {cfg.timm_name} has none")
            self.net.maxpool = nn.Identity()
        self.num_classes = cfg.num_classes
        self.num_features = self.net.num_features
        # timm's feature_info with the wrapper's module names; without the stem max-pool every map after the
        # stem is twice as fine
        self.feature_info = [{"num_chs": f["num_chs"], "module": f"net.{f['module']}",
                              "reduction": f["reduction"] // (2 if not cfg.stem_pool and i > 0 else 1)}
                             for i, f in enumerate(getattr(self.net, "feature_info", []))]

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's forward_intermediates of the wrapped model (NCHW maps; "NLC" flattens them row-major)."""
        check_images(x, self.config.in_chans)
        check_output_fmt(output_fmt)
        if not callable(getattr(self.net, "forward_intermediates", None)):
            raise TypeError(f"timm {self.config.timm_name} has no forward_intermediates")
        feature_take_indices(len(self.feature_info), indices)  # our error message for bad indices
        out = self.net.forward_intermediates(x, indices=indices, norm=norm, stop_early=stop_early, output_fmt="NCHW",
                                             intermediates_only=intermediates_only)
        final, maps = (None, out) if intermediates_only else out
        if output_fmt == "NLC":
            maps = [rearrange(m, "b c h w -> b (h w) c") for m in maps]
        return maps if intermediates_only else (final, maps)

    def prune_intermediate_layers(self, indices: int | list[int] | None = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's prune_intermediate_layers of the wrapped model (with prune_head its forward returns the unpooled
        maps, as timm's does); feature_info follows. Returns the indices to pass to forward_intermediates."""
        if not callable(getattr(self.net, "prune_intermediate_layers", None)):
            raise TypeError(f"timm {self.config.timm_name} has no prune_intermediate_layers")
        feature_take_indices(len(self.feature_info), indices)  # our error message for bad indices
        take = list(self.net.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head))
        self.feature_info = self.feature_info[:max(take) + 1]
        if prune_head:
            self.num_classes = self.config.num_classes = 0
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.config.in_chans)
        return self.net.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.net.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.config.in_chans)
        return self.net(x)

    def get_classifier(self) -> nn.Module:
        return self.net.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's reset_classifier of the wrapped model (global_pool None keeps its pooling)."""
        self.net.reset_classifier(num_classes, *(() if global_pool is None else (global_pool,)))
        self.num_classes = self.config.num_classes = num_classes


_register_timm = lambda name, desc, **kw: register_model(  # noqa: E731
    name, "timm", TimmClassifier, TimmConfig(**kw), "He et al. 2016, Deep Residual Learning (arXiv:1512.03385); timm implementation", desc)
_register_timm("timm_resnet18", "timm resnet18 (pick another timm model with timm_name=...)", timm_name="resnet18")
# half width and no stem max-pool: feature maps 14-7-4-2 instead of 7-4-2-1 on 28x28 digits
# (98.7% on MNIST-5k test against 97.0% for the quarter-width, pooled net; results/compress/SUMMARY.md)
_register_timm("timm_resnet18_mnist", "timm resnet18 at half width, no stem max-pool, for 28x28 grey digits "
               "(the MNIST distillation teacher)", timm_name="resnet18", num_classes=10, in_chans=1, img_size=28,
               stem_pool=False, timm_kwargs={"channels": (32, 64, 128, 256), "stem_width": 32})
