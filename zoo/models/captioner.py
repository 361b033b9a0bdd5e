"""Image-to-text: a ViT encoder and a causal transformer decoder with cross-attention
(the encoder–decoder captioners of Vinyals et al. 2015 / "Show, Attend and Tell" with
transformers throughout, as in ViT-GPT2-style VisionEncoderDecoder models).

    encode(images)        -> memory (B, tokens, dim): zoo's VisionTransformer (num_classes=0), all tokens
                             after its final norm, projected to the decoder width when they differ
    decode(ids, memory)   -> logits (B, T, vocab): token + learned positions, pre-LN TransformerStack
                             (causal self-attention + cross-attention), final norm, LM head tied to the
                             token embedding
    generate(images)      -> token ids, from zoo.generation (greedy / sampling / beam, KV cache)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core import Dropout, BlockConfig, KVCache, LearnedPositionalEmbedding, TransformerStack, padding_mask, trunc_normal_init
from ..generation import GenerationMixin
from ..core.position import (apply_head, check_batch_sizes, check_decoder_inputs, check_length, check_token_ids, lookup,
                             require_decoder_input_ids)
from ..contract import IMAGE_AXES, Inputs, ZooModel, image_batch, token_batch
from ..registry import register_model
from .vit import ViTConfig, VisionTransformer


@dataclass
class CaptionerConfig:
    # image encoder
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    encoder_mlp_ratio: float = 4.0
    encoder_stem: str = "patch"
    # text decoder
    vocab_size: int = 32000
    max_len: int = 64
    dim: int = 768
    depth: int = 6
    num_heads: int = 12
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    norm_eps: float = 1e-6
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    decoder_start_token_id: int = 1


class ViTCaptioner(ZooModel, GenerationMixin, nn.Module):
    kind = "image_to_text"

    def max_decode_positions(self) -> tuple[int, str] | None:
        return self.config.max_len, "max_len"

    def image_tower(self) -> nn.Module:
        return self.encoder

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        cfg = self.config
        dec, _ = token_batch(batch, min(length, cfg.max_len), cfg.vocab_size, generator)
        return Inputs({"images": image_batch(batch, cfg.in_chans, cfg.img_size, generator), "decoder_input_ids": dec},
                      {"images": IMAGE_AXES, "decoder_input_ids": {0: "batch", 1: "target"}}, {"target": cfg.max_len})

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.config = cfg
        self.encoder = VisionTransformer(ViTConfig(
            img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=0, dim=cfg.encoder_dim,
            depth=cfg.encoder_depth, num_heads=cfg.encoder_heads, mlp_ratio=cfg.encoder_mlp_ratio, stem=cfg.encoder_stem,
            pool="token", fc_norm=False, norm_eps=cfg.norm_eps, activation=cfg.activation, drop_path_rate=cfg.drop_path_rate,
        ))
        self.bridge = nn.Linear(cfg.encoder_dim, cfg.dim) if cfg.encoder_dim != cfg.dim else nn.Identity()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.positional_embedding = LearnedPositionalEmbedding(cfg.max_len, cfg.dim)
        self.drop = Dropout(cfg.dropout)
        block = BlockConfig(dim=cfg.dim, num_heads=cfg.num_heads, mlp_hidden=int(cfg.dim * cfg.mlp_ratio), norm_eps=cfg.norm_eps,
                            activation=cfg.activation, dropout=cfg.dropout)
        self.decoder = TransformerStack(block, cfg.depth, cross_attention=True, drop_path=cfg.drop_path_rate, final_norm=True)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        trunc_normal_init(self.decoder)
        trunc_normal_init(self.bridge)
        nn.init.trunc_normal_(self.token_embedding.weight, std=0.02)
        self.lm_head.weight = self.token_embedding.weight  # tied, as in GPT-2 / BERT decoders

    def no_weight_decay(self) -> set[str]:
        return {"encoder.pos_embed", "encoder.cls_token", "positional_embedding.weight"}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> memory (B, 1 + patches, dim)."""
        return self.bridge(self.encoder.forward_features(images))

    def decode_features(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None,
                        cache: KVCache | None = None, *, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder hidden states (B, T, dim); `embeds`: the ids' rows of the token table when the caller looked
        them up already."""
        require_decoder_input_ids(decoder_input_ids, type(self).__name__, self.config.decoder_start_token_id,
                                  self.config.pad_token_id)
        past = 0 if cache is None else cache.length(self.decoder.blocks[0].attn.layer_id)
        check_decoder_inputs(decoder_input_ids, memory, self.config.vocab_size, memory_mask, decoder_attention_mask, past)
        check_length(past + decoder_input_ids.shape[1], self.config.max_len, "max_len", "decoder_input_ids")
        rows = self.token_embedding(decoder_input_ids) if embeds is None else embeds
        x = self.drop(rows + self.positional_embedding(decoder_input_ids.shape[1], past))
        return self.decoder(x, mask=padding_mask(decoder_attention_mask), causal=True, context=memory,
                            context_mask=padding_mask(memory_mask), cache=cache)

    def decode(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None,
               cache: KVCache | None = None) -> torch.Tensor:
        """Decoder ids (B, T) + memory -> logits (B, T, vocab). With a cache, pass only the new tokens."""
        return self.lm_head(self.decode_features(decoder_input_ids, memory, memory_mask, decoder_attention_mask, cache))

    def _features(self, images, decoder_input_ids, decoder_attention_mask, head=None):
        """Decoder features, and the tied output layer's weight from the lookup when `head` is given (lookup)."""
        require_decoder_input_ids(decoder_input_ids, type(self).__name__, self.config.decoder_start_token_id,
                                  self.config.pad_token_id)
        if isinstance(images, torch.Tensor) and isinstance(decoder_input_ids, torch.Tensor) and images.dim() == 4:
            check_batch_sizes(images=images.shape[0], decoder_input_ids=decoder_input_ids.shape[0])
        rows = head_weight = None
        if head is not None:
            check_token_ids(decoder_input_ids, self.config.vocab_size, "decoder_input_ids")
            rows, head_weight = lookup(self.token_embedding, decoder_input_ids, head)
        memory = self.encode(images)
        return self.decode_features(decoder_input_ids, memory, decoder_attention_mask=decoder_attention_mask,
                                    embeds=rows), head_weight

    def forward_features(self, images, decoder_input_ids=None, decoder_attention_mask=None) -> torch.Tensor:
        return self._features(images, decoder_input_ids, decoder_attention_mask)[0]

    def forward(self, images: torch.Tensor, decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: (B, T, vocab) logits of the next token at every decoder position."""
        x, head_weight = self._features(images, decoder_input_ids, decoder_attention_mask, self.lm_head)
        return apply_head(self.lm_head, x, head_weight)


_PAPER = ("Dosovitskiy et al. 2020 (ViT encoder) + Vaswani et al. 2017 (transformer decoder); image captioning as in "
          "Vinyals et al. 2015, Show and Tell (arXiv:1411.4555)")


def _register(name: str, description: str, **kw):
    register_model(name, "captioner", ViTCaptioner, CaptionerConfig(**kw), _PAPER, description)


_register("vit_captioner_base", "ViT-B/16 encoder (224px) + 6-layer 768-wide decoder with cross-attention, 32k vocabulary")
_register("vit_captioner_mnist", "Captioner for 28x28 grey digits: conv-stem ViT 96x3 (7x7 grid) + 2-layer 96-wide decoder",
          img_size=28, patch_size=4, in_chans=1, encoder_dim=96, encoder_depth=3, encoder_heads=4, encoder_mlp_ratio=2.0,
          encoder_stem="conv", vocab_size=512, max_len=32, dim=96, depth=2, num_heads=4, mlp_ratio=2.0)
