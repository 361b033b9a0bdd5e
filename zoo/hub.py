"""The Hugging Face Hub conventions for zoo models, built on `huggingface_hub`.

    model.save_pretrained("my_vit")                    # or zoo.hub.save_pretrained(run, "my_vit") to keep the tokenizer
    model = zoo.from_pretrained("my_vit")              # a directory, a shipped tag, or a Hub repo id
    model = zoo.create_model("vit_mnist", pretrained="hf-hub:me/vit-mnist")
    zoo.hub.push_to_hub(run, "me/vit-mnist")           # huggingface_hub.HfApi.create_repo + upload_folder

A directory holds what transformers users expect to find:

    config.json          {"model_type": "zoo", "architecture": <registered name>, "zoo": <the run record>}
                         (the record is what a `zoo fit` checkpoint keeps: full model config, task, labels,
                         image size and normalisation, the recipe; see zoo.runs)
    model.safetensors    the weights (float32, or float16/bfloat16 when saved so; loaded back as float32)
    tokenizer.json ...   the tokenizer, when the model reads text (transformers' own files)
    README.md            a model card (huggingface_hub.ModelCard)

Repository ids go through `huggingface_hub.snapshot_download`, so its cache layout, revisions and
`HF_HUB_OFFLINE=1` work as everywhere else in the ecosystem. Loading never executes pickled code.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HF_HUB_PREFIX = "hf-hub:"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class HubError(ValueError):
    """A directory or repository that cannot be loaded as a zoo model; the message names it and the fix."""


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    """True for a directory written by `save_pretrained` (a config.json with a zoo record)."""
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        return "zoo" in json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def foreign_dir_problem(path: str | os.PathLike) -> str | None:
    """Why a folder with a config.json is no save_pretrained folder of zoo (its config.json is not JSON, or it is a
    transformers folder), with the fix; None for any other folder."""
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return (f"{str(config)!r} is not valid JSON ({type(e).__name__}: {e}); the folder's config is damaged: "
                "save the model again or repair the file")
    if isinstance(data, dict) and "zoo" not in data:
        return (f"{str(path)!r} is a transformers folder (its config.json has model_type {data.get('model_type')!r} and "
                f"no zoo record): load it with zoo.from_hf({str(path)!r}), or convert it with "
                f"zoo convert --from-hf {path} --out model.safetensors")
    return None


def save_pretrained(source: Any, directory: str | os.PathLike, tokenizer: Any = None, meta: dict | None = None,
                    dtype: str | torch.dtype | None = None, overwrite: bool = False, card: str | None = None) -> Path:
    """Write `source` (a zoo model or a `zoo.runs.Run`) as a Hub-style directory; returns it.

    dtype: store the weights as "float16" / "bfloat16" (half the size; loaded back as float32).
    An existing non-empty directory is refused unless overwrite=True, a file in the way always; the files are
    written to a temporary folder beside it and moved into place, so a failed write leaves nothing half-written."""
    from .pretrained import has_tag_weights
    from .runs import Run, model_record
    from .weights import current_umask, save_safetensors

    model = source.model if isinstance(source, Run) else source
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_pretrained takes a zoo model or a zoo.runs.Run, got {type(source).__name__}")
    loaded = dict(source.meta if isinstance(source, Run) else getattr(model, "zoo_record", {}) or {})
    now = model_record(model)
    tag = loaded.get("tag") or (loaded.get("pretrained_cfg") or {}).get("tag")
    reshaped = loaded.get("config") is not None and not _same_config(now["model"], loaded["config"], now["config"])
    if reshaped or (tag and not has_tag_weights(model, tag)):
        # the model changed shape since it was loaded (reset_classifier, new sizes) or its weights are no longer the
        # tag's (trained further): what was measured of the loaded weights (a tag's metric, its card) no longer
        # describes it; its labels and preprocessing still hold (unless the head changed size), and its card says
        # which tag it was derived from
        for key in ("tag", "metric", "pretrained_cfg", "command", "source", "sha256") + (("cli_config",) if reshaped else ()):
            loaded.pop(key, None)
        if tag:
            loaded["derived_from"] = tag
        classes = now["config"].get("num_classes")
        if loaded.get("labels") is not None and classes is not None and len(loaded["labels"]) != classes:
            loaded.pop("labels")
    record = {**loaded, **(meta or {}), **now}
    if tokenizer is None:  # a Run's, else the one a model loaded from a tag / directory / run came with
        tokenizer = getattr(source, "tokenizer", None) if isinstance(source, Run) else getattr(model, "zoo_tokenizer", None)
    record.pop("tokenizer", None)  # kept as transformers' tokenizer files instead
    dtype_name = _dtype_name(dtype)
    out = Path(directory)
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # never replaced, also with overwrite=True: it is the user's file
        raise FileExistsError(f"{str(blocking)!r} is a file, not a folder; save_pretrained writes a folder and never "
                              f"replaces a file: pick a new directory{' (not inside it)' if blocking != out else ''}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{str(out)!r} exists and is not empty; pick a new directory or pass overwrite=True")
        cwd = Path.cwd().resolve()
        if out.resolve() == cwd or out.resolve() in cwd.parents:
            raise FileExistsError(f"{str(out)!r} is the current folder (or holds it); overwrite=True replaces a whole "
                                  "folder: pick a new directory")
        if not is_pretrained_dir(out):
            raise FileExistsError(f"{str(out)!r} holds files that save_pretrained did not write (no zoo config.json); "
                                  "overwrite=True replaces only a folder written by save_pretrained: pick a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config = {"model_type": "zoo", "architecture": record["model"], "torch_dtype": dtype_name, "zoo": record}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        weights = model if dtype_name == "float32" else _cast_copy(model, _DTYPES[dtype_name])
        save_safetensors(weights, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        if tokenizer is not None:
            from .data.tokenizers import save_tokenizer

            save_tokenizer(tokenizer, tmp)
        model_card(record, card).save(tmp / "README.md")
        umask = current_umask()
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a saved model is as readable as any file
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _same_config(name: str, recorded: dict, now: dict) -> bool:
    """Whether a stored config (perhaps written before some fields existed: they take their defaults) is `now`."""
    import dataclasses

    from .runs import _plain, config_from_record

    try:
        return _plain(dataclasses.asdict(config_from_record(name, recorded))) == now
    except Exception:  # noqa: BLE001 - a record this zoo cannot read describes another model
        return False


def _dtype_name(dtype: str | torch.dtype | None) -> str:
    if dtype is None:
        return "float32"
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return name


def _cast_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(dtype)


def model_card(record: dict, text: str | None = None):
    """A `huggingface_hub.ModelCard` for a zoo record: library, license, metrics and how it was made."""
    from huggingface_hub import ModelCard, ModelCardData

    name = record["model"]
    data = ModelCardData(library_name="zoo", license=record.get("license", "apache-2.0"),
                         tags=["zoo", record.get("family", ""), "pytorch"])
    lines = [f"# {record.get('tag', name)}", "", f"A `zoo` {record.get('family', '')} model (`{name}`).", ""]
    if record.get("derived_from") and not record.get("tag"):
        d = record["derived_from"]
        lines += [f"Derived from the shipped `{d}`: its weights have changed since, so what `{d}` measured does "
                  f"not describe them (`zoo.pretrained_cfg(\"{d}\")` has the tag's own figures).", ""]
    if record.get("metric"):
        m = record["metric"]
        lines += [f"- {m.get('name')}: **{m.get('value')}** on {m.get('split', 'the test split')}"]
    if record.get("command"):
        lines += [f"- made by: `{record['command']}`"]
    load = (f"model = zoo.create_model(\"{record['tag']}\", pretrained=True)  # shipped with zoo" if record.get("tag")
            else "model = zoo.from_pretrained(\"<this directory or repo id>\")")
    lines += ["", "```python", "import zoo", load, "```"]
    if text:
        lines += ["", text]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines) + "\n")


def load_pretrained_dir(path: str | os.PathLike, model_kwargs: dict | None = None):
    """A `save_pretrained` directory -> `zoo.runs.Run` (model in eval mode, float32, with its tokenizer)."""
    from .registry import with_overrides
    from .runs import Run, RunError, _build, config_from_record
    from .weights import load_state_dict_checked, read_state_dict

    path = Path(path)
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        record = config["zoo"]
        name = record["model"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise HubError(f"{str(path / CONFIG_NAME)!r} is not a zoo config ({type(e).__name__}: {e}); "
                       "pass a directory written by save_pretrained") from None
    cfg = with_overrides(name, config_from_record(name, record["config"]), model_kwargs or {})
    model = _build(name, cfg)
    weights = path / WEIGHTS_NAME
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in read_state_dict(weights).items()}
    try:
        load_state_dict_checked(model, state)
    except Exception as e:
        raise RunError(f"{weights}: the weights do not fit the model {name} its config.json names: {e}") from None
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from .data.tokenizers import load_tokenizer_from

        tokenizer = load_tokenizer_from(path)
    return Run(model.eval(), name, str(path), record, tokenizer)


def split_hub_id(repo_id: str, revision: str | None = None) -> tuple[str, str | None]:
    """"hf-hub:org/name@v2" -> ("org/name", "v2"), as timm splits it (a repository id holds no "@"); a revision
    given both in the id and as `revision` must be the same."""
    repo_id = repo_id[len(HF_HUB_PREFIX):] if repo_id.startswith(HF_HUB_PREFIX) else repo_id
    repo_id, at, in_id = repo_id.partition("@")
    if at and not in_id:
        raise HubError(f"{HF_HUB_PREFIX}{repo_id}@ names no revision after '@'; write {HF_HUB_PREFIX}{repo_id}@<branch, tag "
                       f"or commit hash>, or {HF_HUB_PREFIX}{repo_id} for main")
    if at and revision is not None and revision != in_id:
        raise HubError(f"{repo_id!r} is asked at two revisions: {in_id!r} (after '@') and revision={revision!r}; "
                       "give one of them")
    return repo_id, (in_id if at else revision)


def hub_snapshot(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                 local_files_only: bool = False) -> Path:
    """The local folder of a Hub repository (`org/name` or `hf-hub:org/name`, either with `@revision`) at `revision`
    (a branch, tag or commit hash; default "main"), through huggingface_hub's cache (`cache_dir`, else
    HF_HUB_CACHE); `HF_HUB_OFFLINE=1` or local_files_only: cache only."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, revision = split_hub_id(repo_id, revision)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                   local_files_only=offline or local_files_only,
                                   allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "tokenizer*", "special_tokens_map.json",
                                                   "README.md"])
    except LocalEntryNotFoundError as e:
        cache = Path(cache_dir or constants.HF_HUB_CACHE)
        why = ("downloading is off (HF_HUB_OFFLINE=1)" if offline else "downloading is off (local_files_only=True)"
               if local_files_only else f"the Hub could not be reached ({_first_line(e.__cause__ or e)})")
        raise HubError(f"Hub repository {repo_id!r}{_revision_text(cache, repo_id, revision)} is not in the local "
                       f"cache at {str(cache)!r} and {why}; download it once online, pass cache_dir= the cache that "
                       "holds it, or pass a local directory") from None
    except HfHubHTTPError as e:
        raise HubError(f"cannot fetch Hub repository {repo_id!r}: {e}") from None
    if not is_pretrained_dir(folder):
        raise HubError(f"Hub repository {repo_id!r} is not a zoo model (its config.json has no zoo record); "
                       "transformers models load with zoo.from_hf")
    return Path(folder)


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def _revision_text(cache: Path, repo_id: str, revision: str | None) -> str:
    """" at revision 'v2' (the cache holds: main, 0123abcd...)" for a revision the cache lacks; "" for the default."""
    if revision is None:
        return ""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    held = sorted(p.name for p in (repo / "refs").glob("*") if p.is_file()) + \
        sorted(p.name for p in (repo / "snapshots").glob("*"))
    return f" at revision {revision!r}" + (f" (the cache holds: {', '.join(held)})" if held else "")


