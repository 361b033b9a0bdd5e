"""Llama-style decoder (Touvron et al. 2023, "LLaMA" / "Llama 2"; TinyLlama, Llama 3.2 shapes): pre-norm
RMSNorm blocks, rotary positions (RoPE, half-rotation layout), SwiGLU feed-forward, grouped-query
attention (num_kv_heads key/value heads shared by num_heads query heads), no biases anywhere.

The layout follows transformers' `LlamaForCausalLM` (zoo/interop/hf_llama.py maps the weights):

    embed_tokens -> blocks [RMSNorm -> attention(q, k, v with RoPE; GQA) ; RMSNorm -> fc2(silu(fc1 x) * gate x)]
    -> final RMSNorm -> lm_head (separate by default; tied with tie_word_embeddings)

Long-context RoPE scaling ("linear", "dynamic" NTK, Llama 3.1's "llama3") is declared by `rope_scaling` and
applied by the shared RotaryEmbedding.

RMSNorm normalises in float32 and casts back before the weight, as LlamaRMSNorm does (even for
float64 inputs). RoPE depends only on offsets between positions, so left padding changes nothing but
rounding; positions are the batch's columns (transformers' forward does the same).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..core import BlockConfig, RotaryEmbedding, TransformerStack, check_pad_token
from ..registry import register_model
from ..generation import check_sampling, sampling_field
from .gpt import DecoderLM


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    dim: int = 2048
    depth: int = 22
    num_heads: int = 32
    num_kv_heads: int | None = 4  # None: num_heads (plain multi-head attention)
    head_dim: int | None = None  # None: dim // num_heads
    mlp_hidden: int = 5632  # intermediate_size
    norm_eps: float = 1e-5  # rms_norm_eps
    rope_theta: float = 10000.0
    # RoPE scaling for long contexts, as transformers' rope_parameters declare it: None (plain RoPE) or
    # {"rope_type": "linear", "factor": f}, {"rope_type": "dynamic", "factor": f, "original_max_position_embeddings": n},
    # {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    #  "original_max_position_embeddings": 8192} (Llama 3.1 / 3.2); see zoo.core.position.ROPE_SCALINGS
    rope_scaling: dict | None = None
    max_positions: int = 2048
    tie_word_embeddings: bool = False
    attn_dropout: float = 0.0
    init_std: float = 0.02
    bos_token_id: int = 1
    eos_token_id: int | list[int] | None = 2  # a list: any of the ids ends generation (transformers' list)
    pad_token_id: int = 0
    # generate's defaults for do_sample / temperature / top_k / top_p (zoo.generation.SAMPLING_KEYS) when a call
    # leaves them unset; None: greedy, and sampling keeps every token. Converted models get transformers'.
    sampling: dict | None = sampling_field()


class Llama(DecoderLM):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        check_pad_token(cfg.pad_token_id, cfg.vocab_size)
        check_sampling(cfg.sampling)
        self.config = cfg
        self.num_features = cfg.dim
        head_dim = cfg.head_dim or cfg.dim // cfg.num_heads
        self.wte = nn.Embedding(cfg.vocab_size, cfg.dim)
        block = BlockConfig(dim=cfg.dim, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=head_dim,
                            mlp_hidden=cfg.mlp_hidden, norm_first=True, norm="rmsnorm_fp32", norm_eps=cfg.norm_eps,
                            activation="silu", gated=True, qkv_bias=False, out_bias=False, mlp_bias=False, fused_qkv=False,
                            attn_dropout=cfg.attn_dropout)
        self.blocks = TransformerStack(block, cfg.depth)
        self.rope = RotaryEmbedding(head_dim, base=cfg.rope_theta, max_len=cfg.max_positions, scaling=cfg.rope_scaling)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.init_weights()
        self.tie_weights()

    def init_weights(self) -> None:
        """transformers' Llama init: N(0, 0.02) for every Linear and the embedding, unit norms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.config.init_std)

    def _embed(self, input_ids, positions, rows=None):
        return self.wte(input_ids) if rows is None else rows  # RoPE inside attention carries the positions


_PAPER = ("Touvron et al. 2023, LLaMA: Open and Efficient Foundation Language Models (arXiv:2302.13971); "
          "grouped-query attention: Ainslie et al. 2023 (arXiv:2305.13245); TinyLlama: Zhang et al. 2024 (arXiv:2401.02385)")
register_model("tinyllama_1_1b", "llama", Llama, LlamaConfig(), _PAPER,
               "TinyLlama-1.1B shape: 22 layers, 2048 wide, 32 query / 4 key-value heads, SwiGLU 5632, vocab 32000")
register_model("llama_tiny", "llama", Llama,
               LlamaConfig(vocab_size=8000, dim=256, depth=4, num_heads=8, num_kv_heads=2, mlp_hidden=688,
                           max_positions=512, tie_word_embeddings=True), _PAPER,
               "a small Llama: 4 layers, 256 wide, 8 query / 2 key-value heads, SwiGLU 688, tied embeddings")
