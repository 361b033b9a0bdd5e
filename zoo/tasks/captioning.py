"""Image-to-text training: teacher-forced cross-entropy; validated by exact match of generated captions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from .base import ZooTask


class CaptioningTask(ZooTask):
    """Logs train/loss, val/loss and val|test/exact_match: the fraction of (image, language) pairs
    whose greedy caption, decoded to text, equals the reference caption exactly."""

    test_metrics = ("test/exact_match",)

    def __init__(self, model: str = "vit_captioner_mnist", label_smoothing: float = 0.0, max_new_tokens: int = 20, **kwargs):
        super().__init__(model, **kwargs)
        self.val_em = MeanMetric()
        self.test_em = MeanMetric()

    def forward(self, images, decoder_input_ids, decoder_attention_mask=None):
        return self.model(images, decoder_input_ids, decoder_attention_mask)

    def _loss(self, batch, smoothing: float = 0.0):
        logits = self(batch["images"], batch["decoder_input_ids"], batch["decoder_attention_mask"])
        return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100, label_smoothing=smoothing)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch, self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @torch.no_grad()
    def exact_matches(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B * languages,) 1.0 where the generated caption equals the reference, for every language."""
        dm = self.trainer.datamodule
        tok, hits = dm.tokenizer, []
        for li, start in enumerate(dm.language_token_ids.tolist()):
            out = self.model.generate(images, max_new_tokens=self.hparams.max_new_tokens, decoder_start_token_id=start)
            texts = tok.batch_decode(out[:, 1:].tolist(), skip_special_tokens=True)
            refs = [dm.reference[li * 10 + int(d)] for d in labels]
            hits += [float(t.strip() == r) for t, r in zip(texts, refs)]
        return torch.tensor(hits, device=images.device)

    def validation_step(self, batch, batch_idx):
        # weighted by the batch's caption tokens: the split's mean loss per token, whatever the batch size
        self.log_mean("val/loss", self._loss(batch), (batch["targets"] != -100).sum(), prog_bar=True)
        self.val_em(self.exact_matches(batch["images"], batch["labels"]))
        self.log("val/exact_match", self.val_em, prog_bar=True)

    def test_step(self, batch, batch_idx):
        self.test_em(self.exact_matches(batch["images"], batch["labels"]))
        self.log("test/exact_match", self.test_em)

    def predict_step(self, batch, batch_idx):
        """A greedy caption of every image in every language of the data module: "lang<TAB>caption" lines."""
        dm = self.trainer.datamodule
        images = batch["images"] if isinstance(batch, dict) else batch[0]
        lines = [[] for _ in range(len(images))]
        for lang, start in zip(dm.languages, dm.language_token_ids.tolist()):
            out = self.model.generate(images, max_new_tokens=self.hparams.max_new_tokens, decoder_start_token_id=start)
            for i, text in enumerate(dm.tokenizer.batch_decode(out[:, 1:].tolist(), skip_special_tokens=True)):
                lines[i].append(f"{lang}: {text.strip()}")
        return [" | ".join(row) for row in lines]