def from_pretrained(source: str | os.PathLike, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                    local_files_only: bool = False, **model_kwargs) -> nn.Module:
    """A zoo model from a `save_pretrained` directory, a shipped tag (`vit_mnist.mnist5k`), a run or
    checkpoint, or a Hub repository id (`org/name` or `hf-hub:org/name`, either with `@revision`); in eval mode.

    revision (a branch, tag or commit hash), cache_dir and local_files_only are transformers' arguments: they
    choose the Hub snapshot and have no effect on a local source. Other keyword arguments override the config.
    `zoo.runs.load_run(source)` returns the same model with its tokenizer, labels and image settings."""
    from .pretrained import is_tag
    from .registry import with_run_info
    from .runs import load_run

    text = str(source)
    if not Path(text).exists() and not is_tag(text) and text.partition("@")[0].count("/") == 1 and \
            not text.startswith((".", "/", HF_HUB_PREFIX)):
        text = HF_HUB_PREFIX + text  # "org/name" or "org/name@revision": a Hub repository id, as transformers reads it
    if text.startswith(HF_HUB_PREFIX):
        run = load_pretrained_dir(hub_snapshot(text, revision, cache_dir, local_files_only), model_kwargs)
        run.source = text
        return with_run_info(run)
    return with_run_info(load_run(source, model_kwargs or None))


def push_to_hub(source: Any, repo_id: str, tokenizer: Any = None, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload zoo model", dtype: str | None = None, api: Any = None):
    """`save_pretrained` into a temporary folder, then `HfApi.create_repo(exist_ok=True)` and
    `HfApi.upload_folder`; returns what upload_folder returns. `api` may be any object with those two
    methods (an `HfApi` with another endpoint, or a stand-in in tests)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(source, Path(tmp) / "model", tokenizer=tokenizer, dtype=dtype)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
