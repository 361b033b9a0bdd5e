"""The interface every registered model promises (timm-style contract tests over the registry).

Every model is built on the meta device (no memory, any size) and checked for the declared interface.
Every model then runs the whole edge contract on inputs built from its own declaration — forward,
ONNX export checked in onnxruntime at another batch and length, one `zoo bench speed` row, int8
dynamic quantization and, for models with attention, attention capture — at its own size when it is
small, else at the smallest registered size of its family (the published sizes are too large for CI).
Nothing here branches on a family name: the tests read only what the models declare."""
import ast
import pathlib

import pytest
import torch

import zoo
from zoo.contract import GENERATIVE, KINDS, Inputs, example_inputs, kind_of
from zoo.registry import _entry, count_parameters

ALL = zoo.list_models()
SMALL_PARAMS = 6_000_000


def stand_in(name: str) -> str:
    """The model itself when small, else the smallest registered model of its family."""
    if zoo.model_info(name)["params"] < SMALL_PARAMS:
        return name
    family = zoo.list_models(family=_entry(name).family)
    return min(family, key=lambda n: zoo.model_info(n)["params"])


STAND_INS = sorted({stand_in(n) for n in ALL})


def build(name: str, device: str = "cpu"):
    with torch.device(device):
        return zoo.create_model(name), zoo.get_config(name)


@pytest.mark.parametrize("name", ALL)
def test_interface_of_every_registered_model(name):
    model, cfg = build(name, "meta")
    info = zoo.model_info(name)
    assert model.config == cfg and info["params"] == count_parameters(model)
    assert callable(getattr(model, "forward_features", None)), f"{name} has no forward_features"
    assert info["paper"] and info["description"], f"{name} needs a paper and a description in the registry"
    kind = kind_of(model)
    assert kind in KINDS
    if hasattr(model, "reset_classifier"):
        assert callable(getattr(model, "forward_head", None)) and hasattr(model, "num_classes")
    if kind in GENERATIVE:
        assert callable(model.generate)
    assert callable(model.set_grad_checkpointing)
    assert isinstance(model.no_split_modules, tuple)
    assert stand_in(name) in STAND_INS and zoo.model_info(stand_in(name))["params"] < SMALL_PARAMS


@pytest.mark.parametrize("name", STAND_INS)
def test_forward_on_declared_inputs(name):
    model, _ = build(name)
    model.eval()
    ex = example_inputs(model, batch=2, length=8)
    assert isinstance(ex, Inputs) and ex.names and all(set(axes.values()) for axes in ex.dynamic.values())
    with torch.no_grad():
        out = model(*ex.args)
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    other = example_inputs(model, batch=3, length=5, seed=1)
    with torch.no_grad():
        again = model(*other.args)
        assert (again[0] if isinstance(again, tuple) else again).shape[0] == 3  # the declared axes really vary
    if hasattr(model, "forward_head") and kind_of(model) == "image_classifier":
        with torch.no_grad():
            torch.testing.assert_close(model.forward_head(model.forward_features(*ex.args)), out)


@pytest.mark.parametrize("name", STAND_INS)
def test_onnx_export_in_onnxruntime(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from zoo.export import ExportError, check_onnx, export_file

    model, _ = build(name)
    model.eval()
    path = tmp_path / f"{name}.onnx"
    try:
        export_file(model, path, "onnx", batch=2, length=8)  # verified at batch 3, length 11 before it is kept
    except ExportError as e:  # a model that cannot be exported with dynamic axes says why, and --static works
        assert "--static" in str(e) and not path.exists()
        export_file(model, path, "onnx", batch=2, length=8, static=True)
        assert check_onnx(model, path, example_inputs(model, 2, 8)) <= 1e-4
        return
    for batch, length in ((3, 11), (1, 6)):
        assert check_onnx(model, path, example_inputs(model, batch, length, seed=batch)) <= 1e-4


@pytest.mark.parametrize("name", STAND_INS)
def test_one_bench_row_int8_and_attention_capture(name):
    from zoo.bench.speed import SpeedOptions, bench_model
    from zoo.compress import quantize_int8
    from zoo.core import capture_attention

    opts = SpeedOptions(batch_size=2, seq_lens=(8,), modes=("forward",), warmup=0, rounds=1, steps=1, memory=False)
    rows = bench_model(name, opts, 8, None)
    assert rows and rows[0]["model"] == name and rows[0]["median_ms"] > 0 and rows[0]["kind"] == rows[0]["kind"]

    model, _ = build(name)
    model.eval()
    ex = example_inputs(model, 2, 8)
    with torch.no_grad():
        ref = model(*ex.args)
        q = quantize_int8(model, "torch.ao")
        out = q(*ex.args)
    ref, out = (t[0] if isinstance(t, tuple) else t for t in (ref, out))
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert any("quantized" in type(m).__module__ for m in q.modules()), f"{name}: no Linear was quantized"

    if any(hasattr(m, "record_weights") for m in model.modules()):
        with torch.no_grad(), capture_attention(model) as maps:
            model(*ex.args)
        assert maps, f"{name}: no attention map captured"
        for w in maps.values():
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5, rtol=1e-5)


