"""Contrastive image–text training (CLIP) with zero-shot classification as the validation metric.

Under DDP the loss gathers the features of every process (`zoo.models.clip.distributed_clip_loss`),
so each process contrasts its images against the texts of the global batch.

`loss: siglip` trains with the sigmoid loss instead (zoo.tasks.losses, Zhai et al. 2023): the model
gets a learnable logit bias and the paper's initial temperature and bias (t' = log 10, b = -10)
unless model_kwargs set them.
"""
from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy

from ..models.clip import clip_loss, distributed_clip_loss, gather_features  # noqa: F401  (the DDP-aware loss)
from .base import ZooTask
from .losses import SIGLIP_INIT, check_loss, distributed_contrastive_loss, siglip_loss


class ContrastiveTask(ZooTask):
    """Symmetric InfoNCE on image–caption batches; logs val/zero_shot_acc and test/zero_shot_acc
    from the data module's held-out prompts (`zero_shot_prompts()`), ensembled over templates."""

    test_metrics = ("test/zero_shot_acc",)

    def __init__(self, model: str = "clip_mnist", num_classes: int = 10, label_targets: bool = False, loss: str = "clip",
                 **kwargs):
        """label_targets: treat every pair of the same class as a positive (UniCL) instead of
        CLIP's one-positive-per-row targets; needs `labels` in the batch.
        loss: 'clip' (softmax InfoNCE) or 'siglip' (sigmoid; adds the logit bias, SIGLIP_INIT)."""
        check_loss(loss)
        if loss == "siglip":
            kwargs["model_kwargs"] = {**SIGLIP_INIT, **(kwargs.get("model_kwargs") or {})}
        super().__init__(model, **kwargs)
        self.num_classes = num_classes
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self._classifier: torch.Tensor | None = None

    def forward(self, images, input_ids, attention_mask=None):
        return self.model(images, input_ids, attention_mask)

    def compile_targets(self):
        """Training runs the towers through encode_image / encode_text, not the model's forward."""
        return [m for m in (self.model.visual, self.model.text, self.model.attn_pool) if m is not None]

    def training_step(self, batch, batch_idx):
        img = self.model.encode_image(batch["images"])
        txt = self.model.encode_text(batch["input_ids"], batch["attention_mask"])
        scale = self.model.scale()
        loss = distributed_contrastive_loss(self.hparams.loss, img, txt, scale, self.model.bias(),
                                            batch["labels"] if self.hparams.label_targets else None)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", scale.detach())
        if self.model.logit_bias is not None:
            self.log("train/logit_bias", self.model.logit_bias.detach())
        return loss

    def local_loss(self, img, txt):
        """The training loss on this batch alone (validation)."""
        if self.hparams.loss == "siglip":
            return siglip_loss(img, txt, self.model.scale(), self.model.bias())
        return clip_loss(img, txt, img, txt, self.model.scale())

    def _zero_shot_classifier(self) -> torch.Tensor:
        dm = self.trainer.datamodule
        if not hasattr(dm, "zero_shot_prompts"):
            raise TypeError(f"{type(dm).__name__} has no zero_shot_prompts(); use zoo.data.multimodal.MNISTCaptionsContrastive "
                            "or a data module that provides held-out class prompts")
        prompts = {k: v.to(self.device) for k, v in dm.zero_shot_prompts().items()}
        return self.model.zero_shot_classifier(prompts["input_ids"], prompts["attention_mask"], self.num_classes)

    def on_validation_epoch_start(self):
        self._classifier = self._zero_shot_classifier()

    def on_test_epoch_start(self):
        self._classifier = self._zero_shot_classifier()

    def validation_step(self, batch, batch_idx):
        img = self.model.encode_image(batch["images"])
        txt = self.model.encode_text(batch["input_ids"], batch["attention_mask"])
        self.log_mean("val/loss", self.local_loss(img, txt), len(img), prog_bar=True)
        self.val_acc(self.model.zero_shot_logits(batch["images"], self._classifier), batch["labels"])
        self.log("val/zero_shot_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        self.test_acc(self.model.zero_shot_logits(batch["images"], self._classifier), batch["labels"])
        self.log("test/zero_shot_acc", self.test_acc)

    def predict_step(self, batch, batch_idx):
        """Zero-shot over the data module's `predict_labels` (candidate texts), else its held-out class prompts."""
        dm = self.trainer.datamodule
        images = batch["images"] if isinstance(batch, dict) else batch[0]
        labels = getattr(dm, "predict_labels", None)
        if labels:
            enc = {k: v.to(self.device) for k, v in dm.encode(labels).items()}
            classifier = self.model.encode_text(enc["input_ids"], enc["attention_mask"])
        else:
            classifier = self._zero_shot_classifier()
            labels = list(getattr(dm, "class_names", None) or range(self.num_classes))
        probs = self.model.zero_shot_logits(images, classifier).float().softmax(-1)
        pred = probs.argmax(-1)
        return {"pred": pred, "prob": probs.max(-1).values, "label": [str(labels[i]) for i in pred.tolist()]}
