"""Loading and saving weights safely: safetensors, or torch.load(weights_only=True). Never pickle."""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn


class StateDictMismatch(RuntimeError):
    """Raised with every missing, unexpected and shape-mismatched key listed by name."""


class WeightsFileError(ValueError):
    """A weights file that cannot be read (or written): the message names the file, the problem and the fix."""


class WeightsFileNotFound(WeightsFileError, FileNotFoundError):
    """The weights file does not exist (also a FileNotFoundError)."""


class WeightsWriteError(WeightsFileError, OSError):
    """Writing a weights file failed (e.g. no space left on device); the target is left untouched."""

    def __str__(self) -> str:  # OSError would print "[Errno N] None" once errno is set
        return str(self.args[0]) if self.args else ""


_SAFE_FIX = ("If it is your own file, re-save its tensors as safetensors and pass that file: "
             "safetensors.torch.save_file(state_dict, 'model.safetensors')")

# leading bytes of files that are often renamed or downloaded by mistake
_SIGNATURES = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive (extract it first)"),
    (b"BZh", "a bzip2 archive (extract it first)"), (b"\xfd7zXZ", "an xz archive (extract it first)"),
    (b"7z\xbc\xaf", "a 7z archive (extract it first)"), (b"\x93NUMPY", "a NumPy .npy array (numpy.load, then torch.from_numpy)"),
    (b"\x89HDF", "an HDF5 file (Keras / TensorFlow weights?)"), (b"GGUF", "a GGUF file (llama.cpp)"),
)


def _unreadable(path: Path, problem: str, what: str = "weights file") -> WeightsFileError:
    return WeightsFileError(f"cannot read {what} {str(path)!r}: {problem}")


def _describe(head: bytes) -> str:
    """What a file that is not weights looks like, from its first bytes."""
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8").lstrip().lower()
    except UnicodeDecodeError:
        return "unrecognised binary data"
    if text.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the weights (run `git lfs pull` in its repository, or download the file itself)"
    if text.startswith(("<!doctype html", "<html", "<?xml", "<")):
        return "an HTML/XML page (the download saved a web page, e.g. a login or error page, instead of the file)"
    if text.startswith(("{", "[")):
        return "a JSON text file (a config or an index file? pass the weights file it describes)"
    return "a text file"


def _sniff(head: bytes) -> str:
    """'torch' (zip or pickle written by torch.save), 'safetensors', or 'other', from the first bytes.
    safetensors is told first: its 8-byte little-endian header size starts with 0x80, a pickle's first byte, whenever
    the size is 128 modulo 256."""
    if len(head) > 8 and head[8:9] == b"{":  # 8-byte little-endian header size, then the JSON header
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    return "other"


def _check_safetensors(path: Path, size: int) -> None:
    """Name truncation and header corruption precisely (safetensors says 'header too large' / 'incomplete metadata')."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > size - 8:
            raise _unreadable(path, f"it is truncated: its safetensors header announces {n} bytes but only "
                                    f"{size - 8} follow; the download or save did not finish, so download or save it again")
        try:
            header = json.loads(fh.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise _unreadable(path, "its safetensors header is corrupt (not the JSON table of tensors it must start "
                                    "with); the file is damaged or not safetensors: download or save it again") from None
    have, need = size - 8 - n, max(ends, default=0)
    if need > have:
        raise _unreadable(path, f"it is truncated: it holds {have} of the {need} bytes of tensor data its header "
                                "announces; the download or save did not finish, so download or save it again")


def _refused_detail(message: str) -> str | None:
    """The reason a weights-only load gave, when it refused pickled objects (None for other failures)."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"it names the Python object {found.group(1)}"
    found = re.search(r"Unsupported (operand|class|type)[^.\n]*", message)
    return found.group(0).strip() if found else None


