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
# # Lesson 9 — Smaller and faster: distillation, int8 quantization, mixed precision
#
# Three ways to make a trained model cheaper, each a few lines in zoo (`zoo/compress.py`,
# `zoo/tasks/distill.py`).
#
# **Knowledge distillation** (Hinton et al. 2015): a small *student* learns from the labels and from
# the softened output distribution of a large *teacher*, which says not only "this is a 4" but also
# "and it looks a little like a 9":
#
# $$\mathcal{L} = (1 - \alpha)\, \mathrm{CE}(y, z_s) + \alpha\, \tau^2\,
#   \mathrm{KL}\big(\mathrm{softmax}(z_t/\tau)\ \|\ \mathrm{softmax}(z_s/\tau)\big)$$
#
# ($\tau$ the temperature; $\tau^2$ keeps the gradient scale independent of $\tau$).
# [`distillation_loss`][zoo.tasks.distill.distillation_loss] is this formula; DeiT's distillation
# token and feature hints (`configs/vit_mnist_distill.yaml`) build on it.
#
# **Int8 dynamic quantization**: the weights of every Linear layer are stored as 8-bit integers with
# one scale, $w \approx s_w\, \mathrm{round}(w / s_w)$ with $s_w = \max|w| / 127.5$; at run time each
# input is quantized the same way (an affine map onto unsigned 8-bit integers, from its own min and
# max) and the product runs in integer arithmetic. Four times smaller weights, usually faster on CPU,
# for a small loss of accuracy. [`quantize_int8`][zoo.compress.quantize_int8].
#
# **Mixed precision**: compute in 16-bit floats (bfloat16: float32's exponent range with an 8-bit
# mantissa, relative rounding error $2^{-8} \approx 0.4\%$) where it is safe, keep float32 where it is
# not; `torch.autocast` decides per operation from two lists, and `zoo fit --trainer.precision bf16-mixed`
# trains that way. The lists depend on the device: on a CUDA GPU softmax, the norms and the losses run in
# float32; on the CPU (this lesson) autocast casts the matrix products down and the losses up, and leaves
# softmax and layer norm alone: they run in the dtype they are given, bfloat16 after a matrix product.

# %%
import warnings

import _lesson
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.compress import cpu_latency, quantize_int8, size_on_disk
from zoo.data.images import Digits
from zoo.tasks.distill import distillation_loss
from zoo.viz import mnist_test_images

_lesson.setup()

# %% [markdown]
# ## Distillation
#
# The distillation term by hand, against zoo's loss:

# %%
z_s, z_t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(10, (8,))
alpha, tau = 0.7, 2.0
p_t = F.softmax(z_t / tau, -1)
kl = (p_t * (p_t.log() - F.log_softmax(z_s / tau, -1))).sum(-1).mean()
by_hand = (1 - alpha) * F.cross_entropy(z_s, y) + alpha * tau**2 * kl
torch.testing.assert_close(distillation_loss(z_s, z_t, y, alpha=alpha, tau=tau)["loss"], by_hand)
print("hand-written distillation loss == zoo.tasks.distill.distillation_loss")

# %% [markdown]
# A small experiment on the 8×8 digits: a teacher MLP trained on every training label; then two
# identical small students that see only **60 labelled images**, one trained on those labels alone,
# the other also on the teacher's soft outputs for all the training images (labels unused).

# %%
dm = Digits()
dm.setup()
x_train, y_train = (t.flatten(1) if t.is_floating_point() else t for t in dm.splits["train"].tensors)
x_test, y_test = (t.flatten(1) if t.is_floating_point() else t for t in dm.splits["test"].tensors)
labelled = torch.cat([(y_train == c).nonzero().flatten()[:6] for c in range(10)])  # 6 per class


def mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def accuracy(model) -> float:
    with torch.no_grad():
        return (model(x_test).argmax(-1) == y_test).float().mean().item()