# -- intermediate features and checkpointing of image models (zoo/features.py) ---------------------

IMAGE_STAND_INS = [n for n in STAND_INS if getattr(_entry(n).model_cls, "kind", None) == "image_classifier"]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", IMAGE_STAND_INS)
def test_forward_intermediates_match_the_declared_feature_info(name):
    import math

    model, _ = build(name)
    model.eval()
    x = example_inputs(model, batch=2).args[0]
    info = model.feature_info
    assert isinstance(info, list) and info, f"{name} declares no feature_info"
    for f in info:
        assert {"num_chs", "reduction", "module"} <= set(f) and model.get_submodule(f["module"]) is not None
    last = len(info) - 1
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=[0, -1])
        torch.testing.assert_close(final, model.forward_features(x))  # the final output is forward_features
        assert len(maps) == 2
        for i, m in zip((0, last), maps):
            size = tuple(math.ceil(s / info[i]["reduction"]) for s in x.shape[-2:])
            assert m.shape == (2, info[i]["num_chs"], *size), f"{name} map {i}: {tuple(m.shape)} vs feature_info {info[i]}"
        nlc = model.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", intermediates_only=True)
        assert isinstance(nlc, list) and len(nlc) == 2
        for m, t in zip(maps, nlc):
            torch.testing.assert_close(t, m.flatten(2).transpose(1, 2))  # NLC = the NCHW map's tokens, row-major
        every = model.forward_intermediates(x, intermediates_only=True)
        assert len(every) == len(info)
        torch.testing.assert_close(every[-1], maps[-1])
        assert len(model.forward_intermediates(x, indices=1, intermediates_only=True)) == 1


@pytest.mark.parametrize("name", IMAGE_STAND_INS)
def test_gradient_checkpointing_changes_nothing(name):
    model, _ = build(name)
    model.train()
    x = example_inputs(model, batch=2).args[0]

    def run():
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout / stochastic-depth draws in both runs
        out = _first(model(x))
        out.float().square().mean().backward()
        torch.manual_seed(0)
        maps = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return out.detach(), [m.detach() for m in maps], grads

    ref = run()
    assert model.set_grad_checkpointing(True) >= 1
    out = run()
    model.set_grad_checkpointing(False)
    torch.testing.assert_close(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1])
    assert len(out[2]) == len(ref[2]) > 0
    torch.testing.assert_close(out[2], ref[2])


# -- the package's structure ----------------------------------------------------------------------

PKG = pathlib.Path(zoo.__file__).parent


def _imports(path: pathlib.Path, top_level: bool = True) -> set[str]:
    """Modules a file imports (absolute names; relative ones resolved), at module level or anywhere."""
    module = ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if top_level else ast.walk(tree):  # lazy imports inside functions break no cycle
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m == "zoo" or m.startswith("zoo.")}


def test_no_module_imports_the_cli_and_there_are_no_import_cycles():
    files = {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p for p in PKG.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}
    offenders = sorted(m for m, p in files.items() if m != "zoo.cli" and any(i == "zoo.cli" or i.startswith("zoo.cli.")
                                                                               for i in _imports(p, top_level=False)))
    assert not offenders, f"library modules import zoo.cli: {offenders}"
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1 and not (m.startswith(d + ".") or d == "zoo"):
                raise AssertionError(f"import cycle: {' -> '.join(stack + [m, d])}")
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


SIZED_STAND_INS = [n for n in STAND_INS if hasattr(zoo.get_config(n), "img_size") and hasattr(zoo.get_config(n), "patch_size")]


@pytest.mark.parametrize("name", SIZED_STAND_INS)
def test_weights_load_into_the_model_at_another_image_size(name, tmp_path):
    """timm's create_model(name, pretrained=..., img_size=N): weights trained at one image size load into the model
    built for another (learned position tables resampled, fixed ones rebuilt) and run on images of that size."""
    model, cfg = build(name)
    model.save_pretrained(tmp_path)
    size = 2 * cfg.img_size if cfg.img_size < 100 else cfg.img_size + 2 * cfg.patch_size  # larger, not 4x the work
    other = zoo.create_model(name, pretrained=str(tmp_path), img_size=size).eval()
    ex = example_inputs(other, batch=1, length=5)
    assert ex.args[0].shape[-2:] == (size, size)
    with torch.no_grad():
        assert torch.isfinite(_first(other(*ex.args))).all()


@pytest.mark.parametrize("name", IMAGE_STAND_INS)
def test_prune_intermediate_layers_keeps_the_taken_maps(name):
    """timm's prune_intermediate_layers on every image model that offers forward_intermediates."""
    model, _ = build(name)
    model.eval()
    x = example_inputs(model, batch=1).args[0]
    with torch.no_grad():
        before = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        take = model.prune_intermediate_layers([0, 1])
        after = model.forward_intermediates(x, indices=take, intermediates_only=True)
        assert take == [0, 1] and len(model.feature_info) == 2
        torch.testing.assert_close(after, before)
        assert torch.isfinite(_first(model(x))).all()
