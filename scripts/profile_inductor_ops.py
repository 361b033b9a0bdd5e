"""Single operations eager against torch.compile (inductor's generated C++ kernels) on this CPU (issue 22).

    python scripts/profile_inductor_ops.py [--threads 2] [--rounds 15]

The training-step profile (scripts/profile_train_step.py) shows that a compiled step is no faster than an eager
one on the 2-core CPU although inductor fuses the elementwise work. This script asks why, one operation at a
time, at the shapes of the goal models' blocks (ViT-S/16: 16 x 197 tokens of width 384, MLP 1536; BERT-base:
8 x 128 tokens of 768 / 3072; T5-small and transformer_base: 8 x 128 tokens of 512 / 2048): each operation eager
(ATen's hand-written vectorised kernel) and compiled alone, timed in the same interleaved rounds (median).
A ratio below 1 means the compiled kernel is slower than ATen's.

Rows named "... saved as bool" store a boolean mask, as the compiled training step does for ReLU's backward and
for dropout's mask; "uint8" stores the same mask as bytes.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from zoo.bench.speed import time_interleaved


def shapes() -> dict[str, tuple[int, int, int, int]]:
    """(batch, tokens, width, heads) of the goal models' blocks; the MLP is 4 x width."""
    return {"ViT-S/16": (16, 197, 384, 6), "BERT-base": (8, 128, 768, 12), "T5-small, transformer_base": (8, 128, 512, 8)}


def operations(batch: int, n: int, width: int, heads: int) -> dict[str, tuple]:
    g = torch.Generator().manual_seed(0)
    tokens = batch * n
    h = torch.randn(tokens, width, generator=g)
    r = torch.randn(tokens, width, generator=g)
    x = torch.randn(tokens, 4 * width, generator=g)
    dy = torch.randn(tokens, 4 * width, generator=g)
    w, b = torch.randn(width, generator=g), torch.randn(width, generator=g)
    scores = torch.randn(batch, heads, n, n, generator=g)
    return {
        "GELU (erf)": (F.gelu, (x,)),
        "GELU backward": (torch.ops.aten.gelu_backward, (dy, x)),
        "LayerNorm": (lambda h: F.layer_norm(h, (width,), w, b), (h,)),
        "residual add + LayerNorm": (lambda h, r: F.layer_norm(h + r, (width,), w, b), (h, r)),
        "softmax (attention scores)": (lambda s: torch.softmax(s, -1), (scores,)),
        "ReLU": (torch.relu, (x,)),
        "ReLU, mask saved as bool": (lambda x: (torch.relu(x), x <= 0), (x,)),
        "mask saved as bool (x <= 0)": (lambda x: x <= 0, (x,)),
        "mask saved as uint8": (lambda x: (x <= 0).to(torch.uint8), (x,)),
        "masked multiply (bool load)": (lambda dy, x: dy * (x > 0), (dy, x)),
        "dropout 0.1, output only": (lambda x: F.dropout(x, 0.1, True), (x,)),
        "dropout 0.1, mask saved as bool": (lambda x: torch.ops.aten.native_dropout(x, 0.1, True), (x,)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from torch._inductor import cpu_vec_isa

    print(f"torch {torch.__version__}, {args.threads} threads, inductor's vector ISA: {cpu_vec_isa.pick_vec_isa()}, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'operation':34s} {'elements':>10s} {'eager ms':>9s} {'compiled ms':>12s} {'compiled speed / eager':>23s}")
    for label, shape in shapes().items():
        print(f"{label}: batch {shape[0]} x {shape[1]} tokens, width {shape[2]}, MLP {4 * shape[2]}, {shape[3]} heads")
        for name, (fn, inputs) in operations(*shape).items():
            torch._dynamo.reset()
            compiled = torch.compile(fn, fullgraph=True)
            times = time_interleaved({"eager": lambda: fn(*inputs), "compiled": lambda: compiled(*inputs)},
                                     warmup=3, rounds=args.rounds, per_round=1)  # interleaved: E C / C E / ...
            e, c = (1e3 * statistics.median(times[k]) for k in ("eager", "compiled"))
            n = max(t.numel() for t in inputs)
            print(f"  {name:32s} {n:10d} {e:9.2f} {c:12.2f} {e / c:22.2f}x", flush=True)


if __name__ == "__main__":
    main()
