"""Generate MODEL_CARDS.md from the registry and the measured results.

    python scripts/make_model_cards.py            # rewrite MODEL_CARDS.md
    python scripts/make_model_cards.py --check    # exit 1 if the file is out of date

Per model: the one-line architecture (registry description), parameters, MACs per sample at a
stated input size (FlopCounterMode on the meta device, or on CPU at batch 1 when the model needs
real values; cached in results/bench/macs.json by config), the reference paper, the latest
measured throughput (results/bench/speed*.json, with the machine), embedded-task results
(results/training/*.json) and the command behind each figure.
The text between the HAND-WRITTEN markers is kept as it is on regeneration.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import zoo  # noqa: E402
from zoo.registry import _entry  # noqa: E402

BEGIN, END = "<!-- HAND-WRITTEN: BEGIN (kept by scripts/make_model_cards.py) -->", "<!-- HAND-WRITTEN: END -->"
DEFAULT_PREAMBLE = "Notes written by hand (training results, caveats) go here; regeneration keeps them.\n"
SEQ_LEN, TGT_LEN = 128, 32  # the stated input size for MACs of text models


def read_preamble(path: Path) -> str:
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    return DEFAULT_PREAMBLE


def _config_key(name: str) -> str:
    cfg = dataclasses.asdict(_entry(name).config)
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def compute_macs(name: str) -> dict:
    """MACs of one sample at the stated input size; meta device first (no compute), else CPU."""
    from zoo.bench.speed import count_macs, example_inputs, zoo_call

    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = zoo.create_model(name)
            inputs, _, kind = example_inputs(model, 1, SEQ_LEN, TGT_LEN)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            macs = count_macs(model, zoo_call, inputs)
            return {"macs": macs, "input": describe_input(model, inputs, kind), "config": _config_key(name)}
        except Exception as e:  # noqa: BLE001  (meta cannot run data-dependent code: retry on CPU)
            error = f"{type(e).__name__}: {e}"
    return {"macs": None, "input": error[:200], "config": _config_key(name)}


def describe_input(model, inputs: dict, kind: str) -> str:
    parts = []
    for k, v in inputs.items():
        if k == "attention_mask":
            continue
        if v.dim() == 4:
            parts.append(f"{v.shape[1]}x{v.shape[2]}x{v.shape[3]} image")
        else:
            parts.append(f"{v.shape[1]} {'decoder ' if k.startswith('decoder') else ''}tokens")
    return ", ".join(parts)


def load_macs(names: list[str], cache_path: Path, compute: bool = True) -> dict[str, dict]:
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    changed = False
    for name in names:
        if name in cache and cache[name].get("config") == _config_key(name):
            continue
        if not compute:
            continue
        cache[name] = compute_macs(name)
        changed = True
    if changed:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps(dict(sorted(cache.items())), indent=1))
    return cache


def load_results(root: Path) -> tuple[dict[str, list], dict[str, list]]:
    """speed rows (zoo side) and training results, each by model name."""
    speed, training = {}, {}
    for path in sorted((root / "results" / "bench").glob("speed*.json")):
        data = json.loads(path.read_text())
        for r in data.get("rows", []):
            if r.get("side") == "zoo":
                speed.setdefault(r["model"], []).append({**r, "machine": data.get("machine", {}),
                                                          "date": data.get("date"), "command": data.get("command"),
                                                          "file": path.name})
    for path in sorted((root / "results" / "training").glob("*.json")):
        with open(path) as fh:
            r = json.load(fh)
        if "model" in r:
            training.setdefault(r["model"], []).append(r)
        for c in (r.get("comparison") or {}).get("rows", []):  # a baseline model trained by the same recipe
            if c.get("model") and c["model"] != r.get("model") and c.get("epochs"):
                training.setdefault(c["model"], []).append(
                    {**{k: r.get(k) for k in ("metric", "machine", "date")}, **c,
                     "recipe": f"{r.get('recipe')} (baseline in its comparison)"})
    return speed, training


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} "


def speed_lines(rows: list[dict]) -> list[str]:
    # the latest measurement per (mode, precision): the last file wins (dates sort by name order)
    latest = {}
    for r in sorted(rows, key=lambda r: r.get("date") or ""):
        if r.get("compile") or r.get("grad_ckpt") or r.get("optimizer") not in (None, "adamw"):
            continue  # the card shows what `zoo fit` runs: eager, no checkpointing, its AdamW (rows before 2026-12-06 say none)
        latest[(r["mode"], r["precision"], r.get("batch"), r.get("seq_len"), r.get("tgt_len"))] = r
    out = []
    for (mode, prec, batch, seq, tgt), r in sorted(latest.items(), key=lambda kv: str(kv[0])):
        m = r["machine"]
        size = f"batch {batch}" + (f" x {seq}" if seq else "") + (f" -> {tgt}" if tgt else "")
        if r.get("optimizer"):
            size += f", {r['optimizer']}"
        peer = f"; {r['vs_peer']:.2f}x {r['peer']}" if "vs_peer" in r else ""
        out.append(f"  - {mode} {prec}, {size} ({r.get('params', 0) / 1e6:.1f}M params as benchmarked): {r['samples_per_s']:.1f} samples/s, {r['tokens_per_s']:.0f} tokens/s{peer} "
                   f"({m.get('cpu', '?')}, {m.get('torch_threads', '?')} threads, load {m.get('load_avg_1m', 0):.1f}, "
                   f"{(r.get('date') or '')[:10]}) - `{r.get('command')}`")
    return out


def comparison_lines(result: dict) -> list[str]:
    """A recipe's comparison (results/training/<recipe>.json "comparison"): a table of its model against
    baselines on the same data and metric, and which wins by how much."""
    comp = result.get("comparison") or {}
    rows = [r for r in comp.get("rows", []) if r.get("value") is not None]
    if not rows:
        return []
    if not isinstance(comp.get("lower_is_better"), bool):  # no default: an accuracy table would be ranked backwards
        raise SystemExit(f"results/training/{result.get('recipe')}.json: comparison.lower_is_better must be true or "
                         f"false, got {comp.get('lower_is_better')!r}")
    lower = comp["lower_is_better"]
    metric = comp.get("metric", result.get("metric"))
    rows = sorted(rows, key=lambda r: r["value"] if lower else -r["value"])
    out = [f"**{comp.get('title', result.get('recipe'))}** ({metric}, {'lower' if lower else 'higher'} is better; "
           f"{comp.get('note', 'same data and scored tokens')})", "",
           f"| | {metric} | parameters | training | command |", "|---|---:|---:|---|---|"]
    for r in rows:
        train = (f"{r['epochs']} epochs, {r.get('train_seconds', 0) / 60:.1f} min" if r.get("epochs")
                 else r.get("training", "-"))
        if r.get("epochs") and "shared" in r.get("machine", ""):
            train += " (shared cores)"
        params = "-" if not r.get("params") else f"{r['params'] / 1e6:.2f} M" if r["params"] >= 1e5 else f"{r['params']:,}"
        out.append(f"| {r['name']} | {r['value']:.1f} | {params} | {train} | `{r.get('command', '')}` |")
    best = rows[0]
    by = ", ".join(f"{r['name']} by {r['value'] / best['value'] if lower else best['value'] / r['value']:.2f}x "
                   f"({r['value']:.1f})" for r in rows[1:])
    out += ["", f"Winner: {best['name']} ({metric} {best['value']:.1f}), {'below' if lower else 'above'} {by}."]
    also = [r for r in comp.get("also_run", []) if r.get("value") is not None]
    if also:
        out += ["", "Also run (not ranked above): " + "; ".join(
            f"{r['name']}: {r['value']:.1f}" + (f" ({r['note']})" if r.get("note") else "") for r in also) + "."]
    return out


def _minutes(seconds) -> str:
    return f"{seconds / 60:.1f} min" if seconds else "time not recorded"


def card(name: str, macs: dict, speed: list, training: list) -> str:
    e = _entry(name)
    info = zoo.model_info(name)
    lines = [f"### {name}", "", f"- Family: `{e.family}` - {e.description}", f"- Parameters: {info['params']:,}"]
    m = macs.get(name)
    if m and m.get("macs") is not None:
        lines.append(f"- MACs per sample: {_si(m['macs'])}MACs at {m['input']} (FlopCounterMode, forward) - "
                     "`python scripts/make_model_cards.py`")
    else:
        lines.append(f"- MACs per sample: not computed{' (' + m['input'] + ')' if m else ''}")
    lines.append(f"- Paper: {e.paper}")
    sl = speed_lines(speed)
    lines += ["- Measured throughput:"] + sl if sl else ["- Measured throughput: not measured yet - "
                                                          f"`zoo bench speed {name}`"]
    results = []
    for r in training:
        results.append(f"  - {r.get('recipe')}: {r.get('metric')} = {r.get('value')} after {r.get('epochs')} epochs, "
                       f"{_minutes(r.get('train_seconds'))} on {r.get('machine')} ({str(r.get('date'))[:10]}) - `{r.get('command')}`")
    lines += ["- Embedded-task results:"] + results if results else ["- Embedded-task results: none yet"]
    tags = [t for t in zoo.list_pretrained() if zoo.pretrained_cfg(t).model == name]
    if tags:
        lines.append("- Pretrained tags (shipped): " + ", ".join(
            f"[`{t}`](#pretrained-tags-shipped) ({zoo.pretrained_cfg(t).metric['name']} "
            f"{zoo.pretrained_cfg(t).metric['value']})" for t in tags))
    return "\n".join(lines) + "\n"


def pretrained_lines() -> list[str]:
    """The shipped tags (zoo/pretrained_weights/index.json) with the metric each shipped file measured."""
    tags = zoo.list_pretrained()
    if not tags:
        return []
    lines = ["", "## Pretrained tags (shipped)", "",
             "Weights inside the package, `zoo.create_model(tag, pretrained=True)`; sha256-checked on load. The metric is "
             "the shipped file's, measured on the held-out test split by the recipe's own test step "
             "(`python scripts/make_pretrained.py --check`).", "",
             "| tag | model | stored as | metric (shipped file) | float32 | test split | size | made by |",
             "|---|---|---|---:|---:|---|---:|---|"]
    for t in tags:
        c = zoo.pretrained_cfg(t)
        size = sum((c.path / f).stat().st_size for f in c.files if (c.path / f).is_file())
        m = c.metric
        lines.append(f"| `{t}` | {c.model} | {c.dtype} | {m['name']} = **{m['value']}** | {m.get('float32_value', '-')} | "
                     f"{m.get('split', '')} | {size / 1e6:.2f} MB | `{c.command}` |")
    return lines


def render(preamble: str, names: list[str], macs: dict, results, studies: Path | None = None) -> str:
    speed, training = results
    families: dict[str, list[str]] = {}
    for n in names:
        families.setdefault(_entry(n).family, []).append(n)
    parts = [
        "# Model cards",
        "",
        "Generated by `python scripts/make_model_cards.py` from the registry (`zoo.list_models()`, "
        "`zoo.model_info()`) and `results/`; edit only the hand-written section, then regenerate.",
        f"MACs: one sample, forward, multiply-accumulates counted by torch.utils.flop_counter.FlopCounterMode "
        f"(matmuls, convolutions, attention, RNN layers; not element-wise ops); text models at {SEQ_LEN} tokens "
        f"(encoder-decoders {SEQ_LEN} -> {TGT_LEN}), image models at their configured size.",
        "",
        BEGIN,
        preamble.rstrip("\n"),
        END,
        "",
        "| model | family | parameters | MACs / sample |",
        "|---|---|---:|---:|",
    ]
    for n in names:
        m = macs.get(n, {}).get("macs")
        parts.append(f"| [{n}](#{n}) | {_entry(n).family} | {zoo.model_info(n)['params'] / 1e6:.2f} M | "
                     f"{_si(m) + 'MACs' if m is not None else '-'} |")
    parts += pretrained_lines()
    comparisons = [r for rs in training.values() for r in rs if r.get("comparison")]
    if comparisons:
        parts += ["", "## Comparisons", ""]
        for r in sorted(comparisons, key=lambda r: str(r.get("recipe"))):
            parts += comparison_lines(r) + [""]
        parts.pop()
    parts += study_lines(studies) if studies is not None else []
    for fam in sorted(families):
        parts += ["", f"## {fam}", ""]
        parts += [card(n, macs, speed.get(n, []), training.get(n, [])) for n in families[fam]]
    return "\n".join(parts).rstrip("\n") + "\n"


def study_lines(root: Path) -> list[str]:
    """## Studies: every `zoo compare` store with a table.csv (mean, 95% CI, paired difference to the baseline)."""
    import csv

    import yaml

    def f(v: str) -> str:
        return "–" if v in ("", None) or v.lower() == "nan" else f"{float(v):.4f}"

    def fs(v: str) -> str:
        return "–" if v in ("", None) or v.lower() == "nan" else f"{float(v):+.4f}"

    stores = sorted(p.parent for p in root.glob("*/table.csv"))
    if not stores:
        return []
    out = ["", "## Studies (`zoo compare`)", "",
           "Every run is a `zoo fit` of the study's recipe at one budget for all variants; intervals are 95% Student-t "
           "intervals over seeds, differences are paired by seed (**yes**: the interval excludes 0; p (Holm): the paired "
           "t-test's p-value and, in brackets, its Holm-Bonferroni adjustment over the study's comparisons). Full "
           "tables, plots and every run's row: the study's folder."]
    for store in stores:
        study = yaml.safe_load((store / "study.yaml").read_text()) if (store / "study.yaml").is_file() else {}
        rows = list(csv.DictReader((store / "table.csv").open()))
        base = next((r for r in rows if not r["diff_mean"]), rows[0])
        n_runs = sum(int(r["n"]) for r in rows)
        budget = ", ".join(f"{k} {v}" for k, v in (study.get("budget") or {}).items())
        out += ["", f"### {store.name}", "",
                f"`zoo compare --config configs/compare/{store.name}.yaml` — recipe `{study.get('recipe', '?')}`, {budget}, "
                f"{n_runs} runs of {len(study.get('variants') or rows) * len(study.get('seeds') or [0])} planned "
                f"(table and plot: `{store.relative_to(ROOT)}/`). Baseline `{base['variant']}`: "
                f"{f(base['mean'])}, 95% CI half-width ±{f(base['ci_half'])} (n={base['n']}).", "",
                f"| variant | n | {rows[0]['metric']} mean | 95% CI | Δ vs baseline [95% CI] | significant | p (Holm) | params |",
                "|---|---:|---:|---:|---:|:---:|---:|---:|"]
        for r in rows:
            ci = f"[{f(r['ci_low'])}, {f(r['ci_high'])}]" + ("*" if r.get("ci_cut") == "True" else "")
            diff = "baseline" if r is base else f"{fs(r['diff_mean'])} [{f(r['diff_low'])}, {f(r['diff_high'])}]"
            one = r["diff_n"] in ("", None) or int(float(r["diff_n"])) < 2  # one paired seed: nothing to test
            sig = "" if r is base else "– (n<2)" if one else "– (no spread over seeds)" if r["significant"] in ("", "None") \
                else ("**yes**" if r["significant"] == "True" else "no")
            p = f"{float(r['p']):.3g} ({float(r['p_holm']):.3g})" if r.get("p") not in ("", None) else ""
            out.append(f"| {r['variant']} | {r['n']} | {f(r['mean'])} | {ci} | {diff} | {sig} | {p} | "
                       f"{_si(float(r['params'])) if r['params'] else '-'} |")
        if any(r.get("ci_cut") == "True" for r in rows):
            out += ["", f"Intervals marked \\*: the t-interval reaches past the range of {rows[0]['metric']} and is cut at it (zoo compare's "
                        "table.md says which range)."]
        if (store / "findings.md").is_file():  # the reading of the table, written by whoever ran the study
            out += ["", (store / "findings.md").read_text(encoding="utf-8").strip()]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "MODEL_CARDS.md"))
    ap.add_argument("--check", action="store_true", help="only report whether the file is up to date")
    a = ap.parse_args(argv)
    out = Path(a.out)
    names = zoo.list_models()
    macs = load_macs(names, ROOT / "results" / "bench" / "macs.json")
    text = render(read_preamble(out), names, macs, load_results(ROOT), ROOT / "results" / "compare")
    if a.check:
        ok = out.exists() and out.read_text() == text
        print("MODEL_CARDS.md is up to date" if ok else "MODEL_CARDS.md is out of date: run python scripts/make_model_cards.py")
        return 0 if ok else 1
    out.write_text(text)
    print(f"wrote {out} ({len(names)} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
