"""Making models smaller and faster: int8 quantization, pruning, gradient checkpointing.

    zoo compress --ckpt runs/vit_mnist --quantize int8 --prune 0.5 \\
        --data zoo.data.images.MNIST5k --finetune-epochs 1 --out runs/vit_mnist_compressed
    zoo compress latency --model bert_base --model-kwargs '{"head": "cls"}' --batch 1 --length 128
    zoo compress sweep --ckpt CKPT --data zoo.data.images.MNIST5k --amounts 0.25,0.5,0.75 --out sweep.csv

* `quantize_int8`: post-training dynamic int8 quantization of every nn.Linear (weights int8,
  activations quantized on the fly). Backend "torchao" (Int8DynamicActivationInt8WeightConfig)
  when torchao is installed, else torch.ao's `quantize_dynamic`. CPU inference only.
* `prune_linear`: magnitude pruning of Linear weights with torch.nn.utils.prune, unstructured
  (smallest |w|) or structured (whole output rows by L2 norm); masks stay attached during
  fine-tuning, `make_pruning_permanent` folds them into the weights.
* `prune_heads`: removes attention heads from a zoo `MultiHeadAttention` by slicing the q/k/v
  rows and the output projection's columns; `prune_heads_global` picks the least important heads
  over the whole model (Michel et al. 2019: per example |Σ_positions head output · its gradient|).
* `set_gradient_checkpointing`: flips `.gradient_checkpointing` on every TransformerStack.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from .bench.cli import _at_least  # argparse type: an int >= low, named in argparse's one-line error
from .core import MultiHeadAttention, TransformerStack


# --- gradient checkpointing -------------------------------------------------------------------

def set_gradient_checkpointing(model: nn.Module, on: bool = True) -> int:
    """Turn activation checkpointing on/off in every TransformerStack; returns how many stacks."""
    stacks = [m for m in model.modules() if isinstance(m, TransformerStack)]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no zoo TransformerStack; gradient checkpointing is a switch of zoo's stacks")
    for s in stacks:
        s.gradient_checkpointing = on
    return len(stacks)


# --- quantization -----------------------------------------------------------------------------

def torchao_available() -> bool:
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        return False
    return True


def quantize_int8(model: nn.Module, backend: str = "auto") -> nn.Module:
    """A CPU copy of `model` with int8 dynamic quantization of its Linear layers (eval mode)."""
    if backend == "auto":
        backend = "torchao" if torchao_available() else "torch.ao"
    model = copy.deepcopy(model).cpu().eval()
    make_pruning_permanent(model)
    if backend == "torchao":
        if not torchao_available():
            raise ImportError("backend='torchao' needs torchao: pip install torchao (or use backend='torch.ao')")
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig())
    elif backend == "torch.ao":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantize_dynamic is deprecated in favour of torchao
            model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    else:
        raise ValueError(f"unknown quantization backend {backend!r}; choose 'auto', 'torchao' or 'torch.ao'")
    model.quantization_backend = backend
    return model


# --- magnitude pruning ------------------------------------------------------------------------

def _is_linear(m: nn.Module) -> bool:
    """A Linear layer, plain (torchao's int8 keeps nn.Linear with a quantized weight) or torch.ao's dynamic int8 one."""
    return isinstance(m, (nn.Linear, torch.ao.nn.quantized.dynamic.Linear))


def _float_weight(m: nn.Module) -> torch.Tensor:
    """The weight of a Linear layer as float values: an int8 weight dequantized (a weight that was exactly zero
    stays zero: symmetric int8 maps 0 to the zero point)."""
    w = m.weight() if callable(m.weight) else m.weight  # torch.ao's dynamic Linear packs it: weight() unpacks
    return w if type(w) in (torch.Tensor, nn.Parameter) and not w.is_quantized else w.dequantize()


def _classifier_ids(model: nn.Module) -> set[int]:
    heads = set()
    for name in ("head", "head_dist", "lm_head", "classifier"):
        m = getattr(model, name, None)
        if m is not None and _is_linear(m):
            heads.add(id(m))
    return heads


def _linear_layers(model: nn.Module, include_heads: bool = False) -> list[tuple[str, nn.Module]]:
    """Linear layers, plain or int8, but the classifier / LM head (few weights, large effect)."""
    skip = set() if include_heads else _classifier_ids(model)
    return [(n, m) for n, m in model.named_modules() if _is_linear(m) and id(m) not in skip]


def prunable_linears(model: nn.Module, include_heads: bool = False) -> list[tuple[str, nn.Linear]]:
    """Linear layers to prune: all but the classifier / LM head."""
    return [(n, m) for n, m in _linear_layers(model, include_heads) if isinstance(m, nn.Linear)]


def prune_linear(model: nn.Module, amount: float, structured: bool = False, include_heads: bool = False) -> nn.Module:
    """Zero the fraction `amount` of each Linear's weights in place: smallest |w| (unstructured) or
    the output rows with the smallest L2 norm (structured). Masks stay attached (weight_orig * weight_mask)."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"prune amount is the fraction of weights to remove and must lie in [0, 1), got {amount}")
    for _, lin in prunable_linears(model, include_heads):
        if structured:
            prune.ln_structured(lin, "weight", amount=amount, n=2, dim=0)
        else:
            prune.l1_unstructured(lin, "weight", amount=amount)
    return model


def make_pruning_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight (plain parameters again, zeros stay zeros)."""
    for m in model.modules():
        if isinstance(m, nn.Linear) and prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return model


def sparsity(model: nn.Module, include_heads: bool = False) -> float:
    """Fraction of exactly-zero weights over the prunable Linear layers (of an int8 model: of its stored int8
    weights, where a small weight can round to zero too)."""
    zeros = total = 0
    for _, lin in _linear_layers(model, include_heads):
        w = _float_weight(lin)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


# --- attention-head pruning -------------------------------------------------------------------

def prune_heads(attn: MultiHeadAttention, heads: Iterable[int]) -> MultiHeadAttention:
    """Remove `heads` (indices into the current heads) from a zoo MultiHeadAttention, in place.

    Head h owns the rows h·d … (h+1)·d-1 of q, k and v (fused: of each third of `qkv`) and the
    same columns of `proj`; these are sliced out and `num_heads` shrinks. The output is unchanged
    except that the removed heads no longer contribute."""
    if not isinstance(attn, MultiHeadAttention):
        raise TypeError(f"prune_heads works on zoo.core.MultiHeadAttention, got {type(attn).__name__}")
    if getattr(attn, "num_kv_heads", attn.num_heads) != attn.num_heads:
        raise ValueError(f"prune_heads removes query heads with their own keys and values; this layer shares "
                         f"{attn.num_kv_heads} key/value heads among {attn.num_heads} query heads (grouped-query "
                         "attention), so a head cannot be removed alone - prune Linear weights instead")
    heads = sorted(set(int(h) for h in heads))
    if any(h < 0 or h >= attn.num_heads for h in heads):
        raise ValueError(f"head indices must lie in [0, {attn.num_heads}), got {heads}")
    keep = [h for h in range(attn.num_heads) if h not in heads]
    if not keep:
        raise ValueError(f"cannot prune all {attn.num_heads} heads of a layer; keep at least one")
    if not heads:
        return attn
    d = attn.head_dim
    inner = attn.num_heads * d
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
    make_pruning_permanent(attn)
    if attn.fused_qkv:
        attn.qkv = _slice_linear(attn.qkv, torch.cat([rows, rows + inner, rows + 2 * inner]), dim=0)
    else:
        attn.q, attn.k, attn.v = (_slice_linear(getattr(attn, n), rows, dim=0) for n in ("q", "k", "v"))
    attn.proj = _slice_linear(attn.proj, rows, dim=1)
    # remember original indices so that a saved model can be rebuilt (see load_compressed)
    original = getattr(attn, "pruned_heads", [])
    alive = [h for h in range(attn.num_heads + len(original)) if h not in original]
    attn.pruned_heads = sorted(set(original) | {alive[h] for h in heads})
    attn.num_heads = attn.num_kv_heads = len(keep)
    return attn


def _slice_linear(lin: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    w = lin.weight.detach().index_select(dim, index.to(lin.weight.device))
    out = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    out.weight.data.copy_(w)
    if lin.bias is not None:
        out.bias.data.copy_(lin.bias.detach()[index] if dim == 0 else lin.bias.detach())
    return out


def attention_modules(model: nn.Module) -> dict[str, MultiHeadAttention]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)}


def head_importance(model: nn.Module, batches: Iterable, loss_fn: Callable[[nn.Module, object], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer and head, Σ_examples |Σ_positions head output · ∂loss/∂head output| (Michel et al. 2019).

    This is the gradient of the loss w.r.t. a multiplicative head mask at 1. Without data, use
    `head_norm_importance`."""
    mods = attention_modules(model)
    scores = {n: torch.zeros(m.num_heads) for n, m in mods.items()}
    handles = []

    def hook(name, m):
        def pre(_, args):
            x = args[0]
            if x.requires_grad:
                def grad_hook(g, x=x):
                    per_head = (x.detach() * g).reshape(*x.shape[:-1], m.num_heads, m.head_dim).sum(-1)
                    per_example = per_head.reshape(x.shape[0], -1, m.num_heads).sum(1)
                    scores[name].add_(per_example.abs().sum(0).cpu())  # Σ_examples |∂loss/∂mask_h|
                x.register_hook(grad_hook)
        return pre

    for n, m in mods.items():
        handles.append(m.proj.register_forward_pre_hook(hook(n, m)))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores


def head_norm_importance(model: nn.Module) -> dict[str, torch.Tensor]:
    """A data-free proxy: the L2 norm of each head's columns of the output projection."""
    out = {}
    for n, m in attention_modules(model).items():
        w = m.proj.weight.detach().reshape(m.proj.weight.shape[0], m.num_heads, m.head_dim)
        out[n] = w.pow(2).sum((0, 2)).sqrt().cpu()
    return out


def prune_heads_global(model: nn.Module, fraction: float, importance: dict[str, torch.Tensor] | None = None) -> dict[str, list[int]]:
    """Remove the `fraction` of all heads with the lowest (layer-normalised) importance, keeping at
    least one head per layer. Returns {module name: removed head indices}."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction of heads to prune must lie in [0, 1), got {fraction}")
    mods = attention_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no zoo MultiHeadAttention to prune")
    importance = importance or head_norm_importance(model)
    ranked = []
    for n, s in importance.items():
        s = s / (s.norm() + 1e-12)  # Michel et al. normalise per layer
        ranked += [(float(v), n, h) for h, v in enumerate(s)]
    ranked.sort()
    budget = int(round(fraction * len(ranked)))
    chosen: dict[str, list[int]] = {n: [] for n in mods}
    for _, n, h in ranked:
        if budget == 0:
            break
        if len(chosen[n]) < mods[n].num_heads - 1:
            chosen[n].append(h)
            budget -= 1
    for n, hs in chosen.items():
        prune_heads(mods[n], hs)
    return {n: hs for n, hs in chosen.items() if hs}


def num_heads(model: nn.Module) -> int:
    return sum(m.num_heads for m in attention_modules(model).values())


# --- measuring --------------------------------------------------------------------------------

def size_on_disk(model: nn.Module) -> int:
    """Bytes of torch.save(state_dict) (quantized tensors included; pruning masks folded first)."""
    sd = model.state_dict()
    if any(k.endswith("_orig") or k.endswith("_mask") for k in sd):
        model = make_pruning_permanent(copy.deepcopy(model))
        sd = model.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.tell()


@torch.inference_mode()
def cpu_latency(models: dict[str, nn.Module], inputs: tuple, rounds: int = 20, warmup: int = 3, threads: int | None = None) -> dict[str, float]:
    """Median milliseconds per forward; models are interleaved round by round so that load from
    other processes affects all of them alike."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for m in models.values():
            m.eval()
            for _ in range(warmup):
                m(*inputs)
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(rounds):
            for k, m in models.items():
                t = time.perf_counter()
                m(*inputs)
                times[k].append((time.perf_counter() - t) * 1000)
        return {k: statistics.median(v) for k, v in times.items()}
    finally:
        torch.set_num_threads(old)


def split_batch(batch) -> tuple[tuple, dict, torch.Tensor]:
    """(args, kwargs, labels) for the model from an image (x, y) or a text dict batch."""
    if isinstance(batch, dict):
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return (), {k: batch[k] for k in keys if k in batch}, batch["labels"]
    x, y = batch
    return (x,), {}, y


SCORED_KINDS = ("image_classifier", "text_encoder", "decoder_only", "encoder_decoder", "recurrent")


def check_scored(model: nn.Module) -> None:
    """`--data` measures accuracy (and fine-tunes) on labelled batches: classes, masked tokens or next tokens."""
    from .contract import kind_of

    kind = kind_of(model)
    if kind not in SCORED_KINDS:
        raise ValueError(f"--data: zoo compress measures the accuracy of classifiers and language models "
                         f"({', '.join(SCORED_KINDS)}); {getattr(model, 'model_name', type(model).__name__)} is a {kind} "
                         "model: drop --data, and evaluate the compressed folder with `zoo test --model DIR`")


def logits_and_targets(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C), targets (N,)) of a labelled batch, as the model's task scores it: a class per image or text,
    the token at each labelled position (masked LM), the next token (a decoder-only LM: its labels are its inputs),
    the target token under teacher forcing (an encoder-decoder: the decoder reads the labels shifted right)."""
    args, kwargs, y = split_batch(batch)
    kind = getattr(model, "kind", None)  # a model that declares none (a plain nn.Module) is scored as a classifier
    if kind in ("encoder_decoder", "recurrent"):
        from .generation import shift_right

        cfg = model.config
        decoder_input_ids = shift_right(y, cfg.decoder_start_token_id, cfg.pad_token_id)
        out = model(kwargs["input_ids"], decoder_input_ids, attention_mask=kwargs.get("attention_mask"))
    else:
        out = model(*args, **kwargs)
    if isinstance(out, tuple):  # a DeiT student while distilled-training
        out = sum(out) / len(out)
    if kind == "decoder_only":  # position t predicts token t + 1
        out, y = out[:, :-1], y[:, 1:]
    return out.reshape(-1, out.shape[-1]), y.reshape(-1)


def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    out, y = logits_and_targets(model, batch)
    return F.cross_entropy(out.float(), y, ignore_index=-100)


@torch.inference_mode()
def accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        out, y = logits_and_targets(model, batch)
        pred = out.argmax(-1)
        keep = y != -100
        correct += int((pred[keep] == y[keep]).sum())
        total += int(keep.sum())
    return correct / max(total, 1)


def finetune(model: nn.Module, loader, epochs: int = 1, lr: float = 2e-4, weight_decay: float = 0.01, max_steps: int | None = None) -> nn.Module:
    """A short AdamW fine-tune with the classification loss (pruning masks stay applied)."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    step = 0
    for _ in range(epochs):
        for batch in loader:
            loss = classification_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if max_steps and step >= max_steps:
                return model.eval()
    return model.eval()


