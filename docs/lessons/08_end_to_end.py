# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Lesson 8 — End to end: data, training, saving, export, prediction
#
# A model is useful once it leaves the notebook. This lesson walks the whole path on a problem small
# enough to train in seconds: scikit-learn's 1,797 handwritten digits of 8×8 pixels, with a small
# Vision Transformer (`vit_digits`: 4×4 patches of 2×2 pixels, 4 blocks of width 64).
#
# 1. **Preprocessing**: pixels scaled to $[0, 1]$, then normalised, $x' = (x - \mu)/\sigma$, with the
#    $\mu, \sigma$ the model will see again at prediction time; a stratified split so that every
#    digit is in train, validation and test in the same proportion.
# 2. **Training**: minimise the mean cross-entropy over the training set with AdamW,
#
#     $$\mathcal{L}(\theta) = -\frac{1}{N} \sum_{n=1}^{N} \log \mathrm{softmax}\big(f_\theta(x'_n)\big)_{y_n}$$
#
# 3. **Saving** with `save_pretrained`: `config.json` (with the $\mu, \sigma$ of step 1) + `model.safetensors` +
#    a model card, the Hugging Face layout (`zoo/hub.py`). Loading never runs pickled code.
# 4. **Export** to ONNX (`zoo/export.py`): a graph that ONNX Runtime, a browser or a phone can run
#    without PyTorch; zoo checks the exported graph against PyTorch before keeping it.
# 5. **Prediction** with the exported graph; and serving: `zoo serve --model DIR` puts the same model
#    behind HTTP with dynamic batching (see [Serve a model](../howto/serve.md)).
#
# The recipe `configs/vit_digits.yaml` does steps 1–2 with Lightning (`zoo fit --config
# configs/vit_digits.yaml`); here we write the loop ourselves.

# %%
import tempfile
from collections import Counter
from pathlib import Path

import _lesson
import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort
import torch

import zoo
from zoo.data.images import Digits
from zoo.export import export_file

_lesson.setup()

# %% [markdown]
# ## 1. Preprocessing, by hand and with zoo's data module

# %%
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

raw = load_digits()
# the 17 grey levels 0..16 as 8-bit pixels 0..255 (rounded down), as an image file stores them, then [0, 1]
pixels = torch.from_numpy((raw.images * (255.0 / 16.0)).astype(np.uint8))
images = pixels.float() / 255.0
labels = torch.tensor(raw.target)
mean, std = 0.3, 0.35  # what Digits uses; saved with the model for prediction time (step 3)
x = ((images - mean) / std)[:, None]  # (N, 1, 8, 8), channels first
train_idx, test_idx = train_test_split(np.arange(len(x)), test_size=0.2, stratify=raw.target, random_state=0)
print(f"{len(train_idx)} training and {len(test_idx)} test images; class counts in test:",
      np.bincount(raw.target[test_idx]).tolist())

dm = Digits()  # zoo's module does the same (its own stratified 70/10/20 split, seed 0)
dm.setup()
x_train, y_train = dm.splits["train"].tensors
x_test, y_test = dm.splits["test"].tensors

# every image of zoo's three splits, with its label, is one of ours: the same pixels, normalised alike
ours = Counter(map(tuple, torch.cat([labels[:, None].float(), x.flatten(1)], dim=1).tolist()))
for split, (xs, ys) in ((s, dm.splits[s].tensors) for s in ("train", "val", "test")):
    theirs = Counter(map(tuple, torch.cat([ys[:, None].float(), xs.flatten(1)], dim=1).tolist()))
    assert theirs <= ours, f"{split}: {sum((theirs - ours).values())} images that our preprocessing does not give"
print("by hand == zoo.data.images.Digits: train, val and test hold our normalised images, with their labels")

# %% [markdown]
# ## 2. Training

