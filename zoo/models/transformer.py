"""The vanilla encoder–decoder Transformer (Vaswani et al. 2017, "Attention Is All You Need").

Token embeddings scaled by sqrt(d_model) plus fixed sinusoidal positions, dropout, then post-norm
encoder and decoder stacks from the shared core (ReLU feed-forward), and a linear output layer
that shares its weight with the embeddings. `norm_first`, `final_norm`, `scale_embedding` and
`activation` switch to the variants of torch.nn.Transformer (final encoder/decoder LayerNorms),
pre-norm models and MarianMT-style translation models.

`pos_embed` picks how positions enter: "sinusoidal" (the paper; default), "learned" (an absolute table
added like the sinusoids), "rope" (no additive positions; rotary positions, Su et al. 2021, on the
queries and keys of the encoder's and the decoder's self-attention, not of the cross-attention, so
self-attention scores depend only on offsets between positions), or "none" (no positions at all; the
causal decoder can still infer some). With a KV cache the decoder rotates a new token by its position
in the target (the cache length), as Llama does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..core import (BlockConfig, Dropout, KVCache, LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEmbedding,
                    TransformerStack, padding_mask)
from ..generation import GenerationMixin
from ..core.position import (
    check_attention_mask,
    check_decoder_inputs,
    check_length,
    check_token_ids,
    require_decoder_input_ids,
)
from ..contract import EncoderDecoder, Inputs, seq2seq_inputs
from ..registry import register_model


@dataclass
class TransformerConfig:
    vocab_size: int = 37000  # target vocabulary (and the source one when share_embeddings)
    src_vocab_size: int | None = None  # None: same as vocab_size; only with share_embeddings=False
    d_model: int = 512
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    dim_feedforward: int = 2048
    activation: str = "relu"
    dropout: float = 0.1  # on embeddings+positions and on every residual branch (P_drop)
    attn_dropout: float = 0.0  # the paper has none; torch.nn.Transformer uses `dropout` here
    activation_dropout: float = 0.0  # inside the FFN; torch.nn.Transformer uses `dropout` here
    norm_first: bool = False  # post-norm as in the paper
    final_norm: bool | None = None  # LayerNorm after each stack; None: only for pre-norm (nn.Transformer: always)
    norm_eps: float = 1e-5
    scale_embedding: bool = True  # multiply embeddings by sqrt(d_model)
    sinusoid_layout: str = "interleaved"  # sin/cos on even/odd features; "halves": sin first half, cos second (MarianMT, fairseq)
    pos_embed: str = "sinusoidal"  # one of POS_EMBEDS: "sinusoidal", "learned", "rope" (self-attention only), "none"
    rope_theta: float = 10000.0  # RoPE base, with pos_embed="rope"
    share_embeddings: bool = True  # one table for source, target and the output layer (shared vocabulary)
    tie_output: bool = True  # output layer = target embedding (when the tables are not all shared)
    max_len: int = 1024
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    decoder_start_token_id: int = 1  # the decoder starts from BOS
    # generation rules carried over from converted models (transformers' generation config), applied
    # by `process_next_token_logits`: the last token the length limit allows is forced to this id
    # (Marian: forced_eos_token_id), and these ids are never generated (Marian: bad_words_ids = [[pad]])
    forced_eos_token_id: int | None = None
    suppress_token_ids: tuple[int, ...] = ()


POS_EMBEDS = ("sinusoidal", "learned", "rope", "none")


def constrain_next_token(scores: torch.Tensor, cur_len: int, max_length: int, forced_eos_token_id: int | None = None,
                         suppress_token_ids=()) -> torch.Tensor:
    """transformers' SuppressTokens / single-token bad_words_ids and ForcedEOSTokenLogitsProcessor.

    scores: (N, V) next-token log-probabilities (or logits); cur_len: tokens in each row so far,
    the decoder start token included; max_length: cur_len at which generation stops (1 + max_new_tokens).
    Suppressed ids get -inf; when the next token is the last one allowed (cur_len == max_length - 1)
    every id but `forced_eos_token_id` gets -inf and that one 0, as transformers does."""
    if suppress_token_ids:
        scores = scores.clone()
        scores[:, list(suppress_token_ids)] = float("-inf")
    if forced_eos_token_id is not None and cur_len == max_length - 1:
        scores = torch.full_like(scores, float("-inf"))
        scores[:, forced_eos_token_id] = 0.0
    return scores


class EncoderDecoderTransformer(EncoderDecoder, GenerationMixin, nn.Module):

    def max_decode_positions(self) -> tuple[int, str] | None:
        return self.config.max_len, "max_len"

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        cfg = self.config
        return seq2seq_inputs(batch, length, cfg.src_vocab_size or cfg.vocab_size, cfg.vocab_size, generator, max_len=cfg.max_len)

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        src_vocab = cfg.src_vocab_size or cfg.vocab_size
        if cfg.share_embeddings and src_vocab != cfg.vocab_size:
            raise ValueError(
                f"share_embeddings=True needs one vocabulary, got src_vocab_size={src_vocab} and vocab_size={cfg.vocab_size}; "
                "set share_embeddings=False for separate source and target vocabularies"
            )
        if cfg.pos_embed not in POS_EMBEDS:
            raise ValueError(f"TransformerConfig.pos_embed must be one of {', '.join(map(repr, POS_EMBEDS))}, "
                             f"got {cfg.pos_embed!r}")
        self.config = cfg
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.src_embed = nn.Embedding(src_vocab, cfg.d_model)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.sinusoid_layout not in ("interleaved", "halves"):
            raise ValueError(f"sinusoid_layout must be 'interleaved' or 'halves', got {cfg.sinusoid_layout!r}")
        self.pos: nn.Module | None = None  # additive positions (sinusoidal / learned)
        self.rope: RotaryEmbedding | None = None  # rotary positions, passed to the self-attention of both stacks
        if cfg.pos_embed == "sinusoidal":
            self.pos = SinusoidalPositionalEmbedding(cfg.max_len, cfg.d_model)
            if cfg.sinusoid_layout == "halves":  # the same frequencies, features regrouped
                self.pos.table = rearrange(self.pos.table, "l (d two) -> l (two d)", two=2)
        elif cfg.pos_embed == "learned":
            self.pos = LearnedPositionalEmbedding(cfg.max_len, cfg.d_model)
        elif cfg.pos_embed == "rope":
            head_dim = cfg.d_model // cfg.num_heads
            if cfg.d_model % cfg.num_heads or head_dim % 2:
                raise ValueError(f"pos_embed='rope' needs an even head size d_model / num_heads, got d_model={cfg.d_model}, "
                                 f"num_heads={cfg.num_heads}; change num_heads")
            self.rope = RotaryEmbedding(head_dim, base=cfg.rope_theta, max_len=cfg.max_len)
        self.drop = Dropout(cfg.dropout)
        block = BlockConfig(
            dim=cfg.d_model, num_heads=cfg.num_heads, mlp_hidden=cfg.dim_feedforward, norm_first=cfg.norm_first,
            norm_eps=cfg.norm_eps, activation=cfg.activation, dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
            mlp_dropout=cfg.activation_dropout,
        )
        final_norm = cfg.norm_first if cfg.final_norm is None else cfg.final_norm
        self.encoder = TransformerStack(block, cfg.num_encoder_layers, final_norm=final_norm)
        self.decoder = TransformerStack(block, cfg.num_decoder_layers, cross_attention=True, final_norm=final_norm)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.init_weights()
        if cfg.share_embeddings or cfg.tie_output:
            self.lm_head.weight = self.tgt_embed.weight

    def init_weights(self):
        # Xavier for projections (torch.nn.Transformer, tensor2tensor); embeddings N(0, d^-1/2) so
        # that after the sqrt(d) scaling they have unit variance (fairseq, tensor2tensor).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for emb in (self.src_embed, self.tgt_embed):
            nn.init.normal_(emb.weight, std=self.config.d_model ** -0.5)

    def _embed(self, table: nn.Embedding, ids: torch.Tensor, offset: int = 0, rows: torch.Tensor | None = None) -> torch.Tensor:
        x = (table(ids) if rows is None else rows) * self.embed_scale
        return self.drop(x if self.pos is None else x + self.pos(ids.shape[1], offset))

    def process_next_token_logits(self, scores: torch.Tensor, cur_len: int, max_length: int) -> torch.Tensor:
        """The config's generation rules (forced EOS at the length limit, suppressed ids) applied to the
        (N, V) next-token log-probabilities; see `constrain_next_token`. Generation calls it every step."""
        cfg = self.config
        if cfg.forced_eos_token_id is None and not cfg.suppress_token_ids:
            return scores
        return constrain_next_token(scores, cur_len, max_length, cfg.forced_eos_token_id, cfg.suppress_token_ids)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S) -> memory (B, S, d_model). `embeds`: the ids' rows of the source table when the
        caller looked them up already."""
        cfg = self.config
        check_token_ids(input_ids, cfg.src_vocab_size or cfg.vocab_size, "input_ids")
        check_attention_mask(attention_mask, input_ids)
        check_length(input_ids.shape[1], cfg.max_len, "max_len", "input_ids")
        return self.encoder(self._embed(self.src_embed, input_ids, rows=embeds), mask=padding_mask(attention_mask),
                            rope=self.rope)

    def decode_features(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None,
                        cache: KVCache | None = None, *, embeds: torch.Tensor | None = None) -> torch.Tensor:
        require_decoder_input_ids(decoder_input_ids, type(self).__name__, self.config.decoder_start_token_id,
                                  self.config.pad_token_id)
        past = 0 if cache is None else cache.length(self.decoder.blocks[0].attn.layer_id)
        check_decoder_inputs(decoder_input_ids, memory, self.config.vocab_size, memory_mask, decoder_attention_mask, past)
        check_length(past + decoder_input_ids.shape[1], self.config.max_len, "max_len", "decoder_input_ids")
        x = self._embed(self.tgt_embed, decoder_input_ids, offset=past, rows=embeds)
        return self.decoder(x, mask=padding_mask(decoder_attention_mask), causal=True, context=memory,
                            context_mask=padding_mask(memory_mask), cache=cache, rope=self.rope)

    def decode(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None,
               cache: KVCache | None = None) -> torch.Tensor:
        """Target ids (B, T) + memory -> logits (B, T, vocab). With a cache, pass only the new
        tokens; decoder_attention_mask then covers past and new positions."""
        return self.lm_head(self.decode_features(decoder_input_ids, memory, memory_mask, decoder_attention_mask, cache))

    @property
    def shared_table(self) -> nn.Embedding | None:
        return self.src_embed if self.config.share_embeddings else None


