"""GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"): a decoder-only
transformer with learned absolute positions, pre-LN blocks, tanh-GELU, a final LayerNorm and an output
layer tied to the token embeddings.

The layout follows transformers' `GPT2LMHeadModel` so that weights map one to one (see
zoo/interop/hf_gpt2.py; HF's Conv1D weights are stored transposed):

    wte + wpe[positions] -> dropout -> pre-LN blocks (fused q|k|v with biases, GELU-tanh FFN 4D)
    -> ln_f (the stack's final norm) -> lm_head (= wteᵀ, no bias)

Padded batches: positions count from each row's first real token, `attention_mask.cumsum(-1) - 1`
(transformers' `generate` does the same), so a left-padded prompt gives the logits it gives alone;
right padding leaves real tokens at 0..n-1 as without a mask.

`DecoderLM` is the shared skeleton of the decoder-only families (GPT-2 here, Llama in llama.py):
`forward(input_ids, attention_mask=None) -> logits (B, L, V)`, `forward_features`, and
`decode(input_ids, cache=None, attention_mask=None)` through which `generate` runs with a KV cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..contract import DecoderOnly
from ..core import Dropout, BlockConfig, KVCache, LearnedPositionalEmbedding, TransformerStack, check_length, check_pad_token, decoder_padding_mask
from ..core.position import apply_head, check_attention_mask, check_token_ids, lookup
from ..generation import GenerationMixin, check_sampling, sampling_field
from ..registry import register_model


class DecoderLM(DecoderOnly, GenerationMixin, nn.Module):
    """What GPT-2 and Llama share: embeddings -> causal stack (`self.blocks`, final norm included) -> lm_head.

    Subclasses build `self.wte`, `self.blocks`, `self.lm_head` and implement `_embed(ids, positions)`;
    a `rope` sub-module (a RotaryEmbedding), where present, goes to every attention layer."""

    def max_decode_positions(self) -> tuple[int, str] | None:
        return self.config.max_positions, "max_positions"

    def _past(self, cache: KVCache | None) -> int:
        return 0 if cache is None else cache.length(self.blocks.blocks[0].attn.layer_id)

    def _embed(self, input_ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The stack's input; `rows`: the ids' rows of `wte` when the caller looked them up already."""
        raise NotImplementedError

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight

    def decode_features(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                        attention_mask: torch.Tensor | None = None, *, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states after the final norm (B, L, dim) of the new tokens `input_ids`; `attention_mask`
        (B, past + L) covers the cached positions too (1 = token, 0 = padding). `embeds`: the ids' rows of `wte`
        when the caller looked them up already."""
        cfg = self.config
        check_token_ids(input_ids, cfg.vocab_size, "input_ids")
        past, length = self._past(cache), input_ids.shape[1]
        check_length(past + length, cfg.max_positions, "max_positions", "input_ids")
        check_attention_mask(attention_mask, input_ids, length=None if not past else past + length)
        if attention_mask is None:
            positions = torch.arange(past, past + length, device=input_ids.device)[None]
        else:  # each row counts from its first real token (transformers' generate); pads get 0
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        x = self._embed(input_ids, positions, embeds)
        return self.blocks(x, mask=decoder_padding_mask(attention_mask, length), causal=True, rope=getattr(self, "rope", None),
                           cache=cache)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, L) [+ 1/0 mask] -> next-token logits (B, L, vocab). A tied output layer trains through one
        lookup node with the embeddings (zoo.core.position.lookup)."""
        check_token_ids(input_ids, self.config.vocab_size, "input_ids")
        rows, head_weight = lookup(self.wte, input_ids, self.lm_head)
        x = self.decode_features(input_ids, attention_mask=attention_mask, embeds=rows)
        return apply_head(self.lm_head, x, head_weight)


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    max_positions: int = 1024  # n_positions
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_hidden: int | None = None  # n_inner; None: 4 * dim
    activation: str = "gelu_tanh"  # HF "gelu_new"
    norm_eps: float = 1e-5
    dropout: float = 0.1  # embeddings and residual branches (embd_pdrop = resid_pdrop)
    attn_dropout: float = 0.1
    tie_word_embeddings: bool = True
    init_std: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int | list[int] | None = 50256  # a list: any of the ids ends generation (transformers' list)
    pad_token_id: int = 50256  # GPT-2 has no pad token: transformers' generate pads with EOS
    # generate's defaults for do_sample / temperature / top_k / top_p (zoo.generation.SAMPLING_KEYS) when a call
    # leaves them unset; None: greedy, and sampling keeps every token. Converted models get transformers'.
    sampling: dict | None = sampling_field()


class GPT(DecoderLM):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        check_pad_token(cfg.pad_token_id, cfg.vocab_size)
        check_sampling(cfg.sampling)
        self.config = cfg
        self.num_features = cfg.dim
        self.wte = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.wpe = LearnedPositionalEmbedding(cfg.max_positions, cfg.dim)
        self.drop = Dropout(cfg.dropout)
        block = BlockConfig(dim=cfg.dim, num_heads=cfg.num_heads, mlp_hidden=cfg.mlp_hidden or 4 * cfg.dim, norm_first=True,
                            norm_eps=cfg.norm_eps, activation=cfg.activation, fused_qkv=True, dropout=cfg.dropout,
                            attn_dropout=cfg.attn_dropout)
        self.blocks = TransformerStack(block, cfg.depth)  # its final norm is ln_f
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.init_weights()
        self.tie_weights()

    def init_weights(self) -> None:
        """GPT-2's: N(0, 0.02) weights, zero biases, unit LayerNorms; the residual projections (attention
        and FFN outputs) N(0, 0.02 / sqrt(2 * depth))."""
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.wpe.weight, std=std)
        for blk in self.blocks.blocks:
            for lin in (blk.attn.proj, blk.mlp.fc2):
                nn.init.normal_(lin.weight, std=std / math.sqrt(2 * self.config.depth))

    def no_weight_decay(self) -> set[str]:
        return {"wpe.weight"}

    def _embed(self, input_ids, positions, rows=None):
        return self.drop((self.wte(input_ids) if rows is None else rows) + F.embedding(positions, self.wpe.weight))


_PAPER = "Radford et al. 2019, Language Models are Unsupervised Multitask Learners (OpenAI GPT-2)"
register_model("gpt2", "gpt", GPT, GPTConfig(), _PAPER, "GPT-2 small (124M): 12 layers, 768 wide, 12 heads, 1024 positions")
register_model("gpt2_medium", "gpt", GPT, GPTConfig(dim=1024, depth=24, num_heads=16), _PAPER,
               "GPT-2 medium (355M): 24 layers, 1024 wide, 16 heads, 1024 positions")
register_model("gpt2_tiny", "gpt", GPT,
               GPTConfig(vocab_size=8000, max_positions=256, dim=256, depth=4, num_heads=4, dropout=0.1, attn_dropout=0.0,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0), _PAPER,
               "a small GPT-2 for the pydoc recipe (configs/gpt_pydoc.yaml): 4 layers, 256 wide, 4 heads, 256 positions")