# --- saving / loading compressed models ------------------------------------------------------

def save_compressed(model: nn.Module, out: str | Path, name: str, overrides: dict, pruned_heads: dict[str, list[int]],
                    quantized: str | None, record: dict | None = None, files: dict[str, str] | None = None) -> Path:
    """Write the weights and `compress.json` (model name, overrides, removed heads, quantization, and the record of
    the run it came from: labels, image settings, tokenizer, recipe), so that `zoo.load_run`, `zoo predict`,
    `zoo serve` and `zoo export` take the folder as they take a run; `files`: more text files (name -> text).

    Float models: model.safetensors. Quantized ones: model_int8.pt, a plain torch.save state dict
    (quantized tensors cannot go in safetensors); it loads with weights_only=True after re-quantizing.
    `out` is a new (or empty) folder: an existing file or a folder holding files is refused, never written into.
    Everything is written to a temporary folder beside it, then renamed: a failed write leaves nothing."""
    import os
    import shutil
    import tempfile

    from .weights import current_umask, save_safetensors

    out = Path(out)
    check_new_folder(out)
    meta = {"model": name, "overrides": overrides, "pruned_heads": pruned_heads, "quantized": quantized,
            "record": {k: v for k, v in (record or {}).items() if k != "config"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if quantized:
            torch.save(model.state_dict(), tmp / "model_int8.pt")
        else:
            save_safetensors(make_pruning_permanent(model), tmp / "model.safetensors")
        (tmp / "compress.json").write_text(json.dumps(meta, indent=2))
        for fname, text in (files or {}).items():
            (tmp / fname).write_text(text)
        umask = current_umask()
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the folder is as readable as any the user makes
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        check_new_folder(out)  # still new: nothing appeared there meanwhile
        if out.is_dir():
            out.rmdir()  # empty (checked): the renamed folder takes its place
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_new_folder(out: str | Path, flag: str = "--out") -> None:
    """A compressed model goes into a new folder: an existing file, or a folder that holds anything, is the user's."""
    out = Path(out)
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {out}: {blocking} is an existing file; {flag} names a new folder for the compressed model")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{flag} {out} is a folder that already holds files; zoo compress never writes over them: "
                         "choose a new folder")


def is_compressed_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "compress.json").is_file()


