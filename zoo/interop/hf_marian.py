"""HF MarianMTModel -> zoo.models.transformer.EncoderDecoderTransformer.

Marian is the post-LN encoder-decoder of the 2017 paper with embeddings scaled by sqrt(d),
sinusoidal positions in the "halves" layout (sin first half, cos second) starting at 0, no
final stack norms, an output layer tied to the shared embeddings, and (for OPUS-MT) SiLU.

transformers' generation rules for Marian travel in the zoo config: `forced_eos_token_id` (the
last token the length limit allows is EOS) and the single-token `bad_words_ids` / `suppress_tokens`
(OPUS-MT: the pad id is never generated) become `forced_eos_token_id` / `suppress_token_ids`,
which `EncoderDecoderTransformer.process_next_token_logits` applies at every generation step.
"""
from __future__ import annotations

import torch

from ..models.transformer import EncoderDecoderTransformer, TransformerConfig
from ._common import load_into, strip_prefix, zoo_activation

_ATTN = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "proj"}


def generation_rules(hf, generation_config=None) -> dict:
    """forced_eos_token_id and suppress_token_ids from transformers' generation config (else the model config)."""
    def get(name):
        for source in (generation_config, hf):
            value = getattr(source, name, None) if source is not None else None
            if value is not None:
                return value
        return None

    forced = get("forced_eos_token_id")
    if isinstance(forced, (list, tuple)):
        if len(set(forced)) != 1:
            raise ValueError(f"forced_eos_token_id={list(forced)} lists several ids; zoo forces one end-of-sequence id")
        forced = forced[0]
    suppress = set(get("suppress_tokens") or ())
    for words in get("bad_words_ids") or ():
        if len(words) != 1:
            raise ValueError(f"bad_words_ids holds the multi-token sequence {list(words)}; zoo suppresses single tokens "
                             "only (suppress_token_ids)")
        suppress.add(int(words[0]))
    return {"forced_eos_token_id": None if forced is None else int(forced), "suppress_token_ids": tuple(sorted(suppress))}


def zoo_config(hf, tied: bool, shared: bool, src_vocab: int, generation_config=None) -> TransformerConfig:
    if hf.encoder_attention_heads != hf.decoder_attention_heads or hf.encoder_ffn_dim != hf.decoder_ffn_dim:
        raise ValueError("zoo's transformer uses one head count and FFN size for both stacks; this Marian config differs")
    if getattr(hf, "normalize_before", False):
        raise ValueError("pre-LN Marian (normalize_before=True) is not supported")
    dec_start = hf.decoder_start_token_id if hf.decoder_start_token_id is not None else hf.pad_token_id
    return TransformerConfig(
        vocab_size=hf.decoder_vocab_size or hf.vocab_size, src_vocab_size=None if shared else src_vocab,
        d_model=hf.d_model, num_encoder_layers=hf.encoder_layers, num_decoder_layers=hf.decoder_layers,
        num_heads=hf.encoder_attention_heads, dim_feedforward=hf.encoder_ffn_dim,
        activation=zoo_activation(hf.activation_function, "Marian activation_function"), dropout=hf.dropout,
        attn_dropout=hf.attention_dropout, activation_dropout=hf.activation_dropout, norm_first=False,
        final_norm=False, norm_eps=1e-5, scale_embedding=hf.scale_embedding, sinusoid_layout="halves",
        share_embeddings=shared, tie_output=tied, max_len=hf.max_position_embeddings, pad_token_id=hf.pad_token_id,
        bos_token_id=dec_start if hf.bos_token_id is None else hf.bos_token_id, eos_token_id=hf.eos_token_id,
        decoder_start_token_id=dec_start, **generation_rules(hf, generation_config),
    )


def from_hf(hf, sd: dict[str, torch.Tensor], arch: str | None, generation_config=None) -> EncoderDecoderTransformer:
    if arch not in (None, "MarianMTModel"):
        raise ValueError(f"zoo converts MarianMTModel, not {arch}")
    bias = sd.get("final_logits_bias")
    if bias is not None and bias.abs().max() > 0:
        raise ValueError("this Marian checkpoint has a non-zero final_logits_bias; zoo's output layer has no bias")
    sd = strip_prefix(sd, "model.")
    enc_emb = sd.get("encoder.embed_tokens.weight", sd.get("shared.weight"))
    dec_emb = sd.get("decoder.embed_tokens.weight", sd.get("shared.weight"))
    lm = sd.get("lm_head.weight", dec_emb)
    tied = torch.equal(lm, dec_emb)
    # zoo's one shared table is source, target and output layer at once: the tables themselves decide (transformers 5
    # ties nothing when tie_word_embeddings=False, even with share_encoder_decoder_embeddings=True); otherwise
    # separate source / target tables (equal copies where the checkpoint's are) and the output layer tied or not
    shared = (getattr(hf, "share_encoder_decoder_embeddings", True) and tied and enc_emb.shape == dec_emb.shape
              and torch.equal(enc_emb, dec_emb))
    cfg = zoo_config(hf, tied, shared, enc_emb.shape[0], generation_config)
    model = EncoderDecoderTransformer(cfg)
    # Marian's position tables are fixed sinusoids: check they are the ones the zoo computes
    for stack in ("encoder", "decoder"):
        table = sd.get(f"{stack}.embed_positions.weight")
        if table is not None and not torch.allclose(table.float(), model.pos.table[: table.shape[0]], atol=1e-5):
            raise ValueError(f"{stack}.embed_positions differs from the sinusoidal table; not a standard Marian model")
    out = {"src_embed.weight": enc_emb, "tgt_embed.weight": dec_emb}
    if not tied:
        out["lm_head.weight"] = lm
    for stack, n in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        for i in range(n):
            h, z = f"{stack}.layers.{i}.", f"{stack}.blocks.{i}."
            for p in ("weight", "bias"):
                out[f"{z}attn.qkv.{p}"] = torch.cat([sd[f"{h}self_attn.{n_}_proj.{p}"] for n_ in "qkv"])
                out[f"{z}attn.proj.{p}"] = sd[f"{h}self_attn.out_proj.{p}"]
                out[f"{z}norm1.{p}"] = sd[f"{h}self_attn_layer_norm.{p}"]
                out[f"{z}mlp.fc1.{p}"] = sd[f"{h}fc1.{p}"]
                out[f"{z}mlp.fc2.{p}"] = sd[f"{h}fc2.{p}"]
                out[f"{z}norm2.{p}"] = sd[f"{h}final_layer_norm.{p}"]
                if stack == "decoder":
                    for hn, zn in _ATTN.items():
                        out[f"{z}cross_attn.{zn}.{p}"] = sd[f"{h}encoder_attn.{hn}.{p}"]
                    out[f"{z}norm_cross.{p}"] = sd[f"{h}encoder_attn_layer_norm.{p}"]
    return load_into(model, out)
