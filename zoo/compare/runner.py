"""Running a study: one job per (variant, seed), locally N at a time or through submitit; the store."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..rundir import process_alive
from .study import ROOT, Study, StudyError, fit_args

ROWS = "runs.jsonl"
# vector/matrix units, widest first: cpu_name names the first one the CPU flags list
ISA_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "avx", "asimd", "neon")


class RunFailed(RuntimeError):
    pass


@dataclass
class RunSpec:
    """Everything one job needs (picklable: submitit sends it to the cluster node)."""

    study: str
    store: str
    variant: str
    seed: int
    args: list[str]
    run_dir: str
    threads: int
    metric: str
    overrides: dict
    budget: dict
    recipe: str
    git_rev: str | None = None
    cwd: str = "."
    recipe_sha256: str | None = None
    env: dict = field(default_factory=dict)


def run_one(spec: RunSpec) -> dict:
    """The job of one run, the same locally and on a cluster: `zoo fit` of the recipe in a subprocess
    (at the end it tests the weights its `test_ckpt` names), then its row appended to <store>/runs.jsonl. Returns the row."""
    from .recorder import ENV

    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=False)  # the caller moved an unfinished one aside
    record = run_dir / "record.json"
    threads = str(spec.threads)
    env = {**os.environ, **spec.env, ENV: str(record), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env.pop("ZOO_RUN_DIR", None)
    cmd = [sys.executable, "-m", "zoo.cli", *spec.args]
    (run_dir / "command.txt").write_text(" ".join(["zoo", *spec.args]) + "\n")
    t0 = time.time()
    with open(run_dir / "fit.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=spec.cwd).returncode
    if rc != 0 or not record.is_file():
        tail = [ln for ln in (run_dir / "fit.log").read_text(errors="replace").splitlines() if ln.strip()][-1:] or [""]
        raise RunFailed(f"{spec.variant} seed {spec.seed}: zoo fit exited with {rc}"
                        f"{'' if record.is_file() else ' and wrote no record'}: {tail[0][:300]} (log: {run_dir / 'fit.log'})")
    rec = _relative_paths(json.loads(record.read_text()), Path(spec.store))
    metrics = rec.pop("metrics")
    if spec.metric not in metrics:
        raise RunFailed(f"{spec.variant} seed {spec.seed}: the test logged no {spec.metric}; it logged "
                        f"{', '.join(sorted(metrics)) or 'nothing'} (log: {run_dir / 'fit.log'})")
    import torch

    from .. import __version__

    row = {"study": spec.study, "variant": spec.variant, "seed": spec.seed, "metric": spec.metric,
           "value": metrics[spec.metric], "metrics": metrics, **rec, "wall_seconds": time.time() - t0,
           "budget": spec.budget, "overrides": spec.overrides, "recipe": spec.recipe,
           "recipe_sha256": spec.recipe_sha256, "threads": spec.threads,
           "versions": {"zoo": __version__, "torch": torch.__version__, "python": platform.python_version(),
                        "lightning": _version("lightning")},
           "git_rev": spec.git_rev, "host": platform.node(), "cpu": cpu_name(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    append_row(Path(spec.store) / ROWS, row)
    return row


def _relative_paths(rec: dict, store: Path) -> dict:
    """The store is committed and moved between machines: paths inside it are written relative to it."""
    def rel(p):
        if not p:
            return p
        p = Path(p).resolve()
        return str(p.relative_to(store.resolve())) if p.is_relative_to(store.resolve()) else str(p)

    rec["run_dir"] = rel(rec.get("run_dir"))
    if isinstance(rec.get("best_val"), dict):
        rec["best_val"]["checkpoint"] = rel(rec["best_val"].get("checkpoint"))
    return rec


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def append_row(path: Path, row: dict) -> None:
    """One JSON line, appended atomically: a single write under an exclusive lock, flushed and fsync'ed. A file
    that does not end in a newline (a write cut by a crash) gets one first: the torn line stays a line of its own,
    which read_rows skips, rather than swallowing this row into one unreadable line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def read_rows(store: Path, line_numbers: bool = False) -> list:
    """The finished runs of a store; a torn last line (a write cut by a crash) is skipped. With `line_numbers`,
    (line number in runs.jsonl, row) pairs."""
    path = Path(store) / ROWS
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append((i, json.loads(line)) if line_numbers else json.loads(line))
    return rows


