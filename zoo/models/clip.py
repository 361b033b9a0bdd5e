"""CLIP (Radford et al. 2021): an image tower and a text tower trained to agree in a joint space.

Layout follows OpenAI CLIP / open_clip / HF `CLIPModel` so that weights map one to one:

    image tower   zoo's VisionTransformer (num_classes=0): patch embedding without bias, class token,
                  learned positions, ln_pre (pre_norm=True), pre-LN blocks, ln_post on every token,
                  class-token pooling -> visual_projection (Linear, no bias)
    text tower    token + learned position embeddings -> causal pre-LN TransformerStack -> ln_final
                  -> the hidden state at the end-of-text token -> text_projection (Linear, no bias)
    similarity    logits = exp(logit_scale) * normalise(img) @ normalise(txt).T, logit_scale
                  initialised to log(1/0.07) and clamped so that exp(logit_scale) <= 100.

Both projections are stored (out, in) like every zoo Linear; open_clip stores them (in, out).
The end-of-text token is `eos_token_id` when given (HF's newer configs), otherwise the largest id
in each row (OpenAI's tokenizer gives EOT the largest id, and HF/open_clip pool with argmax).

SigLIP (Zhai et al. 2023) is the same family with three switches, laid out like HF `SiglipModel`:

    vision_pool="map"   no class token, no ln_pre, patch projection with bias, ln_post on every token,
                        then an attention-pooling head (`AttentionPoolHead`); the pooled vector is the
                        image embedding (no visual projection, so vision_width == embed_dim)
    text_pool="last"    bidirectional text tower pooled at the last position of the text right-padded to
                        context_length (as SigLIP was trained; shorter inputs are padded inside) -> text_projection
                        with bias
    logit_bias_init     a learnable bias b: logits = exp(logit_scale) * <img, txt> + b
                        (the sigmoid loss, zoo.tasks.losses, starts from t' = log 10, b = -10)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..contract import IMAGE_AXES, TEXT_AXES, Inputs, ZooModel, image_batch, token_batch
from ..core import (
    BlockConfig,
    FeedForward,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    TransformerStack,
    padding_mask,
    trunc_normal_init,
)
from ..core.position import (
    can_inspect,
    check_attention_mask,
    check_length,
    check_token_ids,
)
from ..registry import register_model
from .vit import VisionTransformer, ViTConfig


@dataclass
class CLIPConfig:
    embed_dim: int = 512  # joint space
    # image tower
    img_size: int = 224
    patch_size: int = 32
    in_chans: int = 3
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp_ratio: float = 4.0
    vision_stem: str = "patch"  # "conv": the small conv stem of zoo's ViT (small images, small data)
    # text tower
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp_ratio: float = 4.0
    pad_token_id: int = 0
    eos_token_id: int | None = None  # None: pool at the largest id of each row (OpenAI's EOT = 49407)
    # shared
    activation: str = "quick_gelu"  # the OpenAI weights were trained with QuickGELU; open_clip "ViT-B-32" uses "gelu"
    norm_eps: float = 1e-5
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float | None = 100.0  # None: no clamp (HF SiglipModel)
    # SigLIP switches (see the module docstring); the defaults are CLIP
    vision_pool: str = "token"  # "token": class token + visual_projection; "map": attention-pooling head, no projection
    text_pool: str = "eos"  # "eos": causal, pooled at end-of-text; "last": bidirectional, pooled at the last position
    logit_bias_init: float | None = None  # None: no logit bias (CLIP); SigLIP: -10


class AttentionPoolHead(nn.Module):
    """Multi-head attention pooling (MAP; Lee et al. 2019 Set Transformer, used by SigLIP):

        h = MHA(q = probe, k = v = tokens)      one learned probe token attends over all tokens
        h = h + MLP(LayerNorm(h))               residual from the attention output, not from the probe
        pooled = h[:, 0]

    As HF `SiglipMultiheadAttentionPoolingHead` and timm `AttentionPoolLatent`; the attention is the
    core's MultiHeadAttention in cross mode (separate q / k / v projections).
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, activation: str, norm_eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = MultiHeadAttention(dim, num_heads, cross=True)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = FeedForward(dim, mlp_hidden, activation)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) tokens -> (B, dim)."""
        h = self.attn(self.probe.expand(tokens.shape[0], -1, -1), context=tokens)
        return (h + self.mlp(self.norm(h)))[:, 0]


def check_clip_config(cfg: CLIPConfig) -> None:
    if cfg.vision_pool not in ("token", "map"):
        raise ValueError(f"vision_pool must be 'token' (CLIP) or 'map' (SigLIP's attention pooling), got {cfg.vision_pool!r}")
    if cfg.text_pool not in ("eos", "last"):
        raise ValueError(f"text_pool must be 'eos' (CLIP) or 'last' (SigLIP), got {cfg.text_pool!r}")
    if cfg.vision_pool == "map" and cfg.vision_width != cfg.embed_dim:
        raise ValueError(f"vision_pool='map' uses the pooled vector as the image embedding (no visual projection, as SigLIP): "
                         f"vision_width ({cfg.vision_width}) must equal embed_dim ({cfg.embed_dim})")


class CLIPTextTransformer(nn.Module):
    """Causal text encoder pooled at the end-of-text token."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = LearnedPositionalEmbedding(cfg.context_length, cfg.text_width)
        block = BlockConfig(dim=cfg.text_width, num_heads=cfg.text_heads, mlp_hidden=int(cfg.text_width * cfg.text_mlp_ratio),
                            norm_eps=cfg.norm_eps, activation=cfg.activation)
        self.transformer = TransformerStack(block, cfg.text_layers, final_norm=True)  # .norm is ln_final
        self.causal = cfg.text_pool == "eos"  # SigLIP's text tower ("last") is bidirectional

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        eos = self.config.eos_token_id
        if eos is None:
            return input_ids.argmax(dim=-1)
        hit = input_ids == eos
        if can_inspect(hit) and not hit.any(dim=-1).all():
            bad = (~hit.any(dim=-1)).nonzero().flatten().tolist()
            raise ValueError(
                f"rows {bad} of input_ids hold no end-of-text token (id {eos}); tokenize with the model's tokenizer "
                "(it appends EOS) and truncate to context_length keeping the EOS"
            )
        return hit.int().argmax(dim=-1)  # the first EOS of each row

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids -> (B, L, text_width) after ln_final. Any L up to context_length."""
        cfg = self.config
        check_token_ids(input_ids, cfg.vocab_size, "input_ids")
        check_attention_mask(attention_mask, input_ids)
        check_length(input_ids.shape[1], cfg.context_length, "context_length", "input_ids")
        x = self.token_embedding(input_ids) + self.positional_embedding(input_ids.shape[1])
        # Causality already hides right padding from the EOT token; the padding mask also covers left padding.
        return self.transformer(x, mask=padding_mask(attention_mask), causal=self.causal)

    def pad_to_context(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Ids (and mask) right-padded with pad_token_id (mask 0) to context_length: SigLIP's tower was trained on
        texts padded to its maximum length and reads the last position, so a text padded only to the longest of its
        batch got another embedding in every batch (HF's processor and zero-shot pipeline pad to max_length)."""
        cfg = self.config
        check_length(input_ids.shape[1], cfg.context_length, "context_length", "input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # columns gathered into a (B, context_length) table: no branch on the length and no tensor of the padding's
        # size, so an exported graph keeps its sequence axis dynamic
        pos = torch.arange(cfg.context_length, device=input_ids.device)
        inside, cols = pos < input_ids.shape[1], pos.clamp(max=input_ids.shape[1] - 1)
        return (torch.where(inside, input_ids[:, cols], cfg.pad_token_id),
                torch.where(inside, attention_mask[:, cols], 0))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.causal:  # SigLIP: the last position of the text padded to context_length, whatever the batch
            return self.forward_features(*self.pad_to_context(input_ids, attention_mask))[:, -1]
        x = self.forward_features(input_ids, attention_mask)
        return x[torch.arange(x.shape[0], device=x.device), self.eos_positions(input_ids)]


class CLIP(ZooModel, nn.Module):
    kind = "dual_encoder"

    def image_tower(self) -> nn.Module:
        return self.visual

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        cfg = self.config
        ids, mask = token_batch(batch, min(length, cfg.context_length), cfg.vocab_size, generator)
        if cfg.eos_token_id is not None:  # the text tower pools at the end-of-text token: one per row, at its end
            ids = ids.masked_fill(ids == cfg.eos_token_id, 3 if cfg.eos_token_id != 3 else 4)
            ids[torch.arange(batch), mask.sum(1) - 1] = cfg.eos_token_id
        images = image_batch(batch, cfg.in_chans, cfg.img_size, generator)
        return Inputs({"images": images, "input_ids": ids, "attention_mask": mask},
                      {"images": IMAGE_AXES, "input_ids": TEXT_AXES, "attention_mask": TEXT_AXES}, {"sequence": cfg.context_length})

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        check_clip_config(cfg)
        self.config = cfg
        token = cfg.vision_pool == "token"
        self.visual = VisionTransformer(ViTConfig(
            img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=0, dim=cfg.vision_width,
            depth=cfg.vision_layers, num_heads=cfg.vision_heads, mlp_ratio=cfg.vision_mlp_ratio,
            pool="token" if token else "avg", class_token=token, fc_norm=False, stem=cfg.vision_stem, norm_eps=cfg.norm_eps,
            activation=cfg.activation, pre_norm=token,
        ))
        self.attn_pool = None if token else AttentionPoolHead(
            cfg.vision_width, cfg.vision_heads, int(cfg.vision_width * cfg.vision_mlp_ratio), cfg.activation, cfg.norm_eps)
        self.text = CLIPTextTransformer(cfg)
        self.visual_projection = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False) if token else nn.Identity()
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=cfg.text_pool == "last")
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        self.logit_bias = None if cfg.logit_bias_init is None else nn.Parameter(torch.tensor(float(cfg.logit_bias_init)))
        self.init_weights()

    def init_weights(self):
        # OpenAI's init: embeddings N(0, .02), positions N(0, .01), projections N(0, width^-0.5);
        # the image tower keeps zoo's ViT init.
        trunc_normal_init(self.text)
        nn.init.normal_(self.text.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text.positional_embedding.weight, std=0.01)
        if isinstance(self.visual_projection, nn.Linear):
            nn.init.normal_(self.visual_projection.weight, std=self.config.vision_width ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=self.config.text_width ** -0.5)
        if self.attn_pool is not None:  # timm's AttentionPoolLatent init: probe N(0, dim^-0.5), the rest as the tower
            trunc_normal_init(self.attn_pool)
            nn.init.trunc_normal_(self.attn_pool.probe, std=self.config.vision_width ** -0.5)

    def no_weight_decay(self) -> set[str]:
        return {"logit_scale", "logit_bias", "visual.pos_embed", "visual.cls_token", "text.positional_embedding.weight",
                "attn_pool.probe"}

    # -- towers ---------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, C, H, W) -> (B, embed_dim), unit length unless normalize=False."""
        pooled = self.visual(images) if self.attn_pool is None else self.attn_pool(self.visual.forward_features(images))
        x = self.visual_projection(pooled)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
        """(B, L) ids (with an end-of-text token) -> (B, embed_dim), unit length unless normalize=False."""
        x = self.text_projection(self.text(input_ids, attention_mask))
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped to max_logit_scale (CLIP clips it at 100 to keep training stable; None: no clamp)."""
        if self.config.max_logit_scale is None:
            return self.logit_scale.exp()
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    def bias(self) -> torch.Tensor | float:
        """The logit bias b (SigLIP), 0 without one."""
        return 0.0 if self.logit_bias is None else self.logit_bias

    def forward_features(self, images, input_ids, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states of both towers: image tokens after ln_post, text tokens after ln_final."""
        return self.visual.forward_features(images), self.text.forward_features(input_ids, attention_mask)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """logits_per_image (B_images, B_texts) = exp(logit_scale) * cosine + logit_bias; logits_per_text is its transpose."""
        return self.scale() * self.encode_image(images) @ self.encode_text(input_ids, attention_mask).T + self.bias()

    # -- zero-shot ------------------------------------------------------------------------------
    @torch.no_grad()
    def zero_shot_classifier(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                             num_classes: int | None = None) -> torch.Tensor:
        """Class embeddings (num_classes, embed_dim) from prompts, averaged over templates (prompt ensembling).

        input_ids holds num_templates * num_classes prompts laid out template-major:
        row t * num_classes + c is template t filled with class c.
        """
        feats = self.encode_text(input_ids, attention_mask)
        n = num_classes or feats.shape[0]
        if feats.shape[0] % n:
            raise ValueError(f"{feats.shape[0]} prompts are not a whole number of templates for {n} classes; "
                             "pass num_templates * num_classes prompts, template-major")
        return F.normalize(feats.view(-1, n, feats.shape[-1]).mean(0), dim=-1)

    @torch.no_grad()
    def zero_shot_logits(self, images: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) scaled cosine similarities (+ logit bias); argmax is the zero-shot prediction."""
        return self.scale() * self.encode_image(images) @ classifier.T + self.bias()


def clip_loss(local_image: torch.Tensor, local_text: torch.Tensor, all_image: torch.Tensor, all_text: torch.Tensor,
              scale: torch.Tensor, offset: int = 0, labels: torch.Tensor | None = None,
              all_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a (possibly gathered) batch.

    Each process scores its own B images against all texts and its own B texts against all
    images (open_clip's local loss); image i of this process matches global column offset + i.
    With one process, all_* are the local tensors and offset is 0.

    labels / all_labels (optional, UniCL, Yang et al. 2022): class ids of the pairs; every pair
    with the same label counts as a positive (uniform soft target) instead of only the diagonal,
    so captions of the same class in one batch are no longer pushed apart.
    """
    logits_per_image = scale * local_image @ all_text.T
    logits_per_text = scale * local_text @ all_image.T
    if labels is None:
        targets = torch.arange(local_image.shape[0], device=local_image.device) + offset
    else:
        same = (labels[:, None] == all_labels[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


# Across processes (DDP) every process scores its own images against the texts of ALL processes
# and vice versa: features are gathered with torch.distributed.nn.functional.all_gather, whose
# backward hands each process the summed gradient of its own rows, so after DDP averages the
# gradients they equal those of the single-process loss on the global batch.
def gather_features(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(all processes' rows concatenated, offset of this process's rows); identity without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public differentiable gather
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(x.contiguous())  # needs equal batch sizes on every process (drop_last=True)
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


def gather_labels(labels: torch.Tensor, world_size: int) -> torch.Tensor:
    """Class ids of every process's pairs (no gradient), in rank order; identity for one process."""
    if world_size == 1:
        return labels
    parts = [torch.empty_like(labels) for _ in range(world_size)]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


def distributed_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor,
                          labels: torch.Tensor | None = None) -> torch.Tensor:
    all_image, offset = gather_features(image_features)
    all_text, _ = gather_features(text_features)
    all_labels = None if labels is None else gather_labels(labels, all_image.shape[0] // image_features.shape[0])
    return clip_loss(image_features, text_features, all_image, all_text, scale, offset, labels, all_labels)


_PAPER = "Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision (arXiv:2103.00020)"


def _register(name: str, description: str, **kw):
    register_model(name, "clip", CLIP, CLIPConfig(**kw), _PAPER, description)


_register("clip_vit_b32", "OpenAI CLIP ViT-B/32: 224px, patch 32, vision 768x12, text 512x12 (8 heads), joint 512, QuickGELU")
_register("clip_vit_b16", "OpenAI CLIP ViT-B/16: 224px, patch 16, vision 768x12, text 512x12 (8 heads), joint 512, QuickGELU",
          patch_size=16)
_register("clip_tiny", "A tiny CLIP for tests: 32px RGB, patch 8, vision 64x2, text 64x2, joint 32",
          embed_dim=32, img_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=2, text_width=64,
          text_layers=2, text_heads=2, vocab_size=1000, context_length=32)
_register("clip_mnist", "CLIP for 28x28 grey digits + short captions: conv-stem ViT 96x3 on a 7x7 grid, text 96x2, joint 96",
          embed_dim=96, img_size=28, patch_size=4, in_chans=1, vision_width=96, vision_layers=3, vision_heads=4,
          vision_mlp_ratio=2.0, vision_stem="conv", text_width=96, text_layers=2, text_heads=4, text_mlp_ratio=2.0,
          vocab_size=512, context_length=24, activation="gelu")

_SIGLIP_PAPER = "Zhai et al. 2023, Sigmoid Loss for Language Image Pre-Training (arXiv:2303.15343)"
_SIGLIP = {"vision_pool": "map", "text_pool": "last", "logit_scale_init": math.log(10), "logit_bias_init": -10.0}


def _register_siglip(name: str, description: str, **kw):
    register_model(name, "clip", CLIP, CLIPConfig(**_SIGLIP, **kw), _SIGLIP_PAPER, description)


_register_siglip("siglip_base_patch16_224", "SigLIP B/16 (HF google/siglip-base-patch16-224 layout): 224px, vision 768x12 "
                 "with attention pooling, bidirectional text 768x12 (vocab 32000, 64 positions), joint 768, tanh GELU",
                 embed_dim=768, patch_size=16, text_width=768, text_heads=12, vocab_size=32000, context_length=64,
                 pad_token_id=1, activation="gelu_tanh", norm_eps=1e-6)
_register_siglip("siglip_mnist", "clip_mnist with SigLIP's towers: attention-pooling image head, bidirectional text pooled "
                 "at the last position, logit bias; train with loss: siglip",
                 embed_dim=96, img_size=28, patch_size=4, in_chans=1, vision_width=96, vision_layers=3, vision_heads=4,
                 vision_mlp_ratio=2.0, vision_stem="conv", text_width=96, text_layers=2, text_heads=4, text_mlp_ratio=2.0,
                 vocab_size=512, context_length=24, activation="gelu")
