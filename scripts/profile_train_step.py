"""Where a float32 training step's time goes, and so what torch.compile could save at most (issue 22).

    python scripts/profile_train_step.py [MODEL ...]    # default: the goal models of `zoo bench speed --goals`

For each model: the zoo's training step as `zoo bench speed --goals` times it (the goal batch and lengths, the
optimiser `zoo fit` builds, 2 threads), profiled once after two warm-up steps. Self CPU time is split into
- matrix kernels: mm / addmm / bmm / baddbmm, the fused attention forward and backward, convolutions;
- the optimiser step (everything under `Optimizer.step`);
- dropout's random masks (bernoulli_);
- the rest: elementwise, norms, softmax, copies, reductions: what inductor's fusion works on.
Compiling leaves the first three as they are on the CPU (inductor calls the same matrix kernels and does not
compile the optimiser here), so 1 / (1 - rest) bounds its speed-up even if the rest vanished. The same step
compiled (torch.compile, inductor, its C++ kernels profiled by name) is split the same way and timed against
eager (median of 5 interleaved steps).
"""
from __future__ import annotations

import statistics
import sys

import torch
import torch._inductor.config
from torch.profiler import profile

from zoo.bench.speed import GOALS, SpeedOptions, build_workloads, make_step, time_interleaved

MATRIX = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation", "aten::mkldnn_convolution",
          "aten::convolution_backward", "aten::_scaled_dot_product_flash_attention_for_cpu",
          "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def split(prof) -> dict[str, float]:
    events = prof.events()
    in_opt = set()
    for e in events:  # ops under the optimiser's step
        if e.name.startswith("Optimizer.step#"):
            in_opt |= {c.id for c in _descendants(e)}
    parts = {"matrix kernels": 0.0, "optimiser step": 0.0, "dropout masks": 0.0, "rest": 0.0}
    for e in events:
        if e.name.startswith("Optimizer.step#") or e.name.startswith("ProfilerStep"):
            continue
        t = e.self_cpu_time_total / 1e3
        if e.id in in_opt:
            parts["optimiser step"] += t
        elif e.name in MATRIX:
            parts["matrix kernels"] += t
        elif e.name == "aten::bernoulli_":
            parts["dropout masks"] += t
        else:
            parts["rest"] += t
    return parts


def _descendants(e):
    for c in e.cpu_children:
        yield c
        yield from _descendants(c)


def main(names: list[str]) -> None:
    torch.set_num_threads(2)
    torch._inductor.config.cpp.enable_kernel_profile = True  # inductor's kernels by name, not one opaque region
    goal = {g[0]: g for g in GOALS}
    for name in names:
        _, batch, seq, tgt = goal.get(name, (name, None, None, None))
        opts = SpeedOptions(batch_size=batch, tgt_len=tgt or 32)
        zoo, _, _ = build_workloads(name, opts, seq or 128)
        steps = {"eager": make_step(zoo, "train", "fp32"), "compiled": make_step(zoo, "train", "fp32", compile=True)}
        times = time_interleaved(steps, warmup=2, rounds=5, per_round=1)
        for setting, step in steps.items():
            with profile() as prof:
                step()
            parts = split(prof)
            total = sum(parts.values())
            print(f"{name} (batch {zoo.batch}{f' x {seq}' if seq else ''}{f' -> {tgt}' if tgt else ''}), float32 "
                  f"{setting} training step: median {1e3 * statistics.median(times[setting]):.0f} ms, profiled self CPU "
                  f"time {total:.0f} ms:")
            for k, v in parts.items():
                print(f"  {k:16s} {v:8.1f} ms  {v / total:6.1%}")
            if setting == "eager":
                print(f"  compile's bound (the rest fused away entirely): {total / (total - parts['rest']):.2f}x")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main(sys.argv[1:] or [g[0] for g in GOALS])
