"""Run folders: every `zoo fit` writes into a folder of its own, so no run overwrites or mixes with another.

    <default_root_dir>/version_0/          the first run of a recipe (default_root_dir: runs/<recipe>)
        config.yaml  metrics.csv  hparams.yaml  tensorboard/  tokenizer/
        checkpoints/best-epoch=NN.ckpt  checkpoints/last.ckpt
    <default_root_dir>/version_1/          the next run, a resumed one included (its config.yaml names the ckpt_path)

A version number is claimed with `mkdir` (atomic), so two runs started at the same moment get two
folders. The folder is locked (`.<folder>.lock` beside it holds the process id) while its run is alive; a folder whose
lock names a live process is refused, a lock left by a killed run is taken over. Temporary files of
an interrupted atomic write (`.<name>.*.tmp`) are removed when a run starts in the folder.
A run that ends with nothing of value (its start failed before the first training step, or a `fast_dev_run`, which
writes no checkpoint) gives its folder back (`release_unused`), unless it holds a checkpoint or any file a run does
not write itself.
Data-parallel ranks of one run share the folder: rank 0 claims it and passes it on in ZOO_RUN_DIR
(launchers that start all ranks at once name it from TORCHELASTIC_RUN_ID / SLURM_JOB_ID instead).
"""
from __future__ import annotations

import atexit
import os
import re
import socket
from pathlib import Path

ENV = "ZOO_RUN_DIR"
LOCK = ".lock"
_VERSION = re.compile(r"^version_(\d+)$")


class RunFolderBusy(RuntimeError):
    """Another live process writes into the folder."""


def versions(root: str | os.PathLike) -> list[Path]:
    """The version folders under `root`, oldest (lowest number) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _VERSION.match(p.name))]
    return [p for _, p in sorted(found)]


def monitored_checkpoint(trainer):
    """The trainer's ModelCheckpoint that monitors a metric (the first such), wherever it is listed: the recipes
    also keep an unmonitored one for last.ckpt, and Lightning's `trainer.checkpoint_callback` / ckpt_path="best"
    mean the first one listed. None without a monitored one."""
    return next((cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)), None)


def latest_checkpoint(root: str | os.PathLike, name: str = "last.ckpt") -> Path:
    """`name` in the newest version folder that has one (what `--ckpt_path last` resumes)."""
    for run in reversed(versions(root)):
        hits = sorted((run / "checkpoints").glob(name)) if (run / "checkpoints").is_dir() else []
        if hits:
            return hits[-1]
    raise FileNotFoundError(f"no run under {root} has checkpoints/{name} to resume; start a run first "
                            f"(zoo fit --config ...) or pass --ckpt_path PATH to a checkpoint")


def _rank() -> int:
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 0


def claim(root: str | os.PathLike) -> Path:
    """A new version folder under `root`, created and locked for this process (or the run's shared one)."""
    root = Path(root)
    if os.environ.get(ENV) and _rank() != 0:  # a data-parallel child of a run that rank 0 started
        return Path(os.environ[ENV])
    launch_id = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID")
    if launch_id and launch_id != "none":
        run = root / f"run_{launch_id}"
        run.mkdir(parents=True, exist_ok=True)
    else:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the run folder {root} ({e.strerror}); pass a writable "
                          "--trainer.default_root_dir DIR") from None
        n = len(versions(root)) and int(_VERSION.match(versions(root)[-1].name).group(1)) + 1
        while True:
            run = root / f"version_{n}"
            try:
                run.mkdir()
                break
            except FileExistsError:  # another run took this number a moment ago
                n += 1
            except OSError as e:  # read-only or full
                raise OSError(f"cannot create the run folder {run} ({e.strerror}); pass a writable "
                              "--trainer.default_root_dir DIR") from None
    if _rank() == 0:
        lock(run)
    os.environ[ENV] = str(run)
    return run


