"""Speed benchmark: parameters, MACs, inference and training-step throughput, peak memory.

Method (as timm's benchmark.py): build, warm up `warmup` steps, then time `rounds` rounds of
`steps` steps each and report the MEDIAN step time. With `vs_peers`, the reference
implementation is timed in the same process and the rounds ALTERNATE zoo / peer (order
reversed every round), so that load from other processes hits both alike; the ratio column is
zoo throughput ÷ peer throughput (= peer median time ÷ zoo median time): the same output, but not always the same
work; a zoo model whose forward counts other MACs than its peer's (ViT's class-token shortcut: 4.31 against timm's
4.60 GMACs for ViT-S) is said so in a note, in its row (macs_vs_peer = zoo MACs ÷ peer MACs) and in its goals. Every ratio (vs peer, vs fp32, vs eager,
utilisation) also gets a distribution-free confidence interval: the same ratio taken within each round (the
round's median step of one side over the other's, timed next to each other), and the order statistics of those
per-round ratios that bound their median at >= 95 % (binomial; with 5 rounds the extremes, 94 %). A goal whose
interval straddles its bar is reported as within the noise of the run.

* forward: `torch.inference_mode()`, eval mode.
* train: forward + loss (mean square of the output, the same for both sides) + backward +
  AdamW step, train mode (dropout as configured).
* MACs per sample: `torch.utils.flop_counter.FlopCounterMode` on one forward pass
  (MACs = FLOPs / 2; matmuls, convolutions and attention, not element-wise ops).
* memory: on CPU, the growth of the process's peak resident set (VmHWM, reset through
  /proc/self/clear_refs) during one step after warm-up, i.e. activations + gradients + temporaries
  (weights and optimiser state already exist); on CUDA, torch.cuda.max_memory_allocated.
* matmul peak: median FLOP/s of a large square float32 matmul (sgemm), the yardstick for
  "achieved FLOP/s" = 2 × MACs × batch / forward time. The forward rounds time the sgemm as one more step of the
  same interleaved rounds, so utilisation compares the forward with the peak the machine had in those rounds (a
  peak measured once, before, moved by 290-383 GFLOP/s within an hour on a shared 2-core VM); its interval comes
  from the per-round ratio of the two.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from ..registry import _entry, count_parameters, create_model, get_config
from .peers import PeerUnavailable, build_peer

# The goal configurations of issue 7.
GOALS = [  # (model, batch, seq_len, tgt_len)
    ("vit_small_patch16_224", 16, None, None),
    ("bert_base", 8, 128, None),
    ("t5_small", 8, 128, 32),
    ("transformer_base", 8, 128, 32),
]
UTILISATION_GOAL = {"vit_small_patch16_224": 0.8, "bert_base": 0.8}


# ---------------------------------------------------------------------------- machine
def machine_info() -> dict:
    from ..allocator import policy
    from ..compare.runner import cpu_name, git_rev  # the readers that study rows use too

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": "cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "load_avg_1m": os.getloadavg()[0], "heap": policy(), "git": git_rev()}


_BF16_PROBE = """
import torch
a = torch.randn(64, 64, dtype=torch.bfloat16)
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
    torch.nn.functional.linear(a, a)
