"""Would bf16 weights with float32 master copies pay on this CPU? (issue 22, "where it helps")

    python scripts/bf16_master_weights_probe.py [MODEL ...]   # default: the goal models of `zoo bench speed --goals`

For each model, three training steps at the goal batch and lengths, timed in the same interleaved rounds (2 threads,
the heap policy of `zoo bench`):
- autocast: float32 weights, the forward under bf16 autocast (what `precision: bf16-mixed` runs): autocast casts
  each weight to bf16 in every forward, and the weights' bf16 gradients back to float32;
- master: the weights themselves in bf16 (no casts in the forward, bf16 gradients), a float32 copy of each kept for
  the optimiser: the gradients cast to float32, the fused AdamW steps the copies, the copies written back to bf16;
- fp32: float32 weights, no autocast.
Both bf16 steps use the optimiser `zoo fit` builds. The master step is not the same computation: with bf16
embedding tables the residual stream starts in bf16, so it is timed here, not trained.
"""
from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_train_step import goal_workload  # noqa: E402

from zoo.allocator import keep_freed_memory  # noqa: E402
from zoo.bench.speed import GOALS, first_tensor, make_step, time_interleaved  # noqa: E402
from zoo.tasks.base import make_optimizer  # noqa: E402


def master_step(wl):
    """One training step of a bf16 copy of the workload's model, its float32 master weights stepped by AdamW."""
    model = copy.deepcopy(wl.model).to(torch.bfloat16)
    params = list(model.parameters())
    master = [p.detach().float() for p in params]
    opt = make_optimizer("adamw", [{"params": master, "weight_decay": 0.01}], lr=1e-5, betas=(0.9, 0.999))

    def step():
        model.train()
        with torch.autocast("cpu", torch.bfloat16):
            loss = first_tensor(wl.call(model, wl.inputs)).float().square().mean()
        loss.backward()
        for m, p in zip(master, params):
            m.grad, p.grad = p.grad.float(), None
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_copy_(params, master)
    return step


def main(names: list[str]) -> None:
    keep_freed_memory()
    torch.set_num_threads(2)
    for name in names:
        wl = goal_workload(name)[0]
        steps = {"autocast": make_step(wl, "train", "bf16"), "master": master_step(wl), "fp32": make_step(wl, "train", "fp32")}
        t = time_interleaved(steps, warmup=2, rounds=9, per_round=2)
        med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
        per_round = sorted(a / b for a, b in zip(t["autocast"], t["master"]))
        print(f"{name}: median autocast {med['autocast']:.0f} ms, master {med['master']:.0f} ms, fp32 {med['fp32']:.0f} ms; "
              f"master vs autocast {med['autocast'] / med['master']:.3f}x (per-step ratios {per_round[len(per_round) // 4]:.3f}-"
              f"{per_round[3 * len(per_round) // 4]:.3f}, quartiles); over fp32: autocast {med['fp32'] / med['autocast']:.2f}x, "
              f"master {med['fp32'] / med['master']:.2f}x", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or [g[0] for g in GOALS])