# What a run writes into its folder itself (zoo fit, its loggers, a text recipe's tokenizer), checkpoints aside
RUN_FILES = ("config.yaml", "hparams.yaml", "metrics.csv")
RUN_FOLDERS = ("tensorboard", "tokenizer", "checkpoints")


def holds_nothing_of_value(run: str | os.PathLike) -> bool:
    """Whether a version folder holds only what its run wrote itself (RUN_FILES, RUN_FOLDERS) and no checkpoint: no
    .ckpt anywhere, no file or folder of another name (a user's), no link."""
    run = Path(run)
    for p in run.rglob("*"):
        rel = p.relative_to(run)
        ours = rel.parts[0] in RUN_FOLDERS if len(rel.parts) > 1 or p.is_dir() else rel.name in RUN_FILES
        if p.is_symlink() or p.suffix == ".ckpt" or not ours:
            return False
    return True


def release_unused(run: str | os.PathLike) -> bool:
    """Remove a version folder this process claimed whose run ended with nothing of value, and its lock: a start
    that failed before the first training step, or a `fast_dev_run` (which writes no checkpoint). Only a folder that
    `holds_nothing_of_value` goes (its config.yaml, logs, tokenizer); one with a checkpoint or any other file is kept,
    so that failed starts leave no useless version_N behind for `--ckpt_path last` and run listings. True if it was
    removed."""
    import shutil

    run = Path(run)
    if _rank() != 0 or not run.is_dir() or not holds_nothing_of_value(run):
        return False
    unlock(run)
    try:
        shutil.rmtree(run)
    except OSError:  # something appeared in it meanwhile: what is left stays
        return False
    if os.environ.get(ENV) == str(run):
        del os.environ[ENV]
    return True


def process_alive(pid: int) -> bool:
    """Whether a process of this host has this pid (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock(folder: str | os.PathLike) -> Path:
    """Lock `folder` for this process; refuse a folder held by another live process on this host."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    host = socket.gethostname()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = path.read_text().split() if path.exists() else []
            pid = int(owner[0]) if owner and owner[0].isdigit() else -1
            same_host = len(owner) < 2 or owner[1] == host
            if pid == os.getpid():
                return path
            if pid > 0 and (not same_host or process_alive(pid)):
                raise RunFolderBusy(f"{folder} is in use by process {pid} on {owner[1] if len(owner) > 1 else host} "
                                    "(another zoo run writes there); wait for it to finish or choose another folder "
                                    "(--trainer.default_root_dir DIR)") from None
            path.unlink(missing_ok=True)  # left by a run that was killed: take it over
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {host}\n")
        atexit.register(unlock, folder)
        clean_partial_writes(folder)
        return path
    raise RunFolderBusy(f"could not lock {folder}; remove {path} if no zoo run uses the folder")


def lock_path(folder: str | os.PathLike) -> Path:
    """Beside the folder, not in it: Lightning's loggers warn about (and clear) non-empty log folders."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}{LOCK}"


def unlock(folder: str | os.PathLike) -> None:
    path = lock_path(folder)
    try:
        owner = path.read_text().split()
    except OSError:
        return
    if owner and owner[0] == str(os.getpid()):
        path.unlink(missing_ok=True)


def clean_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files that an interrupted `zoo.weights.atomic_write` left in `folder` (recursively)."""
    removed = []
    for p in Path(folder).rglob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def resolve_checkpoint(source: str | os.PathLike) -> str:
    """A run folder stands for its newest checkpoint: `runs/bert_mlm` (a recipe's root) or
    `runs/bert_mlm/version_3` -> that run's checkpoints/last.ckpt; anything else is returned as given."""
    path = Path(source)
    if not path.is_dir():
        return str(source)
    if versions(path):
        return str(latest_checkpoint(path))
    if (path / "checkpoints" / "last.ckpt").is_file():
        return str(path / "checkpoints" / "last.ckpt")
    return str(source)
