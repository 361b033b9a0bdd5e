"""Reference implementations ("peers") of the same configuration as a zoo model.

Each builder reads the zoo model's config and returns `Peer(label, module, call)`, where
`call(module, inputs)` runs the reference on the same input dict the zoo model gets and returns
one tensor. All peers have random weights (nothing is downloaded) and use their fast attention
path (timm fused attention, transformers "sdpa", torch's native MHA).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..core import sinusoidal_table


class PeerUnavailable(RuntimeError):
    """The zoo model has no like-for-like reference (e.g. a conv stem timm lacks)."""


@dataclass
class Peer:
    label: str
    module: nn.Module
    call: Callable[[nn.Module, dict], torch.Tensor]


def _images_only(m: nn.Module, inputs: dict) -> torch.Tensor:
    return m(next(iter(inputs.values())))


def _timm_published(name: str) -> bool:
    """A published timm name: the peer is built by name, as users would."""
    import timm

    return name in timm.list_models(name)


def _refuse_unless_same(name: str, what: str, ours, theirs) -> None:
    """PeerUnavailable naming every setting (but the drop rates, which the builders pass) in which the peer, read
    back through zoo's converter (`theirs`, a zoo config), differs from the zoo config `ours`."""
    import dataclasses

    a, b = dataclasses.asdict(ours), dataclasses.asdict(theirs)
    same = lambda x, y: x == y or (isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and tuple(x) == tuple(y))  # noqa: E731
    differ = [f"{k} {a[k]!r} (timm: {b.get(k)!r})" for k in a if "drop" not in k and not same(a[k], b.get(k))]
    if differ:
        raise PeerUnavailable(f"{name}: timm's {what} cannot be built with the same settings as the zoo config: "
                              + ", ".join(differ))


# ---------------------------------------------------------------------------- ViT -> timm
def vit_peer(model: nn.Module, name: str) -> Peer:
    """timm's VisionTransformer: the published name as users build it, else built from the zoo config; either way
    read back through zoo's timm converter and refused unless it describes the same model."""
    from functools import partial

    import timm
    from timm.models.vision_transformer import VisionTransformer

    from ..interop.timm import zoo_config

    cfg = model.config
    if cfg.stem != "patch":
        raise PeerUnavailable(f"{name} uses a {cfg.stem!r} stem that timm's VisionTransformer has no equivalent of")
    kw = dict(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
              embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
              global_pool=cfg.pool, class_token=cfg.class_token, fc_norm=cfg.fc_norm, pre_norm=cfg.pre_norm,
              reg_tokens=cfg.reg_tokens, no_embed_class=cfg.no_embed_class, qk_norm=cfg.qk_norm,
              init_values=cfg.layer_scale, norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps),
              drop_rate=cfg.drop_rate, attn_drop_rate=cfg.attn_drop_rate, drop_path_rate=cfg.drop_path_rate)
    if cfg.activation in ("gelu", "relu", "silu"):
        kw["act_layer"] = cfg.activation
    if _timm_published(name):
        peer = timm.create_model(name, pretrained=False, **{k: kw[k] for k in ("num_classes", "img_size", "in_chans", "drop_rate",
                                                                            "attn_drop_rate", "drop_path_rate")})
        label = f"timm.{name}"
    else:
        peer = VisionTransformer(**kw)
        label = "timm.VisionTransformer"
    try:
        theirs = zoo_config(peer)
    except ValueError as e:
        raise PeerUnavailable(f"{name}: {e}") from None
    _refuse_unless_same(name, "VisionTransformer", cfg, theirs)
    return Peer(label, peer, _images_only)


