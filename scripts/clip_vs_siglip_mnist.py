"""Zero-shot accuracy of clip_mnist trained with the softmax loss and with the sigmoid (SigLIP) loss.

    python scripts/clip_vs_siglip_mnist.py RUN_DIR_OR_CKPT ...   # prints one JSON object per run

For each checkpoint (a run directory's best checkpoint, else the file given) on the 1,000 MNIST-5k
test images: accuracy with the HELD-OUT prompt templates (never seen in training) ensembled over all
languages, per language, and, for contrast, with the training templates.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.data import multimodal as mm
from zoo.runs import load_run, read_checkpoint


def best_checkpoint(source: Path) -> Path:
    if source.is_file():
        return source
    found = sorted(source.rglob("best-*.ckpt"))
    if not found:
        raise FileNotFoundError(f"{source} holds no best-*.ckpt; pass a run directory written by `zoo fit` or a checkpoint")
    return found[-1]


@torch.no_grad()
def evaluate(ckpt: Path) -> dict:
    model = load_run(str(ckpt)).model.eval()
    hp = read_checkpoint(ckpt).get("hyper_parameters", {})
    dm = mm.MNISTCaptionsContrastive(batch_size=250, languages=list(mm.LANGUAGES))
    dm.setup("test")
    images, labels = [], []
    for batch in dm.test_dataloader():
        out = dm.on_after_batch_transfer(batch, 0)  # normalised images and their labels (no trainer: evaluation)
        images.append(out["images"])
        labels.append(out["labels"])
    images, labels = torch.cat(images), torch.cat(labels)
    feats = model.encode_image(images)

    def accuracy(templates, languages) -> float:
        enc = dm.encode(mm.class_prompts(templates, languages))
        classifier = model.zero_shot_classifier(enc["input_ids"], enc["attention_mask"], 10)
        return round(((feats @ classifier.T).argmax(-1) == labels).float().mean().item(), 4)

    return {
        "checkpoint": str(ckpt), "loss": hp.get("loss", "clip"),
        "logit_scale": round(model.scale().item(), 3),
        "logit_bias": None if model.logit_bias is None else round(model.logit_bias.item(), 3),
        "zero_shot_held_out": accuracy(mm.HELD_OUT_TEMPLATES, mm.LANGUAGES),
        "zero_shot_held_out_per_language": {lang: accuracy(mm.HELD_OUT_TEMPLATES, (lang,)) for lang in mm.LANGUAGES},
        "zero_shot_train_templates": accuracy(mm.TRAIN_TEMPLATES, mm.LANGUAGES),
    }


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(json.dumps(evaluate(best_checkpoint(Path(arg)))))
