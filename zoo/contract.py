"""What a model declares about itself, so that code outside the families never guesses.

Every registered model class says
    kind            what it consumes and produces (one of KINDS)
    example_inputs  random inputs of the right kind for a batch and size: an `Inputs`, whose tensors
                    are in the order `forward` takes them and whose axes are named (dynamic axes)
    no_split_modules  the block classes that FSDP wraps and checkpointing runs one at a time
                    (timm's / transformers' `_no_split_modules`)
    set_grad_checkpointing(enable)

Export, bench, compress, viz, serve and the contract tests read these and nothing else: a new
family is one file that fills them in (see `zoo/models/vit.py` for the shortest example).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

# kind -> what forward takes (in order) and returns
KINDS = {
    "image_classifier": "images (B, C, H, W) -> logits (B, classes)",
    "text_encoder": "input_ids, attention_mask (B, L) -> logits (B, classes) or (B, L, V)",
    "encoder_decoder": "input_ids, decoder_input_ids, attention_mask -> logits (B, T, V); generate()",
    "recurrent": "input_ids, decoder_input_ids, attention_mask -> logits (B, T, V); generate() (RNN encoder-decoder)",
    "decoder_only": "input_ids, attention_mask (B, L) -> next-token logits (B, L, V); generate()",
    "dual_encoder": "images, input_ids, attention_mask -> image-text logits (B, B); encode_image / encode_text",
    "image_to_text": "images, decoder_input_ids -> logits (B, T, V); generate(images)",
    "masked_image_model": "images (B, C, H, W), noise (B, patches) -> (reconstruction logits (B, patches, p*p*C), loss, "
                          "mask, ids_restore); self-supervised pre-training (MAE)",
}
GENERATIVE = ("encoder_decoder", "recurrent", "decoder_only", "image_to_text")


@dataclass
class Inputs:
    """Example inputs of a model: `tensors` in forward's order; `dynamic` names the axes that may vary;
    `max_sizes` bounds a named axis where the model has a limit (a learned position table's length)."""

    tensors: dict[str, torch.Tensor]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    max_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tensors)

    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.tensors.values())

    def to(self, device) -> "Inputs":
        return Inputs({k: v.to(device) for k, v in self.tensors.items()}, self.dynamic, self.max_sizes)


def kind_of(model: nn.Module) -> str:
    kind = getattr(model, "kind", None)
    if kind not in KINDS:
        raise TypeError(f"{type(model).__name__} declares no model kind (class attribute `kind`, one of {', '.join(KINDS)}); "
                        "zoo commands work on models that declare their inputs (zoo/contract.py)")
    return kind


def example_inputs(model: nn.Module, batch: int = 2, length: int = 16, seed: int = 0) -> Inputs:
    """The model's own example inputs (see `kind_of` for models that declare none)."""
    kind_of(model)
    return model.example_inputs(batch=batch, length=length, generator=torch.Generator().manual_seed(seed))


# -- helpers the families use to build their example inputs ----------------------------------------

