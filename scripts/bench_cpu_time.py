"""Process CPU time (not wall-clock) of one forward / train step of a zoo model and its bench peer, interleaved.

On a machine whose cores are shared with other jobs, wall-clock medians swing by +-50 %; with one torch
thread, the CPU time the process itself used (time.process_time) excludes the time it waited for a core
and so compares the two implementations' work far more stably. Same workloads as `zoo bench speed`
(forward under inference_mode; train = forward + mean-square loss + backward + AdamW step).

    OMP_NUM_THREADS=1 python scripts/bench_cpu_time.py cait_xxs24_224 --batch-size 8 --rounds 7
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from zoo.bench.speed import SpeedOptions, build_workloads


def step_fn(w, mode):
    module, inputs = w.model, w.inputs
    if mode == "forward":
        module.eval()

        def run():
            with torch.inference_mode():
                w.call(module, inputs)
        return run
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def run():
        opt.zero_grad(set_to_none=True)
        w.call(module, inputs).float().pow(2).mean().backward()
        opt.step()
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--modes", default="forward,train")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    a = p.parse_args()
    torch.set_num_threads(1)
    zoo_w, peer_w, why = build_workloads(a.model, SpeedOptions(batch_size=a.batch_size, vs_peers=True), 128)
    if peer_w is None:
        raise SystemExit(f"no peer: {why}")
    result = {"model": a.model, "batch": a.batch_size, "rounds": a.rounds, "zoo": zoo_w.label, "peer": peer_w.label, "modes": {}}
    for mode in a.modes.split(","):
        steps = {"zoo": step_fn(zoo_w, mode), "peer": step_fn(peer_w, mode)}
        for run in steps.values():
            run()  # warm-up
        cpu = {"zoo": [], "peer": []}
        for r in range(a.rounds):
            for side in (("zoo", "peer") if r % 2 == 0 else ("peer", "zoo")):
                t0 = time.process_time()
                steps[side]()
                cpu[side].append((time.process_time() - t0) * 1e3)
        med = {k: statistics.median(v) for k, v in cpu.items()}
        result["modes"][mode] = {"zoo_cpu_ms_median": med["zoo"], "peer_cpu_ms_median": med["peer"],
                                 "zoo_cpu_ms": cpu["zoo"], "peer_cpu_ms": cpu["peer"], "vs_peer": med["peer"] / med["zoo"]}
        print(f"{a.model} {mode}: zoo {med['zoo']:.0f} ms CPU, {peer_w.label} {med['peer']:.0f} ms CPU, "
              f"zoo/peer throughput {med['peer'] / med['zoo']:.3f}x")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
