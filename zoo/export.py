"""Export a zoo model to ONNX or a torch.export program, with dynamic batch and length axes.

    zoo export --model vit_mnist --format onnx --out vit_mnist.onnx
    zoo export --model runs/vit_mnist/checkpoints/best.ckpt --format torch-export --out vit.pt2
    zoo export --model bert_tiny --model-kwargs '{"head": "cls"}' --format onnx --out bert.onnx

ONNX goes through the dynamo exporter (`torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`);
only if that fails does it fall back to the TorchScript exporter, and it says so.
Dynamic axes: images (batch; height and width stay the config's img_size), text (batch,
sequence up to the position table), encoder-decoders (batch, source length, target length).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

FORMATS = ("onnx", "torch-export")


@dataclass
class ExampleInputs:
    kind: str  # "image" | "text" | "seq2seq"
    args: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: symbolic name}


def model_kind(model: nn.Module) -> str:
    """What a model consumes, read off its config: images, token ids, or source + target ids."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} has no .config; export and compression work on zoo models")
    if hasattr(model, "encode") and hasattr(model, "decode"):
        return "seq2seq"
    if hasattr(cfg, "img_size") and hasattr(cfg, "in_chans") and not hasattr(cfg, "vocab_size"):
        return "image"
    if hasattr(cfg, "vocab_size"):
        return "text"
    raise ValueError(f"cannot tell what {type(model).__name__} takes as input; export supports image classifiers, "
                     "text encoders and encoder-decoders")


