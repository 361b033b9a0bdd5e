"""Cost versus sequence length: `zoo compare --config <study> --cost`.

A study may declare

    cost: {lengths: [16, 32, 64, 128, 256, 512], batch_size: 8, rounds: 3}

(optional: `warmup` untimed forward + training-step calls per model and length besides the one training step that
measures activation memory, default 1; `variants`, a subset of the study's variants,
default all). Each variant's model is built as its runs build it (the recipe's model and model_kwargs after the
variant's overrides, the recipe's data vocabulary) with random weights, and timed at every length with source and
target both of that length: the forward pass (eval mode, no grad) and one training step (train mode: forward,
token cross-entropy, backward, AdamW step). Rounds visit every (length, variant) in turn, so that a slow moment of
the machine hits all variants alike; the median over rounds is kept. Everything runs in this process on one thread.
`activation_mb` is the size of the tensors autograd saves for backward in one training step (measured in the
warm-up call through saved-tensor hooks; each storage counted once), a proxy for the training-memory growth.

Writes <store>/cost.csv and <store>/cost.png (log-log time vs length per variant); the report (table.md) adds a
cost section when cost.csv exists.
"""
from __future__ import annotations

import csv
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COST_KEYS = ("lengths", "batch_size", "rounds", "warmup", "variants")
COLUMNS = ("variant", "model", "params", "length", "batch_size", "forward_ms", "train_step_ms", "activation_mb",
           "rounds", "threads", "max_len")
CSV_NAME, PNG_NAME = "cost.csv", "cost.png"


@dataclass
class CostSpec:
    lengths: list[int]
    batch_size: int = 8
    rounds: int = 3
    warmup: int = 1
    variants: list[str] | None = None  # None: every variant of the study


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def parse_cost(raw: Any, where: str, variants: list[str]) -> CostSpec | None:
    """The study's `cost` block, checked; None when the study has none. Errors name the field."""
    from .study import StudyError

    if raw is None:
        return None
    example = "e.g. cost: {lengths: [16, 32, 64, 128], batch_size: 8, rounds: 3}"
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: cost must be a mapping with keys {', '.join(COST_KEYS)}, {example}")
    unknown = sorted(set(raw) - set(COST_KEYS))
    if unknown:
        raise StudyError(f"{where}: cost: unknown key(s) {', '.join(map(str, unknown))}; accepted: {', '.join(COST_KEYS)}")
    lengths = raw.get("lengths")
    if not isinstance(lengths, list) or not lengths or not all(_positive_int(n) for n in lengths) \
            or any(b <= a for a, b in zip(lengths, lengths[1:])):
        raise StudyError(f"{where}: cost.lengths must be a non-empty list of strictly increasing positive integers, "
                         f"got {lengths!r}; {example}")
    spec = CostSpec(lengths=list(lengths))
    for key in ("batch_size", "rounds"):
        if key in raw:
            if not _positive_int(raw[key]):
                raise StudyError(f"{where}: cost.{key} must be a positive integer, got {raw[key]!r}")
            setattr(spec, key, raw[key])
    if "warmup" in raw:
        if not (isinstance(raw["warmup"], int) and not isinstance(raw["warmup"], bool) and raw["warmup"] >= 0):
            raise StudyError(f"{where}: cost.warmup must be an integer >= 0, got {raw['warmup']!r}")
        spec.warmup = raw["warmup"]
    if "variants" in raw:
        chosen = raw["variants"]
        if not isinstance(chosen, list) or not chosen or any(str(v) not in variants for v in chosen):
            raise StudyError(f"{where}: cost.variants must be a non-empty list of the study's variants "
                             f"({', '.join(variants)}), got {chosen!r}")
        spec.variants = [str(v) for v in chosen]
    return spec


# ---------------------------------------------------------------------------- building the models
def check_cost_models(study, specs: dict[str, tuple[str, dict]]) -> None:
    """The cost block times source and target sequences: every cost variant must be a sequence-to-sequence model
    (declared kind encoder_decoder, or the recurrent baselines'), else a StudyError naming the variant and its kind."""
    from ..registry import _entry
    from .study import StudyError

    for variant in study.cost.variants or list(study.variants):
        name = specs[variant][0]
        kind = getattr(_entry(name).model_cls, "kind", None) if name else None
        if name and kind not in ("encoder_decoder", "recurrent"):
            raise StudyError(f"{study.where()}: the `cost` block times sequence-to-sequence models over source and "
                             f"target lengths, but variant {variant} is {name} ({kind}); drop the cost block, or list only "
                             "sequence-to-sequence variants in cost.variants")