_PAPER = "Vaswani et al. 2017, Attention Is All You Need (arXiv:1706.03762)"


def _register(name: str, description: str, **kw):
    register_model(name, "transformer", EncoderDecoderTransformer, TransformerConfig(**kw), _PAPER, description)


_register("transformer_base",
          "Transformer base: d_model 512, 6+6 post-norm layers, 8 heads, FFN 2048; 37k shared BPE vocabulary "
          "(the paper's WMT14 En-De setting) -> 63.1M parameters (the paper's Table 3 lists 65M)")
_register("transformer_big",
          "Transformer big: d_model 1024, 6+6 post-norm layers, 16 heads, FFN 4096, dropout 0.3 (En-De); 37k shared "
          "BPE vocabulary -> 214.2M parameters (paper: 213M)",
          d_model=1024, num_heads=16, dim_feedforward=4096, dropout=0.3)
_register("transformer_tiny", "A small post-norm encoder-decoder for CPU demos: d_model 128, 3+3 layers, 4 heads, "
          "FFN 512, 8k vocabulary", vocab_size=8000, d_model=128, num_encoder_layers=3, num_decoder_layers=3,
          num_heads=4, dim_feedforward=512, max_len=512)
_register("transformer_numbers", "The encoder-decoder of the number-translation recipe (configs/transformer_numbers.yaml): "
          "d_model 128, 2+2 post-norm layers, 4 heads, FFN 256, dropout 0.1, 1k BPE vocabulary", vocab_size=1000, d_model=128,
          num_encoder_layers=2, num_decoder_layers=2, num_heads=4, dim_feedforward=256, dropout=0.1, max_len=512)