# ---------------------------------------------------------------------------- BERT -> transformers
def bert_peer(model: nn.Module, name: str) -> Peer:
    from transformers import BertConfig, BertModel

    from ..interop._common import hf_activation

    c = model.config
    hf = BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, num_hidden_layers=c.depth, num_attention_heads=c.num_heads,
        intermediate_size=int(c.dim * c.mlp_ratio), max_position_embeddings=c.max_positions,
        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.norm_eps, hidden_act=hf_activation(c.activation),
        hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.attn_dropout, pad_token_id=c.pad_token_id,
        attn_implementation="sdpa",
    )
    # Zoo's BERT encoder is compared on its final hidden states: BertModel without the pooler.
    peer = BertModel(hf, add_pooling_layer=False)
    return Peer("transformers.BertModel(sdpa)", peer,
                lambda m, inp: m(input_ids=inp["input_ids"], attention_mask=inp.get("attention_mask")).last_hidden_state)


# ---------------------------------------------------------------------------- T5 -> transformers
def t5_peer(model: nn.Module, name: str) -> Peer:
    from transformers import T5Config, T5ForConditionalGeneration

    c = model.config
    hf = T5Config(
        vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_layers=c.num_layers,
        num_decoder_layers=c.num_decoder_layers or c.num_layers, num_heads=c.num_heads,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance, dropout_rate=c.dropout_rate,
        layer_norm_epsilon=c.layer_norm_epsilon, feed_forward_proj=c.feed_forward_proj,
        tie_word_embeddings=c.tie_word_embeddings, pad_token_id=c.pad_token_id, eos_token_id=c.eos_token_id,
        decoder_start_token_id=c.decoder_start_token_id, attn_implementation="sdpa",
    )
    if not c.tie_word_embeddings:
        # transformers 5's T5Config forces tie_word_embeddings=True (it keeps False only as "do not scale the decoder
        # output", v1.1): untie after the fact, as v1.1 is (its own lm_head), keeping the one shared input table
        hf.tie_word_embeddings = False
    peer = T5ForConditionalGeneration(hf)
    if not c.tie_word_embeddings:
        peer.encoder.embed_tokens = peer.decoder.embed_tokens = peer.shared
    return Peer("transformers.T5ForConditionalGeneration(sdpa)", peer,
                lambda m, inp: m(input_ids=inp["input_ids"], attention_mask=inp.get("attention_mask"),
                                 decoder_input_ids=inp["decoder_input_ids"]).logits)


# ---------------------------------------------------------------------------- GPT-2 / Llama -> transformers
def _causal_lm_call(m, inp):
    """transformers' forward with the positions zoo's decoder-only models use (the mask's cumsum)."""
    mask = inp.get("attention_mask")
    pos = None if mask is None else (mask.long().cumsum(-1) - 1).clamp(min=0)
    return m(input_ids=inp["input_ids"], attention_mask=mask, position_ids=pos).logits


def gpt_peer(model: nn.Module, name: str) -> Peer:
    from transformers import GPT2Config, GPT2LMHeadModel

    from ..interop._common import hf_activation

    c = model.config
    hf = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.max_positions, n_embd=c.dim, n_layer=c.depth, n_head=c.num_heads,
        n_inner=c.mlp_hidden, activation_function=hf_activation(c.activation), resid_pdrop=c.dropout,
        embd_pdrop=c.dropout, attn_pdrop=c.attn_dropout, layer_norm_epsilon=c.norm_eps, bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, tie_word_embeddings=c.tie_word_embeddings,
        attn_implementation="sdpa",
    )
    return Peer("transformers.GPT2LMHeadModel(sdpa)", GPT2LMHeadModel(hf), _causal_lm_call)


def llama_peer(model: nn.Module, name: str) -> Peer:
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..interop.hf_llama import hf_rope_parameters

    c = model.config
    rope_parameters, max_positions = hf_rope_parameters(c)
    hf = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.mlp_hidden, num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads or c.num_heads,
        head_dim=c.head_dim or c.dim // c.num_heads, max_position_embeddings=max_positions, rms_norm_eps=c.norm_eps,
        rope_parameters=rope_parameters, tie_word_embeddings=c.tie_word_embeddings,
        attention_dropout=c.attn_dropout, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id, attn_implementation="sdpa",
    )
    return Peer("transformers.LlamaForCausalLM(sdpa)", LlamaForCausalLM(hf), _causal_lm_call)


