"""`zoo bench speed|quality|generate ...` (listed in zoo.cli.COMMANDS)."""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
from pathlib import Path


def _at_least(low: int):
    """argparse type: an int >= low (argparse names the option and the value in its one-line error)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"int >= {low}"
    return parse


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 64,128,256, got {text!r}") from None


def _choices(allowed: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        vals = tuple(t for t in text.split(",") if t)
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown value(s) {bad}; choose from {', '.join(allowed)}")
        return vals
    return parse


DEFAULT_OUT = "runs/bench"  # a scratch folder (git ignores runs/); the project's published tables take --out results/bench


def fresh_stem(folder: str | Path, stem: str, suffixes: tuple[str, ...]) -> str:
    """`stem`, or `stem_2`, `stem_3`, ... : the first name under which none of the files `folder/<name><suffix>`
    exists. A benchmark never writes over an earlier one's results (a published table in results/bench, or the
    user's own), it says where it wrote."""
    folder = Path(folder)
    name, n = stem, 1
    while any((folder / f"{name}{sfx}").exists() for sfx in suffixes):
        n += 1
        name = f"{stem}_{n}"
    return name


def write_rows(rows: list[dict], path: Path) -> None:
    from ..weights import atomic_write

    keys = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def write_text(path: Path, text: str) -> None:
    from ..weights import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def resolve_models(patterns: list[str], default: list[str]) -> list[str]:
    from .. import list_models

    if not patterns:
        return [n for n in default if n in list_models()]
    names = []
    for p in patterns:
        found = list_models(p)
        if not found:
            raise SystemExit(f"no registered model matches {p!r}; see `zoo models` for the names")
        names += [n for n in found if n not in names]
    return names


def _goal_models(patterns: list[str], goal_models: list[str]) -> list[str]:
    """The goal models the patterns name (all of them without patterns); a pattern naming none is an error."""
    picked = []
    for p in patterns or ["*"]:
        found = fnmatch.filter(goal_models, p)
        if not found:
            raise SystemExit(f"--goals: {p!r} names none of the goal models ({', '.join(goal_models)})")
        picked += [n for n in found if n not in picked]
    return picked