def load_compressed(path: str | Path) -> nn.Module:
    """Rebuild a model written by `save_compressed` (heads removed, re-quantized if it was)."""
    from .registry import create_model
    from .weights import load_state_dict_checked

    path = Path(path)
    meta = json.loads((path / "compress.json").read_text())
    model = create_model(meta["model"], **meta["overrides"]).eval()
    mods = attention_modules(model)
    for n, hs in meta["pruned_heads"].items():
        prune_heads(mods[n], hs)
    if meta["quantized"]:
        model = quantize_int8(model, meta["quantized"])
        with warnings.catch_warnings():  # torch rebuilds quantized tensors through TypedStorage and warns about it
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            sd = torch.load(path / "model_int8.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(sd)
        return model
    from safetensors.torch import load_file

    load_state_dict_checked(model, load_file(str(path / "model.safetensors")))
    return model


# --- CLI --------------------------------------------------------------------------------------

def _load_ckpt_model(ckpt: str | None, model: str | None, model_kwargs: dict) -> tuple[nn.Module, str, dict, Any]:
    """(model, name, its full config as overrides, the zoo.runs.Run) through the one run loader (zoo.runs.load_run)."""
    import dataclasses

    from .runs import _plain, load_run

    if ckpt is None and model is None:
        raise ValueError("pass --ckpt PATH (a `zoo fit` checkpoint or run folder) and/or --model NAME")
    source = ckpt if model is None else model if ckpt is None else f"{model}@{ckpt}"  # --model alone: random weights
    if ckpt is not None and model is not None:
        from .runs import describes_model

        if describes_model(ckpt):
            source = ckpt
    run = load_run(source, model_kwargs or None)
    if model is not None and run.name != model:
        raise ValueError(f"{ckpt} holds a {run.name}, not a {model}; drop --model or pass the matching checkpoint")
    return run.model, run.name, _plain(dataclasses.asdict(run.model.config)), run


def _json_option(flag: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} is not JSON ({e.msg}): {text!r}; e.g. {flag} '{{\"batch_size\": 64}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object of keyword arguments, got {text!r}")
    return value


def _fraction(text: str) -> float:
    import argparse

    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"is the fraction to remove and must lie in [0, 1), got {value}")
    return value


