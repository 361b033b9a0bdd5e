"""Aggregation of a study's store: mean, sd and 95% t-intervals over seeds, differences to the baseline
paired by seed; table.md, table.csv and plot.png."""
from __future__ import annotations

import csv
import math
import statistics
import time
from pathlib import Path

LEVEL = 0.95
ROUNDING = 1e-6  # a spread of paired differences below this fraction of the metric's size is float32 rounding, no spread


def t_interval(values: list[float], level: float = LEVEL, bounds: tuple[float, float] | None = None) -> dict:
    """n, mean, sample sd and the two-sided Student-t interval of the mean (nan where n < 2, and all nan where a
    value is NaN). `bounds`: the range the metric lies in; the interval is cut at it and `cut` says so. The mean
    of such a metric cannot lie outside, so the cut interval holds it exactly as often (the same 95% coverage),
    where the t-interval of 3 seeds of an accuracy near 1 reaches past 1. `half` stays the t half-width."""
    from scipy import stats

    n = len(values)
    if any(math.isnan(v) for v in values):  # a diverged run: no mean, no interval (statistics.stdev raises on NaN)
        return {"n": n, "mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan, "half": math.nan, "cut": False}
    mean = statistics.fmean(values) if n else math.nan
    sd = statistics.stdev(values) if n > 1 else math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    low, high = mean - half, mean + half
    cut = bounds is not None and n > 1 and (low < bounds[0] or high > bounds[1])
    if cut:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"n": n, "mean": mean, "sd": sd, "low": low, "high": high, "half": half, "cut": cut}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def aggregate(rows: list[dict], variants: list[str], baseline: str, metric: str | None = None,
              bounds: tuple[float, float] | None = None) -> list[dict]:
    """One summary per variant (in the study's order; variants without rows are left out). The difference to
    the baseline pairs the seeds both have: d_s = x_variant,s - x_baseline,s, then the t-interval of the d_s;
    significant when that interval excludes 0. `bounds`: the metric's range (intervals are cut at it; a
    difference at [low - high, high - low], which never changes whether it excludes 0)."""
    diff_bounds = None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])
    by = {v: {} for v in variants}
    for r in rows:
        if r["variant"] in by:
            by[r["variant"]][r["seed"]] = r
    value = (lambda r: r["metrics"][metric]) if metric else (lambda r: r["value"])
    base = {s: value(r) for s, r in by.get(baseline, {}).items()}
    out = []
    for v in variants:
        runs = by[v]
        if not runs:
            continue
        seeds = sorted(runs)
        vals = [value(runs[s]) for s in seeds]
        summary = {"variant": v, "seeds": seeds, **t_interval(vals, bounds=bounds)}
        paired = [s for s in seeds if s in base]
        if v == baseline or not paired:
            summary["diff"] = None
        else:
            d = t_interval([value(runs[s]) - base[s] for s in paired], bounds=diff_bounds)
            # every seed's difference the same (sd 0): a t-interval of width 0 says nothing about the spread, so no
            # call is made (a deterministic difference, or too few seeds to see the noise). "The same" up to the
            # rounding of metrics logged as float32 (0.978 - 0.968 and 0.123 - 0.113 differ by 1.5e-8 there), which
            # would otherwise give an interval 1e-8 wide and a "significant" call; a NaN run: no call either
            scale = max([abs(value(runs[s])) for s in paired] + [abs(base[s]) for s in paired])
            d["significant"] = None if d["n"] < 2 or math.isnan(d["sd"]) or d["sd"] <= ROUNDING * scale else \
                bool(d["low"] > 0 or d["high"] < 0)
            d["p"] = None if d["significant"] is None else t_pvalue(d)
            summary["diff"] = d
        rs = list(runs.values())
        summary.update(
            params=_mean(r.get("params") for r in rs), macs_per_sample=_mean(r.get("macs_per_sample") for r in rs),
            train_seconds=_mean(r.get("train_seconds") for r in rs),
            train_samples_per_s=_mean(r.get("train_samples_per_s") for r in rs),
            peak_rss_mb=max((r.get("peak_rss_mb") or 0 for r in rs), default=None),
            other={k: t_interval([r["metrics"][k] for r in rs if k in r["metrics"]])
                   for k in sorted({k for r in rs for k in r.get("metrics", {})})},
        )
        out.append(summary)
    holm([s["diff"] for s in out if s["diff"] is not None and s["diff"]["p"] is not None])
    return out