# %%
model = zoo.create_model("vit_digits")
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
epochs, batch = 10, 64
steps = epochs * (len(x_train) // batch)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
generator = torch.Generator().manual_seed(0)
history = []
model.train()
for epoch in range(epochs):
    order = torch.randperm(len(x_train), generator=generator)
    for i in range(len(x_train) // batch):
        rows = order[i * batch:(i + 1) * batch]
        loss = torch.nn.functional.cross_entropy(model(x_train[rows]), y_train[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(-1) == y_test).float().mean().item()
    model.train()
    history.append((loss.item(), acc))
    print(f"epoch {epoch + 1:2d}: loss {loss.item():.3f}, test accuracy {acc:.3f}")
model.eval()
assert history[-1][1] > 0.85, history[-1]

# %% [markdown]
# The same architecture trained by the recipe (`zoo fit --config configs/vit_digits.yaml`, with
# augmentation and many more epochs) ships with zoo as `vit_digits.sklearn_digits`; its card states
# the accuracy it measured on this test split, and we measure it again:

# %%
shipped = zoo.create_model("vit_digits.sklearn_digits", pretrained=True).eval()
with torch.no_grad():
    shipped_acc = (shipped(x_test).argmax(-1) == y_test).float().mean().item()
card = zoo.pretrained_cfg("vit_digits.sklearn_digits").metric
print(f"shipped vit_digits.sklearn_digits: test accuracy {shipped_acc:.4f} (its card: {card['value']})")
assert abs(shipped_acc - card["value"]) < 1e-3

# %% [markdown]
# ## 3. `save_pretrained`, and back

# %%
scratch = tempfile.TemporaryDirectory(prefix="zoo-lesson8-")  # removed at the end of the lesson
workdir = Path(scratch.name)
model.save_pretrained(workdir / "vit_digits_mine", meta=dm.run_metadata)  # + the labels and how images were read
print(sorted(p.name for p in (workdir / "vit_digits_mine").iterdir()))
reloaded = zoo.from_pretrained(workdir / "vit_digits_mine")
with torch.no_grad():
    torch.testing.assert_close(reloaded(x_test), model(x_test))
# how zoo.resolve_data_config and zoo serve will read new images (without the metadata: mean = std = 0.5)
data_config = zoo.resolve_data_config(reloaded)
assert (data_config["mean"], data_config["std"]) == ((mean,), (std,)), data_config
print("from_pretrained gives back the same model, and the normalisation it was trained with:", data_config)

# %% [markdown]
# ## 4. Export to ONNX, 5. predict with ONNX Runtime

# %%
onnx_path = workdir / "vit_digits.onnx"
print(export_file(model, onnx_path))  # checked in onnxruntime at another batch size before it is kept
session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
onnx_logits = torch.from_numpy(session.run(None, {name: x_test.numpy()})[0])
with torch.no_grad():
    torch_logits = model(x_test)
torch.testing.assert_close(onnx_logits, torch_logits, rtol=1e-4, atol=1e-4)
onnx_acc = (onnx_logits.argmax(-1) == y_test).float().mean().item()
print(f"ONNX Runtime test accuracy {onnx_acc:.3f} ({len(y_test)} images), file {onnx_path.stat().st_size / 1e3:.0f} kB")

# %%
fig = plt.figure(figsize=(12, 4))
curve = fig.add_subplot(1, 3, 1)
curve.plot(range(1, epochs + 1), [h[0] for h in history], marker="o", label="training loss (last batch)")
curve.plot(range(1, epochs + 1), [h[1] for h in history], marker="o", label="test accuracy")
curve.axhline(shipped_acc, color="gray", ls=":", label="shipped vit_digits.sklearn_digits")
curve.set(xlabel="epoch", title="vit_digits, trained in this lesson")
curve.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8)  # below: clear of the curves and the 0.97 line
probs = onnx_logits.softmax(-1)
for i in range(12):
    ax = fig.add_subplot(3, 9, (i // 6) * 9 + 4 + i % 6)  # two rows of six, right of the curve
    ax.imshow(x_test[i, 0], cmap="gray_r")
    guess = int(probs[i].argmax())
    ax.set_title(f"{guess} ({probs[i, guess]:.2f})", fontsize=8, color="green" if guess == int(y_test[i]) else "red")
    ax.axis("off")
fig.text(0.68, 0.2, f"predictions of the exported ONNX graph\n(test accuracy {onnx_acc:.3f})", ha="center")
_lesson.save(fig, "lesson_08_end_to_end.png")
del session  # ONNX Runtime holds the file open until its session goes
scratch.cleanup()

# %% [markdown]
# ![Training curve and ONNX predictions](../figures/lesson_08_end_to_end.png)
#
# ## What to try next
#
# * The same path from the command line: `zoo fit --config configs/vit_digits.yaml`, then
#   `zoo export --model runs/vit_digits --out digits.onnx --check`, `zoo predict --ckpt_path
#   runs/vit_digits/version_0/checkpoints/last.ckpt`, and `zoo serve --model runs/vit_digits`.
# * Publish it: `zoo.hub.push_to_hub(model, "you/vit-digits")` (see [Pretrained weights and the Hub](../howto/pretrained.md)).
# * Export a text model: `zoo export --model bert_tiny --model-kwargs '{"head": "cls"}' --out bert.onnx --check`.
#
# Next: [Lesson 9 — compression](09_compression.md).