def _load_torch(path: Path, what: str = "weights file"):
    """torch.load(weights_only=True); every failure a `WeightsFileError` naming `what` and the file, never repeating
    torch's advice to turn weights_only off."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says what matters
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _refused_detail(str(e))
        if detail is not None:
            raise _unreadable(path, f"it holds pickled Python objects other than tensors ({detail}); zoo does not load "
                                    "them: unpickling them can run code, and zoo never unpickles code (its weights-only "
                                    f"load refused them; nothing in the file was executed). {_SAFE_FIX}", what) from None
        reason = str(e).splitlines()[-1] if str(e).strip() else type(e).__name__
        raise _unreadable(path, f"it is damaged or truncated (reading its tensors failed: {_strip_advice(reason)}); "
                                "download or save it again", what) from None
    except Exception as e:  # noqa: BLE001 - a damaged file fails anywhere in the reader (EOFError, IndexError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _unreadable(path, f"it is damaged or truncated (torch could not read it: {_strip_advice(first)}); "
                                "download or save it again", what) from None


def _strip_advice(text: str) -> str:
    """Drop torch's advice to load untrusted files with weights_only turned off."""
    text = re.split(r"(?i)\s*(re-running|in pytorch 2\.6|weights_only)", text)[0]
    return text.split(". ")[0].strip().rstrip(".") or "unreadable data"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file, a zoo/Lightning checkpoint (.ckpt) or a plain torch state dict (.pt/.pth/.bin).

    The format is told by the file's content, not its name. Torch files are read with
    weights_only=True: pickled code is never run. Every failure is a `WeightsFileError` (a
    ValueError; `WeightsFileNotFound` is also a FileNotFoundError) naming the file and the fix."""
    path = Path(path)
    if not path.exists():
        raise WeightsFileNotFound(f"weights file {str(path)!r} does not exist; pass a .safetensors file or a checkpoint "
                                  "written by `zoo fit`")
    if path.is_dir():
        from .hub import foreign_dir_problem

        if problem := foreign_dir_problem(path):
            raise _unreadable(path, problem)
        raise _unreadable(path, f"it is a directory; pass the weights file inside it (e.g. "
                                f"{str(path / 'model.safetensors')!r}), or zoo.from_hf({str(path)!r}) for a "
                                "transformers save_pretrained directory")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as e:
        raise _unreadable(path, f"{e.strerror or e}; check its permissions") from None
    if size == 0:
        raise _unreadable(path, "it is empty (0 bytes); the download or save did not finish, so download or save "
                                "it again")
    kind = _sniff(head)
    if kind == "other":
        hint = "; it is named like one but" if path.suffix in (".safetensors", ".ckpt", ".pt", ".pth", ".bin") else ";"
        raise _unreadable(path, f"it is not a weights file{hint} its content looks like {_describe(head)}. "
                                "Pass a .safetensors file or a checkpoint written by torch.save / `zoo fit`")
    if kind == "torch" and path.suffix == ".safetensors":  # torch.load would read it as safetensors ("header too large")
        raise _unreadable(path, "it is a torch pickle (written by torch.save), not safetensors, although it is named "
                                ".safetensors; zoo does not unpickle a file named as safetensors (nothing in it was "
                                f"executed). {_SAFE_FIX}")
    if kind == "safetensors":
        _check_safetensors(path, size)
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise _unreadable(path, f"it is damaged (safetensors: {e}); download or save it again") from None
    return _state_dict_of(_load_torch(path), path)


def _state_dict_of(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj:  # Lightning checkpoint: strip the task's "model." prefix
        sd = obj["state_dict"]
        prefix = "model."
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        return sd
    for key in ("model", "module"):  # other common wrappers around a state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise _unreadable(path, f"it holds a {type(obj).__name__}, not a state dict (a dict of name -> tensor); "
                                "save model.state_dict() instead")
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise _unreadable(path, f"it does not hold a flat state dict of tensors: entry {bad!r} is of type "
                                f"{type(obj[bad]).__name__}; save model.state_dict() (or a zoo / Lightning checkpoint)")
    return obj


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], ignore: tuple[str, ...] = ()) -> None:
    """Strict load that reports every problem at once instead of stopping at the first. Modules that declare
    `adapt_state_dict(state_dict, prefix)` first fit the stored tensors to themselves in place (timm's
    checkpoint_filter_fn: a ViT resamples the position table of weights trained at another image size)."""
    own = model.state_dict()
    state_dict = _fill_tied(own, dict(state_dict))
    for name, module in model.named_modules():
        adapt = getattr(module, "adapt_state_dict", None)
        if callable(adapt):
            adapt(state_dict, f"{name}." if name else "")
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own and not any(k.startswith(p) for p in ignore))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state_dict and state_dict[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        lines = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                lines.append(f"{title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise StateDictMismatch(
            f"weights do not fit {type(model).__name__}:\n  " + "\n  ".join(lines)
            + "\nCheck that the model name and overrides (num_classes, img_size, vocab_size, ...) match the run that saved them."
        )
    model.load_state_dict({k: state_dict[k] for k in own}, strict=True)


def _fill_tied(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied parameters (e.g. an LM head sharing the word embeddings) are saved once; restore the aliases."""
    groups: dict[int, list[str]] = {}
    for k, t in own.items():
        if t.device.type != "meta":
            groups.setdefault(t.data_ptr(), []).append(k)
    for keys in groups.values():
        present = [k for k in keys if k in state_dict]
        if present and len(keys) > 1:
            for k in keys:
                state_dict.setdefault(k, state_dict[present[0]])
    return state_dict


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    load_state_dict_checked(model, read_state_dict(path))
    return model


