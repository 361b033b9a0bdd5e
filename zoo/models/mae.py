"""Masked autoencoder (He et al. 2022): a ViT encoder that sees only the visible patches and a light
decoder that reconstructs the pixels of the masked ones.

    tokens  = patch_embed(x) + pos[1:]                      (fixed 2-D sin-cos positions)
    keep    = int(L * (1 - mask_ratio)) patches with the smallest per-sample noise (argsort, ascending)
    latent  = encoder([cls + pos[0]; kept tokens])          (the zoo core's pre-norm stack + final norm)
    y       = decoder_embed(latent); mask tokens fill the removed places; unshuffle; + decoder_pos
    logits  = decoder_pred(decoder(y))[:, 1:]               (B, L, p*p*C): the pixels of every patch
    loss    = sum_l mask_l * mean_k (logits - target)^2 / sum_l mask_l    (removed patches only)

`target` is the patchified image, `(p1 p2 c)` inside a patch (channel fastest, as HF and the MAE code);
with `norm_pix_loss` each patch is normalised first: (t - mean) / sqrt(var + 1e-6), var unbiased.
`mask` is 1 where a patch was removed, 0 where the encoder saw it. Pass `noise` (B, L) to fix the masking
(`transformers.ViTMAEForPreTraining` takes the same argument and gives the same mask for it).

The encoder's parameter names are those of `zoo.models.vit.VisionTransformer` (patch_embed, cls_token,
pos_embed, encoder.blocks, encoder.norm), so `init_from` loads them into the matching plain ViT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from einops import rearrange, repeat
from torch import nn

from ..contract import IMAGE_AXES, Inputs, ZooModel, image_batch
from ..core import BlockConfig, TransformerStack
from ..core.position import check_images
from ..registry import register_model
from .vit import PatchEmbed


@dataclass
class MAEConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6  # the MAE code (timm blocks); transformers' ViTMAEConfig uses 1e-12
    activation: str = "gelu"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False


class MAEOutput(NamedTuple):
    """What `MaskedAutoencoder.forward` returns; the field names are those of HF's ViTMAEForPreTrainingOutput.
    The reconstruction comes first so that exporters and the contract tests see it as the main output."""

    logits: torch.Tensor  # (B, L, p*p*C) predicted pixels of every patch
    loss: torch.Tensor  # scalar: mean squared error over the removed patches
    mask: torch.Tensor  # (B, L) 1 = removed, 0 = seen by the encoder
    ids_restore: torch.Tensor  # (B, L) position of each patch in the shuffled order


def sincos_2d_table(grid: int, dim: int, cls_row: bool = True) -> torch.Tensor:
    """MAE's fixed positions, (1 [+1] + grid*grid, dim). With w_k = 10000^(-k/(dim/4)), k < dim/4, the patch in
    row h, column w gets [sin(w*w_k), cos(w*w_k), sin(h*w_k), cos(h*w_k)] (column first, as the MAE code's
    h/w naming gives); the class-token row is zeros. Computed in float64."""
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos positions need a dim divisible by 4, got {dim}")
    omega = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    coords = torch.arange(grid, dtype=torch.float64)
    rows = repeat(coords, "h -> (h w)", w=grid)[:, None] * omega
    cols = repeat(coords, "w -> (h w)", h=grid)[:, None] * omega
    table = torch.cat([cols.sin(), cols.cos(), rows.sin(), rows.cos()], dim=1)
    if cls_row:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table])
    return table[None].float()


def random_masking(tokens: torch.Tensor, keep: int, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the `keep` tokens of smallest noise, in ascending-noise order. Returns (kept (B, keep, D),
    mask (B, L) with 1 = removed, ids_restore (B, L) = argsort of the shuffle)."""
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(tokens, 1, repeat(ids_shuffle[:, :keep], "b k -> b k d", d=tokens.shape[-1]))
    removed = (torch.arange(noise.shape[1], device=tokens.device) >= keep).to(tokens.dtype)
    mask = torch.gather(removed.expand(noise.shape[0], -1), 1, ids_restore)
    return kept, mask, ids_restore