def t_pvalue(d: dict) -> float:
    """Two-sided p-value of the paired t-test of a difference summary (scipy.stats.ttest_rel's); < 1 - LEVEL
    exactly when its interval excludes 0."""
    from scipy import stats

    t = d["mean"] / (d["sd"] / math.sqrt(d["n"]))
    return float(2 * stats.t.sf(abs(t), d["n"] - 1))


def holm(diffs: list[dict]) -> None:
    """Holm-Bonferroni over the study's comparisons to the baseline: sets each one's `p_holm` (the smallest level
    at which it is rejected with the family-wise error rate held) and `significant_holm` (p_holm < 1 - LEVEL)."""
    m, running = len(diffs), 0.0
    for i, d in enumerate(sorted(diffs, key=lambda d: d["p"])):
        running = max(running, min(1.0, (m - i) * d["p"]))
        d["p_holm"], d["significant_holm"] = running, running < 1 - LEVEL


def _f(x, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(d: dict | None) -> str:
    """'0.012 (0.036)': the paired t-test's p-value and, in brackets, its Holm-Bonferroni adjustment."""
    if d is None or d.get("p") is None:
        return ""
    return f"{d['p']:.3g} ({d['p_holm']:.3g})"


def _si(x) -> str:
    if x is None:
        return "–"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def machines(rows: list[dict]) -> list[tuple[str, int]]:
    """The machines the rows were trained on ("host, cpu, N threads"), most runs first."""
    from collections import Counter

    seen = Counter(f"{r.get('host') or 'unknown host'}, {r.get('cpu') or 'CPU not recorded'}, "
                   f"{r.get('threads') or '?'} thread(s)" for r in rows)
    return seen.most_common()


def left_out_sentence(left_out: list[dict]) -> str:
    """One sentence naming the store's rows of variants or seeds the study no longer lists."""
    seeds: dict[str, list] = {}
    for r in left_out:
        seeds.setdefault(str(r.get("variant")), []).append(r.get("seed"))
    runs = "; ".join(f"{v} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}" for v, s in seeds.items())
    return (f"The store also holds {len(left_out)} run(s) of variants or seeds the study file no longer lists ({runs}); "
            "they are left out of this table.")


def tested_text(rows: list[dict]) -> str:
    """Which weights the runs tested (`zoo fit --test_ckpt`); rows written before the field tested the best checkpoint."""
    kinds = {r.get("tested", "best") for r in rows} or {"best"}
    names = {"best": "best checkpoint by validation", "last": "final weights"}
    return " / ".join(names.get(k, k) for k in sorted(kinds)) + (" (mixed: compare with care)" if len(kinds) > 1 else "")


def trained_text(rows: list[dict], study) -> str:
    """What the runs really trained (their recorded steps, epochs and samples): one figure when every run trained
    the same, else each variant's, marked. The budget is one number, but a variant that changes the batch size, or a
    recipe that stops early, trains another amount under it."""
    amounts: dict[str, set] = {}
    for r in rows:
        if all(isinstance(r.get(k), int) for k in ("steps", "epochs", "samples")):
            amounts.setdefault(r["variant"], set()).add((r["steps"], r["epochs"], r["samples"]))
    if not amounts:
        return ""
    # the epoch count only at an epoch budget: a run stopped by max_steps inside its first epoch records 1
    epochs = "max_epochs" in study.budget
    fmt = lambda a: f"{a[0]:,} steps, " + (f"{a[1]} epoch{'s' if a[1] != 1 else ''}, " if epochs else "") + \
        f"{a[2]:,} samples"  # noqa: E731
    every = set().union(*amounts.values())
    if len(every) == 1:
        return f"Every run trained {fmt(next(iter(every)))}."
    wall = "max_minutes" in study.budget
    per = "; ".join(f"{v}: {' / '.join(fmt(a) for a in sorted(amounts[v]))}" for v in study.variants if v in amounts)
    return ("At a wall-clock budget each run trains what fits in it: " if wall else
            "**The runs trained different amounts under this budget** (e.g. a batch size, gradient accumulation or early "
            "stopping differs; compare with that in mind): ") + per + "."


def _ci(t: dict) -> str:
    """'[low, high]', marked * where cut at the metric's range."""
    return f"[{_f(t['low'])}, {_f(t['high'])}]" + ("*" if t.get("cut") else "")


def markdown(summaries: list[dict], study, rows: list[dict], left_out: list[dict] | None = None,
             bounds: tuple[float, float] | None = None) -> str:
    m, b = study.metric, study.baseline
    n_rows = len(rows)
    lines = [f"# Study `{study.name}`", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    lines += [f"Recipe `{study.recipe.name}`, budget {study.budget_text()} for every run, seeds {study.seeds}; "
              f"metric `{m}` on the test split ({tested_text(rows)}). {n_rows} finished runs in the store.", ""]
    trained = trained_text(rows, study)
    if trained:
        lines += [trained, ""]
    if left_out:
        lines += [left_out_sentence(left_out), ""]
    have = {(r["variant"], r["seed"]) for r in rows}
    missing = [run for run in study.runs() if run not in have]
    if missing:  # a failed or unfinished run: its variant's n and paired difference quietly use fewer seeds
        which = "; ".join(f"{v} seed {s}" for v, s in missing)
        lines += [f"**{len(missing)} of the study's {len(study.runs())} runs {'is' if len(missing) == 1 else 'are'} missing** (failed or not run yet: {which}); "
                  "their variants' means and paired differences are over the seeds that finished (n).", ""]
    nan = [r for r in rows if isinstance(r["metrics"].get(m), float) and math.isnan(r["metrics"][m])]
    if nan:  # a diverged run is not dropped (the mean of the seeds that survived would flatter the variant)
        which = "; ".join(f"{r['variant']} seed {r['seed']}" for r in nan)
        lines += [f"**{m} is NaN** in {len(nan)} run(s) ({which}): "
                  "their variant's mean, interval and difference are left blank rather than taken over the other seeds.", ""]
    lines += [f"| variant | n | {m} mean ± sd | 95% CI | Δ vs {b} (paired) [95% CI] | significant | p (Holm) | params | "
              "MACs/sample | train s | samples/s |",
              "|---|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        d = s["diff"]
        diff = "baseline" if s["variant"] == b else "–" if d is None else \
            f"{'–' if math.isnan(d['mean']) else format(d['mean'], '+.4f')} {_ci(d)} (n={d['n']})"
        sig = "" if d is None else "– (n<2)" if d["n"] < 2 else "– (a run's metric is NaN)" if math.isnan(d["mean"]) \
            else "– (no spread over seeds)" if d["significant"] is None else ("**yes**" if d["significant"] else "no")
        lines.append(f"| {s['variant']} | {s['n']} | {_f(s['mean'])} ± {_f(s['sd'])} | {_ci(s)} | "
                     f"{diff} | {sig} | {_p(d)} | {_si(s['params'])} | {_si(s['macs_per_sample'])} | {_f(s['train_seconds'], 0)} | "
                     f"{_f(s['train_samples_per_s'], 0)} |")
    base = next((s for s in summaries if s["variant"] == b), None)
    lines.append("")
    if base is not None:
        lines += [f"Baseline `{b}`: {m} = {_f(base['mean'])}, 95% CI half-width ±{_f(base['half'])} (n={base['n']}).", ""]
    k = sum(1 for s in summaries if s["diff"] is not None and s["diff"].get("p") is not None)
    lines += ["Intervals are two-sided Student-t intervals of the mean over seeds (n - 1 degrees of freedom); the difference "
              "to the baseline is taken seed by seed and is **significant** when its interval excludes 0 (each variant "
              "tested on its own: the paired t-test at 5%). p (Holm): that test's p-value, then the Holm-Bonferroni "
              f"p-value over the study's {k} comparison(s) with a call; a **yes** whose Holm p-value is 0.05 or more "
              "may be one of the chance findings expected of that many tests. MACs per sample: one forward pass "
              "(FlopCounterMode). Train seconds exclude validation.", ""]
    if any(s.get("cut") or (s["diff"] or {}).get("cut") for s in summaries):
        lines += [f"Intervals marked \\*: the t-interval reaches past the range of `{m}` ({_f(bounds[0], 0)} to {_f(bounds[1], 0)}, as its "
                  "task declares) and is cut at it: the mean cannot lie outside, so the cut interval keeps its 95% "
                  "coverage. The half-widths given are the t-interval's.", ""]
    where = machines(rows)
    if len(where) > 1:
        lines += [f"**Training times come from {len(where)} machines**; compare them only within one machine "
                  "(each row of runs.jsonl names its host): " + "; ".join(f"{k} ({n} runs)" for k, n in where) + "."]
    elif where:
        lines += [f"Every run on one machine: {where[0][0]}."]
    lines += ["", f"Rendered {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `zoo compare --config "
              f"{_rel(study.path)} --report`.", ""]
    descriptions = [(v, study.descriptions[v]) for v in study.variants if v in study.descriptions]
    if descriptions:
        lines += ["Variants:", ""] + [f"- `{v}`: {text}" for v, text in descriptions] + [""]
    cost = study.store / "cost.csv"
    if cost.is_file():  # written by `zoo compare --cost`
        from .cost import markdown as cost_markdown
        from .cost import read_csv

        lines += [cost_markdown(read_csv(cost))]
    return "\n".join(lines)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def csv_rows(summaries: list[dict], metric: str) -> list[dict]:
    out = []
    for s in summaries:
        d = s["diff"] or {}
        row = {"variant": s["variant"], "n": s["n"], "seeds": " ".join(map(str, s["seeds"])), "metric": metric,
               "mean": s["mean"], "sd": s["sd"], "ci_low": s["low"], "ci_high": s["high"], "ci_half": s["half"],
               "diff_mean": d.get("mean"), "diff_low": d.get("low"), "diff_high": d.get("high"), "diff_n": d.get("n"),
               "significant": d.get("significant"), "p": d.get("p"), "p_holm": d.get("p_holm"),
               "significant_holm": d.get("significant_holm"), "params": s["params"], "macs_per_sample": s["macs_per_sample"],
               "train_seconds": s["train_seconds"], "train_samples_per_s": s["train_samples_per_s"],
               "peak_rss_mb": s["peak_rss_mb"], "ci_cut": s.get("cut")}
        for k, t in s["other"].items():
            if k != metric:
                row[f"{k}_mean"], row[f"{k}_ci_half"] = t["mean"], t["half"]
        out.append(row)
    return out


def plot(summaries: list[dict], study, path: Path) -> None:
    import matplotlib

    from ..weights import atomic_write

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, label in ((axes[0], "macs_per_sample", "MACs per sample (forward)"),
                           (axes[1], "train_seconds", "mean training time (s)")):
        pts = [s for s in summaries if s[key]]
        for i, s in enumerate(pts):
            base = s["variant"] == study.baseline
            err = 0 if math.isnan(s["half"]) else [[s["mean"] - s["low"]], [s["high"] - s["mean"]]]  # cut: asymmetric
            ax.errorbar(s[key], s["mean"], yerr=err, fmt="s" if base else "o", capsize=3, ms=6,
                        color="black" if base else f"C{i % 10}")
            ax.annotate(s["variant"], (s[key], s["mean"]), textcoords="offset points", xytext=(5, 5 if i % 2 == 0 else -11),
                        fontsize=7)
        xs = [s[key] for s in pts]
        if xs and max(xs) / max(min(xs), 1e-12) > 10:
            ax.set_xscale("log")
        ax.margins(x=0.2, y=0.15)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{study.metric} (mean, 95% CI)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"zoo compare: {study.name} ({study.recipe.name}, {study.budget_text()}, seeds {study.seeds}); "
                 f"black square = baseline {study.baseline}", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def render(study, rows: list[dict]) -> tuple[list[dict], list[Path]]:
    """Write <store>/table.md, table.csv and plot.png from the store's rows (each atomically); rows of variants
    or seeds the study no longer lists are left out, and table.md says so. Returns the summaries and paths."""
    from ..weights import atomic_write

    listed = [r.get("variant") in study.variants and r.get("seed") in study.seeds for r in rows]
    left_out = [r for r, keep in zip(rows, listed) if not keep]
    rows = [r for r, keep in zip(rows, listed) if keep]
    from .study import metric_range

    bounds = metric_range(study)
    summaries = aggregate(rows, list(study.variants), study.baseline, study.metric, bounds)  # not the row's own
    # `value`: a study whose metric changed re-reads the runs' logged test metrics
    study.store.mkdir(parents=True, exist_ok=True)
    md, table, png = study.store / "table.md", study.store / "table.csv", study.store / "plot.png"
    text = markdown(summaries, study, rows, left_out, bounds)
    atomic_write(md, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    crows = csv_rows(summaries, study.metric)
    keys = list(dict.fromkeys(k for r in crows for k in r))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(crows)

    atomic_write(table, write_csv)
    plot(summaries, study, png)
    return summaries, [md, table, png]