# ---------------------------------------------------------------------------- vanilla -> torch.nn.Transformer
class TorchSeq2Seq(nn.Module):
    """torch.nn.Transformer (batch_first) with the embeddings, sinusoids and generator it lacks.

    Mirrors the 2017 paper: embeddings scaled by sqrt(d) (unless the zoo model does not scale), sinusoidal positions
    (interleaved or in halves, as the zoo model lays them out), a vocabulary
    projection tied to the target embedding when the zoo model ties its weights. nn.Transformer
    always adds final encoder/decoder LayerNorms (two extra norms, negligible cost)."""

    def __init__(self, vocab: int, dim: int, heads: int, enc: int, dec: int, ff: int, dropout: float, norm_first: bool,
                 activation: str, eps: float, max_len: int, share: bool, tie: bool, scale: bool = True,
                 halves: bool = False):
        super().__init__()
        self.dim = dim
        self.scale = dim ** 0.5 if scale else 1.0
        self.src_embed = nn.Embedding(vocab, dim)
        self.tgt_embed = self.src_embed if share else nn.Embedding(vocab, dim)
        pe = sinusoidal_table(max_len, dim)
        if halves:  # sin on the first half of the features, cos on the second (MarianMT, fairseq)
            pe = pe.view(max_len, dim // 2, 2).transpose(1, 2).reshape(max_len, dim)
        self.register_buffer("pe", pe, persistent=False)
        self.transformer = nn.Transformer(dim, heads, enc, dec, ff, dropout, activation, batch_first=True,
                                          norm_first=norm_first, layer_norm_eps=eps)
        self.generator = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.generator.weight = self.tgt_embed.weight
        self.drop = nn.Dropout(dropout)

    def _embed(self, emb, ids):
        return self.drop(emb(ids) * self.scale + self.pe[: ids.shape[1]])

    def forward(self, input_ids, decoder_input_ids, attention_mask=None):
        pad = None if attention_mask is None else attention_mask == 0  # torch: True = blocked
        t = decoder_input_ids.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=input_ids.device)
        h = self.transformer(self._embed(self.src_embed, input_ids), self._embed(self.tgt_embed, decoder_input_ids),
                             tgt_mask=causal, tgt_is_causal=True, src_key_padding_mask=pad, memory_key_padding_mask=pad)
        return self.generator(h)


def transformer_peer(model: nn.Module, name: str) -> Peer:
    c = model.config
    if c.activation not in ("relu", "gelu"):
        raise PeerUnavailable(f"torch.nn.Transformer supports relu/gelu, {name} uses {c.activation!r}")
    if c.pos_embed != "sinusoidal":
        raise PeerUnavailable(f"{name} uses pos_embed={c.pos_embed!r}; the torch.nn.Transformer peer adds sinusoids")
    if c.src_vocab_size not in (None, c.vocab_size):
        raise PeerUnavailable(f"{name} has separate source/target vocabularies; the peer wrapper assumes one")
    peer = TorchSeq2Seq(vocab=c.vocab_size, dim=c.d_model, heads=c.num_heads, enc=c.num_encoder_layers,
                        dec=c.num_decoder_layers, ff=c.dim_feedforward, dropout=c.dropout, norm_first=c.norm_first,
                        activation=c.activation, eps=c.norm_eps, max_len=c.max_len, share=c.share_embeddings,
                        tie=c.share_embeddings or c.tie_output, scale=c.scale_embedding,
                        halves=c.sinusoid_layout == "halves")
    # nn.Transformer applies `dropout` inside attention and the FFN too; match zoo's separate rates.
    for m in peer.modules():
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = c.attn_dropout
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            m.dropout.p = c.activation_dropout
    return Peer("torch.nn.Transformer(+embeddings)", peer,
                lambda m, inp: m(inp["input_ids"], inp["decoder_input_ids"], inp.get("attention_mask")))