def build_models(study, specs: dict[str, tuple[str, dict]], max_length: int, log=print) -> dict[str, Any]:
    """variant -> (model, effective max_len or None), random weights, float32 on the CPU. `specs` is
    `validate_study`'s answer. A model whose `max_len` is below `max_length` gets max_len=max_length, said in `log`."""
    import dataclasses

    import torch

    from ..registry import create_model, get_config
    from .study import data_overrides

    out = {}
    for variant in study.cost.variants or list(study.variants):
        name, kwargs = specs[variant]
        if not name:
            raise ValueError(f"study {study.name}: variant {variant} names no model; --cost needs model.init_args.model")
        fields = {f.name for f in dataclasses.fields(get_config(name))}
        overrides = {**data_overrides(study, variant, fields), **kwargs}
        limit = dataclasses.asdict(get_config(name, **overrides)).get("max_len")
        if limit is not None and limit < max_length:
            log(f"  {variant}: max_len {limit} < {max_length}: built with max_len={max_length} for the cost run "
                "(the training runs keep theirs)")
            overrides["max_len"] = limit = max_length
        torch.manual_seed(0)
        out[variant] = (name, create_model(name, **overrides).float(), limit)
    return out


# ---------------------------------------------------------------------------- measuring
def _batch(model, batch: int, length: int, gen):
    import torch

    cfg = model.config
    vocab = cfg.vocab_size
    src_vocab = getattr(cfg, "src_vocab_size", None) or vocab
    src = torch.randint(3, src_vocab, (batch, length), generator=gen)
    labels = torch.randint(3, vocab, (batch, length), generator=gen)
    dec = torch.cat([torch.full((batch, 1), cfg.decoder_start_token_id), labels[:, :-1]], dim=1)
    return src, dec, labels


def _forward(model, src, dec, labels):
    import torch

    model.eval()
    with torch.no_grad():
        model(src, dec)


def _train_step(model, opt, src, dec, labels):
    import torch.nn.functional as F

    model.train()
    logits = model(src, dec)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _saved_bytes(model, opt, src, dec, labels) -> int:
    """Bytes of the tensors autograd saves for backward in one training step, each storage once."""
    import torch

    seen: dict[tuple, int] = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.device.type)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some wrappers)
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _train_step(model, opt, src, dec, labels)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for (ptr, _), n in seen.items() if ptr not in params)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def measure(study, models: dict[str, Any], log=print) -> list[dict]:
    """The rows of cost.csv: per variant and length, median forward and training-step times over the rounds."""
    import torch

    spec = study.cost
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    opts = {v: torch.optim.AdamW(m.parameters(), lr=1e-4) for v, (_, m, _) in models.items()}
    batches = {(v, n): _batch(m, spec.batch_size, n, gen) for v, (_, m, _) in models.items() for n in spec.lengths}
    times: dict[tuple, dict[str, list[float]]] = {k: {"forward": [], "train": []} for k in batches}
    act: dict[tuple, float] = {}
    for (v, n), b in batches.items():  # warm-up (allocator, kernels) and the saved-tensor size
        _, m, _ = models[v]
        act[(v, n)] = _saved_bytes(m, opts[v], *b) / 2**20
        for _ in range(spec.warmup):
            _forward(m, *b)
            _train_step(m, opts[v], *b)
    for r in range(spec.rounds):
        t0 = time.perf_counter()
        for n in spec.lengths:
            for v, (_, m, _) in models.items():
                b = batches[(v, n)]
                times[(v, n)]["forward"].append(_timed(lambda: _forward(m, *b)))
                times[(v, n)]["train"].append(_timed(lambda: _train_step(m, opts[v], *b)))
        log(f"  round {r + 1}/{spec.rounds}: {time.perf_counter() - t0:.1f} s")
    rows = []
    for v, (name, m, limit) in models.items():
        params = sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())
        for n in spec.lengths:
            t = times[(v, n)]
            rows.append({"variant": v, "model": name, "params": params, "length": n, "batch_size": spec.batch_size,
                         "forward_ms": round(statistics.median(t["forward"]), 3),
                         "train_step_ms": round(statistics.median(t["train"]), 3),
                         "activation_mb": round(act[(v, n)], 3), "rounds": spec.rounds, "threads": threads,
                         "max_len": "" if limit is None else limit})
    return rows