def git_rev() -> str | None:
    """The checkout's revision (`git describe --always --dirty`), or None where zoo is not run from a git checkout
    of its own (an installed package inside some other repository reports nothing rather than that repository's)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() or None if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != ROOT.resolve():
        return None
    return git("describe", "--always", "--dirty", "--abbrev=12")


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo ("" where there is none)."""
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    return ""


def cpuinfo_fields(text: str) -> tuple[str | None, set[str]]:
    """The model name and the flags of the first processor listed in /proc/cpuinfo text (x86 names its flags
    `flags`, ARM `Features`)."""
    model, flags = None, None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key == "model name" and model is None:
            model = value.strip()
        elif sep and key in ("flags", "Features") and flags is None:
            flags = set(value.split())
    return model, flags or set()


def describe_cpu(text: str, fallback: str = "") -> str:
    """The model name and, in brackets, the widest vector/matrix unit among the flags (the first of ISA_FLAGS
    present): "AMD EPYC (avx2)". Without a known flag, the model alone; without a model name, `fallback`."""
    model, flags = cpuinfo_fields(text)
    model = model or fallback
    widest = next((f for f in ISA_FLAGS if f in flags), None)
    return f"{model} ({widest})" if widest else model


def cpu_has_bf16(text: str | None = None) -> bool | None:
    """Whether the CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16, ARM bf16), from /proc/cpuinfo text;
    None where the text names no flags (no /proc/cpuinfo: macOS, Windows). Without such units torch runs bf16
    matmuls emulated: a bf16 training step of vit_mnist took 12x the float32 one with oneDNN limited to AVX2."""
    _, flags = cpuinfo_fields(read_cpuinfo() if text is None else text)
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_name() -> str:
    """The CPU model and its widest vector unit (what a row's training time was measured on): one model name
    has covered machines of other generations (Zen 3 with AVX2, Zen 4 with AVX-512 BF16) and ~1.8x the speed."""
    return describe_cpu(read_cpuinfo(), platform.processor() or platform.machine())


