"""Can torch.compile pay on this CPU? A probe for issue 22's compiled-step goal.

    python scripts/compile_aten_ops_probe.py [--rounds 9]     # ViT-S/16, batch 16, float32 training step

Times, in the same interleaved rounds as `zoo bench speed` (build_workloads / make_step / time_interleaved, 2
threads, the heap policy of `zoo bench`): zoo's ViT-S eager, compiled as `zoo fit` compiles, compiled with its GELU
and LayerNorm kept as ATen's kernels (each wrapped in an opaque custom op with an opaque backward, so inductor cannot
generate its own code for them), and timm's eager step. If the third is no faster than the eager step, compile has
nothing left to give here: the rest of the graph is matmuls and attention, which both paths run as the same kernels.
A probe, not a feature: the custom ops have no autocast rule and no ONNX translation.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch
import torch.nn.functional as F
from torch import nn


@torch.library.custom_op("zoo_probe::gelu", mutates_args=())
def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


@torch.library.custom_op("zoo_probe::gelu_backward", mutates_args=())
def _gelu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(grad, x)


@torch.library.custom_op("zoo_probe::layer_norm", mutates_args=())
def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.native_layer_norm(x, [x.shape[-1]], w, b, eps)


@torch.library.custom_op("zoo_probe::layer_norm_backward", mutates_args=())
def _layer_norm_backward(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, w: torch.Tensor,
                         b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.ops.aten.native_layer_norm_backward(grad, x, [x.shape[-1]], mean, rstd, w, b, [True, True, True])


def _register() -> None:
    _gelu.register_fake(lambda x: torch.empty_like(x))
    _gelu_backward.register_fake(lambda grad, x: torch.empty_like(x))
    _gelu.register_autograd(lambda ctx, grad: _gelu_backward(grad, ctx.saved_tensors[0]),
                            setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]))

    def fake_norm(x, w, b, eps):
        stat = x.new_empty(x.shape[:-1] + (1,))
        return torch.empty_like(x), stat, torch.empty_like(stat)

    def setup(ctx, inputs, output):
        x, w, b, _ = inputs
        ctx.save_for_backward(x, output[1], output[2], w, b)

    def backward(ctx, grad, _mean, _rstd):
        return (*_layer_norm_backward(grad.contiguous(), *ctx.saved_tensors), None)

    _layer_norm.register_fake(fake_norm)
    _layer_norm_backward.register_fake(lambda grad, x, mean, rstd, w, b: (torch.empty_like(x), torch.empty_like(w),
                                                                          torch.empty_like(b)))
    _layer_norm.register_autograd(backward, setup_context=setup)


class AtenGELU(nn.Module):
    def forward(self, x):
        return _gelu(x)


class AtenLayerNorm(nn.LayerNorm):
    def forward(self, x):
        return _layer_norm(x, self.weight, self.bias, self.eps)[0]


def with_aten_ops(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.GELU) and child.approximate == "none":
            setattr(module, name, AtenGELU())
        elif type(child) is nn.LayerNorm:
            norm = AtenLayerNorm(child.normalized_shape, eps=child.eps)
            norm.load_state_dict(child.state_dict())
            setattr(module, name, norm)
        else:
            with_aten_ops(child)
    return module


def main(argv: list[str]) -> int:
    from zoo.allocator import keep_freed_memory
    from zoo.bench.speed import SpeedOptions, build_workloads, make_step, median_ci, round_medians, time_interleaved

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args(argv)
    _register()
    keep_freed_memory()
    torch.set_num_threads(2)
    zoo, peer, why = build_workloads("vit_small_patch16_224", SpeedOptions(vs_peers=True), 128)
    compiled, aten = copy.copy(zoo), copy.copy(zoo)
    compiled.model = copy.deepcopy(zoo.model)
    aten.model = with_aten_ops(copy.deepcopy(zoo.model))
    swapped = sum(isinstance(m, (AtenGELU, AtenLayerNorm)) for m in aten.model.modules())
    steps = {"zoo eager": make_step(zoo, "train", "fp32"),
             "zoo compiled": make_step(compiled, "train", "fp32", compile=True),
             "zoo compiled, ATen GELU+LN": make_step(aten, "train", "fp32", compile=True),
             "timm eager": make_step(peer, "train", "fp32")}
    times = time_interleaved(steps, warmup=2, rounds=a.rounds, per_round=2)
    rounds = {k: round_medians(v, 2) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"# python scripts/compile_aten_ops_probe.py {' '.join(argv)}  (ViT-S/16, batch 16, float32 training step, "
          f"{a.rounds} rounds; {swapped} GELU/LayerNorm modules kept as ATen kernels)")
    for k in steps:
        lo, hi, cov = median_ci([t / z for z, t in zip(rounds["zoo eager"], rounds[k], strict=True)])
        print(f"{k:28s} {median[k] * 1e3:7.1f} ms   zoo eager / this {median['zoo eager'] / median[k]:.3f}x "
              f"(per-round interval {1 / hi:.3f}-{1 / lo:.3f}, {cov:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
