"""Export a zoo model to ONNX or a torch.export program, with dynamic batch and length axes.

    zoo export --model vit_mnist --format onnx --out vit_mnist.onnx
    zoo export --model runs/vit_mnist --format torch-export --out vit.pt2     # the newest run's last.ckpt
    zoo export --model runs/bert_pairs/version_0/checkpoints/last.ckpt --out bert.onnx

ONNX goes through the dynamo exporter (`torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`);
only if that fails does it fall back to the TorchScript exporter, and it says so.
The inputs and their dynamic axes are the model's own declaration (`model.example_inputs`, zoo/contract.py).
Every ONNX file is run in onnxruntime at another batch and length before it is kept; a model whose
dynamic axes do not work is refused (use --static), and the output never replaces the input file.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from .contract import Inputs
from .contract import example_inputs as contract_inputs

FORMATS = ("onnx", "torch-export")


class ExportError(RuntimeError):
    """A model that cannot be exported as asked; the message says why and what works instead."""


def example_inputs(model: nn.Module, batch: int = 2, length: int = 16, seed: int = 0) -> Inputs:
    """The model's declared example inputs (zoo.contract): tensors in forward's order, named axes."""
    return contract_inputs(model, batch, length, seed)


class _Positional(nn.Module):
    """Calls the model with positional tensors only (exporters want a flat signature)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args):
        out = self.model(*args)
        return out[0] if isinstance(out, tuple) else out


UNBOUNDED = 4096  # the top of a dynamic length the model declares no limit for (T5's relative positions)


def _dynamic_shapes(ex: Inputs):
    from torch.export import Dim

    # lengths start at 2: export specialises sizes 0 and 1; the top is the model's declared limit (its position table)
    dims: dict[str, Dim] = {"batch": Dim("batch", min=1, max=4096)}
    shapes = []
    for name in ex.names:
        spec = {}
        for axis, sym in ex.dynamic.get(name, {}).items():  # --static: none
            if sym not in dims:
                dims[sym] = Dim(sym, min=2, max=ex.max_sizes.get(sym, UNBOUNDED))
            spec[axis] = dims[sym]
        shapes.append(spec)
    return (tuple(shapes),)


def export_torch(model: nn.Module, ex: Inputs) -> torch.export.ExportedProgram:
    """torch.export with the declared dynamic axes (batch, lengths; image sides stay fixed: the position
    table is resized in Python, which export specialises to the example's size)."""
    wrapped = _Positional(model.eval()).eval()
    shapes = _dynamic_shapes(ex)
    # _Positional takes *args: dynamic_shapes is a 1-tuple holding the per-argument specs
    return torch.export.export(wrapped, ex.args, dynamic_shapes=shapes, strict=False)


def _name(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)


def _export_program(model: nn.Module, ex: Inputs, batch: int, length: int, static: bool) -> torch.export.ExportedProgram:
    """export_torch, quietly; a failure is an `ExportError` in one line that says what works instead: --static where
    the model traces at fixed shapes (a length that the code specialises), else ONNX at fixed shapes (the TorchScript
    exporter traces what torch.export cannot: packed sequences' data-dependent sizes)."""
    def trace(inputs: Inputs) -> torch.export.ExportedProgram:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export's own warnings (attributes assigned during tracing, ...)
            return export_torch(model, inputs)

    try:
        return trace(ex)
    except Exception as e:  # noqa: BLE001 - torch.export's many error types: one line that names the way out
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    if not static:
        fixed = example_inputs(model, batch, length)
        try:
            trace(Inputs(fixed.tensors, {}, {}))
        except Exception:  # noqa: BLE001 - not at fixed shapes either: the advice below
            pass
        else:
            raise ExportError(f"torch.export cannot keep the dynamic axes {sorted({s for d in ex.dynamic.values() for s in d.values()})} "
                              f"of {_name(model)} ({why}); export with --static to fix the example's shapes")
    raise ExportError(f"torch.export cannot trace {_name(model)} ({why}); export it to ONNX instead "
                      "(--format onnx --static: the TorchScript exporter traces it at fixed shapes)")


