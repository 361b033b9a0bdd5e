"""Norms, feed-forward variants and stochastic depth."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = w · x / sqrt(mean(x²) + eps); variance in float32 (as T5 does), no bias, no centring.

    float32_math=True normalises entirely in float32 and casts back before the weight, even for
    float64 inputs (transformers' LlamaRMSNorm); identical to the default for float32 / half inputs."""

    def __init__(self, dim: int, eps: float = 1e-6, float32_math: bool = False):
        super().__init__()
        self.eps, self.float32_math = eps, float32_math
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # Both formulas below, in one kernel forward and one backward (ATen's fused RMSNorm): the same float32
            # values in one op instead of five; ~10% less time for a (8, 128, 512) norm forward + backward on the
            # CPU, too little for a T5-small training step to show (MODEL_CARDS.md, "RMSNorm")
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        if self.float32_math:
            x32 = x.float()
            return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        var = x.float().pow(2).mean(-1, keepdim=True)
        # x * rsqrt promotes to float32 for half inputs and keeps float64 exact (as HF T5 does)
        return self.weight * (x * torch.rsqrt(var + self.eps)).to(x.dtype)


def make_norm(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "rmsnorm_fp32":  # Llama's: the whole normalisation in float32
        return RMSNorm(dim, eps=eps, float32_math=True)
    raise ValueError(f"unknown norm {kind!r}; choose 'layernorm', 'rmsnorm' or 'rmsnorm_fp32'")


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,  # exact (erf)
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": QuickGELU,
    "silu": nn.SiLU,
}


def activate_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(x) written into x where `act` is one of the core's elementwise activations, else act(x). For
    inference, where nothing keeps x: a feed-forward's (tokens, hidden) output is not allocated and written a
    second time (ViT-S/16's float32 forward 2% faster on a 2-core Xeon, BERT-base's 1.5%)."""
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    if type(act) is nn.ReLU:
        return x.relu_()
    if type(act) is nn.SiLU:
        return F.silu(x, inplace=True)
    return act(x)


def _owns(h: torch.Tensor, x: torch.Tensor) -> bool:
    """May `h` be overwritten: no autograd graph is recorded (inference), nothing traces or compiles the ops
    (inductor fuses the activation anyway), and h does not share memory with x (a replaced fc1 such as
    nn.Identity would hand back x, the residual stream)."""
    return (not torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and h.untyped_storage().data_ptr() != x.untyped_storage().data_ptr())


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool mask of Bernoulli(1 - p) draws, four to each 64-bit draw of the generator.

    Each element is one 16-bit lane of a 64-bit random integer (`randint` over the int64 range: out of place, so
    torch.compile traces it), kept where the lane, read as int16, is >= round(p * 2^16) - 2^15: keep probability
    1 - p with p rounded to a multiple of 2^-16 (at most 7.6e-6 off; FlashAttention's CUDA dropout rounds it to
    1/255). On a 2-core Xeon the 64-bit draws are 2.9x faster per element than float32 uniforms (`torch.rand`),
    themselves 2x faster than ATen's serial `bernoulli_`. torch.manual_seed repeats the mask."""
    n, dropped = math.prod(shape), round(p * 65536)  # lanes below this many of 2^16 values are dropped
    if dropped >= 65536:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)  # 64 bits (to 2^-64)
    return bits.view(torch.int16)[:n].view(shape) >= dropped - 32768


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training), with a faster mask on the CPU.

    ATen's CPU dropout draws every element's mask with `bernoulli_`, serially: about 7 ns an element on a 2-core
    Xeon; a BERT-base training step spent 9% of its time there (scripts/profile_train_step.py). On the CPU this
    keeps the elements of `keep_mask` (Bernoulli(1 - p), p to 2^-16, four elements to one 64-bit draw) and scales
    them by 1 / (1 - p) in x's dtype, as F.dropout does; the mask comes from another stream of the same generator
    (torch.manual_seed makes it repeatable). Outside training or at p = 0: x itself; elsewhere (CUDA's fused
    kernel), at p = 1 or an invalid p: F.dropout."""
    if not training or p == 0.0:
        return x
    if not 0.0 < p < 1.0 or x.device.type != "cpu":  # F.dropout zeroes at p = 1 and refuses p outside [0, 1]
        return F.dropout(x, p, training)
    return x * keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (its faster CPU mask); a drop-in subclass for every family."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.inplace else dropout(x, self.p, self.training)


class FeedForward(nn.Module):
    """fc2(drop(act(fc1 x))) or, gated (GEGLU / SwiGLU / T5 v1.1), fc2(drop(act(fc1 x) * gate x)).

    norm: a norm kind over the hidden width applied before fc2, fc2(norm(drop(h))) (NormFormer's
    sub-norm; EVA-02 base/large, timm's scale_mlp); None: none."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", gated: bool = False, bias: bool = True, dropout: float = 0.0,
                 norm: str | None = None, norm_eps: float = 1e-6):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.gate = nn.Linear(dim, hidden, bias=bias) if gated else None
        self.act = make_activation(activation)
        self.drop = Dropout(dropout)
        self.norm = make_norm(norm, hidden, norm_eps) if norm else None
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if _owns(h, x):  # inference, and fc1 gave a new tensor: activate (and gate) in place
            h = activate_(self.act, h)
            if self.gate is not None:
                h = h.mul_(self.gate(x))
        else:
            h = self.act(h)
            if self.gate is not None:
                h = h * self.gate(x)
        h = self.drop(h)
        if self.norm is not None:
            h = self.norm(h)
        return self.fc2(h)


def glu_hidden(hidden: int) -> int:
    """The hidden width of a gated feed-forward (GEGLU / SwiGLU) with the parameters of a plain one of width
    `hidden`: round(2/3 · hidden). A plain FFN has 2·dim·hidden weights, a gated one 3·dim·h (fc1, gate, fc2),
    so h = 2/3·hidden matches them; the biases differ by hidden/3 (under 1% for dim >= 64)."""
    return max(1, round(2 * hidden / 3))


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch, y = γ · x with γ initialised to a small constant
    (CaiT, Touvron et al. 2021; DeiT III, EVA). The parameter is named `gamma` as in timm."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """timm/BERT-style init: N(0, std) truncated for Linear/Embedding, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


