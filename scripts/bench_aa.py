"""The speed benchmark's own resolution: an A/A run (issue 22).

    python scripts/bench_aa.py [MODEL] [--mode train|forward] [--rounds 9]   # default: vit_small_patch16_224, train

Times the zoo model, its peer, and a deep copy of each, in the same interleaved rounds as `zoo bench speed`
(zoo.bench.speed's build_workloads / make_step / time_interleaved, float32, 2 threads, 2 steps a round), and prints
each pair's ratio of medians with the per-round interval. Two copies of one model run the same kernels, so their
ratio is what the harness cannot resolve: a zoo-vs-peer ratio as far from 1 as a copy-vs-copy one is noise.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch


def main(argv: list[str]) -> int:
    from zoo.allocator import keep_freed_memory
    from zoo.bench.speed import SpeedOptions, build_workloads, make_step, median_ci, round_medians, time_interleaved

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="vit_small_patch16_224")
    ap.add_argument("--mode", choices=("train", "forward"), default="train")
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args(argv)
    keep_freed_memory()  # the heap policy of `zoo bench`
    torch.set_num_threads(2)
    zoo, peer, why = build_workloads(a.model, SpeedOptions(vs_peers=True), 128)
    if peer is None:
        raise SystemExit(f"bench_aa: {a.model} has no peer ({why})")
    copies = {"zoo": zoo, "peer": peer}
    for key, wl in list(copies.items()):
        twin = copy.copy(wl)
        twin.model = copy.deepcopy(wl.model)
        copies[key + "_copy"] = twin
    steps = {k: make_step(wl, a.mode, "fp32") for k, wl in copies.items()}
    times = time_interleaved(steps, warmup=2, rounds=a.rounds, per_round=2)
    rounds = {k: round_medians(v, 2) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"# python scripts/bench_aa.py {' '.join(argv)}  ({a.model} vs {peer.label}, {a.mode}, {a.rounds} rounds)")
    for x, y in (("zoo", "peer"), ("zoo_copy", "peer_copy"), ("zoo", "zoo_copy"), ("peer", "peer_copy")):
        lo, hi, cov = median_ci([b / c for c, b in zip(rounds[x], rounds[y], strict=True)])
        print(f"{x:>9s} vs {y:<9s} {median[y] / median[x]:.3f}x  (per-round interval {lo:.3f}-{hi:.3f}, {cov:.0%})")
    print("median ms: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in median.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