"""


def bf16_kernels(device: str = "cpu") -> dict:
    """Which kernels run a bf16 matmul here: on CPU, oneDNN's own verbose report (its ISA line and the matmul
    implementation, e.g. brg_matmul:avx10_1_512_amx on AMX, avx512_core_bf16 on AVX-512-BF16) read from a
    child process, and the CPU flags; on CUDA, the device's bf16 support."""
    if device.startswith("cuda"):
        return {"bf16_device": torch.cuda.get_device_name(), "bf16_supported": torch.cuda.is_bf16_supported()}
    from ..compare.runner import cpuinfo_fields, read_cpuinfo

    flags = cpuinfo_fields(read_cpuinfo())[1]
    out = {"cpu_bf16_flags": " ".join(sorted(f for f in flags if "bf16" in f)) or "none"}
    import subprocess
    import sys

    try:
        text = subprocess.run([sys.executable, "-c", _BF16_PROBE], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {**out, "onednn_bf16_matmul": f"probe failed: {e}"}
    isa = re.search(r"onednn_verbose,[^\n]*,info,cpu,isa:([^\n]+)", text)
    impl = re.search(r"primitive,exec,cpu,(?:matmul|inner_product),([^,]+),[^\n]*src:bf16", text)
    out["onednn_isa"] = isa.group(1).strip() if isa else None
    out["onednn_bf16_matmul"] = impl.group(1) if impl else "not oneDNN (reference kernels)"
    return out


SGEMM = "sgemm (the matmul peak)"


def sgemm_step(n: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """One n×n×n matmul, the yardstick of `matmul_peak`, as a step for `time_interleaved`."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return lambda: torch.mm(a, b)


def matmul_peak(n: int = 2048, repeats: int = 8, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """Median FLOP/s of an n×n×n matmul (2n³ FLOPs)."""
    step = sgemm_step(n, device, dtype)
    times = []
    for i in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        if i >= 2:  # two warm-up products
            times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """One model with its inputs and how to call it (zoo model or peer)."""

    label: str
    model: nn.Module
    call: Callable[[nn.Module, dict], torch.Tensor]
    inputs: dict
    batch: int
    tokens_per_sample: int
    params: int = 0
    kind: str = ""
    macs_per_sample: float | None = None
    grad_ckpt: bool = False  # activation checkpointing on (asked for, and the implementation has a switch)


def example_inputs(model: nn.Module, batch: int, seq_len: int = 128, tgt_len: int = 32, img_size: int | None = None,
                   device: str = "cpu") -> tuple[dict, int, str]:
    """The model's declared example inputs (zoo.contract) at this batch and length, the decoder side
    at `tgt_len` and images at `img_size`. Returns (inputs by name, tokens per sample, kind)."""
    from ..contract import example_inputs as declared
    from ..contract import kind_of

    ex = declared(model, batch, seq_len)
    too_long = {axis: top for axis, top in ex.max_sizes.items() if seq_len > top}
    if too_long and "input_ids" in ex.tensors:  # the declared inputs are capped at the model's limit: say so
        axis, top = next(iter(too_long.items()))
        print(f"zoo bench: {getattr(model, 'model_name', type(model).__name__)} reads at most {top} positions ({axis}): "
              f"timed at length {min(seq_len, top)}, not {seq_len}", file=sys.stderr, flush=True)
    inputs = dict(ex.tensors)
    if "decoder_input_ids" in inputs:
        inputs["decoder_input_ids"] = declared(model, batch, 2 * tgt_len).tensors["decoder_input_ids"]
    if "attention_mask" in inputs:
        inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"])  # full rows: every token costs
    tokens = sum(inputs[k].shape[1] for k in ("input_ids", "decoder_input_ids") if k in inputs)
    if "images" in inputs:
        if img_size and img_size != inputs["images"].shape[-1]:
            inputs["images"] = torch.randn(*inputs["images"].shape[:2], img_size, img_size, generator=torch.Generator().manual_seed(0))
        patch = getattr(model.config, "patch_size", None)
        side = inputs["images"].shape[-1]
        tokens += (side // patch) ** 2 + int(bool(getattr(model.config, "class_token", False))) if patch else 1
    return {k: v.to(device) for k, v in inputs.items()}, tokens, kind_of(model)


def zoo_call(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model(*inputs.values())  # declared inputs are in forward's order


def first_tensor(out) -> torch.Tensor:
    """The main output of a model that returns a tuple / dict / ModelOutput."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    return next(t for t in out if isinstance(t, torch.Tensor))


def _rnn_layer_flops(input, w_ih, w_hh, *args, out_val=None, **kwargs) -> int:
    """One fused (oneDNN) RNN layer: input and recurrent matmuls over every time step."""
    steps = input.numel() // input.shape[-1]
    return 2 * steps * (w_ih.numel() + w_hh.numel())


def _extra_flop_formulas() -> dict:
    """CPU kernels the flop counter does not know: SDPA's CPU flash kernel and oneDNN LSTM layers."""
    extra = {}
    for op, fn in (("_scaled_dot_product_flash_attention_for_cpu", sdpa_flop),
                   ("_scaled_dot_product_flash_attention_for_cpu_backward", sdpa_backward_flop),
                   ("mkldnn_rnn_layer", _rnn_layer_flops)):
        if hasattr(torch.ops.aten, op):
            raw = lambda *a, _f=fn, **k: _f(*a, **k)  # noqa: E731  (already shape-wrapped / takes tensors)
            raw._get_raw = True
            extra[getattr(torch.ops.aten, op)] = raw
    return extra


def count_macs(model: nn.Module, call, inputs: dict) -> float:
    """MACs of one forward pass with `inputs` (FLOPs / 2): matmuls, convolutions, attention, RNNs."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas()) as counter:  # (no_grad breaks its module hooks)
            call(model, inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2


def enable_gradient_checkpointing(model: nn.Module) -> bool:
    """Turn on activation checkpointing however the implementation spells it; False if it cannot."""
    for method in ("set_grad_checkpointing", "gradient_checkpointing_enable"):
        if hasattr(model, method):
            fn = getattr(model, method)
            fn(True) if method == "set_grad_checkpointing" else fn()
            return True
    found = False
    for m in model.modules():
        if hasattr(m, "gradient_checkpointing") and isinstance(m.gradient_checkpointing, bool):
            m.gradient_checkpointing = True
            found = True
    return found


def autocast(precision: str, device: str = "cpu"):
    if precision in ("fp32", "float32"):
        return contextlib.nullcontext()
    if precision in ("bf16", "bfloat16"):
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; choose fp32 or bf16")


def make_step(wl: Workload, mode: str, precision: str, device: str = "cpu", compile: bool = False,
              optimizer: str = "adamw") -> Callable[[], None]:
    """One forward (inference) or one training step (forward, backward, optimiser step) of the workload.
    optimizer: a name `zoo fit` takes (zoo.tasks.base.OPTIMIZERS), built the way `zoo fit` builds it
    ("adamw": torch's fused kernel where it takes every parameter), the same for the zoo and the peer."""
    from ..tasks.base import compile_kwargs, make_optimizer

    model = wl.model
    fn = torch.compile(model, **compile_kwargs()) if compile else model  # as `zoo fit` compiles
    if mode == "forward":
        def step():
            model.eval()
            with torch.inference_mode(), autocast(precision, device):
                wl.call(fn, wl.inputs)
        return step
    if mode == "train":
        opt = make_optimizer(optimizer, [{"params": list(model.parameters()), "weight_decay": 0.01}], lr=1e-5,
                             betas=(0.9, 0.999))

        def step():
            model.train()
            with autocast(precision, device):
                loss = first_tensor(wl.call(fn, wl.inputs)).float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step
    raise ValueError(f"unknown mode {mode!r}; choose forward or train")


def time_interleaved(steps: dict[str, Callable[[], None]], warmup: int, rounds: int, per_round: int,
                     device: str = "cpu") -> dict[str, list[float]]:
    """Per-step seconds of each labelled step function, rounds alternating A B / B A / ..."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for r in range(rounds):
        for key in (order if r % 2 == 0 else order[::-1]):
            for _ in range(per_round):
                _sync(device)
                t0 = time.perf_counter()
                steps[key]()
                _sync(device)
                times[key].append(time.perf_counter() - t0)
    return times


def _rss_kib(field_name: str) -> int:
    m = re.search(rf"{field_name}:\s+(\d+)", open("/proc/self/status").read())
    return int(m.group(1))


def peak_memory_mb(step: Callable[[], None], device: str = "cpu") -> float | None:
    """Extra peak memory (MiB) one step needs; see the module docstring for the method."""
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    try:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap so that the baseline is honest
        base = _rss_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
            fh.write("5")
        step()
        return max(0, _rss_kib("VmHWM") - base) / 1024
    except OSError:
        return None  # not Linux


# ---------------------------------------------------------------------------- the benchmark
@dataclass
class SpeedOptions:
    batch_size: int | None = None
    seq_lens: tuple[int, ...] = (128,)
    tgt_len: int = 32
    img_size: int | None = None
    precisions: tuple[str, ...] = ("fp32",)
    modes: tuple[str, ...] = ("forward", "train")
    vs_peers: bool = False
    compile: bool | str = False  # False / True, or "both": eager and compiled timed in the same interleaved rounds
    gradient_checkpointing: bool = False
    warmup: int = 2
    rounds: int = 5
    steps: int = 2
    memory: bool = True
    peak_size: int = 2048  # side of the sgemm that measures the matmul peak
    device: str = "cpu"
    model_overrides: dict = field(default_factory=dict)
    settings: tuple[tuple[str, bool], ...] = ()  # explicit (precision, compiled) pairs; default: precisions x compile
    optimizers: tuple[str, ...] = ("adamw",)  # of the training step; several are timed in the same interleaved rounds

    def setting_list(self) -> list[tuple[str, bool]]:
        if self.settings:
            return [(p, bool(c)) for p, c in self.settings]
        compiled = (False, True) if self.compile == "both" else (bool(self.compile),)
        return [(p, c) for c in compiled for p in self.precisions]


def _setting(precision: str, compiled: bool, optimizer: str | None = None) -> str:
    return f"{precision}|{'compiled' if compiled else 'eager'}" + (f"|{optimizer}" if optimizer else "")


def build_workloads(name: str, opts: SpeedOptions, seq_len: int) -> tuple[Workload, Workload | None, str | None]:
    """The zoo workload, the peer workload (or None) and why there is no peer."""
    entry = _entry(name)
    torch.manual_seed(0)
    overrides = dict(opts.model_overrides)
    if entry.model_cls.kind == "text_encoder" and "head" in get_config(name).__dataclass_fields__:
        overrides.setdefault("head", "none")  # text encoders are compared on hidden states (no MLM head to update)
    if opts.img_size and "img_size" in get_config(name).__dataclass_fields__:
        overrides.setdefault("img_size", opts.img_size)  # built for that size (as the peer then is), not resized to it
    model = create_model(name, **overrides).to(opts.device)
    batch = opts.batch_size or (16 if "images" in model.example_inputs(1).tensors else 8)
    inputs, tokens, kind = example_inputs(model, batch, seq_len, opts.tgt_len, opts.img_size, opts.device)
    zoo = Workload(f"zoo.{name}", model, zoo_call, inputs, batch, tokens, count_parameters(model), kind=kind)
    one = {k: v[:1] for k, v in inputs.items()}
    zoo.macs_per_sample = count_macs(model, zoo.call, one)
    if opts.gradient_checkpointing:
        zoo.grad_ckpt = enable_gradient_checkpointing(model)
        if not zoo.grad_ckpt:
            print(f"  note: {name} has no gradient-checkpointing switch")
    peer, why = None, None
    if opts.vs_peers:
        try:
            p = build_peer(model, name, entry.family)
            p.module.to(opts.device)
            peer = Workload(p.label, p.module, p.call, inputs, batch, tokens, count_parameters(p.module), kind=kind)
            peer.macs_per_sample = count_macs(p.module, p.call, one)
            if opts.gradient_checkpointing:
                peer.grad_ckpt = enable_gradient_checkpointing(p.module)
                if not peer.grad_ckpt:
                    print(f"  note: peer {p.label} has no gradient-checkpointing switch; it runs without")
        except PeerUnavailable as e:
            why = str(e)
    return zoo, peer, why


def bench_model(name: str, opts: SpeedOptions, seq_len: int, peak_flops: float | None) -> list[dict]:
    zoo, peer, why = build_workloads(name, opts, seq_len)
    if why:
        print(f"  {name}: no peer ({why})")
    if peer and zoo.macs_per_sample and peer.macs_per_sample and unequal_work(zoo.macs_per_sample / peer.macs_per_sample):
        print(f"  note: {zoo.label} does {zoo.macs_per_sample / peer.macs_per_sample:.3f}x the MACs of {peer.label} for the "
              f"same output ({_si(zoo.macs_per_sample)} against {_si(peer.macs_per_sample)} per sample): vs peer compares "
              f"unequal work")
    kind = zoo.kind
    rows = []
    for mode in opts.modes:
        wls = [zoo] + ([peer] if peer else [])
        # every (implementation, precision, eager/compiled, optimiser) of this mode in one interleaved timing, so that
        # bf16 / fp32, compiled / eager and one optimiser / another compare like with like
        optims = opts.optimizers if mode == "train" else (None,)
        settings = [(p, c, o) for p, c in opts.setting_list() for o in optims]
        keys = [(w, p, c, o) for p, c, o in settings for w in wls]
        label = lambda w, p, c, o: f"{w.label}|{_setting(p, c, o)}"  # noqa: E731
        steps = {label(w, p, c, o): make_step(w, mode, p, opts.device, c, o or "adamw") for w, p, c, o in keys}
        if mode == "forward" and peak_flops and any(p == "fp32" for p, _, _ in settings):
            steps[SGEMM] = sgemm_step(opts.peak_size, opts.device)  # the yardstick, timed in the same rounds
        failed = {}  # a peer that cannot run a setting (torch.nn.Transformer's fast path under bf16) is left out, named
        for w, p, c, o in [k for k in keys if k[0] is not zoo]:
            try:
                steps[label(w, p, c, o)]()
            except Exception as e:  # noqa: BLE001 - the peer's own failure, reported in the zoo row
                failed[(p, c, o)] = (f"{w.label} fails in {p}{' compiled' if c else ''} {mode}: "
                                     f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
                print(f"  {failed[(p, c, o)]}")
                keys.remove((w, p, c, o))
                del steps[label(w, p, c, o)]
        for w, p, c, o in [k for k in keys if k[0] is zoo]:  # the same untimed first step (a compile, a warm-up) as the peer's
            steps[label(w, p, c, o)]()
        times = time_interleaved(steps, opts.warmup, opts.rounds, opts.steps, opts.device)
        load = os.getloadavg()[0]
        per_round = {k: [m * 1e3 for m in round_medians(v, opts.steps)] for k, v in times.items()}  # ms
        slow = disturbed_rounds(per_round)
        sgemm_flops = 2 * opts.peak_size ** 3
        round_peak = [sgemm_flops / (ms / 1e3) for ms in per_round[SGEMM]] if SGEMM in per_round else None
        model_peak = sgemm_flops / statistics.median(times[SGEMM]) if round_peak else peak_flops
        if slow:
            print(f"  note: {name} {mode}: round(s) {', '.join(str(r + 1) for r in slow)} of {opts.rounds} ran at least "
                  f"{DISTURBED:.1f}x a setting's median round; something else probably used the machine (rerun "
                  f"for clean figures)")
        by_key = {}
        for w, precision, compiled, optim in keys:
            key = label(w, precision, compiled, optim)
            med = statistics.median(times[key])
            row = {
                "model": name, "impl": w.label, "side": "zoo" if w is zoo else "peer", "kind": kind, "mode": mode,
                "precision": precision, "compile": compiled, "optimizer": optim, "grad_ckpt": w.grad_ckpt,
                "batch": w.batch, "seq_len": zoo.inputs["input_ids"].shape[1] if "input_ids" in zoo.inputs else None,
                "tgt_len": zoo.inputs["decoder_input_ids"].shape[1] if "decoder_input_ids" in zoo.inputs else None,
                "img_size": zoo.inputs["images"].shape[-1] if "images" in zoo.inputs else None,
                "params": w.params, "macs_per_sample": w.macs_per_sample,
                "median_ms": med * 1e3, "min_ms": min(times[key]) * 1e3, "n_timed": len(times[key]),
                "round_ms": per_round[key], "disturbed_rounds": slow,
                "samples_per_s": w.batch / med, "tokens_per_s": w.batch * w.tokens_per_sample / med,
                "peak_mem_mb": peak_memory_mb(steps[key], opts.device) if opts.memory else None, "load_avg_1m": load,
            }
            row["matmul_peak_gflops"] = model_peak / 1e9 if model_peak else None
            if mode == "forward" and w.macs_per_sample:
                flops = 2 * w.macs_per_sample * w.batch
                row["achieved_gflops"] = flops / med / 1e9
                if round_peak and precision == "fp32":
                    row["matmul_peak_interleaved"] = True
                    row["utilisation"] = row["achieved_gflops"] * 1e9 / model_peak
                    row["utilisation_ci"] = list(median_ci([flops / (t / 1e3) / pk for t, pk in zip(row["round_ms"], round_peak)]))
            by_key[(w.label, precision, compiled, optim)] = row
            rows.append(row)
        for (wlabel, precision, compiled, optim), row in by_key.items():  # once every row exists: any order of settings
            fp32 = by_key.get((wlabel, "fp32", compiled, optim))
            if precision != "fp32" and fp32 is not None:
                row["vs_fp32"] = fp32["median_ms"] / row["median_ms"]  # > 1: the low precision is faster
                row["vs_fp32_ci"] = ratio_ci(fp32["round_ms"], row["round_ms"])
            eager = by_key.get((wlabel, precision, False, optim))
            if compiled and eager is not None:
                row["vs_eager"] = eager["median_ms"] / row["median_ms"]  # > 1: compiling pays
                row["vs_eager_ci"] = ratio_ci(eager["round_ms"], row["round_ms"])
            first = by_key.get((wlabel, precision, compiled, optims[0]))
            if optim is not None and optim != optims[0] and first is not None:
                row["vs_optimizer"] = first["median_ms"] / row["median_ms"]  # > 1: faster than the first optimiser
                row["vs_optimizer_ci"] = ratio_ci(first["round_ms"], row["round_ms"])
                row["optimizer_baseline"] = optims[0]
        for precision, compiled, optim in settings:
            z = by_key[(zoo.label, precision, compiled, optim)]
            if (precision, compiled, optim) in failed:
                z["no_peer"] = failed[(precision, compiled, optim)]
            elif peer:
                p = by_key[(peer.label, precision, compiled, optim)]
                z["vs_peer"] = p["median_ms"] / z["median_ms"]
                z["vs_peer_ci"] = ratio_ci(p["round_ms"], z["round_ms"])
                z["peer"] = p["impl"]
                if p["grad_ckpt"] != z["grad_ckpt"]:  # one side recomputes its activations, the other does not
                    z["peer_grad_ckpt"] = p["grad_ckpt"]
                if z["macs_per_sample"] and p["macs_per_sample"]:  # the work each side does for the same output
                    z["peer_macs_per_sample"] = p["macs_per_sample"]
                    z["macs_vs_peer"] = z["macs_per_sample"] / p["macs_per_sample"]
                if compiled and (peer.label, precision, False, optim) in by_key:  # the compiled zoo against the peer as users run it
                    pe = by_key[(peer.label, precision, False, optim)]
                    z["vs_peer_eager"] = pe["median_ms"] / z["median_ms"]
                    z["vs_peer_eager_ci"] = ratio_ci(pe["round_ms"], z["round_ms"])
            elif why:
                z["no_peer"] = why
    return rows


def unequal_work(macs_ratio: float | None) -> bool:
    """Whether the zoo model's MACs differ from its peer's by more than 0.1 % (the counts are exact: equal
    architectures give equal counts)."""
    return macs_ratio is not None and abs(macs_ratio - 1) > 1e-3


def round_medians(samples: list[float], per_round: int) -> list[float]:
    """The median step of each round (time_interleaved appends `per_round` steps of a key per round)."""
    return [statistics.median(samples[i:i + per_round]) for i in range(0, len(samples), per_round)]


DISTURBED = 1.5  # a round this much slower than a setting's median round was hit by something outside the benchmark


def disturbed_rounds(round_times: dict[str, list[float]]) -> list[int]:
    """Rounds (0-based) in which any timed setting ran at least DISTURBED x its own median round (in a quiet run
    the rounds of a setting stay within about 20 % of each other)."""
    n = min(len(v) for v in round_times.values())
    return [r for r in range(n) if any(v[r] >= DISTURBED * statistics.median(v) for v in round_times.values())]


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of `values`: the order statistics x(k) and
    x(n+1-k) with the largest k whose coverage 1 - 2 P(Binomial(n, 1/2) < k) is at least `level` (k = 1, the
    extremes, when n is too small for the level). Returns (low, high, coverage)."""
    x, n = sorted(values), len(values)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    coverage = lambda k: 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n  # noqa: E731
    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return x[k - 1], x[n - k], coverage(k)


def ratio_ci(num_rounds: list[float], den_rounds: list[float]) -> list[float]:
    """[low, high, coverage] of the median per-round ratio num / den (the rounds of two settings, paired)."""
    return list(median_ci([a / b for a, b in zip(num_rounds, den_rounds, strict=True)]))


def run_speed(names: list[str], opts: SpeedOptions, log=print) -> dict:
    info = machine_info()
    peak = matmul_peak(opts.peak_size, device=opts.device)
    info["matmul_peak_gflops_fp32"] = peak / 1e9
    if any(p != "fp32" for p in opts.precisions):
        info.update(bf16_kernels(opts.device))
        log(f"bf16: {', '.join(f'{k} = {v}' for k, v in info.items() if 'bf16' in k or k == 'onednn_isa')}")
    log(f"machine: {info['cpu']}, {info['torch_threads']} torch threads, torch {info['torch']}, "
        f"load avg {info['load_avg_1m']:.2f}, {info['heap']}; float32 matmul peak ({opts.peak_size}³ sgemm, median) = {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for name in names:
        for seq_len in opts.seq_lens:
            log(f"- {name} (seq_len {seq_len})" if not hasattr(_entry(name).config, "img_size") else f"- {name}")
            rows += bench_model(name, opts, seq_len, peak)  # its forward times the sgemm again, in its own rounds
            if hasattr(_entry(name).config, "img_size"):
                break  # sequence length does not apply to images
            gc.collect()
    info["load_avg_1m_end"] = os.getloadavg()[0]
    return {"machine": info, "options": {k: v for k, v in asdict(opts).items()}, "rows": rows,
            "goals": check_goals(rows), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


GOAL_SETTINGS = (("fp32", False), ("bf16", False), ("fp32", True))  # what `zoo bench speed --goals` times
COMPILED_GOAL, BF16_GOAL = 1.10, 1.8


def check_goals(rows: list[dict]) -> list[dict]:
    """The goals of issues 7 and 22 for every goal model measured in `rows`:
    eager float32: zoo ≥ 1.0× its peer (forward and training step) and ≥ 80 % of the sgemm peak (ViT-S, BERT-base);
    compiled float32 training step: ≥ 1.10× the peer's eager step and ≥ 1.0× the peer compiled the same way;
    bf16 autocast training step: ≥ 1.8× the same implementation's float32 step."""
    out = []
    for model, batch, seq, tgt in GOALS:
        for r in rows:
            if (r["model"], r["side"], r["batch"], r["grad_ckpt"]) != (model, "zoo", batch, False):
                continue
            if seq is not None and (r["seq_len"], r["tgt_len"]) != (seq, tgt):
                continue
            if r["mode"] == "train" and r.get("optimizer", "adamw") != "adamw":
                continue  # goals are about the training step `zoo fit` runs
            setting = (r["precision"], bool(r["compile"]))
            work = f" (zoo does {r['macs_vs_peer']:.3f}x the peer's MACs)" if unequal_work(r.get("macs_vs_peer")) else ""
            if setting == ("fp32", False):
                if "vs_peer" in r:
                    out.append(_goal(f"{model} {r['mode']} ≥ 1.0× {r['peer']}{work}", r["vs_peer"], 1.0, r.get("vs_peer_ci")))
                if r["mode"] == "forward" and model in UTILISATION_GOAL and "utilisation" in r:
                    bar = UTILISATION_GOAL[model]
                    out.append(_goal(f"{model} forward ≥ {bar:.0%} of sgemm peak", r["utilisation"], bar,
                                     r.get("utilisation_ci")))
            elif setting == ("fp32", True) and r["mode"] == "train":
                if "vs_peer_eager" in r:
                    out.append(_goal(f"{model} compiled train ≥ {COMPILED_GOAL:.2f}× {r['peer']} eager{work}",
                                     r["vs_peer_eager"], COMPILED_GOAL, r.get("vs_peer_eager_ci")))
                if "vs_peer" in r:
                    out.append(_goal(f"{model} compiled train ≥ 1.0× {r['peer']} compiled{work}", r["vs_peer"], 1.0,
                                     r.get("vs_peer_ci")))
            elif setting == ("bf16", False) and r["mode"] == "train" and "vs_fp32" in r:
                out.append(_goal(f"{model} bf16 train ≥ {BF16_GOAL:.1f}× float32", r["vs_fp32"], BF16_GOAL,
                                 r.get("vs_fp32_ci")))
    return out


def _goal(goal: str, value: float, bar: float, ci: list[float] | None) -> dict:
    """A goal met or missed by its value (the ratio of medians); `clear` says whether the per-round interval
    lies on the same side of the bar (None without one)."""
    out = {"goal": goal, "value": value, "met": value >= bar}
    if ci:
        out["ci"] = ci
        out["clear"] = (ci[0] >= bar) if out["met"] else (ci[1] < bar)
    return out


def format_table(rows: list[dict]) -> str:
    head = (f"{'model':24s} {'impl':36s} {'mode':7s} {'prec':6s} {'optimizer':13s} {'batch':>5s} {'len':>8s} {'params':>8s} {'MACs/smp':>8s} "
            f"{'ms':>8s} {'samples/s':>9s} {'tokens/s':>9s} {'mem MB':>7s} {'GFLOP/s':>7s} {'util':>5s} {'vs peer':>7s} {'vs fp32':>7s} {'vs eager':>8s} {'vs optim':>8s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        length = f"{r['seq_len']}>{r['tgt_len']}" if r["seq_len"] and r["tgt_len"] else str(r["seq_len"] or f"{r['img_size']}px")
        fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) and v is not None else "-"  # noqa: E731
        lines.append(
            f"{r['model']:24s} {(('[ckpt] ' if r.get('grad_ckpt') else '') + r['impl'])[:36]:36s} {r['mode']:7s} {r['precision'] + ('+c' if r['compile'] else ''):6s} {r.get('optimizer') or '-':13s} {r['batch']:5d} {length:>8s} "
            f"{r['params'] / 1e6:7.1f}M {_si(r['macs_per_sample']):>8s} {r['median_ms']:8.1f} {r['samples_per_s']:9.2f} "
            f"{r['tokens_per_s']:9.0f} {fmt(r['peak_mem_mb'], '7.0f'):>7s} {fmt(r.get('achieved_gflops'), '7.1f'):>7s} "
            f"{fmt(r.get('utilisation'), '5.0%'):>5s} {fmt(r.get('vs_peer'), '6.2f') + ('x' if 'vs_peer' in r else ''):>7s} "
            f"{fmt(r.get('vs_fp32'), '6.2f') + ('x' if 'vs_fp32' in r else ''):>7s} "
            f"{fmt(r.get('vs_eager'), '6.2f') + ('x' if 'vs_eager' in r else ''):>8s} "
            f"{fmt(r.get('vs_optimizer'), '6.2f') + ('x' if 'vs_optimizer' in r else ''):>8s}")
    return "\n".join(lines)


def format_goals(goals: list[dict]) -> str:
    if not goals:
        return "goals: none of the goal configurations was measured (run `zoo bench speed --goals --vs-peers`)"
    lines = ["goals (same process, interleaved, ratio of medians; in brackets the per-round ratios' interval "
             "for their median):"]
    for g in goals:
        pct = "peak" in g["goal"]
        val = f"{g['value']:.1%}" if pct else f"{g['value']:.3f}x"  # enough digits to see which side of the bar
        if g.get("ci"):
            lo, hi, cov = g["ci"]
            val += f" ({lo:.1%}-{hi:.1%}" if pct else f" ({lo:.3f}-{hi:.3f}"
            val += f", {cov:.0%}{'' if g['clear'] else '; within the noise of this run'})"
        lines.append(f"  [{'met' if g['met'] else 'MISSED'}] {g['goal']}: {val}")
    return "\n".join(lines)


def _si(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"