# ---------------------------------------------------------------------------- CaiT -> timm
def cait_peer(model: nn.Module, name: str) -> Peer:
    import dataclasses
    from functools import partial

    import timm
    from timm.layers import get_act_layer
    from timm.models.cait import Cait

    from ..interop.timm_cait import zoo_config

    c = model.config
    if c.stem != "patch":
        raise PeerUnavailable(f"{name} uses a {c.stem!r} stem that timm's Cait has no equivalent of")
    try:
        act = get_act_layer(c.activation)
    except Exception:  # noqa: BLE001 - an activation timm does not know: left at its default, refused below
        act = None
    kw = dict(norm_layer=partial(nn.LayerNorm, eps=c.norm_eps), **({"act_layer": act} if act else {}),
              img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
              global_pool=c.pool, embed_dim=c.dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
              qkv_bias=c.qkv_bias, depth_token_only=c.class_depth, mlp_ratio_token_only=c.class_mlp_ratio,
              init_values=c.init_values, drop_rate=c.drop_rate, pos_drop_rate=c.pos_drop_rate,
              proj_drop_rate=c.proj_drop_rate, attn_drop_rate=c.attn_drop_rate, drop_path_rate=c.drop_path_rate)
    if _timm_published(name):  # talking heads unfused, class attention SDPA; kw override its defaults
        peer, label = timm.create_model(name, pretrained=False, **kw), f"timm.{name}"
    else:
        peer, label = Cait(**kw), "timm.Cait"
    try:
        theirs = zoo_config(peer)
    except ValueError as e:
        raise PeerUnavailable(f"{name}: {e}") from None
    # init_values only sets the layer scales' starting value (the converter takes it from the weights)
    _refuse_unless_same(name, "Cait", c, dataclasses.replace(theirs, init_values=c.init_values))
    return Peer(label, peer, _images_only)


# ---------------------------------------------------------------------------- Swin -> timm
def swin_peer(model: nn.Module, name: str) -> Peer:
    """timm's SwinTransformer (its default, unfused window attention): the published name as users build it,
    else swin_tiny's builder with every size of the zoo config."""
    import timm

    import dataclasses
    from functools import partial

    from ..interop.timm_swin import zoo_config

    c = model.config
    if c.stem != "patch":
        raise PeerUnavailable(f"{name} uses a {c.stem!r} stem that timm's SwinTransformer has no equivalent of")
    size = {"num_classes": c.num_classes, "img_size": c.img_size, "in_chans": c.in_chans}
    published = _timm_published(name)
    arch = {} if published else {
        "patch_size": c.patch_size, "embed_dim": c.embed_dim, "depths": tuple(c.depths), "num_heads": tuple(c.num_heads),
        "window_size": c.window_size, "mlp_ratio": c.mlp_ratio, "qkv_bias": c.qkv_bias,
        "norm_layer": partial(nn.LayerNorm, eps=c.norm_eps)}
    drops = {"drop_rate": c.drop_rate, "attn_drop_rate": c.attn_drop_rate, "drop_path_rate": c.drop_path_rate}
    peer = timm.create_model(name if published else "swin_tiny_patch4_window7_224", pretrained=False, **size, **arch,
                             **drops)
    # read back through zoo's timm converter: the same sizes, or no peer
    theirs, ours = dataclasses.asdict(zoo_config(peer)), dataclasses.asdict(c)
    differ = [f"{k} {ours[k]!r} (timm: {theirs.get(k)!r})" for k in ours
              if k not in drops and theirs.get(k) != ours[k] and not (k in ("depths", "num_heads") and tuple(ours[k]) == tuple(theirs[k]))]
    if differ:
        raise PeerUnavailable(f"{name}: timm's SwinTransformer cannot be built with the same settings as the zoo config: "
                              + ", ".join(differ))
    return Peer(f"timm.{name}" if published else "timm.SwinTransformer", peer, _images_only)