def example_inputs(model: nn.Module, batch: int = 2, length: int = 16, tgt_length: int | None = None,
                   image_size: int | None = None, seed: int = 0) -> ExampleInputs:
    """Random inputs of the right kind for `model`, with the names of their dynamic axes."""
    g = torch.Generator().manual_seed(seed)
    cfg, kind = model.config, model_kind(model)
    if kind == "image":
        size = image_size or cfg.img_size
        x = torch.randn(batch, cfg.in_chans, size, size, generator=g)
        return ExampleInputs(kind, (x,), ("images",), {"images": {0: "batch"}})
    low = 3  # skip pad / bos / eos so that no row is all padding
    vocab = cfg.vocab_size if kind == "text" else min(cfg.vocab_size, getattr(cfg, "src_vocab_size", None) or cfg.vocab_size)
    ids = torch.randint(low, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length - max(1, length // 4):] = 0  # pad the end of the first row: masks must be honoured
    if kind == "text":
        return ExampleInputs(kind, (ids, mask), ("input_ids", "attention_mask"),
                             {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}})
    dec = torch.randint(low, cfg.vocab_size, (batch, tgt_length or max(2, length // 2)), generator=g)
    return ExampleInputs(kind, (ids, dec, mask), ("input_ids", "decoder_input_ids", "attention_mask"),
                         {"input_ids": {0: "batch", 1: "source"}, "decoder_input_ids": {0: "batch", 1: "target"},
                          "attention_mask": {0: "batch", 1: "source"}})


class _Positional(nn.Module):
    """Calls the model with positional tensors only (exporters want a flat signature)."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, *args):
        if self.kind == "seq2seq":
            ids, dec, mask = args
            return self.model(ids, dec, attention_mask=mask)
        if self.kind == "text":
            ids, mask = args
            return self.model(ids, attention_mask=mask)
        return self.model(*args)


def _max_length(model: nn.Module) -> int:
    cfg = model.config
    for key in ("max_positions", "max_len", "max_position_embeddings"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return 4096


def _dynamic_shapes(model: nn.Module, ex: ExampleInputs):
    from torch.export import Dim

    # lengths start at 2: export specialises sizes 0 and 1; the top is the model's position table
    dims: dict[str, Dim] = {"batch": Dim("batch", min=1, max=4096)}
    shapes = []
    for name in ex.names:
        spec = {}
        for axis, sym in ex.dynamic[name].items():
            if sym not in dims:
                dims[sym] = Dim(sym, min=2, max=_max_length(model))
            spec[axis] = dims[sym]
        shapes.append(spec)
    return (tuple(shapes),)


def _image_dynamic_shapes(model: nn.Module, ex: ExampleInputs):
    from torch.export import Dim

    # Only the batch is dynamic: the position table is resized for other image sizes in Python
    # (a branch on the grid), which export specialises to the example's size.
    return (({0: Dim("batch", min=1, max=4096)},),)


def export_torch(model: nn.Module, ex: ExampleInputs) -> torch.export.ExportedProgram:
    """torch.export with dynamic batch and length (or image side) axes."""
    wrapped = _Positional(model.eval(), ex.kind).eval()
    shapes = _image_dynamic_shapes(model, ex) if ex.kind == "image" else _dynamic_shapes(model, ex)
    # _Positional takes *args: dynamic_shapes is a 1-tuple holding the per-argument specs
    return torch.export.export(wrapped, ex.args, dynamic_shapes=shapes, strict=False)


def export_onnx(model: nn.Module, ex: ExampleInputs, path: str | Path, opset: int = 18) -> str:
    """Write an ONNX file; returns which exporter produced it ("dynamo" or "torchscript")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _Positional(model.eval(), ex.kind).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = export_torch(model, ex)
            onnx_program = torch.onnx.export(program, ex.args, dynamo=True, input_names=list(ex.names),
                                             output_names=["output"], opset_version=opset, verbose=False)
        onnx_program.save(str(path))
        return "dynamo"
    except Exception as e:  # noqa: BLE001 - any dynamo failure: try the older exporter and say so
        print(f"zoo export: the dynamo ONNX exporter failed ({type(e).__name__}: {str(e)[:300]}); "
              "falling back to the TorchScript exporter", file=sys.stderr)
        torch.onnx.export(wrapped, ex.args, str(path), dynamo=False, input_names=list(ex.names), output_names=["output"],
                          dynamic_axes={**ex.dynamic, "output": {0: "batch"}}, opset_version=opset)
        return "torchscript"


def load_model(spec: str, model_kwargs: dict | None = None) -> nn.Module:
    """A registered model name (random weights), or a checkpoint / safetensors file.

    A Lightning checkpoint from `zoo fit` names its model in its hyper-parameters; for a bare
    weights file pass `name=path` as `NAME@PATH` (e.g. vit_mnist@weights.safetensors)."""
    from .registry import create_model

    kwargs = dict(model_kwargs or {})
    if "@" in spec:
        name, path = spec.split("@", 1)
        return create_model(name, pretrained=path, **kwargs)
    if Path(spec).suffix in (".ckpt", ".pt", ".pth", ".bin", ".safetensors") or Path(spec).exists():
        if Path(spec).suffix != ".ckpt":
            raise ValueError(f"{spec} holds weights without a model name; pass MODEL@{spec} (e.g. vit_mnist@{spec})")
        if not Path(spec).exists():
            raise FileNotFoundError(f"checkpoint {spec!r} does not exist")
        hp = torch.load(spec, map_location="cpu", weights_only=True).get("hyper_parameters", {})
        if "model" not in hp:
            raise ValueError(f"{spec} has no hyper-parameters naming its model; pass MODEL@{spec}")
        return create_model(hp["model"], pretrained=spec, **checkpoint_overrides(hp, kwargs))
    return create_model(spec, **kwargs)


def checkpoint_overrides(hp: dict, kwargs: dict | None = None) -> dict:
    """The model overrides a `zoo fit` checkpoint was trained with: data overrides, the user's
    model_kwargs, and the head a text task picks by its class (e.g. SequenceClassification -> "cls")."""
    import dataclasses
    import importlib

    from .registry import get_config

    overrides = {**(hp.get("data_overrides") or {}), **(hp.get("model_kwargs") or {}), **(kwargs or {})}
    fields = {f.name for f in dataclasses.fields(get_config(hp["model"]))}
    overrides = {k: v for k, v in overrides.items() if k in fields}  # task-only data keys are not model fields
    path = hp.get("_class_path", "")
    if "head" in fields and "head" not in overrides and "." in path:
        try:
            task_head = getattr(getattr(importlib.import_module(path.rsplit(".", 1)[0]), path.rsplit(".", 1)[1]), "head", None)
        except (ImportError, AttributeError):
            task_head = None
        if isinstance(task_head, str):
            overrides["head"] = task_head
    return overrides


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zoo export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered name, a zoo fit checkpoint (.ckpt), or NAME@WEIGHTS")
    p.add_argument("--model-kwargs", default="{}", help="JSON overrides, e.g. '{\"head\": \"cls\"}'")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out", required=True, help="output file (.onnx or .pt2)")
    p.add_argument("--batch", type=int, default=2, help="batch of the example input (the axis stays dynamic)")
    p.add_argument("--length", type=int, default=16, help="sequence length of the example input (text models)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--check", action="store_true", help="run the ONNX file in onnxruntime at another batch/length and compare")
    a = p.parse_args(argv)
    model = load_model(a.model, json.loads(a.model_kwargs)).eval()
    ex = example_inputs(model, a.batch, a.length)
    if a.format == "torch-export":
        torch.export.save(export_torch(model, ex), a.out)
        print(f"wrote {a.out} (torch.export, dynamic axes {ex.dynamic})")
        return 0
    used = export_onnx(model, ex, a.out, a.opset)
    print(f"wrote {a.out} ({used} exporter, dynamic axes {ex.dynamic})")
    if a.check:
        err = check_onnx(model, a.out, example_inputs(model, a.batch + 1, a.length + 3, seed=1))
        print(f"onnxruntime vs PyTorch at batch {a.batch + 1}: max|delta| = {err:.2e}")
    return 0


def check_onnx(model: nn.Module, path: str | Path, ex: ExampleInputs) -> float:
    """max |onnxruntime - PyTorch| relative to max(1, max|reference|)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out = sess.run(None, {n: t.numpy() for n, t in zip(names, ex.args)})[0]
    with torch.no_grad():
        ref = _Positional(model.eval(), ex.kind)(*ex.args)
    return float((torch.from_numpy(out) - ref).abs().max() / max(1.0, ref.abs().max().item()))
