"""T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer") and T5 v1.1.

Pre-norm RMSNorm blocks without biases and without 1/sqrt(d) score scaling; no absolute positions,
instead a learned relative position bias (bucketed key - query offsets) computed once per stack
and added to the scores of every self-attention layer of that stack (bidirectional in the
encoder, causal in the decoder; cross-attention has none). One embedding table is shared by
encoder and decoder.
v1.0: ReLU FFN, output layer tied to the embeddings, decoder output scaled by d_model^-0.5.
v1.1: gated tanh-GELU FFN, separate output layer, no rescaling.

Relative positions put no limit on the length; `max_len` (None by default) adds a check.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core import BlockConfig, KVCache, RelativePositionBias, TransformerStack, check_length, padding_mask
from ..generation import GenerationMixin, shift_right  # noqa: F401  (shift_right re-exported for T5 users)
from ..registry import register_model


@dataclass
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64  # per-head size, independent of d_model / num_heads
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None: num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" (v1.0) or "gated-gelu" (v1.1: gated tanh-GELU)
    tie_word_embeddings: bool = True  # lm_head shares the embedding table (v1.0)
    scale_decoder_outputs: bool | None = None  # multiply by d_model^-0.5 before lm_head; None: = tie_word_embeddings
    max_len: int | None = None  # None: no length check (relative positions have no limit)
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0  # the pad id, as in T5


def _ffn_kind(proj: str) -> tuple[str, bool]:
    if proj == "relu":
        return "relu", False
    if proj == "gated-gelu":
        return "gelu_tanh", True  # HF maps gated-gelu to "gelu_new", the tanh approximation
    raise ValueError(f"feed_forward_proj must be 'relu' (v1.0) or 'gated-gelu' (v1.1), got {proj!r}")


class T5(GenerationMixin, nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.config = cfg
        activation, gated = _ffn_kind(cfg.feed_forward_proj)
        block = BlockConfig(
            dim=cfg.d_model, num_heads=cfg.num_heads, mlp_hidden=cfg.d_ff, head_dim=cfg.d_kv, norm_first=True,
            norm="rmsnorm", norm_eps=cfg.layer_norm_epsilon, activation=activation, gated=gated, qkv_bias=False,
            out_bias=False, mlp_bias=False, fused_qkv=False, attn_scale=1.0, dropout=cfg.dropout_rate,
            attn_dropout=cfg.dropout_rate, mlp_dropout=cfg.dropout_rate,
        )
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout_rate)
        self.encoder = TransformerStack(block, cfg.num_layers)
        self.decoder = TransformerStack(block, cfg.num_decoder_layers or cfg.num_layers, cross_attention=True)
        # one bias table per stack, shared by all its layers (HF keeps it in block 0)
        nb, md = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        self.encoder_rel_bias = RelativePositionBias(cfg.num_heads, nb, md, bidirectional=True)
        self.decoder_rel_bias = RelativePositionBias(cfg.num_heads, nb, md, bidirectional=False)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        scale = cfg.tie_word_embeddings if cfg.scale_decoder_outputs is None else cfg.scale_decoder_outputs
        self.output_scale = cfg.d_model ** -0.5 if scale else 1.0
        self.init_weights()
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight

    def init_weights(self):
        """The Mesh-TensorFlow / HF initialisation (initializer_factor 1)."""
        cfg, d = self.config, self.config.d_model
        nn.init.normal_(self.shared.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=1.0)
        for stack in (self.encoder, self.decoder):
            for blk in stack.blocks:
                for attn in filter(None, (blk.attn, blk.cross_attn)):
                    nn.init.normal_(attn.q.weight, std=(d * cfg.d_kv) ** -0.5)
                    nn.init.normal_(attn.k.weight, std=d ** -0.5)
                    nn.init.normal_(attn.v.weight, std=d ** -0.5)
                    nn.init.normal_(attn.proj.weight, std=(cfg.num_heads * cfg.d_kv) ** -0.5)
                for lin in filter(None, (blk.mlp.fc1, blk.mlp.gate)):
                    nn.init.normal_(lin.weight, std=d ** -0.5)
                nn.init.normal_(blk.mlp.fc2.weight, std=cfg.d_ff ** -0.5)
        for bias in (self.encoder_rel_bias, self.decoder_rel_bias):
            nn.init.normal_(bias.embedding.weight, std=d ** -0.5)

    def _check(self, length: int) -> None:
        if self.config.max_len is not None:
            check_length(length, self.config.max_len)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Ids (B, S) -> memory (B, S, d_model), after the final norm (and dropout)."""
        self._check(input_ids.shape[1])
        length = input_ids.shape[1]
        x = self.encoder(self.drop(self.shared(input_ids)), mask=padding_mask(attention_mask),
                         bias=self.encoder_rel_bias(length, length))
        return self.drop(x)

    def decode_features(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None,
                        cache: KVCache | None = None) -> torch.Tensor:
        past = 0 if cache is None else cache.length(self.decoder.blocks[0].attn.layer_id)
        length = decoder_input_ids.shape[1]
        self._check(past + length)
        x = self.decoder(self.drop(self.shared(decoder_input_ids)), mask=padding_mask(decoder_attention_mask),
                         causal=True, bias=self.decoder_rel_bias(length, past + length, offset=past), context=memory,
                         context_mask=padding_mask(memory_mask), cache=cache)
        return self.drop(x)

    def decode(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None,
               cache: KVCache | None = None) -> torch.Tensor:
        """Decoder ids (B, T) + memory -> logits (B, T, vocab). With a cache pass only new tokens."""
        return self.lm_head(self.decode_features(decoder_input_ids, memory, memory_mask, decoder_attention_mask, cache)
                            * self.output_scale)

    def forward_features(self, input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None):
        memory = self.encode(input_ids, attention_mask)
        return self.decode_features(decoder_input_ids, memory, attention_mask, decoder_attention_mask)

    def forward(self, input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None):
        features = self.forward_features(input_ids, decoder_input_ids, attention_mask, decoder_attention_mask)
        return self.lm_head(features * self.output_scale)


_PAPER = "Raffel et al. 2020, Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer (arXiv:1910.10683)"
_V11 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def _register(name: str, description: str, **kw):
    register_model(name, "t5", T5, T5Config(**kw), _PAPER, description)


_register("t5_small", "T5 v1.0 small: d_model 512, 6+6 layers, 8 heads, d_kv 64, FFN 2048 (ReLU), tied head; "
          "60.5M parameters", d_model=512, d_ff=2048, num_layers=6, num_heads=8)
_register("t5_base", "T5 v1.0 base: d_model 768, 12+12 layers, 12 heads, FFN 3072; 222.9M parameters",
          d_model=768, d_ff=3072, num_layers=12, num_heads=12)
_register("t5_large", "T5 v1.0 large: d_model 1024, 24+24 layers, 16 heads, FFN 4096; 737.7M parameters",
          d_model=1024, d_ff=4096, num_layers=24, num_heads=16)
_register("t5_v1_1_small", "T5 v1.1 small: d_model 512, 8+8 layers, 6 heads, d_kv 64, gated-GELU FFN 1024, untied "
          "head; 77.0M parameters", d_model=512, d_ff=1024, num_layers=8, num_heads=6, **_V11)
_register("t5_v1_1_base", "T5 v1.1 base: d_model 768, 12+12 layers, 12 heads, gated-GELU FFN 2048, untied head; "
          "247.6M parameters", d_model=768, d_ff=2048, num_layers=12, num_heads=12, **_V11)