def growth_exponent(lengths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) on log(length) over the upper half of the lengths (at least two):
    ~1 for cost linear in the length, ~2 for quadratic. nan with fewer than two lengths."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(lengths, values) if v > 0]
    pts = pts[max(0, min(len(pts) // 2, len(pts) - 2)):]
    if len(pts) < 2:
        return math.nan
    mx, my = statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("length", "batch_size", "params", "rounds", "threads"):
            r[k] = int(r[k])
        for k in ("forward_ms", "train_step_ms", "activation_mb"):
            r[k] = float(r[k])
    return rows


def _by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["variant"], []).append(r)
    return {v: sorted(rs, key=lambda r: r["length"]) for v, rs in out.items()}


def plot(rows: list[dict], study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, key, label in ((axes[0], "forward_ms", "forward (ms, median)"),
                           (axes[1], "train_step_ms", "training step (ms, median)"),
                           (axes[2], "activation_mb", "saved for backward (MiB)")):
        for i, (v, rs) in enumerate(_by_variant(rows).items()):
            xs, ys = [r["length"] for r in rs], [r[key] for r in rs]
            ax.plot(xs, ys, "s-" if v == study.baseline else "o-", color="black" if v == study.baseline else f"C{i % 10}",
                    ms=4, label=f"{v} (slope {growth_exponent(xs, ys):.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("source = target length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    r0 = rows[0]
    fig.suptitle(f"zoo compare --cost: {study.name}, batch {r0['batch_size']}, {r0['threads']} thread(s), "
                 f"median of {r0['rounds']} round(s); slope = log-log growth over the longer lengths", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict]) -> str:
    """The cost section of table.md: training-step time per length, growth exponents, activation memory."""
    by = _by_variant(rows)
    lengths = sorted({r["length"] for r in rows})
    r0 = rows[0]
    lines = ["## Cost versus sequence length", "",
             f"Random weights, source and target both of the given length, batch {r0['batch_size']}, "
             f"{r0['threads']} thread(s), median of {r0['rounds']} interleaved round(s) (`zoo compare --cost`, "
             f"{CSV_NAME}, {PNG_NAME}). Training step = forward + cross-entropy + backward + AdamW step, in ms; "
             "slope = least-squares log-log growth of the time over the longer half of the lengths (1: linear, "
             "2: quadratic); MiB = tensors saved for backward at the longest length.", "",
             "| variant | params | " + " | ".join(f"L={n}" for n in lengths) + " | slope (train) | slope (forward) | MiB |",
             "|---|---:|" + "---:|" * len(lengths) + "---:|---:|---:|"]
    for v, rs in by.items():
        at = {r["length"]: r for r in rs}
        xs = [r["length"] for r in rs]
        cells = " | ".join(f"{at[n]['train_step_ms']:.1f}" if n in at else "–" for n in lengths)
        lines.append(f"| {v} | {rs[0]['params'] / 1e6:.3f}M | {cells} | "
                     f"{growth_exponent(xs, [r['train_step_ms'] for r in rs]):.2f} | "
                     f"{growth_exponent(xs, [r['forward_ms'] for r in rs]):.2f} | {rs[-1]['activation_mb']:.1f} |")
    return "\n".join(lines + [""])


def run_cost(study, log=print) -> list[Path]:
    """Measure every cost variant on one thread; write <store>/cost.csv and cost.png. Returns their paths."""
    import torch

    from .study import StudyError, validate_study

    if study.cost is None:
        raise StudyError(f"study {study.name} has no `cost` block; add e.g. cost: {{lengths: [16, 32, 64, 128], "
                         "batch_size: 8, rounds: 3} to its file")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        specs = validate_study(study)  # checks the cost variants too (check_cost_models)
        spec = study.cost
        models = build_models(study, specs, max(spec.lengths), log)
        log(f"zoo compare --cost: {len(models)} variants x lengths {spec.lengths}, batch {spec.batch_size}, "
            f"{spec.rounds} round(s), 1 thread")
        rows = measure(study, models, log)
    finally:
        torch.set_num_threads(threads)
    study.store.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = study.store / CSV_NAME, study.store / PNG_NAME
    write_csv(rows, csv_path)
    plot(rows, study, png_path)
    return [csv_path, png_path]
