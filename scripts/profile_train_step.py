"""Where a float32 training step's time goes, and so what torch.compile could save at most (issue 22).

    python scripts/profile_train_step.py [MODEL ...]    # default: the goal models of `zoo bench speed --goals`

For each model: the zoo's training step as `zoo bench speed --goals` times it (the goal batch and lengths, the
optimiser `zoo fit` builds, 2 threads), profiled once after two warm-up steps. Self CPU time is split into
- matrix kernels: mm / addmm / bmm / baddbmm, the fused attention forward and backward, convolutions;
- the optimiser step (everything under `Optimizer.step`);
- dropout's random draws (bernoulli_ in ATen's dropout; random_, the 64-bit draws of `randint`, in the core's,
  zoo.core.layers.dropout);
- copies (copy_ / _to_copy: contiguous copies; under autocast also the casts);
- the rest: elementwise, norms, softmax, reductions.
Compiling leaves the first three as they are on the CPU (inductor calls the same matrix kernels and does not
compile the optimiser here), so 1 / (1 - copies - rest) bounds its speed-up even if its fusion removed all of
the copies and the rest. The same step
compiled (torch.compile, inductor, its C++ kernels profiled by name) is split the same way and timed against
eager (median of 5 interleaved steps).

    python scripts/profile_train_step.py --bf16 [MODEL ...]

The same eager step in float32 and under bf16 autocast, side by side, split as above with the copies (autocast's
casts of weights and activations, and their gradients' casts back) taken out of the rest: what bf16's matrix units
cannot speed up bounds bf16's gain, 1 / (share of the float32 step outside the matrix kernels) even if the
matrix kernels took no time at all.

    python scripts/profile_train_step.py --forward [MODEL ...]   # default: ViT-S/16 and BERT-base

The float32 inference forward of the zoo model and of its peer, profiled with shapes: time and FLOPs of the
linear layers (mm / addmm), the fused attention (4 b h n^2 d FLOPs), the convolutions, and the time of the
rest, each against the sgemm peak that `zoo bench speed` measures: what the forward's utilisation is made of.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch._inductor.config
from torch.profiler import profile

from zoo.allocator import keep_freed_memory
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
    parts = {"matrix kernels": 0.0, "optimiser step": 0.0, "dropout masks": 0.0, "copies": 0.0, "rest": 0.0}
    for e in events:
        if e.name.startswith("Optimizer.step#") or e.name.startswith("ProfilerStep"):
            continue
        t = e.self_cpu_time_total / 1e3
        if e.id in in_opt:
            parts["optimiser step"] += t
        elif e.name in MATRIX:
            parts["matrix kernels"] += t
        elif e.name in ("aten::bernoulli_", "aten::random_"):  # ATen's dropout; the core's (randint's 64-bit draws)
            parts["dropout masks"] += t
        elif e.name in ("aten::copy_", "aten::_to_copy"):
            parts["copies"] += t
        else:
            parts["rest"] += t
    return parts


def _descendants(e):
    for c in e.cpu_children:
        yield c
        yield from _descendants(c)


def goal_workload(name: str, vs_peers: bool = False):
    """The zoo workload (and the peer's, or None) at the goal batch and lengths of `zoo bench speed --goals`."""
    goal = {g[0]: g for g in GOALS}
    _, batch, seq, tgt = goal.get(name, (name, None, None, None))
    zoo, peer, _ = build_workloads(name, SpeedOptions(batch_size=batch, tgt_len=tgt or 32, vs_peers=vs_peers), seq or 128)
    return zoo, peer, seq, tgt


def main_bf16(names: list[str]) -> None:
    """Eager float32 against eager bf16 autocast, split by kind of work."""
    torch.set_num_threads(2)
    for name in names:
        zoo, _, seq, tgt = goal_workload(name)
        steps = {p: make_step(zoo, "train", p) for p in ("fp32", "bf16")}
        times = time_interleaved(steps, warmup=2, rounds=5, per_round=1)
        split_of = {}
        for p, step in steps.items():
            with profile() as prof:
                step()
            split_of[p] = split(prof)
        med = {p: 1e3 * statistics.median(t) for p, t in times.items()}
        print(f"{name} (batch {zoo.batch}{f' x {seq}' if seq else ''}{f' -> {tgt}' if tgt else ''}), eager training "
              f"step: median float32 {med['fp32']:.0f} ms, bf16 {med['bf16']:.0f} ms: {med['fp32'] / med['bf16']:.2f}x")
        print(f"  {'self CPU time':16s} {'float32 ms':>11s} {'bf16 ms':>9s} {'float32/bf16':>13s}")
        for k in split_of["fp32"]:
            a, b = split_of["fp32"][k], split_of["bf16"][k]
            print(f"  {k:16s} {a:11.1f} {b:9.1f} {a / b if b else float('nan'):12.2f}x")
        fa, fb = sum(split_of["fp32"].values()), sum(split_of["bf16"].values())
        outside = fa - split_of["fp32"]["matrix kernels"]
        print(f"  {'total':16s} {fa:11.1f} {fb:9.1f} {fa / fb:12.2f}x")
        print(f"  bf16's bound (matrix kernels free, all else as in float32): {fa / outside:.2f}x; with bf16's own "
              f"non-matrix time: {fa / (fb - split_of['bf16']['matrix kernels']):.2f}x\n", flush=True)


ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention",
             "aten::_scaled_dot_product_efficient_attention")  # fused kernels (the math path's matmuls count as linear)