teacher = mlp(256)
opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
for _ in range(300):
    loss = F.cross_entropy(teacher(x_train), y_train)
    opt.zero_grad()
    loss.backward()
    opt.step()
teacher.eval()
with torch.no_grad():
    teacher_logits = teacher(x_train)
print(f"teacher (hidden 256, all {len(x_train)} labels): test accuracy {accuracy(teacher):.3f}")

curves = {}
for name in ("60 labels only", "60 labels + teacher"):
    torch.manual_seed(1)
    student = mlp(32)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    curves[name] = []
    for step in range(300):
        loss = F.cross_entropy(student(x_train[labelled]), y_train[labelled])
        if "teacher" in name:  # the soft term over all the training images
            loss = loss + distillation_loss(student(x_train), teacher_logits, y_train, alpha=1.0, tau=4.0)["distill"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:
            curves[name].append(accuracy(student))
    print(f"student (hidden 32), {name}: test accuracy {curves[name][-1]:.3f}")
gain = curves["60 labels + teacher"][-1] - curves["60 labels only"][-1]
assert gain > 0.02, gain

# %% [markdown]
# ## Int8 dynamic quantization
#
# First one Linear layer by hand, against PyTorch's quantized kernel (fbgemm on x86 keeps
# activations to 7 bits, `reduce_range`):

# %%
layer = nn.Linear(64, 32)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    q_layer = torch.ao.quantization.quantize_dynamic(nn.Sequential(layer), {nn.Linear}, dtype=torch.qint8)[0]
s_w = layer.weight.abs().max().item() / 127.5
w_int = torch.round(layer.weight / s_w).clamp(-128, 127)
assert torch.equal(w_int.to(torch.int8), q_layer.weight().int_repr())  # the same integers
x = torch.randn(4, 64)
qmax = 127 if torch.backends.quantized.engine in ("fbgemm", "x86") else 255
lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
s_x = (hi - lo) / qmax
zero = round(-lo / s_x)
x_int = (torch.round(x / s_x) + zero).clamp(0, qmax)
with torch.no_grad():
    ours = ((x_int - zero) @ w_int.T) * (s_x * s_w) + layer.bias  # integer product, one rescale
    torch.testing.assert_close(ours, q_layer(x), rtol=1e-4, atol=1e-4)
    print(f"int8 by hand == torch.ao quantized Linear; error against float32: {(ours - layer(x)).abs().max():.4f}")

# %% [markdown]
# Then the shipped MNIST ViT, whole: size, latency and accuracy on 200 test digits.

# %%
vit = zoo.create_model("vit_mnist.mnist5k", pretrained=True).eval()
vit_int8 = quantize_int8(vit, backend="torch.ao")
images, digits = mnist_test_images(per_class=20)
with torch.no_grad():
    logits_fp32, logits_int8 = vit(images), vit_int8(images)
acc_fp32 = (logits_fp32.argmax(-1) == digits).float().mean().item()
acc_int8 = (logits_int8.argmax(-1) == digits).float().mean().item()
sizes = {"float32": size_on_disk(vit) / 1e6, "int8": size_on_disk(vit_int8) / 1e6}
latency = cpu_latency({"float32": vit, "int8": vit_int8}, (images[:16],), rounds=5, threads=1)
agree = (logits_fp32.argmax(-1) == logits_int8.argmax(-1)).float().mean().item()
print(f"size {sizes['float32']:.2f} MB -> {sizes['int8']:.2f} MB; latency (batch 16, 1 thread) "
      f"{latency['float32']:.1f} -> {latency['int8']:.1f} ms; accuracy {acc_fp32:.3f} -> {acc_int8:.3f}")
assert sizes["int8"] < 0.5 * sizes["float32"] and agree > 0.95
assert acc_fp32 > 0.9 and abs(acc_int8 - acc_fp32) <= 0.03  # the trained model, and int8 keeps it

# %% [markdown]
# ## Mixed precision
#
# The same forward pass under `torch.autocast` in bfloat16: the matrix products run in 16 bits.

# %%
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    logits_bf16 = vit(images).float()
rel = ((logits_bf16 - logits_fp32).abs().max() / logits_fp32.abs().max()).item()
agree_bf16 = (logits_bf16.argmax(-1) == logits_fp32.argmax(-1)).float().mean().item()
print(f"bf16 autocast: max relative deviation {rel:.4f}, same prediction on {agree_bf16:.1%} of the images")
assert rel < 0.1 and agree_bf16 > 0.95

# what autocast chose on the CPU, operation by operation
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    product = images[:4].flatten(1) @ torch.randn(images[0].numel(), 10)
    chosen = {"matmul": product.dtype, "softmax": product.softmax(-1).dtype,
              "layer_norm": F.layer_norm(product, (10,)).dtype, "cross_entropy": F.cross_entropy(product, digits[:4]).dtype}
print("bf16 autocast on the CPU:", {op: str(dtype).removeprefix("torch.") for op, dtype in chosen.items()})
assert chosen == {"matmul": torch.bfloat16, "softmax": torch.bfloat16, "layer_norm": torch.bfloat16,
                  "cross_entropy": torch.float32}

# %%
fig, axes = plt.subplots(1, 3, figsize=(17, 4), layout="constrained")
steps = [20 * (i + 1) for i in range(len(curves["60 labels only"]))]
for name, accs in curves.items():
    axes[0].plot(steps, accs, marker="o", label=name)
axes[0].axhline(accuracy(teacher), color="gray", ls=":", label="teacher (all labels)")
axes[0].set(xlabel="step", ylabel="test accuracy", title="Distillation: one student, with and without a teacher")
axes[0].legend(fontsize=8)
bars = axes[1].bar(["float32", "int8"], [sizes["float32"], sizes["int8"]], color=["C0", "C1"])
axes[1].bar_label(bars, [f"{v:.2f} MB\n{latency[k]:.1f} ms" for k, v in sizes.items()])
axes[1].set(ylabel="state_dict size (MB)", ylim=(0, 1.3 * sizes["float32"]),
            title=f"vit_mnist int8: accuracy {acc_fp32:.3f} -> {acc_int8:.3f}")
axes[2].hist((logits_bf16 - logits_fp32).flatten(), bins=60, alpha=0.7, label="bf16 autocast")
axes[2].hist((logits_int8 - logits_fp32).flatten(), bins=60, alpha=0.7, label="int8")
axes[2].set(xlabel="logit - float32 logit", ylabel="count", title="Deviation from float32 (200 test digits)")
axes[2].legend()
_lesson.save(fig, "lesson_09_compression.png")

# %% [markdown]
# ![Distillation gain, int8 size and latency, deviations](../figures/lesson_09_compression.png)
#
# Latency measured on one CPU thread of a shared machine, and a model this small gains little from int8:
# dynamic quantization re-quantizes every activation at run time, and repeated runs here put int8
# anywhere from 10% faster to 40% slower than float32 at batch 16 (the figure is one draw). The size
# gain holds; the speed gain needs larger matrix products: `zoo compress latency --model bert_base
# --model-kwargs '{"head": "cls"}'` measured int8 2.3x faster than float32 here (batch 1, 128 tokens).
#
# ## What to try next
#
# * The full recipes: `zoo fit --config configs/resnet_mnist_teacher.yaml`, then
#   `zoo fit --config configs/vit_mnist_distill.yaml` (DeiT-style student with feature hints).
# * `zoo compress --ckpt CKPT --quantize int8 --prune 0.5 --prune-kind heads --data zoo.data.images.MNIST5k --out DIR`
#   quantizes and prunes a checkpoint and reports size, latency and accuracy.
# * `zoo compress latency --model bert_base --model-kwargs '{"head": "cls"}'` compares float32, int8 and bf16
#   at a published size (a row per installed int8 backend, and bf16 autocast over the float32 weights).
#
# Next: [Lesson 10 — the variants](10_variants.md).
