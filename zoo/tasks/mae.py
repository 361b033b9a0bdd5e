"""Masked-image pre-training (MAE, He et al. 2022) and a linear probe of the learnt features.

Pre-training uses the images only: the labels of the batches are ignored. The loss is the model's own
(pixel MSE on the removed patches). Validation and test use fixed noise, each image's own (seeded by its
pixels), so the logged val/loss is comparable from epoch to epoch and does not depend on the batch size or the
number of processes.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..registry import get_config
from .base import ZooTask, content_generator


def _images(batch) -> torch.Tensor:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


class MaskedImagePretraining(ZooTask):
    """Trains a `masked_image_model` (e.g. mae_mnist); logs train/loss, val/loss, test/loss. No labels are used."""

    test_metrics = ("test/loss",)

    def __init__(self, model: str = "mae_mnist", data_overrides: dict | None = None, **kwargs):
        fields = set(get_config(model).__dataclass_fields__)
        # the data says what the images are (channels, size); class counts do not concern a pre-training model
        overrides = {k: v for k, v in (data_overrides or {}).items() if k in fields}
        super().__init__(model, data_overrides=overrides, **kwargs)
        if getattr(self.model, "kind", None) != "masked_image_model":
            raise ValueError(f"MaskedImagePretraining trains masked image models (e.g. mae_mnist); {model} is a "
                             f"{getattr(self.model, 'kind', type(self.model).__name__)}")

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None):
        return self.model(images, noise)

    def training_step(self, batch, batch_idx):
        loss = self(_images(batch)).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def fixed_noise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, num_patches) masking noise, each image's drawn from a generator seeded by its pixels. It was one
        generator per batch seeded by the batch index, so an image's mask depended on its batch: val/loss of the same
        weights was 2.3302, 2.3427 and 2.3401 at evaluation batch sizes 64, 100 and 50."""
        rows = [torch.rand(self.model.num_patches, generator=content_generator(image)) for image in images]
        return torch.stack(rows).to(images.device)

    def _fixed_noise_loss(self, images: torch.Tensor, batch_idx: int | None = None) -> torch.Tensor:
        return self(images, self.fixed_noise(images)).loss

    def validation_step(self, batch, batch_idx):
        images = _images(batch)
        self.log_mean("val/loss", self._fixed_noise_loss(images, batch_idx), len(images), prog_bar=True)

    def test_step(self, batch, batch_idx):
        images = _images(batch)
        self.log_mean("test/loss", self._fixed_noise_loss(images, batch_idx), len(images))

    def predict_step(self, batch, batch_idx):
        """One line per image: its masked-patch reconstruction loss (fixed noise, as in validation)."""
        images = _images(batch)
        return [f"masked-patch reconstruction loss {float(self._fixed_noise_loss(images[i:i + 1], batch_idx)):.4f}"
                for i in range(images.shape[0])]


# -- linear probe -------------------------------------------------------------------------------------
@torch.no_grad()
def frozen_features(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Mean of the patch tokens after the encoder's final norm, no masking: an MAE (mask ratio 0, image order)
    or a plain ViT (`forward_features`, class token dropped)."""
    model.eval()
    out = []
    for chunk in images.split(batch_size):
        if getattr(model, "kind", None) == "masked_image_model":
            tokens = model.encode(chunk, mask_ratio=0.0)[0]
        else:
            tokens = model.forward_features(chunk)
        out.append(tokens[:, 1:].mean(1).float().cpu())
    return torch.cat(out).numpy()


def linear_probe(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 c: float = 1.0) -> float:
    """Test accuracy of a multinomial logistic regression (scikit-learn, L2 strength 1/c) on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, xte = frozen_features(model, train[0]), frozen_features(model, test[0])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    clf.fit(xtr, train[1].numpy())
    return float((clf.predict(xte) == test[1].numpy()).mean())