class MaskedAutoencoder(ZooModel, nn.Module):
    """MAE pre-training model: `forward(images, noise=None) -> MAEOutput(logits, loss, mask, ids_restore)`."""

    kind = "masked_image_model"

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        if not 0.0 <= cfg.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {cfg.mask_ratio}; 0.75 is the paper's value")
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size={cfg.img_size} is not divisible by patch_size={cfg.patch_size}")
        self.config = cfg
        self.grid = cfg.img_size // cfg.patch_size
        self.num_patches = self.grid ** 2
        self.num_features = cfg.dim
        # encoder: the names of zoo's VisionTransformer, so its weights load into one
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, cfg.dim), requires_grad=False)  # fixed sin-cos
        self.encoder = TransformerStack(self._block(cfg.dim, cfg.num_heads, cfg.mlp_ratio), cfg.depth)
        # decoder: its own width, depth, heads and positions
        self.decoder_embed = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, cfg.decoder_dim), requires_grad=False)
        self.decoder = TransformerStack(self._block(cfg.decoder_dim, cfg.decoder_num_heads, cfg.decoder_mlp_ratio),
                                        cfg.decoder_depth)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, cfg.patch_size ** 2 * cfg.in_chans)
        self.init_weights()

    def _block(self, dim: int, heads: int, mlp_ratio: float) -> BlockConfig:
        c = self.config
        return BlockConfig(dim=dim, num_heads=heads, mlp_hidden=int(dim * mlp_ratio), norm_eps=c.norm_eps,
                           activation=c.activation, qkv_bias=c.qkv_bias)

    def init_weights(self) -> None:
        """As the MAE code: fixed sin-cos tables, xavier-uniform Linears (the patch projection too), zero biases,
        N(0, 0.02) class and mask tokens."""
        if self.pos_embed.is_meta:
            return
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d_table(self.grid, self.config.dim))
            self.decoder_pos_embed.copy_(sincos_2d_table(self.grid, self.config.decoder_dim))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "mask_token", "decoder_pos_embed"}

    def adapt_state_dict(self, state_dict: dict, prefix: str = "") -> None:
        """Weights of another image size: the fixed sin-cos tables are this grid's own (they are not learned)."""
        for key in ("pos_embed", "decoder_pos_embed"):
            own, stored = getattr(self, key), state_dict.get(prefix + key)
            if stored is not None and stored.ndim == 3 and stored.shape[::2] == own.shape[::2] and not own.is_meta:
                state_dict[prefix + key] = own.detach().clone()

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        """Images and the per-patch noise (distinct values: argsort has no ties), so the masking is reproducible."""
        c = self.config
        noise = torch.rand(batch, self.num_patches, generator=generator)
        return Inputs({"images": image_batch(batch, c.in_chans, c.img_size, generator), "noise": noise},
                      {"images": IMAGE_AXES, "noise": IMAGE_AXES})

    # -- pieces ------------------------------------------------------------------------------------
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), patches row-major, `(p1 p2 c)` inside a patch."""
        p = self.config.patch_size
        return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=p, p2=p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W), the inverse of `patchify`."""
        p = self.config.patch_size
        return rearrange(patches, "b (gh gw) (p1 p2 c) -> b c (gh p1) (gw p2)", gh=self.grid, p1=p, p2=p)

    def _check(self, images: torch.Tensor, noise: torch.Tensor | None) -> None:
        check_images(images, self.config.in_chans, self.config.patch_size)
        if tuple(images.shape[-2:]) != (self.config.img_size,) * 2:
            raise ValueError(f"MAE positions are fixed for {self.config.img_size}x{self.config.img_size} images, got "
                             f"{tuple(images.shape[-2:])}; resize the images or build the model with img_size=")
        if noise is not None and tuple(noise.shape) != (images.shape[0], self.num_patches):
            raise ValueError(f"noise must have shape (batch, patches) = ({images.shape[0]}, {self.num_patches}), "
                             f"got {tuple(noise.shape)}")

    def encode(self, images: torch.Tensor, noise: torch.Tensor | None = None,
               mask_ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latent (B, 1 + keep, D) after the final norm, mask, ids_restore). `mask_ratio` overrides the
        config's; with ratio 0 and no noise the patches stay in image order (features for probes)."""
        self._check(images, noise)
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        b, n = x.shape[:2]
        if noise is None:
            noise = (torch.arange(n, device=x.device, dtype=x.dtype).expand(b, -1) if ratio == 0
                     else torch.rand(b, n, device=x.device))
        x, mask, ids_restore = random_masking(x, int(n * (1 - ratio)), noise.to(x.device))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        return self.encoder(torch.cat([cls, x], dim=1)), mask, ids_restore

    def forward_features(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's tokens (B, 1 + keep, D) (HF ViTMAEModel's last_hidden_state)."""
        return self.encode(images, noise)[0]

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encoder tokens -> predicted pixels (B, L, p*p*C) of every patch."""
        y = self.decoder_embed(latent)
        b, n = ids_restore.shape
        fill = self.mask_token.expand(b, n + 1 - y.shape[1], -1)
        patches = torch.cat([y[:, 1:], fill], dim=1)
        patches = torch.gather(patches, 1, repeat(ids_restore, "b l -> b l d", d=y.shape[-1]))
        y = torch.cat([y[:, :1], patches], dim=1) + self.decoder_pos_embed
        return self.decoder_pred(self.decoder(y))[:, 1:]

    def reconstruction_loss(self, images: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over removed patches of the per-patch MSE (pixels, or per-patch normalised pixels)."""
        target = self.patchify(images)
        if self.config.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        per_patch = (logits - target).pow(2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MAEOutput:
        latent, mask, ids_restore = self.encode(images, noise)
        logits = self.decode(latent, ids_restore)
        return MAEOutput(logits, self.reconstruction_loss(images, logits, mask), mask, ids_restore)

    def reconstruct(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstructed images with the seen patches pasted back, mask as an image (B, 1, H, W), 1 = removed).
        With norm_pix_loss the prediction is de-normalised with each patch's own mean and std."""
        out = self(images, noise)
        pred, target = out.logits, self.patchify(images)
        if self.config.norm_pix_loss:
            pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
        m = out.mask[..., None]
        pasted = self.unpatchify(pred * m + target * (1 - m))
        mask_img = self.unpatchify(m.expand_as(pred))[:, :1]
        return pasted, mask_img


_PAPER = "He et al. 2022, Masked Autoencoders Are Scalable Vision Learners (arXiv:2111.06377)"


def _register(name: str, description: str, **kw):
    register_model(name, "mae", MaskedAutoencoder, MAEConfig(**kw), _PAPER, description)


_register("mae_vit_base_patch16", "MAE pre-training, ViT-B/16 encoder, 512-wide 8-layer decoder (mae_vit_base_patch16_dec512d8b)")
_register("mae_vit_large_patch16", "MAE pre-training, ViT-L/16 encoder, 512-wide 8-layer decoder",
          dim=1024, depth=24, num_heads=16)
# The encoder is vit_mnist_patch4's (patch 4, width 128, depth 6, 4 heads, MLP x2): its weights load into it.
_register("mae_mnist", "MAE for 28x28 grey digits: vit_mnist_patch4's encoder, 2-layer 96-wide decoder",
          img_size=28, patch_size=4, in_chans=1, dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
          decoder_dim=96, decoder_depth=2, decoder_num_heads=4, decoder_mlp_ratio=2.0)
