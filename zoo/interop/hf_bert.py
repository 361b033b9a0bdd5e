"""HF BERT (BertModel, BertForMaskedLM, BertForSequenceClassification) <-> zoo.models.bert.Bert.

Head mapping: BertForMaskedLM -> head "mlm"; BertForSequenceClassification -> head "cls";
BertModel with its pooler -> head "cls" with num_classes=0 (forward = pooler_output);
BertModel without a pooler -> head "none". forward_features = last_hidden_state in every case.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..models.bert import Bert, BertConfig
from ._common import hf_activation, load_into, mlp_ratio_for, strip_prefix, zoo_activation

# HF suffix -> zoo suffix inside one encoder layer (post-LN: attention.output.LayerNorm is norm1)
_LAYER = {
    "attention.self.query": "attn.q", "attention.self.key": "attn.k", "attention.self.value": "attn.v",
    "attention.output.dense": "attn.proj", "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "output.LayerNorm": "norm2",
}
_TOP = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "embeddings.norm",
    "pooler.dense": "pooler.dense",
    "cls.predictions.transform.dense": "mlm_head.dense",
    "cls.predictions.transform.LayerNorm": "mlm_head.norm",
    "classifier": "classifier",
}
# Keys a checkpoint may carry that no zoo BERT head uses (HF ignores them too, parity_facts §1).
_IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids", "cls.seq_relationship.", "cls.predictions.decoder.")


def _legacy(k: str) -> str:
    return k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def zoo_config(hf, head: str, num_classes: int) -> BertConfig:
    if getattr(hf, "position_embedding_type", "absolute") not in ("absolute", None):
        raise ValueError(f"zoo BERT has absolute positions; this config uses {hf.position_embedding_type!r}")
    if getattr(hf, "is_decoder", False):
        raise ValueError("zoo BERT is an encoder; this config has is_decoder=True")
    return BertConfig(
        vocab_size=hf.vocab_size, pad_token_id=hf.pad_token_id if hf.pad_token_id is not None else 0,
        max_positions=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size, dim=hf.hidden_size,
        depth=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
        mlp_ratio=mlp_ratio_for(hf.hidden_size, hf.intermediate_size), norm_eps=hf.layer_norm_eps,
        activation=zoo_activation(hf.hidden_act, "BERT hidden_act"), dropout=hf.hidden_dropout_prob,
        attn_dropout=hf.attention_probs_dropout_prob, classifier_dropout=getattr(hf, "classifier_dropout", None),
        head=head, num_classes=num_classes, init_std=hf.initializer_range,
    )


def _head(arch: str | None, sd) -> tuple[str, int]:
    if arch == "BertForMaskedLM" or (arch in (None, "BertForPreTraining") and "cls.predictions.bias" in sd):
        return "mlm", 0
    if arch == "BertForSequenceClassification" or (arch is None and "classifier.weight" in sd):
        return "cls", sd["classifier.weight"].shape[0]
    if arch in (None, "BertModel"):
        return ("cls", 0) if "pooler.dense.weight" in sd else ("none", 0)
    raise ValueError(f"no zoo BERT head for {arch}; supported: BertModel, BertForMaskedLM, BertForSequenceClassification")


def from_hf(hf, sd: dict[str, torch.Tensor], arch: str | None) -> Bert:
    sd = {_legacy(k): v for k, v in strip_prefix(sd, "bert.").items()}
    head, num_classes = _head(arch, sd)
    cfg = zoo_config(hf, head, num_classes)
    model = Bert(cfg)
    out, unused = {}, []
    for k, v in sd.items():
        name, _, part = k.rpartition(".")
        if name.startswith("encoder.layer."):
            i, rest = name[len("encoder.layer."):].split(".", 1)
            if rest in _LAYER:
                out[f"encoder.blocks.{i}.{_LAYER[rest]}.{part}"] = v
                continue
        elif name in _TOP:
            out[f"{_TOP[name]}.{part}"] = v
            continue
        elif k == "cls.predictions.bias":
            out["mlm_head.decoder.bias"] = v
            continue
        unused.append(k)
    if head == "mlm":  # the decoder is tied to the word embeddings (the checkpoint's copy is an alias)
        own = sd.get("cls.predictions.decoder.weight")
        if own is not None and not torch.equal(own, out["embeddings.word_embeddings.weight"]):
            raise ValueError("this BERT's MLM decoder differs from its word embeddings (tie_word_embeddings="
                             f"{getattr(hf, 'tie_word_embeddings', None)}); zoo BERT's MLM head is tied to the word embeddings and "
                             "cannot hold a separate decoder: convert a checkpoint with tie_word_embeddings=True")
        out["mlm_head.decoder.weight"] = out["embeddings.word_embeddings.weight"]
    else:  # a pre-training checkpoint loaded as BertModel: drop the heads, as HF does
        unused = [k for k in unused if not k.startswith("cls.")]
        out = {k: v for k, v in out.items() if not k.startswith("mlm_head.")}
    if head != "cls":
        out = {k: v for k, v in out.items() if not k.startswith("pooler.")}
    unused = [k for k in unused if not k.startswith(_IGNORED)]
    if unused:
        raise ValueError(f"HF BERT weights with no zoo equivalent: {', '.join(sorted(unused)[:10])}")
    return load_into(model, out)


def to_hf(model: Bert, out_dir: Path) -> None:
    import transformers

    c = model.config
    if c.head == "token":
        raise ValueError("to_hf writes BERT with head 'mlm', 'cls' or 'none'; head='token' is not supported")
    hf_cfg = transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, num_hidden_layers=c.depth, num_attention_heads=c.num_heads,
        intermediate_size=model.encoder.blocks[0].mlp.fc1.out_features, hidden_act=hf_activation(c.activation),
        hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.attn_dropout, max_position_embeddings=c.max_positions,
        type_vocab_size=c.type_vocab_size, initializer_range=c.init_std, layer_norm_eps=c.norm_eps,
        pad_token_id=c.pad_token_id, classifier_dropout=c.classifier_dropout, num_labels=max(model.num_classes, 2),
    )
    inv_layer = {v: k for k, v in _LAYER.items()}
    inv_top = {v: k for k, v in _TOP.items()}
    out = {}
    for k, v in model.state_dict().items():
        name, _, part = k.rpartition(".")
        if name.startswith("encoder.blocks."):
            i, rest = name[len("encoder.blocks."):].split(".", 1)
            out[f"bert.encoder.layer.{i}.{inv_layer[rest]}.{part}"] = v
        elif k == "mlm_head.decoder.bias":
            out["cls.predictions.bias"] = v
        elif k == "mlm_head.decoder.weight":
            continue  # tied to the word embeddings
        else:
            hf_name = inv_top[name]
            out[(hf_name if hf_name.startswith(("cls.", "classifier")) else "bert." + hf_name) + f".{part}"] = v
    if c.head == "mlm":
        hf = transformers.BertForMaskedLM(hf_cfg)
    elif c.head == "cls" and model.num_classes > 0:
        hf_cfg.num_labels = model.num_classes
        hf = transformers.BertForSequenceClassification(hf_cfg)
    else:  # head "cls" without classes = BertModel with its pooler; "none" = BertModel(add_pooling_layer=False)
        hf = transformers.BertModel(hf_cfg, add_pooling_layer=c.head == "cls")
        out = strip_prefix(out, "bert.")
    missing, unexpected = hf.load_state_dict(out, strict=False)
    missing = [k for k in missing if not k.startswith("cls.predictions.decoder.")]  # aliases of tied tensors
    if missing or unexpected:
        raise RuntimeError(f"BERT export bug: missing {missing}, unexpected {unexpected}")
    hf.save_pretrained(str(out_dir))