def _check_out(out: str, ckpt: str | None) -> None:
    """Compression writes a new folder; it never replaces the checkpoint it read (a file, a run folder or a shipped
    tag's folder) nor anything else already there."""
    from .weights import refuse_overwriting_input

    refuse_overwriting_input(out, ckpt)
    check_new_folder(out)


def _data(spec: str | None, args: dict, run: Any = None):
    """The data module `spec` with init arguments `args`. When it is the data module the run trained on (its stored
    recipe), the run's own arguments and tokenizer are the defaults that `args` override: the same splits,
    vocabulary and token ids as in training (a module built with its class defaults can have other ones)."""
    if not spec:
        return None
    import importlib
    import sys

    import yaml

    def load(path: str):
        mod, _, cls = path.rpartition(".")
        return getattr(importlib.import_module(mod), cls)

    klass = load(spec)
    stored = ((yaml.safe_load(run.cli_config) or {}).get("data") or {}) if run is not None and run.cli_config else {}
    if stored.get("class_path") and load(stored["class_path"]) is klass:
        own = {k: v for k, v in (stored.get("init_args") or {}).items() if not k.startswith("predict_")}
        if run.tokenizer is not None and "tokenizer" in own:
            own["tokenizer"] = run.source  # the checkpoint's own tokenizer (the data modules read it from there)
        print(f"zoo compress: {spec} with the run's own settings{' and tokenizer' if own.get('tokenizer') else ''} "
              "(--data-args override them)", file=sys.stderr)
        args = {**own, **args}
    dm = klass(**args)
    dm.setup("fit")
    return dm


