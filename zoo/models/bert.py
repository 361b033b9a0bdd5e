"""BERT (Devlin et al. 2019): a post-LN encoder with learned absolute positions and token types.

Sizes: the original base/large and the miniatures of Turc et al. 2019 (tiny ... medium).
The layout follows Hugging Face's `BertModel` / `BertFor*` so that weights map one to one:

    embeddings   word + position + token type, summed, LayerNorm (eps 1e-12), dropout (no sqrt(D) scale)
    encoder      post-LN blocks from the shared core: separate q/k/v with biases, exact GELU, no final norm
    head         chosen by `head`:
      "mlm"    dense -> GELU -> LayerNorm, then a decoder tied to the word embeddings + its own V-sized bias
      "cls"    tanh pooler on the first token -> dropout -> Linear(num_classes)   (BertForSequenceClassification)
      "token"  dropout -> Linear(num_classes) on every token                       (BertForTokenClassification)
      "none"   the last hidden states
The registered default head is "mlm" (the pre-training objective); pick another with
`create_model("bert_base", head="cls", num_classes=2)`.

With the "cls" head, `forward` has the last block compute the first token only (`head_queries()`; it still
attends to every token): the same logits as forward_head(forward_features(...)), for a 2-layer BERT-Tiny about a
third less work. forward_features, capture_attention and hooks on the last block keep every token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core import (Dropout, BlockConfig, LearnedPositionalEmbedding, check_pad_token, TransformerStack, make_activation,
                   make_norm, padding_mask, trunc_normal_init)
from ..core.position import apply_head, check_attention_mask, check_length, check_token_ids, lookup
from ..contract import TEXT_AXES, Inputs, ZooModel, token_batch
from ..registry import register_model

HEADS = ("mlm", "cls", "token", "none")


@dataclass
class BertConfig:
    vocab_size: int = 30522
    pad_token_id: int = 0
    max_positions: int = 512
    type_vocab_size: int = 2
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-12
    activation: str = "gelu"  # exact (erf) GELU, HF hidden_act="gelu"
    dropout: float = 0.1  # hidden_dropout_prob: embeddings, residual branches, classifier
    attn_dropout: float = 0.1  # attention_probs_dropout_prob
    classifier_dropout: float | None = None  # None: use `dropout` (as HF does)
    head: str = "mlm"  # "mlm" | "cls" | "token" | "none"
    num_classes: int = 2  # for head="cls" / "token"; 0 gives pooled ("cls") or per-token features
    init_std: float = 0.02


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_token_id)
        self.position_embeddings = LearnedPositionalEmbedding(cfg.max_positions, cfg.dim)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.dim)
        self.norm = make_norm("layernorm", cfg.dim, cfg.norm_eps)
        self.drop = Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """`rows`: the ids' rows of the word embeddings when the caller looked them up already."""
        pos = self.position_embeddings(input_ids.shape[1])  # raises a clear error past max_positions
        if token_type_ids is None:
            types = self.token_type_embeddings.weight[0]  # HF's default: every token type is 0
        else:
            types = self.token_type_embeddings(token_type_ids)
        # Summed in HF's order (word + type, then position) so float rounding matches too.
        words = self.word_embeddings(input_ids) if rows is None else rows
        return self.drop(self.norm(words + types + pos))


