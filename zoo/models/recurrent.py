"""Recurrent encoder–decoders with additive attention (Bahdanau, Cho & Bengio 2015): the
pre-Transformer baseline, for comparing against the Transformer on the same seq2seq tasks.

Encoder: embeddings -> bidirectional LSTM/GRU; the annotation of source position j is
h_j = [forward state; backward state] (the `memory`, B x S x 2H). Padding is handled by packing,
so the annotations of real tokens do not depend on how much padding follows (right padding).
Decoder, one step i (input feeding as in the paper):
    c_i = Σ_j α_ij h_j,  α_i = softmax_j(vᵀ tanh(W s_{i-1} + U h_j))     (zoo.core AdditiveAttention)
    s_i = RNN([E y_{i-1}; c_i], s_{i-1}),  s_0 = tanh(W_init h_1^backward)
    logits_i = generator(dropout(tanh(W_o [s_i; c_i; E y_{i-1}])))        (the "deep output" layer)
Same contract as the Transformer encoder–decoder: forward(input_ids, decoder_input_ids,
attention_mask=None, decoder_attention_mask=None) -> (B, T, V), encode, decode(..., cache=) and
zoo.generation's generate: the decoder state lives in the shared KVCache under this model's own
keys, stored batch-first so that beam search's `cache.reorder` selects hypotheses correctly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..core import Dropout, AdditiveAttention, KVCache, check_pad_token
from ..generation import GenerationMixin
from ..core.position import (can_inspect, check_attention_mask, check_batch_sizes, check_decoder_inputs, check_token_ids,
                             require_decoder_input_ids)
from ..contract import DecoderOnly, Inputs, ZooModel, seq2seq_inputs
from ..registry import register_model

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RecurrentSeq2SeqConfig:
    cell: str = "lstm"  # "lstm" (Hochreiter & Schmidhuber 1997) or "gru" (Cho et al. 2014)
    vocab_size: int = 8000  # shared source/target vocabulary (the tokenizer decides it)
    embed_dim: int = 128
    hidden_size: int = 256  # per encoder direction and for the decoder (Bahdanau et al.: 1000)
    num_encoder_layers: int = 1
    num_decoder_layers: int = 1
    attn_dim: int = 256  # size of the additive-attention hidden layer
    dropout: float = 0.1  # on embeddings, between RNN layers and before the generator
    tie_output: bool = True  # generator weight = the embedding table (needs the deep output of embed_dim)
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    decoder_start_token_id: int = 1


class RecurrentSeq2Seq(ZooModel, GenerationMixin, nn.Module):
    kind = "recurrent"
    no_split_modules = ()  # no transformer blocks: an LSTM / GRU encoder and decoder

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        cfg = self.config
        return seq2seq_inputs(batch, length, cfg.vocab_size, cfg.vocab_size, generator)

    def __init__(self, cfg: RecurrentSeq2SeqConfig):
        super().__init__()
        if cfg.cell not in CELLS:
            raise ValueError(f"unknown cell {cfg.cell!r}; choose one of {', '.join(CELLS)}")
        check_pad_token(cfg.pad_token_id, cfg.vocab_size)
        self.config = cfg
        rnn = CELLS[cfg.cell]
        h = cfg.hidden_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_token_id)
        self.drop = Dropout(cfg.dropout)
        self.encoder = rnn(cfg.embed_dim, h, cfg.num_encoder_layers, batch_first=True, bidirectional=True,
                           dropout=cfg.dropout if cfg.num_encoder_layers > 1 else 0.0)
        self.init_state = nn.Linear(h, h)  # s_0 = tanh(W_init h_1^backward)
        self.attention = AdditiveAttention(h, 2 * h, cfg.attn_dim)
        self.decoder = rnn(cfg.embed_dim + 2 * h, h, cfg.num_decoder_layers, batch_first=True,
                           dropout=cfg.dropout if cfg.num_decoder_layers > 1 else 0.0)
        self.deep_output = nn.Linear(h + 2 * h + cfg.embed_dim, cfg.embed_dim)
        self.generator = nn.Linear(cfg.embed_dim, cfg.vocab_size)
        if cfg.tie_output:
            self.generator.weight = self.embed.weight
        self.state_key = (id(self), "state")  # keys into a shared KVCache
        self.keys_key = (id(self), "keys")

    # ------------------------------------------------------------------ encoder
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S) -> annotations (B, S, 2H); zeros at padded positions."""
        check_token_ids(input_ids, self.config.vocab_size, "input_ids")
        check_attention_mask(attention_mask, input_ids)
        x = self.drop(self.embed(input_ids))
        if attention_mask is None:
            return self.encoder(x)[0]
        lengths = self._lengths(attention_mask, input_ids.shape)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.encoder(packed)[0], batch_first=True, total_length=input_ids.shape[1])
        return out

    @staticmethod
    def _lengths(attention_mask: torch.Tensor, shape) -> torch.Tensor:
        if attention_mask.shape != shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(shape)}")
        mask = attention_mask.bool()
        lengths = mask.sum(1)
        if not can_inspect(mask):  # compiling or tracing: the values are not known
            return lengths
        if (lengths == 0).any():
            raise ValueError("a source sequence is all padding; every row needs at least one token")
        if not torch.equal(mask, torch.arange(shape[1], device=mask.device)[None] < lengths[:, None]):
            raise ValueError("recurrent encoders need right padding (1s then 0s in attention_mask); "
                             "set the tokenizer's padding_side='right'")
        return lengths

    # ------------------------------------------------------------------ decoder
    def _initial_state(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, layers, H) hidden and cell states (batch first, so KVCache.reorder applies)."""
        h = self.config.hidden_size
        s0 = torch.tanh(self.init_state(memory[:, 0, h:]))  # backward state at the first position
        s0 = s0[:, None].expand(-1, self.config.num_decoder_layers, -1).contiguous()
        return s0, torch.zeros_like(s0)  # the GRU ignores the cell state

    def decode_features(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None,
                        cache: KVCache | None = None) -> torch.Tensor:
        """Deep-output features (B, T, embed_dim). With a cache, pass only the new token(s): the
        decoder state after the previous tokens is read from and written back to the cache.
        decoder_attention_mask is accepted for the shared contract; an RNN is causal by
        construction and right padding cannot affect earlier positions."""
        require_decoder_input_ids(decoder_input_ids, type(self).__name__, self.config.decoder_start_token_id,
                                  self.config.pad_token_id)
        check_decoder_inputs(decoder_input_ids, memory, self.config.vocab_size, memory_mask,
                             decoder_attention_mask if cache is None else None)
        if cache is not None and self.state_key in cache.store:
            state, keys = cache.store[self.state_key], cache.store[self.keys_key][0]
        else:
            state, keys = self._initial_state(memory), self.attention.keys(memory)
        hidden, cell = state
        emb = self.drop(self.embed(decoder_input_ids))
        lstm = self.config.cell == "lstm"
        outs = []
        for t in range(decoder_input_ids.shape[1]):
            context, _ = self.attention(hidden[:, -1], keys, memory, memory_mask)
            rnn_in = torch.cat([emb[:, t], context], dim=-1)[:, None]
            h0 = hidden.transpose(0, 1).contiguous()
            if lstm:
                out, (h1, c1) = self.decoder(rnn_in, (h0, cell.transpose(0, 1).contiguous()))
                cell = c1.transpose(0, 1)
            else:
                out, h1 = self.decoder(rnn_in, h0)
            hidden = h1.transpose(0, 1)
            outs.append(torch.tanh(self.deep_output(torch.cat([out[:, 0], context, emb[:, t]], dim=-1))))
        if cache is not None:
            cache.store[self.state_key] = (hidden, cell)
            cache.store[self.keys_key] = (keys, keys)  # a (k, v) pair, as KVCache.reorder expects
        return self.drop(torch.stack(outs, dim=1))

    def decode(self, decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None,
               cache: KVCache | None = None) -> torch.Tensor:
        """Target ids (B, T) + annotations -> logits (B, T, vocab)."""
        return self.generator(self.decode_features(decoder_input_ids, memory, memory_mask, decoder_attention_mask, cache))

    def forward_features(self, input_ids, decoder_input_ids=None, attention_mask=None, decoder_attention_mask=None):
        require_decoder_input_ids(decoder_input_ids, type(self).__name__, self.config.decoder_start_token_id,
                                  self.config.pad_token_id)
        if isinstance(input_ids, torch.Tensor) and isinstance(decoder_input_ids, torch.Tensor) and input_ids.dim() == 2:
            check_batch_sizes(input_ids=input_ids.shape[0], decoder_input_ids=decoder_input_ids.shape[0])
        memory = self.encode(input_ids, attention_mask)
        return self.decode_features(decoder_input_ids, memory, attention_mask, decoder_attention_mask)

    def forward(self, input_ids, decoder_input_ids=None, attention_mask=None, decoder_attention_mask=None):
        return self.generator(self.forward_features(input_ids, decoder_input_ids, attention_mask, decoder_attention_mask))


_PAPER = ("Bahdanau, Cho & Bengio 2015, Neural Machine Translation by Jointly Learning to Align and Translate "
          "(arXiv:1409.0473)")


def _register(name: str, description: str, **kw):
    register_model(name, "recurrent", RecurrentSeq2Seq, RecurrentSeq2SeqConfig(**kw), _PAPER, description)


_register("lstm_seq2seq", "Bidirectional-LSTM encoder, LSTM decoder with additive (Bahdanau) attention; embed 128, "
          "hidden 256, 1+1 layers, 8k vocabulary", cell="lstm")
_register("gru_seq2seq", "Bidirectional-GRU encoder, GRU decoder with additive (Bahdanau) attention, as in RNNsearch; "
          "embed 128, hidden 256, 1+1 layers, 8k vocabulary", cell="gru")


# ---------------------------------------------------------------------------- decoder-only LSTM LM
@dataclass
class LSTMLMConfig:
    """An LSTM language model (Merity et al.-style, without AWD's weight dropping): embeddings -> stacked
    LSTM -> linear projection to embed_dim -> output tied to the embeddings."""

    vocab_size: int = 8000
    embed_dim: int = 256
    hidden_size: int = 464  # 2 x 464 with embed 256: the non-embedding parameters of gpt2_tiny (~3.2M)
    num_layers: int = 2
    dropout: float = 0.1  # on embeddings, between LSTM layers and before the output
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int | None = 2


class LSTMLM(DecoderOnly, GenerationMixin, nn.Module):
    """Decoder-only recurrent language model with the decoder-only contract (zoo.contract.DecoderOnly):
    forward(input_ids, attention_mask=None) -> next-token logits (B, L, V), and
    decode(input_ids, cache=None, attention_mask=None), through which zoo.generation's generate runs.

    Padding: an LSTM is causal, so right padding never changes the outputs at real tokens. Left padding
    (generation prompts) is handled by shifting each row so that its first real token comes first,
    running the LSTM and shifting back: a left-padded row gives the logits it gives alone (outputs at
    padded positions are meaningless). The mask must be one block of 1s (left and/or right padding).

    Cache: the LSTM state after the tokens seen so far, stored in the shared zoo.core.KVCache under this
    model's own key as (h, c), each (B, layers, H) batch first so that beam search's `cache.reorder`
    selects hypotheses. With a cache, pass only the new token(s) (generate does): the first call runs the
    prompt (packed, so that each row's state is taken at its last real token) and later calls advance the
    state one token at a time — O(1) per generated token, no recomputation."""

    no_split_modules = ()  # no transformer blocks

    def __init__(self, cfg: LSTMLMConfig):
        super().__init__()
        check_pad_token(cfg.pad_token_id, cfg.vocab_size)
        self.config = cfg
        self.num_features = cfg.embed_dim
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.drop = Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_size, cfg.num_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.proj = nn.Linear(cfg.hidden_size, cfg.embed_dim)  # to the (tied) output embedding's width
        self.lm_head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        # U(-0.1, 0.1) as PyTorch's word_language_model and AWD-LSTM: with GPT's N(0, 0.02) the LSTM's inputs
        # are so small that it stays at the unigram distribution for the pydoc recipe's 200 steps
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.state_key = (id(self), "lstm_state")  # key into a shared KVCache

    @staticmethod
    def _shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Row b of x (B, L, ...) rolled left by shift[b] (out[b, j] = x[b, (j + shift[b]) % L])."""
        length = x.shape[1]
        idx = (torch.arange(length, device=x.device)[None] + shift[:, None]) % length
        return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))

    def decode_features(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Features (B, L, embed_dim) of the new tokens `input_ids`; `attention_mask` may cover cached
        positions too (B, past + L): only its last L columns are read."""
        cfg = self.config
        check_token_ids(input_ids, cfg.vocab_size, "input_ids")
        length = input_ids.shape[1]
        state = cache.store.get(self.state_key) if cache is not None else None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != input_ids.shape[0] or attention_mask.shape[1] < length:
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                                 f"{tuple(input_ids.shape)}; pass the (batch, length) 1/0 mask of these tokens")
            mask = attention_mask[:, -length:].bool()
            if state is not None and not bool(mask.all()):
                raise ValueError("with a cache, the new tokens must all be real (attention_mask 1)")
        else:
            mask = None
        x = self.drop(self.embed(input_ids))
        hx = None if state is None else tuple(s.transpose(0, 1).contiguous() for s in state)
        lead = None
        if mask is not None and state is None:
            lead = (mask.long().cumsum(1) == 0).sum(1)  # leading padding of each row
            x = self._shift(x, lead)
        if cache is not None:
            if mask is not None and state is None:  # prompt: each row's state after its last real token
                lengths = mask.sum(1).clamp(min=1).cpu()
                packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
                out, (h, c) = self.lstm(packed)
                out = pad_packed_sequence(out, batch_first=True, total_length=length)[0]
            else:
                out, (h, c) = self.lstm(x, hx)
            cache.store[self.state_key] = (h.transpose(0, 1), c.transpose(0, 1))
        else:
            out = self.lstm(x)[0]
        if lead is not None:
            out = self._shift(out, -lead)
        return self.proj(self.drop(out))



register_model("lstm_lm", "lstm_lm", LSTMLM, LSTMLMConfig(),
               "Merity, Keskar & Socher 2018, Regularizing and Optimizing LSTM Language Models (arXiv:1708.02182); "
               "Press & Wolf 2017, Using the Output Embedding to Improve Language Models (tied embeddings)",
               "decoder-only LSTM language model, the recurrent baseline of the pydoc causal-LM recipe: embed 256, "
               "2 LSTM layers of 464, projection to 256, output tied to the embeddings (gpt2_tiny's parameter count)")