def _table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(lines)


def apply_main(argv: list[str]) -> int:
    from .export import example_inputs

    p = argparse.ArgumentParser(allow_abbrev=False, prog="zoo compress", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="a `zoo fit` checkpoint (.ckpt) or a weights file (with --model)")
    p.add_argument("--model", help="registered model name (read from the checkpoint when omitted)")
    p.add_argument("--model-kwargs", default="{}", help="JSON overrides")
    p.add_argument("--quantize", choices=["none", "int8"], default="none")
    p.add_argument("--backend", choices=["auto", "torchao", "torch.ao"], default="auto")
    p.add_argument("--prune", type=_fraction, default=0.0, help="fraction of Linear weights (or of heads) to remove, in [0, 1)")
    p.add_argument("--prune-kind", choices=["unstructured", "structured", "heads"], default="unstructured")
    p.add_argument("--data", help="data module class path for accuracy and fine-tuning, e.g. zoo.data.images.MNIST5k")
    p.add_argument("--data-args", default="{}", help="JSON init arguments of the data module")
    p.add_argument("--finetune-epochs", type=_at_least(0), default=0, help="fine-tune after pruning (needs --data)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--threads", type=_at_least(1), default=1, help="CPU threads for the latency measurement")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    _check_out(a.out, a.ckpt)
    model, name, overrides, run = _load_ckpt_model(a.ckpt, a.model, _json_option('--model-kwargs', a.model_kwargs))
    model.eval()
    if a.data:
        check_scored(model)
    dm = _data(a.data, _json_option('--data-args', a.data_args), run)
    if a.finetune_epochs and dm is None:
        raise ValueError("--finetune-epochs needs --data")
    ex = example_inputs(model, batch=1, length=128)
    rows, variants = [], {"original": model}
    original_heads = num_heads(model)
    work, removed = copy.deepcopy(model), {}
    if a.prune > 0:
        if a.prune_kind == "heads":
            imp = head_importance(work, list(dm.val_dataloader()), classification_loss) if dm else None
            removed = prune_heads_global(work, a.prune, imp)
        else:
            prune_linear(work, a.prune, structured=a.prune_kind == "structured")
        if a.finetune_epochs:
            finetune(work, dm.train_dataloader(), a.finetune_epochs, a.lr)
        make_pruning_permanent(work)
        removed = {n: m.pruned_heads for n, m in attention_modules(work).items() if getattr(m, "pruned_heads", None)}
        variants[f"pruned {a.prune_kind} {a.prune:g}"] = work
    if a.quantize == "int8":
        work = quantize_int8(work, a.backend)
        variants[f"{'pruned + ' if a.prune > 0 else ''}int8 ({work.quantization_backend})"] = work
    lat = cpu_latency(variants, ex.args, rounds=10, threads=a.threads)
    for label, m in variants.items():
        row = {"variant": label, "size_MB": size_on_disk(m) / 1e6, f"cpu_ms_b1_{a.threads}thr": lat[label],
               "linear_sparsity": sparsity(m),
               "heads": f"{num_heads(m)}/{original_heads}"}
        if dm is not None:
            row["test_acc"] = accuracy(m, dm.test_dataloader())
        rows.append(row)
    table = _table(rows)
    out = save_compressed(work, a.out, name, overrides, removed, getattr(work, "quantization_backend", None),
                          run.meta if run is not None else None,
                          files={"report.md": f"`zoo compress {' '.join(argv)}`\n\n{table}\n",
                                 "report.json": json.dumps(rows, indent=2)})
    print(table)
    print(f"wrote {out}/ (compress.json, weights, report.md)")
    return 0


