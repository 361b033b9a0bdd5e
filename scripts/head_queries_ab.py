"""What the class-token shortcut saves: forward (the last block computes the tokens the head reads only) against
forward_head(forward_features(x)) (every token), the same model and batch, interleaved in one process.

    python scripts/head_queries_ab.py [--rounds 9]

ViT-S/16 (batch 16, 224px) and bert_tiny with the cls head (64 pairs of 40 tokens, 10 of them padding: the shape of
configs/bert_pairs.yaml's batches), each as a float32 training step (AdamW) and a forward in inference mode, 2
threads, the heap policy of `zoo bench`, timed by `zoo bench speed`'s interleaved rounds (time_interleaved). Prints the median times and their ratio; both paths give the same logits
(tests/test_vit_variants.py, tests/test_bert.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F


def main(argv: list[str]) -> int:
    import zoo
    from zoo.allocator import keep_freed_memory
    from zoo.bench.speed import time_interleaved

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    vit = zoo.create_model("vit_small_patch16_224")
    bert = zoo.create_model("bert_tiny", head="cls", num_classes=2, max_positions=128)
    ids = torch.randint(5, 3000, (64, 40))
    mask = torch.ones_like(ids)
    mask[:, 30:] = 0
    cases = {"vit_small_patch16_224": (vit, (torch.randn(16, 3, 224, 224),), torch.randint(0, 1000, (16,))),
             "bert_tiny (cls head)": (bert, (ids, mask), torch.randint(0, 2, (64,)))}
    print(f"# python scripts/head_queries_ab.py {' '.join(argv)}  ({a.rounds} interleaved rounds, 2 threads)")
    for name, (model, inputs, labels) in cases.items():
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        paths = {"shortcut": lambda: model(*inputs),
                 "every token": lambda: model.forward_head(model.forward_features(*inputs))}

        def train(path):
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(path(), labels).backward()
            opt.step()

        def forward(path):
            model.eval()
            with torch.inference_mode():
                path()

        for mode, step in (("train", train), ("forward", forward)):
            times = time_interleaved({k: (lambda p=path: step(p)) for k, path in paths.items()}, warmup=2,
                                     rounds=a.rounds, per_round=1)
            short, full = (statistics.median(times[k]) for k in paths)
            print(f"{name:22s} {mode:8s} shortcut {short * 1e3:8.1f} ms   every token {full * 1e3:8.1f} ms   "
                  f"{full / short:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