# ---------------------------------------------------------------------------- EVA-02, RoPE-ViT -> timm
def eva_peer(model: nn.Module, name: str) -> Peer:
    """timm's Eva: the published name as users build it, else Eva with every setting of the zoo config. Either way
    read back through zoo's timm converter (zoo.interop.timm_eva.zoo_config) and refused unless it describes the
    same model."""
    import dataclasses
    from functools import partial

    import timm
    from timm.layers import LayerNorm
    from timm.models.eva import Eva

    from ..interop.timm_eva import zoo_config

    c = model.config
    size = {"num_classes": c.num_classes, "img_size": c.img_size, "in_chans": c.in_chans}
    if _timm_published(name):
        peer, label = timm.create_model(name, pretrained=False, **size, drop_rate=c.drop_rate, proj_drop_rate=c.proj_drop_rate,
                                        attn_drop_rate=c.attn_drop_rate, drop_path_rate=c.drop_path_rate), f"timm.{name}"
    else:
        peer, label = Eva(
            **size, patch_size=c.patch_size, embed_dim=c.dim, depth=c.depth, num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio, swiglu_mlp=c.swiglu, scale_mlp=c.mlp_norm, qkv_bias=c.qkv_bias, qkv_fused=c.fused_qkv,
            qk_norm=c.qk_norm, attn_type="rope" if c.key_bias else "eva", class_token=c.class_token,
            use_abs_pos_emb=c.abs_pos, use_rot_pos_emb=c.rope, rope_temperature=c.rope_temperature,
            rope_grid_indexing=c.rope_indexing, ref_feat_shape=c.rope_ref_grid, init_values=c.layer_scale,
            global_pool=c.pool, use_fc_norm=c.fc_norm, norm_layer=partial(LayerNorm, eps=c.norm_eps),
            drop_rate=c.drop_rate, proj_drop_rate=c.proj_drop_rate, attn_drop_rate=c.attn_drop_rate,
            drop_path_rate=c.drop_path_rate), "timm.Eva"

    def shape(cfg) -> dict:  # what the computation depends on: the sizes, not the float that gave the hidden width
        d = dataclasses.asdict(cfg)
        d["hidden"] = int(cfg.dim * cfg.mlp_ratio)
        d["fc_norm"] = cfg.pool == "avg" if cfg.fc_norm is None else cfg.fc_norm
        d["img_size"] = (cfg.img_size,) * 2 if isinstance(cfg.img_size, int) else tuple(cfg.img_size)
        return {k: v for k, v in d.items() if k != "mlp_ratio" and k != "head_init_scale" and "drop" not in k}

    try:
        theirs, ours = shape(zoo_config(peer)), shape(c)
    except ValueError as e:  # timm options zoo's Eva lacks
        raise PeerUnavailable(f"{name}: {e}") from None
    differ = [f"{k} {ours[k]!r} (timm: {theirs.get(k)!r})" for k in ours if theirs.get(k) != ours[k]]
    if differ:
        raise PeerUnavailable(f"{name}: timm's Eva cannot be built with the same settings as the zoo config: "
                              + ", ".join(differ))
    return Peer(label, peer, _images_only)


PEERS: dict[str, Callable[[nn.Module, str], Peer]] = {
    "vit": vit_peer,
    "bert": bert_peer,
    "t5": t5_peer,
    "transformer": transformer_peer,
    "gpt": gpt_peer,
    "llama": llama_peer,
    "cait": cait_peer,
    "swin": swin_peer,
    "eva": eva_peer,
}


def build_peer(model: nn.Module, name: str, family: str) -> Peer:
    if family not in PEERS:
        raise PeerUnavailable(f"no reference implementation is wired up for family {family!r} ({name})")
    return PEERS[family](model, name)