def refuse_overwriting_input(out: str | os.PathLike, *inputs: str | os.PathLike | None, flag: str = "--out") -> None:
    """Commands never write over their input: `out` may be none of `inputs` (files or folders; a shipped tag
    stands for its folder of weights) nor lie inside an input folder (`--out DIR/model.safetensors` of the model
    being read from DIR)."""
    from .pretrained import is_tag, verified_path

    target = Path(out).resolve()
    for given in inputs:
        if given is None:
            continue
        text = str(given)
        if is_tag(text):
            path = Path(verified_path(text))
            path = path if path.is_dir() else path.parent
        else:
            path = Path(text.split("@", 1)[1] if "@" in text and not Path(text).exists() else text)
        if not path.exists():
            continue
        path = path.resolve()
        if target == path:
            raise ValueError(f"{flag} {out} is the input {given}; commands never write over their input: choose "
                             "another output path")
        if path.is_dir() and path in target.parents:
            raise ValueError(f"{flag} {out} lies inside the input {given}; commands never write into the folder they "
                             "read: choose an output path outside it")
        if target.is_dir() and target in path.parents:
            raise ValueError(f"{flag} {out} holds the input {given}; commands never write over their input: choose "
                             "a new output folder")


def current_umask() -> int:
    """The process's umask (read by setting it, then setting it back): the permissions a plain open() would give."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file.

    On failure the target is untouched and the temporary file removed; a full disk raises a
    `WeightsWriteError` (an OSError) naming the path and the free space."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; the output is a file: pass a file path "
                         f"(e.g. {str(path / ('model' + path.suffix if path.suffix else 'model.safetensors'))!r})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is private (0600); ours is as readable as any file
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        if not full and not (isinstance(e, RuntimeError) and "write failed" in str(e)):
            raise
        kept = f"the existing {path.name} was left untouched" if path.exists() else "nothing was written"
        reason = "no space left on device" if full else f"the write failed ({e}); if the disk is full, no space left"
        err = WeightsWriteError(f"could not write {str(path)!r}: {reason} ({_free_space(path.parent)} free in "
                                f"{str(path.parent)!r}); free some space or write elsewhere ({kept}, the partial "
                                "temporary file was removed)")
        err.errno = errno.ENOSPC
        raise err from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return ""


def save_safetensors(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save weights as safetensors (tied tensors stored once), atomically."""
    from safetensors.torch import save_model

    atomic_write(path, lambda tmp: save_model(model, tmp, metadata=metadata))
