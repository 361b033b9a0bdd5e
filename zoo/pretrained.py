"""Pretrained tags, timm-style: `name.tag`, each with a pretrained config, weights that ship with the package.

    zoo.list_pretrained("vit_*")                                  # ['vit_digits.digits', 'vit_mnist.mnist5k', ...]
    model = zoo.create_model("vit_mnist.mnist5k", pretrained=True)
    model = zoo.create_model("vit_mnist", pretrained=True)        # the name's default tag
    zoo.pretrained_cfg("vit_mnist.mnist5k")                      # source, sha256, license, input, metric, command

The shipped weights are `save_pretrained` directories under `zoo/pretrained_weights/<name>.<tag>/`;
`zoo/pretrained_weights/index.json` describes every tag (data, not code) and is written by
`scripts/make_pretrained.py`, which regenerates the weights from the recipes. Every load checks the
file's sha256 against the index: a corrupted or missing file is an error naming it and the fix.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).parent / "pretrained_weights"
INDEX = WEIGHTS_DIR / "index.json"
REGENERATE = "python scripts/make_pretrained.py --tag {tag}"


class PretrainedError(ValueError):
    """An unknown tag, or shipped weights that are missing or fail their checksum."""


@dataclass(frozen=True)
class PretrainedCfg:
    tag: str  # "vit_mnist.mnist5k"
    model: str  # the registered architecture
    files: dict[str, str]  # file name -> sha256, inside WEIGHTS_DIR / tag
    license: str = "apache-2.0"
    source: str = "trained by scripts/make_pretrained.py from the recipe"
    recipe: str = ""  # configs/<recipe>.yaml
    command: str = ""
    dtype: str = "float32"
    metric: dict[str, Any] = field(default_factory=dict)  # {"name", "value", "split", "float32_value"}
    input: dict[str, Any] = field(default_factory=dict)  # image size/mean/std, or the tokenizer kind
    default: bool = False  # the tag `create_model(name, pretrained=True)` takes

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.tag

    def as_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


@lru_cache(maxsize=1)
def _index() -> dict[str, PretrainedCfg]:
    if not INDEX.is_file():
        return {}
    raw = json.loads(INDEX.read_text(encoding="utf-8"))
    return {tag: PretrainedCfg(tag=tag, **cfg) for tag, cfg in raw.items()}


def split_tag(name: str) -> tuple[str, str | None]:
    """"vit_mnist.mnist5k" -> ("vit_mnist", "mnist5k"); "vit_mnist" -> ("vit_mnist", None)."""
    base, dot, tag = name.partition(".")
    return (base, tag) if dot else (name, None)


def is_tag(name: str) -> bool:
    return isinstance(name, str) and name in _index()


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Every shipped `name.tag`, sorted, optionally filtered by a shell wildcard."""
    tags = sorted(_index())
    return [t for t in tags if fnmatch.fnmatch(t, pattern)] if pattern else tags


def default_tag(name: str) -> str | None:
    tags = [t for t, cfg in _index().items() if cfg.model == name]
    chosen = [t for t in tags if _index()[t].default] or sorted(tags)
    return chosen[0] if chosen else None


def pretrained_cfg(tag: str) -> PretrainedCfg:
    """The pretrained config of `name.tag` (or of a name's default tag)."""
    index = _index()
    if tag not in index:
        base, sub = split_tag(tag)
        if sub is None and default_tag(base):
            return index[default_tag(base)]
        known = [t for t in index if split_tag(t)[0] == base]
        hint = f"; {base} has: {', '.join(known)}" if known else f"; shipped tags: {', '.join(sorted(index)) or 'none'}"
        raise PretrainedError(f"no pretrained weights {tag!r}{hint} (zoo.list_pretrained() lists them)")
    return index[tag]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}


def verified_path(tag: str) -> Path:
    """The tag's directory after checking every file's sha256 against the index."""
    cfg = pretrained_cfg(tag)
    fix = REGENERATE.format(tag=cfg.tag)
    for name, expected in cfg.files.items():
        f = cfg.path / name
        if not f.is_file():
            raise PretrainedError(f"shipped weights file {str(f)!r} of {cfg.tag} is missing; reinstall zoo or regenerate it: {fix}")
        stat = f.stat()
        key = (str(f), stat.st_size, stat.st_mtime_ns)
        if _VERIFIED.get(key) != expected:
            actual = sha256_file(f)
            if actual != expected:
                raise PretrainedError(f"shipped weights file {str(f)!r} of {cfg.tag} is corrupted (sha256 {actual[:12]}..., "
                                      f"expected {expected[:12]}...); reinstall zoo or regenerate it: {fix}")
            _VERIFIED[key] = expected
    return cfg.path


def has_tag_weights(model, tag: str) -> bool:
    """Whether `model` holds exactly the weights of the shipped `tag`: every tensor of its state dict equal to the
    tag's as stored, in the tag's dtype, and losslessly so. A float16 tag loads as float32 without change, so the
    model it gives (saved and loaded again, in float32 or float16) matches; any change, also one smaller than float16
    can show, does not. False for a tag this zoo does not ship or whose files fail their checksum."""
    import torch

    from .weights import _fill_tied, read_state_dict

    try:
        folder = verified_path(tag)
    except PretrainedError:
        return False
    own = model.state_dict()
    stored = _fill_tied(own, read_state_dict(folder / "model.safetensors"))  # tied tensors are stored once
    if set(own) != set(stored):
        return False
    for key, tensor in own.items():
        ref, tensor = stored[key], tensor.detach().cpu()
        if tensor.shape != ref.shape:
            return False
        cast = tensor.to(ref.dtype)
        if not torch.equal(cast, ref) or not torch.equal(cast.to(tensor.dtype), tensor):
            return False
    return True


def resolve(name: str) -> str:
    """The verified folder of a tag, or of a plain name's default tag (an error naming the fix when it has none)."""
    base, tag = split_tag(name)
    chosen = name if tag else default_tag(base)
    if chosen is None:
        raise PretrainedError(f"{name} has no shipped weights (zoo.list_pretrained() lists the tags that do); pass "
                              "pretrained=<path> to a checkpoint of `zoo fit`, a run folder, a save_pretrained directory "
                              "or 'hf-hub:<org>/<repo>'")
    return str(verified_path(chosen))


def evaluate(source: str, metric: str | None = None, recipe: str | None = None) -> float:
    """Re-measure weights with their recipe's own test step on its held-out test split (what the card states).

    source: a tag, a save_pretrained directory or a checkpoint; recipe: the recipe YAML text (default: the one
    stored with the weights); metric: e.g. "test/acc" (default: the tag's)."""
    import os

    from .runs import load_run
    from .trainer_cli import build_cli, recipe_file

    if recipe is None:
        recipe = load_run(source).cli_config
        if not recipe:
            raise PretrainedError(f"{source} stores no recipe to evaluate it with")
    metric = metric or pretrained_cfg(source).metric["name"]
    path = recipe_file(recipe)
    try:
        cli = build_cli(["test", "--config", path, "--model.init_args.pretrained", str(source),
                         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    finally:
        os.remove(path)
    return float(cli.trainer.callback_metrics[metric])
