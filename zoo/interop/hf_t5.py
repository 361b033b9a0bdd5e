"""HF T5 (T5Model, T5ForConditionalGeneration, T5EncoderModel) <-> zoo.models.t5.T5.

Tying and output scaling follow transformers 5.24 (parity_facts §2): the decoder output is
scaled by d_model^-0.5 when the config's `scale_decoder_outputs` says so (v1.0), and lm_head is
tied to `shared` unless the checkpoint holds a different lm_head.weight (v1.1 hub checkpoints).
T5EncoderModel (or a checkpoint without decoder weights) maps to `zoo.models.t5.T5Encoder`, T5's
encoder alone: `model(input_ids, attention_mask)` and `model.forward_features(...)` give
T5EncoderModel's last_hidden_state; `to_hf` writes it back as a T5EncoderModel.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..models.t5 import T5, T5Config, T5Encoder
from ._common import load_into

_ATTN = {"q": "q", "k": "k", "v": "v", "o": "proj"}


def _layer_map(stack: str, i: int, gated: bool) -> dict[str, str]:
    """zoo key -> HF key for one block."""
    hf, zb = f"{stack}.block.{i}.layer.", f"{stack}.blocks.{i}."
    m = {zb + "norm1.weight": hf + "0.layer_norm.weight"}
    m.update({zb + f"attn.{z}.weight": hf + f"0.SelfAttention.{h}.weight" for h, z in _ATTN.items()})
    ffn = "1"
    if stack == "decoder":
        m[zb + "norm_cross.weight"] = hf + "1.layer_norm.weight"
        m.update({zb + f"cross_attn.{z}.weight": hf + f"1.EncDecAttention.{h}.weight" for h, z in _ATTN.items()})
        ffn = "2"
    m[zb + "norm2.weight"] = hf + f"{ffn}.layer_norm.weight"
    if gated:
        m[zb + "mlp.fc1.weight"] = hf + f"{ffn}.DenseReluDense.wi_0.weight"  # the activated branch
        m[zb + "mlp.gate.weight"] = hf + f"{ffn}.DenseReluDense.wi_1.weight"  # the linear branch
    else:
        m[zb + "mlp.fc1.weight"] = hf + f"{ffn}.DenseReluDense.wi.weight"
    m[zb + "mlp.fc2.weight"] = hf + f"{ffn}.DenseReluDense.wo.weight"
    return m


def key_map(cfg: T5Config, encoder_only: bool = False) -> dict[str, str]:
    gated = cfg.feed_forward_proj.startswith("gated")
    m = {"shared.weight": "shared.weight", "encoder.norm.weight": "encoder.final_layer_norm.weight",
         "encoder_rel_bias.embedding.weight": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
    for i in range(cfg.num_layers):
        m.update(_layer_map("encoder", i, gated))
    if not encoder_only:
        m["decoder.norm.weight"] = "decoder.final_layer_norm.weight"
        m["decoder_rel_bias.embedding.weight"] = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        for i in range(cfg.num_decoder_layers or cfg.num_layers):
            m.update(_layer_map("decoder", i, gated))
    return m


def zoo_config(hf, tied: bool) -> T5Config:
    proj = hf.feed_forward_proj
    if proj not in ("relu", "gated-gelu"):
        raise ValueError(f"zoo T5 supports feed_forward_proj 'relu' (v1.0) and 'gated-gelu' (v1.1), not {proj!r}")
    scale = getattr(hf, "scale_decoder_outputs", None)
    if scale is None:
        scale = getattr(hf, "tie_word_embeddings", True) is not False
    return T5Config(
        vocab_size=hf.vocab_size, d_model=hf.d_model, d_kv=hf.d_kv, d_ff=hf.d_ff, num_layers=hf.num_layers,
        num_decoder_layers=hf.num_decoder_layers, num_heads=hf.num_heads,
        relative_attention_num_buckets=hf.relative_attention_num_buckets,
        relative_attention_max_distance=hf.relative_attention_max_distance, dropout_rate=hf.dropout_rate,
        layer_norm_epsilon=hf.layer_norm_epsilon, feed_forward_proj=proj, tie_word_embeddings=tied,
        scale_decoder_outputs=bool(scale), pad_token_id=hf.pad_token_id if hf.pad_token_id is not None else 0,
        eos_token_id=hf.eos_token_id if hf.eos_token_id is not None else 1,
        decoder_start_token_id=getattr(hf, "decoder_start_token_id", None) or 0,
    )


def from_hf(hf, sd: dict[str, torch.Tensor], arch: str | None) -> T5:
    encoder_only = arch == "T5EncoderModel" or (arch is None and not any(k.startswith("decoder.") for k in sd))
    # tied unless the checkpoint holds an lm_head that differs from the shared table
    tied = "lm_head.weight" not in sd or torch.equal(sd["lm_head.weight"], sd["shared.weight"])
    cfg = zoo_config(hf, tied)
    model = T5Encoder(cfg) if encoder_only else T5(cfg)
    kmap = key_map(cfg, encoder_only)
    missing = sorted(h for h in kmap.values() if h not in sd)
    if missing:
        raise ValueError(f"HF T5 weights lack {len(missing)} keys the zoo T5 needs: {', '.join(missing[:10])}")
    out = {z: sd[h] for z, h in kmap.items()}
    used = set(kmap.values()) | {"lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    # old checkpoints carry an unused cross-attention bias (HF ignores it too)
    unused = sorted(k for k in sd if k not in used and "EncDecAttention.relative_attention_bias" not in k
                    and not (encoder_only and k.startswith("decoder.")))
    if unused:
        raise ValueError(f"HF T5 weights with no zoo equivalent: {', '.join(unused[:10])}")
    if not tied and not encoder_only:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return load_into(model, out)


def to_hf(model: T5, out_dir: Path) -> None:
    """Writes T5ForConditionalGeneration, or T5EncoderModel for a T5Encoder (config.json + model.safetensors
    with hub names)."""
    import transformers
    from safetensors.torch import save_file

    c = model.config
    encoder_only = model.lm_head is None
    tied = encoder_only or model.lm_head.weight is model.shared.weight
    hf_cfg = transformers.T5Config(
        vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_layers=c.num_layers,
        num_decoder_layers=c.num_decoder_layers or c.num_layers, num_heads=c.num_heads,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance, dropout_rate=c.dropout_rate,
        layer_norm_epsilon=c.layer_norm_epsilon, feed_forward_proj=c.feed_forward_proj, tie_word_embeddings=tied,
        pad_token_id=c.pad_token_id, eos_token_id=c.eos_token_id, decoder_start_token_id=c.decoder_start_token_id,
    )
    # explicit, so that loading never guesses it from the tying (it wins over tie_word_embeddings)
    hf_cfg.scale_decoder_outputs = model.output_scale != 1.0
    hf_cfg.architectures = ["T5EncoderModel" if encoder_only else "T5ForConditionalGeneration"]
    sd = model.state_dict()
    kmap = key_map(c, encoder_only)
    extra = sorted(k for k in sd if k not in kmap and k != "lm_head.weight")
    if extra:
        raise ValueError(f"{type(model).__name__} has weights transformers' T5 lacks: {', '.join(extra[:10])}")
    out = {h: sd[z].detach().cpu().contiguous() for z, h in kmap.items()}
    if not tied:  # from_pretrained unties when the file holds a different lm_head.weight
        out["lm_head.weight"] = sd["lm_head.weight"].detach().cpu().contiguous()
    hf_cfg.save_pretrained(str(out_dir))
    save_file(out, str(Path(out_dir) / "model.safetensors"), metadata={"format": "pt"})