def threads_per_job(jobs: int) -> int:
    total = int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))
    return max(1, total // jobs)


def recipe_sha256(study: Study) -> str:
    """The recipe file's fingerprint: a row trained from another recipe text is not mixed into the study."""
    return hashlib.sha256(study.recipe.read_bytes()).hexdigest()


def plan(study: Study) -> tuple[list[tuple[str, int]], list[dict]]:
    """The runs still to do, and the store's rows of this study's runs. A finished row whose overrides or
    budget differ from the study's, that was trained from another text of the recipe file, or whose test did not
    log the study's metric, is an error: the study changed under its store; so is a row of another study."""
    rows = read_rows(study.store, line_numbers=True)
    done, lines = {}, {}
    sha = recipe_sha256(study)
    for line, r in rows:
        if r.get("study", study.name) != study.name:  # its report would overwrite the other study's table.md
            raise StudyError(f"study {study.name}: the store {study.store} holds runs of study {r['study']} (variant "
                             f"{r.get('variant')} seed {r.get('seed')}); give this study a store of its own "
                             f"(store: results/compare/{study.name}, or --store)")
        if r.get("variant") not in study.variants or r.get("seed") not in study.seeds:
            continue
        v = r["variant"]
        if r.get("recipe_sha256") not in (None, sha):  # rows of stores written before the fingerprint carry none
            raise StudyError(f"study {study.name}: the store {study.store} holds variant {v} seed {r['seed']} trained "
                             f"from another text of the recipe {study.recipe.name} (sha256 {r['recipe_sha256'][:12]}, "
                             f"now {sha[:12]}); restore the recipe (git log -p {r.get('recipe')}) or use another store")
        if r.get("overrides") != study.variants[v] or r.get("budget") != study.budget:
            raise StudyError(f"study {study.name}: the store {study.store} holds variant {v} seed {r['seed']} with "
                             f"overrides {r.get('overrides')} and budget {r.get('budget')}, but the study now says "
                             f"{study.variants[v]} and {study.budget}; rename the variant or use another store")
        if study.metric not in (r.get("metrics") or {}):  # its "value" is another metric's: never shown under this name
            logged = ", ".join(sorted(r.get("metrics") or {})) or "nothing"
            raise StudyError(f"study {study.name}: the store {study.store} holds variant {v} seed {r['seed']} tested "
                             f"without the study's metric {study.metric} (it logged {logged}); set metric: to one of "
                             "those or use another store")
        first = done.get((v, r["seed"]))
        if first is not None:  # trained twice (a store from before the store lock): the table would take one silently
            raise StudyError(
                f"study {study.name}: the store {study.store} holds variant {v} seed {r['seed']} twice, lines "
                f"{lines[v, r['seed']]} and {line} of {ROWS} ({study.metric} {_metric_text(first, study.metric)} and "
                f"{_metric_text(r, study.metric)}, finished {first.get('finished', '?')} and {r.get('finished', '?')}); "
                "delete the line of the run to drop, keeping one per variant and seed")
        done[(v, r["seed"])], lines[v, r["seed"]] = r, line
    todo = [run for run in study.runs() if run not in done]
    return todo, list(done.values())


def _metric_text(row: dict, metric: str) -> str:
    value = (row.get("metrics") or {}).get(metric)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def move_aside(run_dir: Path) -> Path | None:
    """An unfinished run folder (killed, or failed) is renamed, never deleted."""
    if not run_dir.exists():
        return None
    for lock in run_dir.glob(".*.lock"):  # zoo.rundir's lock of a live `zoo fit`: "<pid> <host>"
        owner = lock.read_text().split() if lock.is_file() else []
        if owner and owner[0].isdigit() and (len(owner) > 1 and owner[1] != platform.node() or process_alive(int(owner[0]))):
            raise StudyError(f"{run_dir} is in use by process {owner[0]} on {owner[1] if len(owner) > 1 else 'this host'} "
                             "(another zoo compare of this study?); wait for it, or use another store")
    target = run_dir.with_name(f"{run_dir.name}.unfinished-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
    n = 1
    while target.exists():
        target = target.with_name(f"{run_dir.name}.unfinished-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{n}")
        n += 1
    run_dir.rename(target)
    return target


def specs(study: Study, todo: list[tuple[str, int]], threads: int) -> list[RunSpec]:
    rev, sha = git_rev(), recipe_sha256(study)
    out = []
    for variant, seed in todo:
        run_dir = study.run_dir(variant, seed)
        aside = move_aside(run_dir)
        if aside:
            print(f"  {variant} seed {seed}: an unfinished run folder was moved aside to {aside}", flush=True)
        out.append(RunSpec(study=study.name, store=str(study.store), variant=variant, seed=seed,
                           args=fit_args(study, variant, seed, run_dir), run_dir=str(run_dir), threads=threads,
                           metric=study.metric, overrides=study.variants[variant], budget=study.budget,
                           recipe=str(study.recipe.relative_to(ROOT) if study.recipe.is_relative_to(ROOT) else study.recipe),
                           git_rev=rev, cwd=os.getcwd(), recipe_sha256=sha))
    return out


def _done_line(row: dict, i: int, n: int) -> str:
    return (f"[{i}/{n}] {row['variant']} seed {row['seed']}: {row['metric']} = {row['value']:.4f}, "
            f"{row['train_seconds']:.0f} s training, {row['train_samples_per_s']:.0f} samples/s")


def run_local(run_specs: list[RunSpec], jobs: int) -> list[str]:
    """N runs at a time in threads, each waiting on its `zoo fit` subprocess. Returns the failures."""
    failures, n = [], len(run_specs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(run_one, s): s for s in run_specs}
        i = 0
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                s = pending.pop(fut)
                i += 1
                try:
                    print(_done_line(fut.result(), i, n), flush=True)
                except RunFailed as e:
                    failures.append(str(e))
                    print(f"[{i}/{n}] FAILED {e}", flush=True)
    return failures


def run_submitit(run_specs: list[RunSpec], study: Study, jobs: int, cluster: str | None, params: dict) -> list[str]:
    """One submitit job per run (AutoExecutor: SLURM where present; cluster="local" runs them as local
    processes, "debug" in this process). The job function is run_one, as on the local path."""
    try:
        import submitit
    except ImportError:
        raise StudyError("--executor submitit needs the submitit package (pip install submitit)") from None
    executor = submitit.AutoExecutor(folder=str(study.store / "submitit"), cluster=cluster)
    (key, value), = study.budget.items()
    timeout = int(value * 2 + 30) if key == "max_minutes" else 24 * 60
    executor.update_parameters(**{"name": f"zoo-compare-{study.name}", "timeout_min": timeout,
                                  "cpus_per_task": run_specs[0].threads if run_specs else 1, **params})
    local = executor.cluster in ("local", "debug")
    window = jobs if local else len(run_specs)  # a local "cluster" runs every submitted job at once
    failures, n, i = [], len(run_specs), 0
    for start in range(0, n, window):
        batch = [(s, executor.submit(run_one, s)) for s in run_specs[start:start + window]]
        for s, job in batch:
            print(f"  submitted {s.variant} seed {s.seed} as job {job.job_id} ({executor.cluster})", flush=True)
        for s, job in batch:
            i += 1
            try:
                print(_done_line(job.result(), i, n), flush=True)
            except Exception as e:  # noqa: BLE001 - submitit wraps the job's exception in its own
                msg = str(e).strip().splitlines()
                failures.append(f"{s.variant} seed {s.seed}: job {job.job_id} failed: {msg[-1] if msg else type(e).__name__}")
                print(f"[{i}/{n}] FAILED {failures[-1]}", flush=True)
    return failures


STORE_LOCK = ".compare.lock"


@contextlib.contextmanager
def store_lock(study: Study):
    """Held while a `zoo compare` trains into the store: a second one started meanwhile would see the first's
    runs as unfinished before their `zoo fit` had locked its folder (it starts in seconds), move them aside and
    train them again, two rows per run. flock: released when the process ends, however it ends."""
    study.store.mkdir(parents=True, exist_ok=True)
    path = study.store / STORE_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode(errors="replace").split() or ["?"]
            raise StudyError(f"the store {study.store} is in use by process {owner[0]} on "
                             f"{owner[1] if len(owner) > 1 else 'this host'} (another zoo compare of study {study.name}); "
                             "wait for it to finish, or use another store (--store)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {platform.node()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def run_study(study: Study, jobs: int | None = None, limit: int | None = None, executor: str = "local",
              cluster: str | None = None, params: dict | None = None) -> list[str]:
    """Train the runs the store lacks (at most `limit` of them), one `zoo compare` at a time per store. Returns
    the failures (empty: all done)."""
    with store_lock(study):
        return _run_study(study, jobs, limit, executor, cluster, params)


def _run_study(study: Study, jobs: int | None, limit: int | None, executor: str, cluster: str | None,
               params: dict | None) -> list[str]:
    jobs = jobs or study.jobs
    todo, done = plan(study)
    total = len(study.runs())
    print(f"zoo compare: study {study.name}: {len(study.variants)} variants x {len(study.seeds)} seeds = {total} runs of "
          f"{study.recipe.name} at {study.budget_text()}; {len(done)} finished in {study.store}, {len(todo)} to run"
          + (f", this time at most {limit}" if limit is not None and limit < len(todo) else ""), flush=True)
    todo = todo[:limit] if limit is not None else todo
    if not todo:
        return []
    study.store.mkdir(parents=True, exist_ok=True)
    (study.store / "study.yaml").write_text(study.path.read_text(encoding="utf-8"))  # the study as last run
    threads = threads_per_job(jobs)
    run_specs = specs(study, todo, threads)
    print(f"  {jobs} job(s) at a time, {threads} thread(s) each ({executor})", flush=True)
    if executor == "submitit":
        return run_submitit(run_specs, study, jobs, cluster, params or {})
    return run_local(run_specs, jobs)