def export_onnx(model: nn.Module, ex: Inputs, path: str | Path, opset: int = 18) -> str:
    """Write an ONNX file; returns which exporter produced it ("dynamo" or "torchscript")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _Positional(model.eval()).eval()
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
    """A registered name (random weights), a `zoo fit` checkpoint or run folder, zoo safetensors, or NAME@WEIGHTS."""
    from .runs import load_run

    return load_run(spec, model_kwargs).model


def _same_file(a: str | Path, b: str | Path) -> bool:
    a, b = Path(a), Path(b)
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))


def check_exportable(model: nn.Module) -> None:
    """Raise `ExportError` for a model that no exporter takes (torch.ao's int8 layers), before anything is written."""
    int8 = sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")})
    if int8:  # neither exporter takes their packed weights (the TorchScript fallback dumps its graph, then fails)
        raise ExportError(f"{getattr(model, 'model_name', type(model).__name__)} holds torch.ao int8 layers "
                          f"({', '.join(int8)}), which neither ONNX nor torch.export takes; export the float model (a "
                          "`zoo compress` folder made without --quantize) and quantize the ONNX file with onnxruntime's "
                          "quantize_dynamic")


def export_file(model: nn.Module, out: str | Path, fmt: str = "onnx", batch: int = 2, length: int = 16, opset: int = 18,
                static: bool = False, source: str | None = None) -> str:
    """Export `model` to `out` atomically. ONNX files are run in onnxruntime at another batch and length
    before they are kept: a graph whose dynamic axes do not work raises `ExportError` and leaves nothing."""
    from .weights import atomic_write

    if source is not None and Path(source).exists() and _same_file(source, out):
        raise ExportError(f"--out {out} is the model file being exported; choose another output path")
    if static:
        ex = example_inputs(model, batch, length)
        ex = Inputs(ex.tensors, {}, {})
    else:  # torch.export specialises sizes 0 and 1: a dynamic axis is traced at 2 or more (the file is the same)
        ex = example_inputs(model, max(batch, 2), max(length, 2))
    check_exportable(model)
    if fmt == "torch-export":
        program = _export_program(model, ex, batch, length, static)
        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a buffer: torch warns about a file name that does not end in .pt2
                torch.export.save(program, f)
        atomic_write(out, save)
        return f"torch.export, dynamic axes {ex.dynamic or 'none'}"
    used = {}

    def write(tmp: str) -> None:
        used["exporter"] = export_onnx(model, ex, tmp, opset)
        check_opset(tmp, opset, _name(model))
        if not static:
            verify_onnx(model, tmp, batch, length)

    atomic_write(out, write)
    return f"{used['exporter']} exporter, dynamic axes {ex.dynamic or 'none'}"


def check_opset(path: str | Path, opset: int, name: str = "the model") -> None:
    """The file is at the asked opset and onnxruntime loads it. The dynamo exporter writes opset 18 and up: asked for
    less, it tries onnx's version converter and, where that fails, keeps opset 18 and only logs it; asked for more than
    onnxruntime implements, the file does not load."""
    import onnx

    got = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ExportError(f"--opset {opset}: the exporter wrote {name} at opset {got} (it could not convert the graph to "
                          f"opset {opset}); export with --opset {got}{' or higher' if opset < got else ''}")
    try:
        import onnxruntime as ort
    except ImportError:
        return
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's load errors: say which opset to use
        raise ExportError(f"--opset {opset}: onnxruntime {ort.__version__} cannot load the graph of {name} at this opset "
                          f"({type(e).__name__}: {str(e).splitlines()[0][-160:]}); export with a lower --opset "
                          "(18, the default, works)") from None


def verify_onnx(model: nn.Module, path: str | Path, batch: int, length: int, tol: float = 1e-4) -> float:
    """Run the file at (batch + 1, length + 3): the declared dynamic axes must work and agree with PyTorch."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("zoo export: onnxruntime is not installed; the file was not checked (pip install onnxruntime)", file=sys.stderr)
        return float("nan")
    other = example_inputs(model, batch + 1, length + 3, seed=1)
    try:
        err = check_onnx(model, path, other)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own errors: say what failed and what to do
        raise ExportError(f"the ONNX graph of {getattr(model, 'model_name', type(model).__name__)} does not run at another "
                          f"batch/length ({type(e).__name__}: {str(e).splitlines()[0][:200]}); its dynamic axes do not work - "
                          "export with --static to fix the example's shapes") from None
    if not err <= tol:
        raise ExportError(f"the ONNX graph differs from PyTorch by {err:.2e} (> {tol}) at another batch/length; "
                          "export with --static to fix the example's shapes")
    return err


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="zoo export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered name, a zoo fit checkpoint (.ckpt) or run folder, or NAME@WEIGHTS")
    p.add_argument("--model-kwargs", default="{}", help="JSON overrides, e.g. '{\"head\": \"cls\"}'")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out", required=True, help="output file (.onnx or .pt2); never the input")
    from .bench.cli import _at_least  # argparse type: an int >= low, named in argparse's one-line error

    p.add_argument("--batch", type=_at_least(1), default=2, help="batch of the example input (the axis stays dynamic)")
    p.add_argument("--length", type=_at_least(1), default=16, help="sequence length of the example input (text models)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--static", action="store_true", help="fixed shapes (the example's batch and length), no dynamic axes")
    p.add_argument("--check", action="store_true", help="print the file's max|delta| against PyTorch at another batch/length (ONNX: in onnxruntime; "
                                                         "torch-export: the loaded program)")
    a = p.parse_args(argv)
    try:
        kwargs = json.loads(a.model_kwargs)
    except json.JSONDecodeError as e:
        raise ValueError(f"--model-kwargs is not JSON ({e.msg}): {a.model_kwargs!r}; e.g. '{{\"head\": \"cls\"}}'") from None
    from .rundir import resolve_checkpoint

    source = resolve_checkpoint(a.model)
    if Path(source).exists() and _same_file(source, a.out):
        raise ExportError(f"--out {a.out} is the model file being exported; choose another output path")
    from .weights import refuse_overwriting_input

    refuse_overwriting_input(a.out, a.model, source)
    what, suffix = {"onnx": ("an ONNX file", ".onnx"), "torch-export": ("a torch.export program", ".pt2")}[a.format]
    if Path(a.out).suffix.lower() != suffix:
        raise ValueError(f"--out {a.out}: {what} ends in {suffix} (e.g. --out model{suffix})")
    model = load_model(a.model, kwargs).eval()
    print(f"wrote {a.out} ({export_file(model, a.out, a.format, a.batch, a.length, a.opset, a.static, source)})")
    if a.check:  # another batch and length, or other values at the fixed shapes of --static
        batch, length = (a.batch, a.length) if a.static else (a.batch + 1, a.length + 3)
        ex = example_inputs(model, batch, length, seed=1)
        if a.format == "onnx":  # the absolute difference, as printed (the export's own check is relative)
            runner, err = "onnxruntime", check_onnx(model, a.out, ex, relative=False)
        else:
            runner, err = "the torch.export program", check_program(model, a.out, ex, relative=False)
        print(f"{runner} vs PyTorch at batch {batch}{' (the fixed shapes of --static)' if a.static else ''}: "
              f"max|delta| = {err:.2e}")
    return 0


def check_program(model: nn.Module, path: str | Path, ex: Inputs, relative: bool = True) -> float:
    """max |torch.export program (loaded from `path`) - PyTorch|, relative to max(1, max|reference|) unless
    relative=False, as check_onnx."""
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        out = program(*ex.args)
        ref = _Positional(model.eval())(*ex.args)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return float((out - ref).abs().max() / (max(1.0, ref.abs().max().item()) if relative else 1.0))


def check_onnx(model: nn.Module, path: str | Path, ex: Inputs, relative: bool = True) -> float:
    """max |onnxruntime - PyTorch|, relative to max(1, max|reference|) unless relative=False."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feeds = {n: t.numpy() for n, t in zip(ex.names, ex.args) if n in names}
    out = sess.run(None, feeds)[0]
    with torch.no_grad():
        ref = _Positional(model.eval())(*ex.args)
    return float((torch.from_numpy(out) - ref).abs().max() / (max(1.0, ref.abs().max().item()) if relative else 1.0))
