"""Conversion between zoo models and the ecosystem: transformers, timm, torch.nn, torchvision.

    zoo.from_hf(hf_model_or_dir)            # BERT, T5, ViT, MarianMT, CLIP, GPT-2, Llama -> zoo model
    zoo.from_timm(timm_model)               # or zoo.from_timm("ckpt.safetensors", arch="vit_small_patch16_224")
    zoo.to_hf(zoo_model, "out_dir")         # BERT, T5, ViT, GPT-2, Llama -> a directory transformers' from_pretrained loads
    zoo.interop.from_torch_transformer(nn.Transformer(...))

Hyper-parameters are read from the source's config (eps, activation, sizes, tying), and weights
are loaded with `zoo.weights.load_state_dict_checked`, so a mismatch names every bad key.
"""
from .hf import from_hf, to_hf
from .timm import from_timm
from .files import load_converted, save_converted
from .torch_nn import from_torch_transformer, from_torchvision_vit

__all__ = ["from_hf", "to_hf", "from_timm", "from_torch_transformer", "from_torchvision_vit", "load_converted", "save_converted"]
