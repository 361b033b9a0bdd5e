"""Measure conversion parity at published sizes (random weights, nothing downloaded).

    python -m zoo.interop.parity                 # every family, float32 and float64
    python -m zoo.interop.parity bert_base t5_small

Prints max|zoo - reference| over non-padded positions and the reference's output scale.
"""
from __future__ import annotations

import sys
import time

import torch


def _text(vocab, b=2, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab - 1, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, length // 2:] = 0  # unequal lengths
    return ids, mask


def _bert():
    import transformers as T

    ref = T.BertForMaskedLM(T.BertConfig())
    ids, mask = _text(30522)
    return ref, lambda r: r(input_ids=ids, attention_mask=mask).logits, lambda z: z(ids, mask), mask


def _t5(v11: bool):
    import transformers as T

    kw = dict(feed_forward_proj="gated-gelu", num_layers=8, num_heads=6, d_ff=1024) if v11 else {}
    ref = T.T5ForConditionalGeneration(T.T5Config(decoder_start_token_id=0, **kw))
    if v11:  # hub v1.1 checkpoints have a separate lm_head
        ref.lm_head.weight = torch.nn.Parameter(torch.randn_like(ref.lm_head.weight))
    ids, mask = _text(32128)
    dids, dmask = _text(32128, length=9, seed=1)
    dmask = dmask.flip(0)
    return (ref, lambda r: r(input_ids=ids, attention_mask=mask, decoder_input_ids=dids, decoder_attention_mask=dmask).logits,
            lambda z: z(ids, dids, mask, dmask), dmask)


def _vit():
    import transformers as T

    ref = T.ViTForImageClassification(T.ViTConfig(num_labels=1000))
    x = torch.randn(2, 3, 224, 224)
    return ref, lambda r: r(x.to(r.dtype)).logits, lambda z: z(x.to(next(z.parameters()).dtype)), None


def _timm_vit():
    import timm

    ref = timm.create_model("vit_small_patch16_224", pretrained=False)
    x = torch.randn(2, 3, 224, 224)
    return ref, lambda r: r(x.to(next(r.parameters()).dtype)), lambda z: z(x.to(next(z.parameters()).dtype)), None


def _marian():
    import transformers as T

    # opus-mt-en-de's sizes: d 512, 6+6 layers, 8 heads, FFN 2048, SiLU, vocab 58101
    ref = T.MarianMTModel(T.MarianConfig(vocab_size=58101, pad_token_id=58100, decoder_start_token_id=58100,
                                         eos_token_id=0, activation_function="swish"))
    ids, mask = _text(58100)
    dids, dmask = _text(58100, length=9, seed=1)
    return (ref, lambda r: r(input_ids=ids, attention_mask=mask, decoder_input_ids=dids, decoder_attention_mask=dmask).logits,
            lambda z: z(ids, dids, mask, dmask), dmask)


def _clip():
    import transformers as T

    ref = T.CLIPModel(T.CLIPConfig())  # ViT-B/32 sizes
    ids, mask = _text(49407, length=12)
    ids[0, -1], ids[1, 5] = 49407, 49407
    ids[1, 6:] = 0
    x = torch.randn(2, 3, 224, 224)
    return (ref, lambda r: r(input_ids=ids, attention_mask=mask, pixel_values=x.to(r.dtype)).logits_per_image,
            lambda z: z(x.to(next(z.parameters()).dtype), ids, mask), None)


def _left_padded(vocab, length=16):
    ids, mask = _text(vocab, length=length)
    return ids, mask.flip(1)  # decoder-only prompts are padded on the left


def _gpt2():
    import transformers as T

    ref = T.GPT2LMHeadModel(T.GPT2Config(attn_implementation="sdpa"))  # GPT-2 small
    ids, mask = _left_padded(50257)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # the positions transformers' generate uses
    return ref, lambda r: r(input_ids=ids, attention_mask=mask, position_ids=pos).logits, lambda z: z(ids, mask), mask


def _tinyllama_layers():
    import transformers as T

    # TinyLlama-1.1B's layer shape (2048 wide, 32 query / 4 kv heads, SwiGLU 5632), 2 of its 22 layers
    ref = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=2,
                                           num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-5,
                                           attn_implementation="sdpa"))
    ids, mask = _left_padded(32000)
    return ref, lambda r: r(input_ids=ids, attention_mask=mask).logits, lambda z: z(ids, mask), mask


CASES = {"bert_base": _bert, "t5_small": lambda: _t5(False), "t5_v1_1_small": lambda: _t5(True),
         "vit_base_patch16_224": _vit, "timm_vit_small_patch16_224": _timm_vit, "marian_opus_mt": _marian,
         "clip_vit_b32": _clip, "gpt2": _gpt2, "tinyllama_2_layers": _tinyllama_layers}


def measure(name: str) -> list[str]:
    from . import from_hf, from_timm

    torch.manual_seed(0)
    start = time.time()
    ref, run_ref, run_zoo, keep = CASES[name]()
    ref.eval()
    model = from_timm(ref) if name.startswith("timm") else from_hf(ref)
    rows = []
    for dtype in (torch.float32, torch.float64):
        ref, model = ref.to(dtype), model.to(dtype)
        with torch.no_grad():
            r, z = run_ref(ref), run_zoo(model)
        if keep is not None:
            r, z = r[keep.bool()], z[keep.bool()]
        rows.append(f"{name:28s} {str(dtype)[6:]:8s} max|diff| {(z - r).abs().max().item():.2e}  "
                    f"max|ref| {r.abs().max().item():.3g}")
    rows[-1] += f"  ({time.time() - start:.0f}s)"
    return rows


def main(argv: list[str] | None = None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or list(CASES)
    for name in names:
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        print("\n".join(measure(name)), flush=True)


if __name__ == "__main__":
    main()
