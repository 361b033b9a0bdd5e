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

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..core import Dropout, BlockConfig, KVCache, RelativePositionBias, TransformerStack, check_length, padding_mask
from ..generation import GenerationMixin, shift_right  # noqa: F401  (shift_right re-exported for T5 users)
from ..core.position import check_attention_mask, check_decoder_inputs, check_token_ids, require_decoder_input_ids
from ..contract import TEXT_AXES, EncoderDecoder, Inputs, seq2seq_inputs
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
    encoder_only: bool = False  # HF T5EncoderModel: no decoder / lm_head; built by the T5Encoder class


def _ffn_kind(proj: str) -> tuple[str, bool]:
    if proj == "relu":
        return "relu", False
    if proj == "gated-gelu":
        return "gelu_tanh", True  # HF maps gated-gelu to "gelu_new", the tanh approximation
    raise ValueError(f"feed_forward_proj must be 'relu' (v1.0) or 'gated-gelu' (v1.1), got {proj!r}")


class T5(EncoderDecoder, GenerationMixin, nn.Module):

    def max_decode_positions(self) -> tuple[int, str] | None:
        return None if self.config.max_len is None else (self.config.max_len, "max_len")

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        cfg = self.config
        return seq2seq_inputs(batch, length, cfg.vocab_size, cfg.vocab_size, generator, max_len=cfg.max_len)

    def __init__(self, cfg: T5Config):
        super().__init__()
        if cfg.encoder_only and not isinstance(self, T5Encoder):
            raise ValueError("encoder_only=True describes T5's encoder alone: build it with zoo.models.t5.T5Encoder(cfg) "
                             "(what zoo.from_hf returns for a T5EncoderModel)")
        self.config = cfg
        activation, gated = _ffn_kind(cfg.feed_forward_proj)
        block = BlockConfig(
            dim=cfg.d_model, num_heads=cfg.num_heads, mlp_hidden=cfg.d_ff, head_dim=cfg.d_kv, norm_first=True,
            norm="rmsnorm", norm_eps=cfg.layer_norm_epsilon, activation=activation, gated=gated, qkv_bias=False,
            out_bias=False, mlp_bias=False, fused_qkv=False, attn_scale=1.0, dropout=cfg.dropout_rate,
            attn_dropout=cfg.dropout_rate, mlp_dropout=cfg.dropout_rate,
        )
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = Dropout(cfg.dropout_rate)
        self.encoder = TransformerStack(block, cfg.num_layers)
        # one bias table per stack, shared by all its layers (HF keeps it in block 0)
        nb, md = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        self.encoder_rel_bias = RelativePositionBias(cfg.num_heads, nb, md, bidirectional=True)
        if cfg.encoder_only:
            self.decoder = self.decoder_rel_bias = self.lm_head = None
        else:
            self.decoder = TransformerStack(block, cfg.num_decoder_layers or cfg.num_layers, cross_attention=True)
            self.decoder_rel_bias = RelativePositionBias(cfg.num_heads, nb, md, bidirectional=False)
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        scale = cfg.tie_word_embeddings if cfg.scale_decoder_outputs is None else cfg.scale_decoder_outputs
        self.output_scale = cfg.d_model ** -0.5 if scale else 1.0
        self.init_weights()
        if cfg.tie_word_embeddings and self.lm_head is not None:
            self.lm_head.weight = self.shared.weight

    @property
    def encoder_only(self) -> bool:
        """True for T5's encoder alone (T5Encoder, from HF's T5EncoderModel)."""
        return self.config.encoder_only

    def init_weights(self):
        """The Mesh-TensorFlow / HF initialisation (initializer_factor 1)."""
        cfg, d = self.config, self.config.d_model
        nn.init.normal_(self.shared.weight, std=1.0)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=1.0)
        for stack in filter(None, (self.encoder, self.decoder)):
            for blk in stack.blocks:
                for attn in filter(None, (blk.attn, blk.cross_attn)):
                    nn.init.normal_(attn.q.weight, std=(d * cfg.d_kv) ** -0.5)
                    nn.init.normal_(attn.k.weight, std=d ** -0.5)
                    nn.init.normal_(attn.v.weight, std=d ** -0.5)
                    nn.init.normal_(attn.proj.weight, std=(cfg.num_heads * cfg.d_kv) ** -0.5)
                for lin in filter(None, (blk.mlp.fc1, blk.mlp.gate)):
                    nn.init.normal_(lin.weight, std=d ** -0.5)
                nn.init.normal_(blk.mlp.fc2.weight, std=cfg.d_ff ** -0.5)
        for bias in filter(None, (self.encoder_rel_bias, self.decoder_rel_bias)):
            nn.init.normal_(bias.embedding.weight, std=d ** -0.5)

    def _check(self, length: int, name: str = "sequence") -> None:
        if self.config.max_len is not None:
            check_length(length, self.config.max_len, "max_len", name)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Ids (B, S) -> memory (B, S, d_model), after the final norm (and dropout). `embeds`: the ids' rows of
        the embedding table when the caller looked them up already."""
        check_token_ids(input_ids, self.config.vocab_size, "input_ids")
        check_attention_mask(attention_mask, input_ids)
        self._check(input_ids.shape[1], "input_ids")
        length = input_ids.shape[1]
        x = self.encoder(self.drop(self.shared(input_ids) if embeds is None else embeds), mask=padding_mask(attention_mask),
                         bias=self.encoder_rel_bias(length, length))
        return self.drop(x)

    def decode_features(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None,
                        cache: KVCache | None = None, *, embeds: torch.Tensor | None = None) -> torch.Tensor:
        if self.decoder is None:
            raise TypeError("this T5 is encoder-only (T5Encoder, from a T5EncoderModel): it has no decoder; use "
                            "model(input_ids, attention_mask) or model.encode(...) for the hidden states")
        require_decoder_input_ids(decoder_input_ids, type(self).__name__, self.config.decoder_start_token_id,
                                  self.config.pad_token_id)
        past = 0 if cache is None else cache.length(self.decoder.blocks[0].attn.layer_id)
        check_decoder_inputs(decoder_input_ids, memory, self.config.vocab_size, memory_mask, decoder_attention_mask, past)
        length = decoder_input_ids.shape[1]
        self._check(past + length, "decoder_input_ids")
        x = self.decoder(self.drop(self.shared(decoder_input_ids) if embeds is None else embeds),
                         mask=padding_mask(decoder_attention_mask),
                         causal=True, bias=self.decoder_rel_bias(length, past + length, offset=past), context=memory,
                         context_mask=padding_mask(memory_mask), cache=cache)
        return self.drop(x)

    def decode(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None,
               cache: KVCache | None = None) -> torch.Tensor:
        """Decoder ids (B, T) + memory -> logits (B, T, vocab). With a cache pass only new tokens."""
        return self.lm_head(self.decode_features(decoder_input_ids, memory, memory_mask, decoder_attention_mask, cache)
                            * self.output_scale)

    @property
    def shared_table(self) -> nn.Embedding:
        return self.shared


class T5Encoder(T5):
    """T5's encoder alone, as HF's T5EncoderModel: ids (B, S) -> final hidden states (B, S, d_model)
    (shared embedding, encoder stack, final RMSNorm, dropout); no decoder and no LM head."""

    kind = "text_encoder"

    def __init__(self, cfg: T5Config):
        super().__init__(dataclasses.replace(cfg, encoder_only=True))

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        cfg = self.config
        ex = seq2seq_inputs(batch, length, cfg.vocab_size, cfg.vocab_size, generator, max_len=cfg.max_len)
        return Inputs({k: ex.tensors[k] for k in ("input_ids", "attention_mask")},
                      {"input_ids": TEXT_AXES, "attention_mask": TEXT_AXES}, {"sequence": cfg.max_len} if cfg.max_len else {})

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(input_ids, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden states, equal to T5EncoderModel(...).last_hidden_state."""
        return self.encode(input_ids, attention_mask)


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
_register("t5_tiny", "A small T5 v1.0 for tests and the embedded data (the shape of configs/t5_numbers.yaml): d_model 128, "
          "2+2 layers, 4 heads, d_kv 32, FFN 256, 8k vocabulary", vocab_size=8000, d_model=128, d_kv=32, d_ff=256,
          num_layers=2, num_heads=4)