def forward_split(prof) -> dict[str, list[float]]:
    """Self time (ms) and FLOPs of the linear layers, the fused attention, the convolutions and the rest."""
    parts = {"linear (mm, addmm)": [0.0, 0.0], "fused attention": [0.0, 0.0], "convolution": [0.0, 0.0],
             "rest": [0.0, 0.0]}
    for e in prof.events():
        if e.name.startswith("ProfilerStep"):
            continue
        t = e.self_cpu_time_total / 1e3
        if e.name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
            parts["linear (mm, addmm)"][0] += t
            parts["linear (mm, addmm)"][1] += e.flops or 0
        elif e.name in ATTENTION:
            b, h, n, d = e.input_shapes[0]
            parts["fused attention"][0] += t
            parts["fused attention"][1] += 4 * b * h * n * e.input_shapes[1][2] * d
        elif e.name in ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution"):
            parts["convolution"][0] += t
            parts["convolution"][1] += e.flops or 0
        else:
            parts["rest"][0] += t
    return parts


def main_forward(names: list[str]) -> None:
    """Where the float32 forward's time goes, zoo and peer, against the sgemm peak."""
    from zoo.bench.speed import matmul_peak

    torch.set_num_threads(2)
    for name in names:
        zoo, peer, seq, _ = goal_workload(name, vs_peers=True)
        sides = [w for w in (zoo, peer) if w is not None]
        steps = {w.label: make_step(w, "forward", "fp32") for w in sides}
        times = time_interleaved(steps, warmup=2, rounds=5, per_round=1)
        peak = matmul_peak()
        print(f"{name} (batch {zoo.batch}{f' x {seq}' if seq else ''}), float32 forward; sgemm peak "
              f"{peak / 1e9:.0f} GFLOP/s")
        for w in sides:
            with profile(record_shapes=True, with_flops=True) as prof:
                steps[w.label]()
            parts = forward_split(prof)
            total_t = sum(v[0] for v in parts.values())
            total_f = 2 * w.macs_per_sample * w.batch
            med = 1e3 * statistics.median(times[w.label])
            print(f"  {w.label}: median {med:.0f} ms, {total_f / 1e9:.0f} GFLOP, {total_f / med / 1e6 / (peak / 1e9):.0%}"
                  f" of the peak; profiled self CPU time {total_t:.0f} ms:")
            for k, (t, f) in parts.items():
                rate = f"{f / t / 1e6:6.0f} GFLOP/s, {f / t / 1e6 / (peak / 1e9):4.0%} of the peak" if f else ""
                print(f"    {k:20s} {t:7.1f} ms {t / total_t:6.1%}  {rate}")
        print(flush=True)


def main(names: list[str]) -> None:
    torch.set_num_threads(2)
    torch._inductor.config.cpp.enable_kernel_profile = True  # inductor's kernels by name, not one opaque region
    for name in names:
        zoo, _, seq, tgt = goal_workload(name)
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
                fusable = parts["rest"] + parts["copies"]
                print(f"  compile's bound (the copies and the rest fused away entirely): {total / (total - fusable):.2f}x")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="default: the goal models of `zoo bench speed --goals`")
    ap.add_argument("--bf16", action="store_true", help="eager float32 against eager bf16 instead of eager against compiled")
    ap.add_argument("--forward", action="store_true", help="the float32 forward, zoo and peer, against the sgemm peak")
    a = ap.parse_args()
    print(keep_freed_memory())  # the heap policy `zoo bench` runs under (zoo/allocator.py)
    if a.forward:
        main_forward(a.models or ["vit_small_patch16_224", "bert_base"])
    else:
        (main_bf16 if a.bf16 else main)(a.models or [g[0] for g in GOALS])
