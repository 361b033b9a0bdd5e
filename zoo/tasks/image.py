"""Image classification."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from .base import ZooTask


class ImageClassification(ZooTask):
    """Cross-entropy with label smoothing; logs train/loss, val/loss, val/acc, test/acc.

    `mixup` / `cutmix` > 0 mix training batches with timm's `Mixup` (Beta(alpha, alpha) weights, one
    of the two per batch when both are set); the loss then takes its soft targets, label smoothing included.
    """

    test_metrics = ("test/acc",)

    def __init__(self, model: str = "vit_mnist", label_smoothing: float = 0.1, mixup: float = 0.0, cutmix: float = 0.0,
                 init_from: str | None = None, **kwargs):
        """init_from: a checkpoint or run folder whose tensors of matching name and shape are copied in (e.g. the
        encoder of an MAE pre-training run, configs/mae_mnist.yaml, into the ViT with the same encoder)."""
        super().__init__(model, **kwargs)
        if init_from:
            from .text import load_matching

            self.init_report = load_matching(self.model, init_from)
        if mixup < 0 or cutmix < 0:
            raise ValueError(f"mixup and cutmix are Beta(alpha, alpha) parameters and must be >= 0, got {mixup}, {cutmix}")
        num_classes = self.model.num_classes
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.mixer = None
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup

            self.mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(images, targets, label_smoothing left to apply): class ids when not mixing, else timm's
        mixed images and soft targets (smoothing already in them). timm mixes pairs, so an odd-sized
        batch (a last partial batch) is left unmixed."""
        if self.mixer is None or len(images) % 2:
            return images, labels, self.hparams.label_smoothing
        images, targets = self.mixer(images, labels)
        return images, targets, 0.0

    def training_step(self, batch, batch_idx):
        images, labels, smoothing = self.mix(*batch)
        loss = F.cross_entropy(self(images), labels, label_smoothing=smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log_mean("val/loss", F.cross_entropy(logits, labels), len(labels), prog_bar=True)
        self.val_acc(logits, labels)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        images, labels = batch
        self.test_acc(self(images), labels)
        self.log("test/acc", self.test_acc)

    def predict_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        probs = self(images).float().softmax(-1)
        pred = probs.argmax(-1)
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None) if self._trainer is not None else None
        out = {"pred": pred, "prob": probs.max(-1).values}
        if names:
            out["label"] = [names[i] for i in pred.tolist()]
        return out