def speed_main(argv: list[str]) -> int:
    from .speed import GOAL_SETTINGS, GOALS, SpeedOptions, format_goals, format_table, run_speed
    from ..tasks.base import OPTIMIZERS

    ap = argparse.ArgumentParser(allow_abbrev=False, prog="zoo bench speed", description="Throughput, MACs and memory of zoo models (and their peers).")
    ap.add_argument("patterns", nargs="*", help="model names or wildcards; default: the goal models of issue 7")
    ap.add_argument("--goals", action="store_true",
                    help="run exactly the goal configurations (implies --vs-peers): float32 eager, bf16 autocast and "
                         "float32 compiled, timed in the same interleaved rounds; patterns pick among the goal models")
    ap.add_argument("--batch-size", type=_at_least(1), help="default: 16 images / 8 sequences")
    ap.add_argument("--seq-lens", type=_ints, default=(128,), help="source lengths, e.g. 64,128,256,512")
    ap.add_argument("--tgt-len", type=_at_least(1), default=32, help="decoder length of encoder-decoders")
    ap.add_argument("--img-size", type=_at_least(1), help="image side (default: the model's)")
    ap.add_argument("--precision", type=_choices(("fp32", "bf16")), default=("fp32",), help="fp32,bf16 (bf16 = autocast)")
    ap.add_argument("--modes", type=_choices(("forward", "train")), default=("forward", "train"),
                    help="comma-separated: forward (inference), train (forward, backward and optimiser step); default both")
    ap.add_argument("--optimizer", type=_choices(OPTIMIZERS), default=("adamw",),
                    help="optimiser(s) of the training step, built as `zoo fit` builds them (adamw: fused where torch "
                         "has the kernel; adamw_foreach: torch's multi-tensor default); several are timed interleaved")
    ap.add_argument("--vs-peers", action="store_true", help="also time the reference implementation, interleaved")
    ap.add_argument("--compile", nargs="?", const="on", default="off", choices=("off", "on", "both"),
                    help="torch.compile both sides, as `zoo fit` compiles (zoo.tasks.base.INDUCTOR_OPTIONS); "
                         "`--compile both` times eager and compiled in the same rounds")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--warmup", type=_at_least(0), default=2)
    ap.add_argument("--rounds", type=_at_least(1), default=5, help="timed rounds (alternating zoo / peer)")
    ap.add_argument("--steps", type=_at_least(1), default=2, help="steps per round")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    ap.add_argument("--peak-size", type=_at_least(1), default=2048, help="side of the square sgemm that measures the matmul peak")
    ap.add_argument("--threads", type=_at_least(1), help="torch intra-op threads (default: torch's, i.e. OMP_NUM_THREADS or the cores)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="directory for speed[_TAG].csv / .json (default: runs/bench; an "
                    "existing file is never replaced: the next free name speed[_TAG]_2 ... is taken)")
    ap.add_argument("--tag", default="", help="file name suffix, e.g. seqlen")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    opts = SpeedOptions(batch_size=a.batch_size, seq_lens=a.seq_lens, tgt_len=a.tgt_len, img_size=a.img_size,
                        precisions=a.precision, modes=a.modes, vs_peers=a.vs_peers or a.goals,
                        compile={'off': False, 'on': True, 'both': 'both'}[a.compile],
                        gradient_checkpointing=a.gradient_checkpointing, warmup=a.warmup, rounds=a.rounds, steps=a.steps,
                        memory=not a.no_memory, peak_size=a.peak_size, optimizers=a.optimizer)
    if a.goals:
        from .. import list_models

        ignored = [flag for flag, given in (("--batch-size", a.batch_size is not None), ("--seq-lens", a.seq_lens != (128,)),
                                            ("--tgt-len", a.tgt_len != 32), ("--img-size", a.img_size is not None),
                                            ("--precision", a.precision != ("fp32",)), ("--compile", a.compile != "off"),
                                            ("--gradient-checkpointing", a.gradient_checkpointing),
                                            ("--optimizer", a.optimizer != ("adamw",))) if given]
        if ignored:  # the goal configurations fix these: a run with them would not be what it says
            raise SystemExit(f"zoo bench speed: --goals runs the goal configurations (their batch, lengths, float32 / bf16 / "
                             f"compiled settings, fused AdamW, no checkpointing); drop {', '.join(ignored)}")

        result = {"rows": [], "goals": []}
        picked = _goal_models(a.patterns, [g[0] for g in GOALS])
        for model, batch, seq, tgt in GOALS:
            if model not in picked:
                continue
            if model not in list_models():
                print(f"- {model}: not registered yet, skipped")
                continue
            opts.batch_size, opts.seq_lens, opts.tgt_len = batch, (seq or 128,), tgt or 32
            opts.settings = GOAL_SETTINGS
            part = run_speed([model], opts)
            result = {**part, "rows": result["rows"] + part["rows"]}
            print(format_table(part["rows"]))
        from .speed import check_goals

        result["goals"] = check_goals(result["rows"])
    else:
        names = resolve_models(a.patterns, [g[0] for g in GOALS])
        result = run_speed(names, opts)
    print()
    print(format_table(result["rows"]))
    print(format_goals(result["goals"]))
    m = result["machine"]
    print(f"load average at the end: {m['load_avg_1m_end']:.2f} (1 min) on {m['cores']} cores")
    out = Path(a.out)
    stem = fresh_stem(out, "speed" + (f"_{a.tag}" if a.tag else ""), (".csv", ".json"))
    write_rows(result["rows"], out / f"{stem}.csv")
    result["command"] = ("zoo bench speed " + " ".join(argv)).strip()
    write_text(out / f"{stem}.json", json.dumps(result, indent=1, default=str))
    print(f"wrote {out / stem}.csv and .json")
    return 0


def quality_main(argv: list[str]) -> int:
    """An alias of `zoo compare --config configs/compare/quick_mnist.yaml` (zoo/bench/quality.py)."""
    from .quality import main

    return main(argv)


def generate_main(argv: list[str]) -> int:
    from .generation import main

    return main(argv)


def serve_main(argv: list[str]) -> int:
    from .serve import main

    return main(argv)


def tta_main(argv: list[str]) -> int:
    from .tta import main

    return main(argv)


def bench_main(argv: list[str]) -> int:
    subs = {"speed": speed_main, "quality": quality_main, "generate": generate_main, "serve": serve_main, "tta": tta_main}
    if not argv or argv[0] not in subs:
        print("usage: zoo bench {speed,quality,generate,serve,tta} [options]   (zoo bench speed --help)")
        return 2 if argv and argv[0] not in ("-h", "--help") else 0
    return subs[argv[0]](argv[1:])