class Autocast(nn.Module):
    """`model` run under torch.autocast(device, bfloat16), its outputs cast back to float32 (the weights stay float32:
    the same size on disk)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, *args, **kwargs):
        device = next(self.model.parameters()).device.type
        with torch.autocast(device, dtype=self.dtype):
            out = self.model(*args, **kwargs)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def latency_main(argv: list[str]) -> int:
    from .export import example_inputs
    from .registry import create_model

    p = argparse.ArgumentParser(allow_abbrev=False, prog="zoo compress latency",
                                description="fp32 vs int8 vs bf16 autocast CPU latency of a model (random weights)")
    p.add_argument("--model", required=True)
    p.add_argument("--model-kwargs", default="{}")
    p.add_argument("--batch", type=_at_least(1), default=1)
    p.add_argument("--length", type=_at_least(1), default=128, help="sequence length of text models")
    p.add_argument("--rounds", type=_at_least(1), default=15)
    p.add_argument("--threads", type=_at_least(1), default=1)
    p.add_argument("--backends", default="torchao,torch.ao" if torchao_available() else "torch.ao")
    p.add_argument("--out", help="append the rows to this CSV")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = create_model(a.model, **_json_option('--model-kwargs', a.model_kwargs)).eval()
    variants = {"fp32": model}
    for b in a.backends.split(","):
        variants[f"int8 {b}"] = quantize_int8(model, b)
    variants["bf16 autocast"] = Autocast(model)  # mixed precision: the float32 weights, 16-bit matrix products
    ex = example_inputs(model, a.batch, a.length)
    lat = cpu_latency(variants, ex.args, rounds=a.rounds, threads=a.threads)
    with torch.inference_mode():
        ref = model(*ex.args)
        diffs = {k: float((m(*ex.args) - ref).abs().max()) for k, m in variants.items()}
    rows = [{"model": a.model, "variant": k, "batch": a.batch, "length": a.length, "threads": a.threads,
             "size_MB": round(size_on_disk(m) / 1e6, 2), "median_ms": round(lat[k], 2),
             "speedup": round(lat["fp32"] / lat[k], 2), "max_abs_diff": round(diffs[k], 5)} for k, m in variants.items()]
    print(_table(rows))
    if a.out:
        import csv

        path = Path(a.out)
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
    return 0


def sweep_main(argv: list[str]) -> int:
    """Sparsity vs accuracy: each pruning kind and amount, before and after a short fine-tune."""
    import csv

    p = argparse.ArgumentParser(allow_abbrev=False, prog="zoo compress sweep", description=sweep_main.__doc__)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--model")
    p.add_argument("--model-kwargs", default="{}")
    p.add_argument("--data", required=True)
    p.add_argument("--data-args", default="{}")
    p.add_argument("--kinds", default="unstructured,structured,heads")
    p.add_argument("--amounts", default="0.25,0.5,0.75")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--out", required=True, help="CSV file")
    a = p.parse_args(argv)
    from .weights import atomic_write, refuse_overwriting_input

    refuse_overwriting_input(a.out, a.ckpt)
    if Path(a.out).exists():  # checked before the sweep's minutes, not after
        raise ValueError(f"--out {a.out} already exists; zoo compress sweep never replaces a file: choose a new name")
    torch.manual_seed(0)
    base, _, _, run = _load_ckpt_model(a.ckpt, a.model, _json_option('--model-kwargs', a.model_kwargs))
    check_scored(base)
    dm = _data(a.data, _json_option('--data-args', a.data_args), run)
    # the unpruned model gets the same fine-tune: the baseline that pruned rows are compared with
    tuned = finetune(copy.deepcopy(base), dm.train_dataloader(), a.finetune_epochs, a.lr) if a.finetune_epochs else base
    rows = [{"kind": "none", "amount": 0.0, "linear_sparsity": sparsity(base), "heads": num_heads(base),
             "test_acc_pruned": accuracy(base, dm.test_dataloader()),
             "test_acc_finetuned": accuracy(tuned, dm.test_dataloader()) if a.finetune_epochs else float("nan"),
             "size_MB": size_on_disk(base) / 1e6}]
    imp = head_importance(copy.deepcopy(base), list(dm.val_dataloader()), classification_loss) if "heads" in a.kinds else None
    for kind in a.kinds.split(","):
        for amount in map(float, a.amounts.split(",")):
            torch.manual_seed(0)
            m = copy.deepcopy(base)
            if kind == "heads":
                prune_heads_global(m, amount, imp)
            else:
                prune_linear(m, amount, structured=kind == "structured")
            before = accuracy(m, dm.test_dataloader())
            if a.finetune_epochs:
                finetune(m, dm.train_dataloader(), a.finetune_epochs, a.lr)
            make_pruning_permanent(m)
            rows.append({"kind": kind, "amount": amount, "linear_sparsity": sparsity(m), "heads": num_heads(m),
                         "test_acc_pruned": before,
                         "test_acc_finetuned": accuracy(m, dm.test_dataloader()) if a.finetune_epochs else float("nan"),
                         "size_MB": size_on_disk(m) / 1e6})
            print(_table(rows[-1:]), flush=True)
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    if Path(a.out).exists():
        raise ValueError(f"--out {a.out} appeared during the sweep; zoo compress sweep never replaces a file: the rows "
                         f"are above")
    atomic_write(a.out, write)
    print(_table(rows))
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "latency":
        return latency_main(argv[1:])
    if argv and argv[0] == "sweep":
        return sweep_main(argv[1:])
    return apply_main(argv)
