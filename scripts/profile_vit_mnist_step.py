"""Where the time of the default ViT recipe's training step goes (issue 22's time-to-accuracy goal).

    python scripts/profile_vit_mnist_step.py            # 2 threads, batch 128 (the recipe's)

Prints, interleaved in one process (median of 5 rounds of 4 steps): the step time of vit_mnist and of smaller
layouts; eager vs torch.compile (and the compile time) vs bf16 autocast; the attention kernels at the recipe's
shape (50 tokens, 4 heads of 32); and the profiler's table of the eager step.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile

import zoo

torch.set_num_threads(2)
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))


def trainer(bf16=False, compiled=False, **kw):
    torch.manual_seed(0)
    m = zoo.create_model("vit_mnist", **kw).train()
    if compiled:
        m.compile()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(m(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m, step


def interleaved(fns: dict, rounds=5, per=4) -> dict:
    for f in fns.values():
        f(), f()
    t = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            s = time.perf_counter()
            for _ in range(per):
                fns[k]()
            t[k].append((time.perf_counter() - s) / per)
    return {k: 1e3 * statistics.median(v) for k, v in t.items()}


layouts = {"recipe (dim 128, depth 6)": {}, "depth 4": {"depth": 4}, "dim 96": {"dim": 96},
           "dim 96, depth 4": {"dim": 96, "depth": 4}, "dim 64": {"dim": 64}}
steps = {k: trainer(**kw) for k, kw in layouts.items()}
ms = interleaved({k: s for k, (_, s) in steps.items()})
print("training step, batch 128, float32 eager:")
for k, (m, _) in steps.items():
    print(f"  {k:28s} {sum(p.numel() for p in m.parameters()) / 1e6:5.2f}M params {ms[k]:7.1f} ms")

_, comp = trainer(compiled=True)
t0 = time.perf_counter()
comp(), comp()
print(f"torch.compile (inductor): the first two steps take {time.perf_counter() - t0:.1f} s")
ms = interleaved({"eager": steps["recipe (dim 128, depth 6)"][1], "compiled": comp, "bf16": trainer(bf16=True)[1]})
print("recipe step: " + ", ".join(f"{k} {v:.1f} ms ({ms['eager'] / v:.2f}x eager)" for k, v in ms.items()))

q, k, v = (torch.randn(128, 4, 50, 32, requires_grad=True) for _ in range(3))


def sdpa(backend):
    def f():
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v).sum().backward()
    return f


def manual():
    ((q @ k.transpose(-1, -2) * 32 ** -0.5).softmax(-1) @ v).sum().backward()


ms = interleaved({"flash": sdpa(SDPBackend.FLASH_ATTENTION), "math": sdpa(SDPBackend.MATH), "matmul+softmax": manual})
print("attention of one layer, forward + backward, (128, 4, 50, 32): " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))

step = steps["recipe (dim 128, depth 6)"][1]
with profile() as p:
    for _ in range(5):
        step()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
