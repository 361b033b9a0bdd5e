"""Image–text contrastive losses for the dual encoder, one process or several (DDP).

    clip    softmax / InfoNCE (Radford et al. 2021), symmetric over images and texts:
            loss = ½ (CE(s · I Tᵀ, diag) + CE(s · T Iᵀ, diag))                  zoo.models.clip.clip_loss
    siglip  sigmoid (Zhai et al. 2023): every image–text pair is an independent binary problem,
            z_ij = s · <I_i, T_j> + b,  y_ij = +1 for a matching pair, −1 otherwise,
            loss = −(1/B) Σ_i Σ_j log σ(y_ij z_ij)      (sum over all pairs, divided by the image count)

s = exp(t') is the learned temperature, b the learned bias; SigLIP initialises t' = log 10, b = −10
(`SIGLIP_INIT`) so that the many negatives start with a small loss.

Under DDP each process scores its own B images against the texts of EVERY process: the texts are
all-gathered with gradients (torch.distributed.nn.functional.all_gather, whose backward returns to
each process the sum of the gradients of its rows), which gives the same per-process loss and the
same gradients as open_clip's SigLipLoss with its neighbour exchange (the local block with the
positives plus a negatives-only block per other process, the texts travelling, the gradients sent
back along the reverse route). The mean of the per-process losses is the loss of the global batch;
DDP's gradient averaging supplies the 1/world_size. The CLIP loss gathers images and texts likewise
(open_clip ClipLoss with local_loss=True, gather_with_grad=True).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.clip import distributed_clip_loss, gather_features, gather_labels

SIGLIP_INIT = {"logit_scale_init": math.log(10), "logit_bias_init": -10.0}  # Zhai et al. 2023, §3.3


def siglip_loss(local_image: torch.Tensor, all_text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | float = 0.0,
                offset: int = 0, labels: torch.Tensor | None = None, all_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid loss of this process's B images (rows) against all texts (columns).

    Image i matches text column offset + i (offset = rank · B under DDP, 0 with one process).
    labels / all_labels (optional, as clip_loss's UniCL targets): every pair of the same class is a
    positive (y = +1) instead of only the matching caption.
    """
    logits = scale * local_image @ all_text.T + bias
    if labels is None:
        rows = torch.arange(local_image.shape[0], device=logits.device)
        positive = torch.zeros_like(logits, dtype=torch.bool)
        positive[rows, rows + offset] = True
    else:
        positive = labels[:, None] == all_labels[None, :]
    signs = positive.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / local_image.shape[0]


def distributed_siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor,
                            bias: torch.Tensor | float = 0.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """This process's sigmoid loss against the texts of all processes (needs equal batch sizes: drop_last=True)."""
    all_text, offset = gather_features(text_features)
    world = all_text.shape[0] // text_features.shape[0]
    all_labels = None if labels is None else gather_labels(labels, world)
    return siglip_loss(image_features, all_text, scale, bias, offset, labels, all_labels)


def distributed_contrastive_loss(kind: str, image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor,
                                 bias: torch.Tensor | float = 0.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """`kind` 'clip' or 'siglip' on L2-normalised features; the bias only matters to the sigmoid loss
    (adding a constant to every logit of a row leaves the softmax unchanged)."""
    check_loss(kind)
    if kind == "siglip":
        return distributed_siglip_loss(image_features, text_features, scale, bias, labels)
    return distributed_clip_loss(image_features, text_features, scale, labels)


LOSSES = ("clip", "siglip")


def check_loss(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} ('clip': softmax InfoNCE, 'siglip': sigmoid), got {kind!r}")