def image_batch(batch: int, in_chans: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randn(batch, in_chans, size, size, generator=generator)


def token_batch(batch: int, length: int, vocab_size: int, generator: torch.Generator | None = None,
                low: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids in [low, vocab) (no pad / bos / eos) and an attention mask whose first row is padded at the
    end, so that exports and comparisons check that masks are honoured."""
    ids = torch.randint(min(low, vocab_size - 1), vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    if length > 1:
        mask[0, length - max(1, length // 4):] = 0
    return ids, mask


IMAGE_AXES = {0: "batch"}
TEXT_AXES = {0: "batch", 1: "sequence"}


class ZooModel:
    """Mixin of every zoo model class: the declaration's defaults. A family sets `kind` and writes
    `example_inputs`; `no_split_modules` defaults to the core's TransformerBlock."""

    kind: str = ""
    no_split_modules: tuple[type, ...] = ()  # filled below (the core's block) to avoid an import cycle

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        raise NotImplementedError(f"{type(self).__name__} must declare example_inputs(batch, length, generator)")

    def image_tower(self) -> nn.Module | None:
        """The vision transformer that reads the images (viz shows its attention); None for text-only models."""
        return None

    def set_grad_checkpointing(self, enable: bool = True) -> int:
        """Recompute every block's activations in the backward pass (less memory, ~30% more compute).
        Returns the number of stacks switched."""
        from .core.blocks import set_grad_checkpointing

        return set_grad_checkpointing(self, enable)

    def save_pretrained(self, directory, tokenizer=None, **kwargs):
        """A Hub-style directory (config.json, model.safetensors, tokenizer, README.md); see zoo.hub."""
        from .hub import save_pretrained

        return save_pretrained(self, directory, tokenizer=tokenizer, **kwargs)

    def push_to_hub(self, repo_id: str, tokenizer=None, **kwargs):
        """save_pretrained, then huggingface_hub's create_repo + upload_folder; see zoo.hub.push_to_hub."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, tokenizer=tokenizer, **kwargs)


def _default_blocks() -> None:
    from .core.blocks import TransformerBlock

    ZooModel.no_split_modules = (TransformerBlock,)


_default_blocks()


def seq2seq_inputs(batch: int, length: int, src_vocab: int, tgt_vocab: int, generator: torch.Generator | None = None,
                   max_len: int | None = None) -> Inputs:
    """Source ids, decoder ids (half the source length) and the source mask of an encoder–decoder; max_len: the
    longest source and target the model takes (its position tables), None: no limit."""
    if max_len is not None:
        length = min(length, max_len)
    ids, mask = token_batch(batch, length, src_vocab, generator)
    dec, _ = token_batch(batch, max(2, length // 2), tgt_vocab, generator)
    return Inputs({"input_ids": ids, "decoder_input_ids": dec, "attention_mask": mask},
                  {"input_ids": {0: "batch", 1: "source"}, "decoder_input_ids": {0: "batch", 1: "target"},
                   "attention_mask": {0: "batch", 1: "source"}},
                  {} if max_len is None else {"source": max_len, "target": max_len})


class DecoderOnly(ZooModel):
    """The decoder-only contract, written once: a family provides `decode_features(input_ids, cache=None,
    attention_mask=None)` (hidden states of the new tokens) and `lm_head`; decode / forward follow."""

    kind = "decoder_only"

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        limit = getattr(self.config, "max_positions", None)
        ids, mask = token_batch(batch, min(length, limit) if limit else length, self.config.vocab_size, generator)
        return Inputs({"input_ids": ids, "attention_mask": mask}, {"input_ids": TEXT_AXES, "attention_mask": TEXT_AXES},
                      {"sequence": limit} if limit else {})

    def decode(self, input_ids: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, L, vocab); with a cache pass only the new tokens (generate does)."""
        return self.lm_head(self.decode_features(input_ids, cache, attention_mask))

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode_features(input_ids, attention_mask=attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, L) [+ 1/0 mask] -> next-token logits (B, L, vocab)."""
        return self.lm_head(self.forward_features(input_ids, attention_mask))


class EncoderDecoder(ZooModel):
    """The encoder-decoder contract, written once: a family provides `encode(input_ids, attention_mask, *, embeds)`,
    `decode_features(decoder_input_ids, memory, memory_mask, decoder_attention_mask, *, embeds)`, `lm_head`,
    `shared_table` (the nn.Embedding both stacks look their ids up in, or None) and `output_scale` (the factor on
    the decoder's output before lm_head); forward_features / forward follow. With a shared table, a training
    forward looks both stacks' ids up in one call (zoo.core.position.embed_both), and a tied lm_head trains through
    the same node."""

    kind = "encoder_decoder"
    shared_table: nn.Embedding | None = None
    output_scale: float = 1.0

    def _features(self, input_ids, decoder_input_ids, attention_mask, decoder_attention_mask, head=None):
        """Decoder features, and the tied output layer's weight from the lookup when `head` is given (embed_both)."""
        from .core.position import check_batch_sizes, embed_both, require_decoder_input_ids

        require_decoder_input_ids(decoder_input_ids, type(self).__name__, self.config.decoder_start_token_id,
                                  self.config.pad_token_id)
        if isinstance(input_ids, torch.Tensor) and isinstance(decoder_input_ids, torch.Tensor) and input_ids.dim() == 2:
            check_batch_sizes(input_ids=input_ids.shape[0], decoder_input_ids=decoder_input_ids.shape[0])
        src = tgt = head_weight = None
        if self.shared_table is not None:
            src, tgt, head_weight = embed_both(self.shared_table, input_ids, decoder_input_ids, head)
        memory = self.encode(input_ids, attention_mask, embeds=src)
        return self.decode_features(decoder_input_ids, memory, attention_mask, decoder_attention_mask,
                                    embeds=tgt), head_weight

    def forward_features(self, input_ids, decoder_input_ids=None, attention_mask=None, decoder_attention_mask=None):
        return self._features(input_ids, decoder_input_ids, attention_mask, decoder_attention_mask)[0]

    def forward(self, input_ids, decoder_input_ids=None, attention_mask=None, decoder_attention_mask=None):
        """Teacher forcing: source ids (B, S) + decoder ids (B, T) -> (B, T, vocab) logits."""
        features, head_weight = self._features(input_ids, decoder_input_ids, attention_mask, decoder_attention_mask,
                                               self.lm_head)
        from .core.position import apply_head

        x = features * self.output_scale if self.output_scale != 1.0 else features
        return apply_head(self.lm_head, x, head_weight)