class BertMLMHead(nn.Module):
    """dense -> act -> LayerNorm -> decoder (weight tied to the word embeddings by the model, own bias)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)
        self.act = make_activation(cfg.activation)
        self.norm = make_norm("layernorm", cfg.dim, cfg.norm_eps)
        self.decoder = nn.Linear(cfg.dim, cfg.vocab_size)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """`weight`: the decoder's weight as zoo.core.position.lookup returned it with the embeddings' rows."""
        x = self.norm(self.act(self.dense(x)))
        return apply_head(self.decoder, x, weight)


class BertPooler(nn.Module):
    """tanh(dense(first token)), BERT's sentence representation (trained by NSP in the original)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class Bert(ZooModel, nn.Module):
    kind = "text_encoder"

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        ids, mask = token_batch(batch, min(length, self.config.max_positions), self.config.vocab_size, generator)
        return Inputs({"input_ids": ids, "attention_mask": mask}, {"input_ids": TEXT_AXES, "attention_mask": TEXT_AXES},
                      {"sequence": self.config.max_positions})

    def __init__(self, cfg: BertConfig):
        super().__init__()
        if cfg.head not in HEADS:
            raise ValueError(f"unknown BERT head {cfg.head!r}; choose one of {', '.join(HEADS)}")
        check_pad_token(cfg.pad_token_id, cfg.vocab_size)
        if cfg.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {cfg.num_classes}")
        self.config = cfg
        self.num_classes = cfg.num_classes if cfg.head in ("cls", "token") else 0
        self.num_features = cfg.dim
        self.embeddings = BertEmbeddings(cfg)
        block = BlockConfig(
            dim=cfg.dim, num_heads=cfg.num_heads, mlp_hidden=int(cfg.dim * cfg.mlp_ratio), norm_first=False,
            norm_eps=cfg.norm_eps, activation=cfg.activation, fused_qkv=False,  # HF keeps separate q/k/v
            dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
        )
        self.encoder = TransformerStack(block, cfg.depth, final_norm=False)  # post-LN: the last block ends in a norm
        head_drop = cfg.dropout if cfg.classifier_dropout is None else cfg.classifier_dropout
        if cfg.head == "mlm":
            self.mlm_head = BertMLMHead(cfg)
        elif cfg.head == "cls":
            self.pooler = BertPooler(cfg.dim)
        if cfg.head in ("cls", "token"):
            self.head_drop = Dropout(head_drop)
            self.classifier = self._make_classifier(self.num_classes)
        self.init_weights()

    def _make_classifier(self, n: int) -> nn.Module:
        return nn.Linear(self.config.dim, n) if n > 0 else nn.Identity()

    def init_weights(self) -> None:
        trunc_normal_init(self, std=self.config.init_std)
        nn.init.trunc_normal_(self.embeddings.position_embeddings.weight, std=self.config.init_std)
        with torch.no_grad():  # as nn.Embedding(padding_idx) and HF: the pad row starts at zero
            self.embeddings.word_embeddings.weight[self.config.pad_token_id].zero_()
        if self.config.head == "mlm":
            self.tie_weights()
            nn.init.zeros_(self.mlm_head.decoder.bias)

    def tie_weights(self) -> None:
        """The MLM decoder shares its weight with the word embeddings (same Parameter)."""
        self.mlm_head.decoder.weight = self.embeddings.word_embeddings.weight

    def no_weight_decay(self) -> set[str]:
        return {"embeddings.position_embeddings.weight"}

    def _check_inputs(self, input_ids, attention_mask, token_type_ids) -> None:
        cfg = self.config
        # An out-of-range id is an index error on CPU and a device assert on GPU; name it instead.
        check_token_ids(input_ids, cfg.vocab_size, "input_ids")
        check_length(input_ids.shape[1], cfg.max_positions, "max_positions", "input_ids")
        check_attention_mask(attention_mask, input_ids)
        if token_type_ids is not None:
            if tuple(token_type_ids.shape) != tuple(input_ids.shape):
                raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)} but input_ids has "
                                 f"{tuple(input_ids.shape)}; they must match (pass the tokenizer's token_type_ids)")
            try:
                check_token_ids(token_type_ids, cfg.type_vocab_size, "token_type_ids")
            except ValueError as e:
                raise ValueError(f"token_type_ids must lie in [0, {cfg.type_vocab_size}): segment ids are 0 for the first "
                                 f"text and 1 for the second ({e})") from None

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, L) -> last hidden states (B, L, dim); post-LN, so already normalised."""
        return self._encode(input_ids, attention_mask, token_type_ids)

    def _encode(self, input_ids, attention_mask, token_type_ids, last_queries: int | None = None) -> torch.Tensor:
        self._check_inputs(input_ids, attention_mask, token_type_ids)
        x = self.embeddings(input_ids, token_type_ids)
        return self.encoder(x, mask=padding_mask(attention_mask), last_queries=last_queries)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Hidden states -> the head's output. pre_logits: the pooled ("cls") or per-token features before the Linear."""
        head = self.config.head
        if head == "mlm":
            return x if pre_logits else self.mlm_head(x)
        if head == "none":
            return x
        if head == "cls":
            x = self.pooler(x)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def head_queries(self) -> int | None:
        """The leading tokens forward_head reads: the first token for the "cls" head, else every token (None)."""
        return 1 if self.config.head == "cls" else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """mlm: (B, L, vocab); cls: (B, num_classes); token: (B, L, num_classes); none: (B, L, dim)."""
        if self.config.head != "mlm":  # with the cls head the last block may compute the pooled token only (head_queries)
            return self.forward_head(self._encode(input_ids, attention_mask, token_type_ids, self.head_queries()))
        # The tied MLM decoder trains through one lookup node with the word embeddings (zoo.core.position.lookup).
        self._check_inputs(input_ids, attention_mask, token_type_ids)
        rows, weight = lookup(self.embeddings.word_embeddings, input_ids, self.mlm_head.decoder)
        x = self.encoder(self.embeddings(input_ids, token_type_ids, rows), mask=padding_mask(attention_mask))
        return self.mlm_head(x, weight)

    def get_classifier(self) -> nn.Module:
        if self.config.head not in ("cls", "token"):
            raise ValueError(f"head={self.config.head!r} has no classifier; create the model with head='cls' or 'token'")
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh (zero-initialised) classifier for `num_classes` labels; 0 returns features."""
        self.get_classifier()  # raises for mlm / none
        self.num_classes = num_classes
        self.config.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)
        if num_classes > 0:
            nn.init.zeros_(self.classifier.weight)
            nn.init.zeros_(self.classifier.bias)


_PAPER = ("Devlin et al. 2019, BERT: Pre-training of Deep Bidirectional Transformers (arXiv:1810.04805); "
          "miniatures from Turc et al. 2019, Well-Read Students Learn Better (arXiv:1908.08962)")


def _register(name: str, depth: int, dim: int, description: str):
    cfg = BertConfig(depth=depth, dim=dim, num_heads=dim // 64)  # head dim 64 throughout the ladder
    register_model(name, "bert", Bert, cfg, _PAPER, f"{description}: L={depth}, H={dim}, A={dim // 64}; MLM head by default")


_register("bert_tiny", 2, 128, "BERT-Tiny (Turc et al.)")
_register("bert_mini", 4, 256, "BERT-Mini (Turc et al.)")
_register("bert_small", 4, 512, "BERT-Small (Turc et al.)")
_register("bert_medium", 8, 512, "BERT-Medium (Turc et al.)")
_register("bert_base", 12, 768, "BERT-Base (Devlin et al.)")
_register("bert_large", 24, 1024, "BERT-Large (Devlin et al.)")
