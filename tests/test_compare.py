"""zoo compare: aggregation against a hand computation, bad study files, the shipped studies, and a tiny
study end to end (through submitit's local executor, then killed-and-resumed locally) with 3 tiny fits."""
import json
import math
import os
import platform
from pathlib import Path

import pytest
import yaml

import zoo.trainer_cli  # noqa: F401  (lightning's log handler binds stderr on import: pytest's, not a test's capsys)
from zoo.cli import main
from zoo.compare import StudyError, aggregate, load_study, t_interval, validate_study
from zoo.compare.report import render
from zoo.compare.runner import ROWS, append_row, plan, read_rows

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "vit_digits.yaml")
T975 = {1: 12.706204736174704, 2: 4.302652729911275}  # scipy.stats.t.ppf(0.975, df), also in any t table


def write_study(tmp_path, name="tiny", **over) -> Path:
    study = {"name": name, "recipe": DIGITS, "baseline": "base",
             "variants": {"base": {}, "narrow": {"overrides": {"model.init_args.model_kwargs.dim": 32,
                                                               "model.init_args.model_kwargs.num_heads": 2}}},
             "seeds": [0, 1], "budget": {"max_steps": 3}, "metric": "test/acc", "store": str(tmp_path / "store"), "jobs": 1}
    study.update(over)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))  # (JSON would write inf as Infinity, a string to YAML)
    return path


def zoo_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


# ---------------------------------------------------------------------------- aggregation by hand
def _rows(variant, values, seeds=(0, 1, 2)):
    return [{"variant": variant, "seed": s, "value": v, "metrics": {"test/acc": v, "test/loss": 1 - v}, "params": 100,
             "macs_per_sample": 1e6 * (1 + len(variant)), "train_seconds": 10.0 + s, "train_samples_per_s": 50.0}
            for s, v in zip(seeds, values)]


def test_aggregation_matches_a_hand_computation(tmp_path):
    rows = (_rows("base", [0.90, 0.92, 0.94]) + _rows("better", [0.95, 0.96, 0.97]) + _rows("same", [0.92, 0.91, 0.96])
            + _rows("two_seeds", [0.93, 0.97], seeds=(0, 2)))
    s = {r["variant"]: r for r in aggregate(rows, ["base", "better", "same", "two_seeds", "missing"], "base")}
    assert list(s) == ["base", "better", "same", "two_seeds"]  # a variant without runs is left out
    b = s["base"]  # mean 0.92, sd 0.02, half-width t(0.975, 2) * 0.02 / sqrt(3)
    assert b["n"] == 3 and b["mean"] == pytest.approx(0.92) and b["sd"] == pytest.approx(0.02)
    assert b["half"] == pytest.approx(T975[2] * 0.02 / math.sqrt(3)) and b["half"] == pytest.approx(0.049683, abs=1e-6)
    assert (b["low"], b["high"]) == pytest.approx((0.92 - b["half"], 0.92 + b["half"])) and b["diff"] is None
    d = s["better"]["diff"]  # differences by seed: 0.05, 0.04, 0.03 -> mean 0.04, sd 0.01
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.04) and d["sd"] == pytest.approx(0.01)
    assert (d["low"], d["high"]) == pytest.approx((0.04 - T975[2] * 0.01 / math.sqrt(3), 0.04 + T975[2] * 0.01 / math.sqrt(3)))
    assert d["low"] == pytest.approx(0.015159, abs=1e-6) and d["significant"] is True
    d = s["same"]["diff"]  # 0.02, -0.01, 0.02 -> mean 0.01, sd sqrt(0.0003): the interval holds 0
    assert d["mean"] == pytest.approx(0.01) and d["sd"] == pytest.approx(math.sqrt(0.0003)) and d["significant"] is False
    d = s["two_seeds"]["diff"]  # paired on seeds 0 and 2 only: 0.03, 0.03 -> sd 0: an interval of width 0 measures
    # no spread, so no call is made (neither "yes" nor "no")
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.03) and d["half"] == pytest.approx(0) and d["significant"] is None
    assert s["two_seeds"]["half"] == pytest.approx(T975[1] * math.sqrt(0.0008) / math.sqrt(2))
    assert s["better"]["other"]["test/loss"]["mean"] == pytest.approx(0.04)
    assert s["base"]["train_seconds"] == pytest.approx(11.0)
    one = t_interval([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["half"])

    study = load_study(write_study(tmp_path, variants={v: {} for v in ("base", "better", "same", "two_seeds")}, seeds=[0, 1, 2]))
    _, paths = render(study, rows)
    md = (study.store / "table.md").read_text()
    assert "| better | 3 | 0.9600 ± 0.0100 |" in md and "+0.0400 [0.0152, 0.0648] (n=3) | **yes** |" in md
    assert "| same | 3 |" in md and "+0.0100" in md and "| no |" in md
    assert "+0.0300 [0.0300, 0.0300] (n=2) | – (no spread over seeds) |" in md
    assert "95% CI half-width ±0.0497 (n=3)" in md
    table = (study.store / "table.csv").read_text().splitlines()
    assert table[0].startswith("variant,n,seeds,metric,mean,sd,ci_low,ci_high,ci_half,diff_mean") and len(table) == 5
    assert (study.store / "plot.png").stat().st_size > 10_000
    assert "Every run on one machine: unknown host, CPU not recorded, ? thread(s)." in md
    assert ("**1 of the study's 12 runs is missing** (failed or not run yet: two_seeds seed 1); their variants' means "
            "and paired differences are over the seeds that finished (n).") in md
    render(study, [r for r in rows if r["variant"] != "better" or r["seed"] == 0])  # one seed: no test possible
    md = (study.store / "table.md").read_text()
    assert "| +0.0500 [–, –] (n=1) | – (n<2) |" in md
    assert ("**3 of the study's 12 runs are missing** (failed or not run yet: better seed 1; two_seeds seed 1; better "
            "seed 2); their variants' means and paired differences are over the seeds that finished (n).") in md

    for r in rows:  # a study resumed on another machine: its training times are not comparable across the two
        r.update(host="vm", threads=1, cpu="AMD EPYC" if r["seed"] < 2 else "Intel(R) Xeon(R) Platinum")
    render(study, rows)
    md = (study.store / "table.md").read_text()
    assert ("**Training times come from 2 machines**; compare them only within one machine (each row of runs.jsonl "
            "names its host): vm, AMD EPYC, 1 thread(s) (7 runs); vm, Intel(R) Xeon(R) Platinum, 1 thread(s) (4 runs).") in md


def test_store_appends_whole_lines_and_skips_a_torn_one(tmp_path):
    append_row(tmp_path / ROWS, {"variant": "a", "seed": 0})
    with open(tmp_path / ROWS, "a") as fh:
        fh.write('{"variant": "a", "se')  # a write cut by a crash
    assert read_rows(tmp_path) == [{"variant": "a", "seed": 0}]
    append_row(tmp_path / ROWS, {"variant": "a", "seed": 1})  # the resumed study's next row: on a line of its own
    assert read_rows(tmp_path) == [{"variant": "a", "seed": 0}, {"variant": "a", "seed": 1}]


# ---------------------------------------------------------------------------- bad study files
@pytest.mark.parametrize("over, message", [
    ({"recipe": "configs/no_such_recipe.yaml"}, "recipe configs/no_such_recipe.yaml does not exist"),
    ({"variants": {}}, "has no variants"),
    ({"baseline": "wide"}, "baseline 'wide' is not one of its variants (base, narrow)"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"seeds": [0, -1]}, "seeds must be integers from 0 to 4294967295 (what seed_everything accepts), got [0, -1]"),
    ({"budget": {"max_minutes": math.inf}}, "budget max_minutes must be a positive number, got inf"),
    ({"budget": {"max_epochs": math.nan}}, "budget max_epochs must be a positive integer, got nan"),
    ({"budget": {"max_steps": 3, "max_epochs": 2}}, "budget must be exactly one of max_epochs, max_steps, max_minutes"),
    ({"variants": {"base": {"overrides": {"trainer.max_epochs": 3}}}}, "override trainer.max_epochs is set by the study"),
    ({"variants": {"base": {}, "half": {"overrides": {"trainer.limit_train_batches": 0.5}}}},  # half the data per epoch
     "variant half: override trainer.limit_train_batches is set by the study"),
    ({"variants": {"base": {}, "longer": {"overrides": {"trainer.min_steps": 30}}}}, "override trainer.min_steps is set by the study"),
    ({"variants": {"base": {}, "bad": {"overrides": {"model.init_args.no_such_arg": 1}}}},
     "variant bad: override model.init_args.no_such_arg is not accepted by recipe vit_digits.yaml"),
    ({"variants": {"base": {}, "bad": {"overrides": {"trainer.no_such_flag": True}}}},
     "variant bad: override trainer.no_such_flag is not accepted"),
    ({"variants": {"base": {}, "bad": {"overrides": {"trainer.gradient_clip_val": "lots"}}}},
     "override trainer.gradient_clip_val is not accepted"),
    ({"variants": {"base": {}, "bad": {"overrides": {"model.init_args.model_kwargs.no_such_kwarg": 2}}}},
     "variant bad: vit_digits does not accept no_such_kwarg; accepted overrides:"),
    ({"variants": {"base": {}, "bad": {"overrides": {"model.init_args.model": "vit_nope"}}}},
     "variant bad: unknown model 'vit_nope'"),
    ({"cost": {"lengths": [4, 8], "batch_size": 2, "rounds": 1}},
     "the `cost` block times sequence-to-sequence models over source and target lengths, but variant base is "
     "vit_digits (image_classifier)"),
    ({"metric": "test/accuracy"},  # a typo would otherwise train every run to the end, then fail
     "variant base: metric test/accuracy is not logged by ImageClassification at test; it logs test/acc"),
])
def test_bad_study_files_name_the_problem(over, message, tmp_path, capsys):
    path = write_study(tmp_path, **over)
    with pytest.raises(StudyError) as e:
        validate_study(load_study(path))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert f"study tiny ({path})" in str(e.value)  # the file to fix, not only the study's name
    code, out, err = zoo_cli(["compare", "--config", str(path)], capsys)  # at the CLI: one line, nothing trained
    assert code == 1 and message in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("zoo")] == [err.splitlines()[0]]
    assert not (tmp_path / "store").exists()


def test_unknown_study_file_names_the_shipped_ones(capsys):
    code, _, err = zoo_cli(["compare", "--config", "configs/compare/nope.yaml"], capsys)
    assert code == 1 and "study file configs/compare/nope.yaml does not exist" in err and "quick_mnist.yaml" in err


@pytest.mark.parametrize("name", ["vit_mnist_ablation", "vit_mnist_ablation_more", "seq2seq_numbers", "quick_mnist"])
def test_shipped_studies_validate_without_training(name):
    study = load_study(ROOT / "configs" / "compare" / f"{name}.yaml")
    models = validate_study(study)  # every override through the recipe's parser, every model config built
    assert len(study.seeds) >= 3 and study.baseline in study.variants
    if name == "vit_mnist_ablation":
        assert len(study.variants) >= 10 and study.budget == {"max_epochs": 40}
        assert models["patch7"] == ("vit_mnist", {"stem": "patch", "patch_size": 7})
    if name == "seq2seq_numbers":
        assert {m for m, _ in models.values()} == {"transformer_numbers", "t5_tiny", "lstm_seq2seq", "gru_seq2seq"}
        assert study.metric == "test/exact_match"


def test_bench_quality_is_an_alias_of_compare(capsys):
    from zoo.bench.cli import bench_main

    assert bench_main(["quality", "--validate"]) == 0
    out = capsys.readouterr().out
    assert "zoo bench quality is an alias of: zoo compare --config configs/compare/quick_mnist.yaml --validate" in out
    assert "study quick_mnist is valid: 12 runs" in out
    with pytest.raises(SystemExit) as e:
        bench_main(["quality", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: zoo bench quality [-h] [--config CONFIG]"), out[:300]
    assert "(default: configs/compare/quick_mnist.yaml)" in out


@pytest.mark.parametrize("flags", [["--report", "--validate"], ["--validate", "--cost"], ["--cost", "--report"]])
def test_compare_refuses_two_of_report_validate_cost(flags, tmp_path, capsys):
    """Each of them does one thing and returns: given together, one was dropped without a word."""
    code, out, err = zoo_cli(["compare", "--config", str(write_study(tmp_path)), *flags], capsys)
    assert code == 2 and f"zoo compare: error: argument {flags[1]}: not allowed with argument {flags[0]}" in err, err
    assert "Traceback" not in err and not out


def test_rows_of_another_recipe_text_are_not_mixed_into_a_study(tmp_path):
    from zoo.compare.runner import recipe_sha256

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(Path(DIGITS).read_text())
    study = load_study(write_study(tmp_path, recipe=str(recipe)))
    row = {"variant": "base", "seed": 0, "overrides": {}, "budget": {"max_steps": 3}, "recipe": "recipe.yaml",
           "metrics": {"test/acc": 0.9}}
    append_row(study.store / ROWS, dict(row, recipe_sha256=recipe_sha256(study)))
    append_row(study.store / ROWS, dict(row, seed=1))  # a store written before rows carried the fingerprint
    todo, done = plan(study)
    assert len(done) == 2 and ("base", 0) not in todo and ("narrow", 0) in todo
    recipe.write_text(recipe.read_text() + "\n# edited\n")
    with pytest.raises(StudyError, match=r"variant base seed 0 trained from another text of the recipe recipe.yaml"):
        plan(study)


def test_report_refuses_a_changed_study_and_names_the_rows_it_leaves_out(tmp_path, capsys):
    path = write_study(tmp_path)
    study = load_study(path)
    narrow = study.variants["narrow"]
    rows = [dict(r, overrides={}, budget=study.budget) for r in _rows("base", [0.90, 0.92, 0.93], seeds=(0, 1, 5))]
    rows += [dict(r, overrides=narrow, budget=study.budget) for r in _rows("narrow", [0.80, 0.82])]
    rows += [dict(r, overrides={}, budget=study.budget) for r in _rows("depth4_dim160", [0.95])]  # no longer listed
    for r in rows:
        append_row(study.store / ROWS, r)
    code, out, err = zoo_cli(["compare", "--config", str(path), "--report"], capsys)
    assert code == 0, err
    md = (study.store / "table.md").read_text()
    assert ("4 finished runs in the store.\n\nThe store also holds 2 run(s) of variants or seeds the study file no longer "
            "lists (base seed 5; depth4_dim160 seed 0); they are left out of this table.") in md
    assert "| base | 2 |" in md and "| narrow | 2 |" in md and "depth4_dim160 |" not in md
    assert not [p.name for p in study.store.iterdir() if p.name.endswith(".tmp")]  # written through atomic_write
    render(study, [r for r in rows if r["variant"] != "depth4_dim160" and r["seed"] != 5])
    assert "no longer lists" not in (study.store / "table.md").read_text()

    before = (study.store / "table.md").read_text()
    write_study(tmp_path, budget={"max_steps": 4})  # the study changed under its store
    code, out, err = zoo_cli(["compare", "--config", str(path), "--report"], capsys)
    assert code == 1 and "Traceback" not in err
    assert ("holds variant base seed 0 with overrides {} and budget {'max_steps': 3}, but the study now says {} and "
            "{'max_steps': 4}; rename the variant or use another store") in err.splitlines()[0]
    assert (study.store / "table.md").read_text() == before  # nothing re-rendered


@pytest.mark.parametrize("flags, name", [
    ("fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile", "Intel(R) Xeon(R) Processor (amx_bf16)"),
    ("fpu sse2 avx avx2 avx512f avx512_bf16 avx512_vnni", "Intel(R) Xeon(R) Processor (avx512_bf16)"),
    ("fpu sse2 avx avx2 avx512f avx512cd", "Intel(R) Xeon(R) Processor (avx512f)"),
    ("fpu sse2 avx avx2 fma", "Intel(R) Xeon(R) Processor (avx2)"),
    ("fpu sse2 avx", "Intel(R) Xeon(R) Processor (avx)"),
    ("fpu sse2 sse4_2", "Intel(R) Xeon(R) Processor"),  # no unit known: the model alone
])
def test_cpu_name_names_the_widest_vector_unit(flags, name):
    from zoo.compare.runner import ISA_FLAGS, describe_cpu

    text = "".join(f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                   f"flags\t\t: {flags}\n\n" for i in range(2))
    assert describe_cpu(text) == name
    assert ISA_FLAGS[0] == "amx_bf16" and ISA_FLAGS.index("avx512_bf16") < ISA_FLAGS.index("avx512f") < ISA_FLAGS.index("avx2")


def test_cpu_name_of_other_cpuinfo_layouts():
    from zoo.compare.runner import cpu_name, describe_cpu

    zen3 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma sha_ni\n"
    zen4 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 avx512f avx512_bf16 avx512_vnni\n"
    assert (describe_cpu(zen3), describe_cpu(zen4)) == ("AMD EPYC (avx2)", "AMD EPYC (avx512_bf16)")  # one name, two machines
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes crc32\nCPU part\t: 0xd0c\n"
    assert describe_cpu(arm, fallback="aarch64") == "aarch64 (asimd)"  # ARM lists no model name
    assert describe_cpu("", fallback="x86_64") == "x86_64"
    assert describe_cpu("model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: avx2 avx512f\n") == \
        "Intel(R) Xeon(R) Processor (avx512f)"
    assert cpu_name()  # this machine, through /proc/cpuinfo where there is one


def test_a_run_folder_in_use_is_not_moved_aside(tmp_path):
    from zoo.compare.runner import move_aside

    run = tmp_path / "seed0"
    (run / "version_0").mkdir(parents=True)
    (run / ".version_0.lock").write_text(f"{os.getpid()} {platform.node()}\n")  # a live zoo fit holds it
    with pytest.raises(StudyError, match="is in use by process"):
        move_aside(run)
    (run / ".version_0.lock").write_text("999999999 " + platform.node())  # left by a killed run
    aside = move_aside(run)
    assert aside.name.startswith("seed0.unfinished-") and (aside / "version_0").is_dir() and not run.exists()


# ---------------------------------------------------------------------------- a tiny study, end to end
@pytest.mark.slow
def test_tiny_study_through_submitit_then_killed_and_resumed(tmp_path, capsys, monkeypatch):
    """3 of the 4 tiny `zoo fit` runs (vit_digits, 3 steps): the first through submitit's local executor (the
    cluster path), then a 'killed' study (a run folder without a row) rerun locally for 2 more runs: the finished
    run is not retrained, the unfinished folder is moved aside, not deleted."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = write_study(tmp_path)
    store = tmp_path / "store"
    code, out, err = zoo_cli(["compare", "--config", str(path), "--executor", "submitit", "--cluster", "local",
                              "--limit", "1"], capsys)
    assert code == 0, out[-2000:] + err[-2000:]
    assert "4 to run, this time at most 1" in out and "submitted base seed 0 as job" in out
    rows = read_rows(store)
    assert [(r["variant"], r["seed"]) for r in rows] == [("base", 0)]
    r = rows[0]
    assert 0 <= r["value"] <= 1 and r["metrics"]["test/acc"] == r["value"] and r["steps"] == 3
    assert r["params"] > 100_000 and r["macs_per_sample"] > 1e6 and r["peak_rss_mb"] > 100
    assert r["train_seconds"] > 0 and r["train_samples_per_s"] > 0 and r["samples"] == 3 * 64
    assert r["versions"]["torch"] and r["versions"]["zoo"] and r["overrides"] == {} and r["budget"] == {"max_steps": 3}
    assert r["cpu"] and len(r["recipe_sha256"]) == 64  # what its time was measured on; which recipe text it trained
    assert (store / "submitit").is_dir() and (store / "table.md").is_file()
    first = store / "runs" / "base" / "seed0"
    cfg = (first / "version_0" / "config.yaml").read_text()
    assert "seed_everything: 0" in cfg and "max_steps: 3" in cfg and "RunRecorder" in cfg
    stamp = (first / "record.json").stat().st_mtime_ns

    killed = store / "runs" / "base" / "seed1"  # a run killed mid-way: its folder, no row
    (killed / "version_0").mkdir(parents=True)
    (killed / "version_0" / "metrics.csv").write_text("epoch\n0\n")
    code, out, err = zoo_cli(["compare", "--config", str(path), "--limit", "2"], capsys)  # seed-major: narrow 0, base 1
    assert code == 0, out[-2000:] + err[-2000:]
    assert "1 finished in" in out and "3 to run, this time at most 2" in out and "moved aside" in out
    rows = read_rows(store)
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("base", 0), ("base", 1), ("narrow", 0)]
    assert (first / "record.json").stat().st_mtime_ns == stamp and not (first / "version_1").exists()
    aside = [p for p in (store / "runs" / "base").iterdir() if p.name.startswith("seed1.unfinished-")]
    assert len(aside) == 1 and (aside[0] / "version_0" / "metrics.csv").read_text() == "epoch\n0\n"
    narrow = [r for r in rows if r["variant"] == "narrow"]
    assert narrow[0]["overrides"] == {"model.init_args.model_kwargs.dim": 32, "model.init_args.model_kwargs.num_heads": 2}
    assert narrow[0]["params"] < rows[0]["params"]
    md = (store / "table.md").read_text()
    assert "| base | 2 |" in md and "| narrow | 1 |" in md and "(n=2)" in md and "(n=1)" in md

    (store / "table.md").unlink()
    code, out, _ = zoo_cli(["compare", "--config", str(path), "--report"], capsys)  # re-rendered, nothing trained
    assert code == 0 and (store / "table.md").is_file() and len(read_rows(store)) == 3
    code, out, _ = zoo_cli(["compare", "--config", str(path), "--limit", "0"], capsys)  # plans, trains nothing
    assert code == 0 and "3 finished in" in out and "1 to run, this time at most 0" in out and len(read_rows(store)) == 3
    assert sorted(os.listdir(store / "runs" / "narrow")) == ["seed0"]


def test_table_names_the_weights_the_runs_tested():
    from zoo.compare.report import tested_text

    assert tested_text([{}, {"tested": "best"}]) == "best checkpoint by validation"  # rows before the field: best
    assert tested_text([{"tested": "last"}] * 3) == "final weights"
    assert "mixed" in tested_text([{"tested": "last"}, {}])


def test_a_changed_metric_reads_each_runs_own_value_of_it(tmp_path, capsys):
    """The study's metric is read from each row's logged test metrics, not the row's `value` (the metric of the
    study when it ran): a study switched from test/acc to test/loss must not show accuracies labelled loss."""
    path = write_study(tmp_path)
    study = load_study(path)
    rows = [dict(r, overrides=study.variants[r["variant"]], budget=study.budget)
            for r in _rows("base", [0.90, 0.92]) + _rows("narrow", [0.80, 0.84])]
    for r in rows:
        append_row(study.store / ROWS, r)
    write_study(tmp_path, metric="test/loss")
    code, out, err = zoo_cli(["compare", "--config", str(path), "--report"], capsys)
    assert code == 0, err
    md = (study.store / "table.md").read_text()
    assert "| base | 2 | 0.0900 ± 0.0141 |" in md and "| narrow | 2 | 0.1800 ± 0.0283 |" in md  # 1 - acc
    assert "+0.0900 [" in md  # the loss difference, paired by seed
    write_study(tmp_path, metric="test/top5")  # a metric the runs never logged: refused, not trained around
    code, out, err = zoo_cli(["compare", "--config", str(path), "--report"], capsys)
    assert code == 1 and "Traceback" not in err
    assert ("holds variant base seed 0 tested without the study's metric test/top5 (it logged test/acc, test/loss); "
            "set metric: to one of those or use another store") in err.splitlines()[0]


def test_a_constant_difference_up_to_float32_rounding_is_no_significant_call():
    """Test accuracies are logged as float32: the same 10-image gain on every seed gives differences that differ
    by ~1e-8, a t-interval ~1e-8 wide; that is no spread over seeds, so no call (as for an exact sd of 0)."""
    import numpy as np

    acc = lambda k: float(np.float32(k / 1000))  # noqa: E731 - what the recorder reads from a float32 tensor
    rows = _rows("base", [acc(968), acc(490), acc(113)]) + _rows("plus10", [acc(978), acc(500), acc(123)])
    d = {s["variant"]: s for s in aggregate(rows, ["base", "plus10"], "base")}["plus10"]["diff"]
    assert 0 < d["sd"] < 1e-7 and d["low"] > 0  # the interval alone would exclude 0
    assert d["significant"] is None
    rows = _rows("base", [0.968, 0.490, 0.113]) + _rows("real", [0.978, 0.5001, 0.1229])  # a spread of 1e-4: a call
    assert aggregate(rows, ["base", "real"], "base")[1]["diff"]["significant"] is True


def test_a_nan_metric_is_reported_not_crashed_on_nor_dropped(tmp_path):
    rows = _rows("base", [0.90, 0.92, 0.94]) + _rows("diverged", [0.95, math.nan, 0.97])
    s = {r["variant"]: r for r in aggregate(rows, ["base", "diverged"], "base")}["diverged"]
    assert s["n"] == 3 and math.isnan(s["mean"]) and math.isnan(s["half"]) and s["diff"]["significant"] is None
    study = load_study(write_study(tmp_path, variants={"base": {}, "diverged": {}}, seeds=[0, 1, 2]))
    render(study, rows)
    md = (study.store / "table.md").read_text()
    assert "| diverged | 3 | – ± – | [–, –] | – [–, –] (n=3) | – (a run's metric is NaN) |" in md
    assert "**test/acc is NaN** in 1 run(s) (diverged seed 1)" in md


def test_two_variants_that_train_the_same_run_are_refused_before_training(tmp_path, capsys):
    """An override that sets the model's registered default (vit_digits has qk_norm false) trains the baseline
    again: with the same seeds the runs are the same, so the study would pay for a copy and show a difference of 0."""
    path = write_study(tmp_path, variants={"base": {}, "qk_off": {"overrides": {"model.init_args.model_kwargs.qk_norm": False}}})
    code, out, err = zoo_cli(["compare", "--config", str(path), "--validate"], capsys)
    assert code == 1 and ("variants base and qk_off train the same run (every override of one is the recipe's or the "
                          "model's default value in the other); drop one or change its overrides") in err.splitlines()[0]
    assert not (tmp_path / "store").exists()
    write_study(tmp_path, variants={"base": {}, "qk_on": {"overrides": {"model.init_args.model_kwargs.qk_norm": True}}})
    code, out, err = zoo_cli(["compare", "--config", str(path), "--validate"], capsys)
    assert code == 0, err


def test_a_second_compare_of_a_store_in_use_is_refused(tmp_path, capsys):
    """Two `zoo compare` of one store at a time: the second moved the first's just-started run folder aside (its
    `zoo fit` had not locked it yet) and trained it again, two rows for one run. It is refused before it plans."""
    import fcntl

    path = write_study(tmp_path)
    study = load_study(path)
    study.store.mkdir(parents=True)
    with open(study.store / ".compare.lock", "w") as fh:  # another zoo compare training into the store (flock
        fcntl.flock(fh, fcntl.LOCK_EX)  # locks of two open files conflict, also within one process)
        fh.write(f"{os.getpid()} {platform.node()}\n")
        fh.flush()
        code, out, err = zoo_cli(["compare", "--config", str(path), "--limit", "0"], capsys)
        assert code == 1 and "Traceback" not in err
        assert (f"the store {study.store} is in use by process {os.getpid()} on {platform.node()} (another zoo compare "
                "of study tiny); wait for it to finish, or use another store (--store)") in err.splitlines()[0]
    code, out, err = zoo_cli(["compare", "--config", str(path), "--limit", "0"], capsys)  # released: it goes on
    assert code == 0, err


def test_a_store_of_another_study_is_neither_reported_over_nor_trained_into(tmp_path, capsys):
    path = write_study(tmp_path)
    study = load_study(path)
    for r in _rows("base", [0.90, 0.92]) + _rows("narrow", [0.80, 0.84]):
        append_row(study.store / ROWS, dict(r, study="tiny", overrides=study.variants[r["variant"]], budget=study.budget))
    code, out, err = zoo_cli(["compare", "--config", str(path), "--report"], capsys)
    assert code == 0, err
    before = (study.store / "table.md").read_text()
    other = write_study(tmp_path, name="other", variants={"base": {}})  # same store (write_study's), another study
    for argv in (["--report"], ["--limit", "0"]):
        code, out, err = zoo_cli(["compare", "--config", str(other), *argv], capsys)
        assert code == 1 and "Traceback" not in err
        assert (f"study other: the store {study.store} holds runs of study tiny (variant base seed 0); give this study "
                "a store of its own (store: results/compare/other, or --store)") in err.splitlines()[0]
    assert (study.store / "table.md").read_text() == before  # study tiny's report is kept


def test_differences_carry_the_paired_t_test_p_value_and_its_holm_adjustment(tmp_path):
    """p: scipy.stats.ttest_rel's; Holm-Bonferroni by hand: sorted p_(1) <= p_(2) <= ..., p_holm(i) =
    max over j <= i of min(1, (m - j + 1) p_(j)). With 3 comparisons a difference at p = 0.02 is no longer held."""
    from scipy import stats

    base, v = [0.90, 0.92, 0.94], {"a": [0.95, 0.96, 0.97], "b": [0.92, 0.91, 0.96], "c": [0.93, 0.94, 0.97]}
    rows = _rows("base", base) + [r for k, x in v.items() for r in _rows(k, x)]
    d = {s["variant"]: s["diff"] for s in aggregate(rows, ["base", *v], "base")[1:]}
    p = {k: float(stats.ttest_rel(x, base).pvalue) for k, x in v.items()}
    assert p["c"] < p["a"] < 0.05 < p["b"]
    for k in v:
        assert d[k]["p"] == pytest.approx(p[k], rel=1e-9) and d[k]["significant"] is (p[k] < 0.05)
    assert d["c"]["p_holm"] == pytest.approx(3 * p["c"]) and d["c"]["p_holm"] == pytest.approx(0.045804, abs=1e-6)
    assert d["a"]["p_holm"] == pytest.approx(3 * p["c"])  # 2 p_a = 0.0404 < 3 p_c: the running maximum
    assert d["b"]["p_holm"] == pytest.approx(p["b"])
    assert d["a"]["significant_holm"] and d["c"]["significant_holm"] and not d["b"]["significant_holm"]
    more = rows + _rows("d", [0.93, 0.93, 0.96])  # a fourth comparison (differences 0.03, 0.01, 0.02)
    d4 = {s["variant"]: s["diff"] for s in aggregate(more, ["base", *v, "d"], "base")[1:]}
    assert d4["a"]["significant"] and not d4["a"]["significant_holm"]  # max(4 p_c, 3 p_a) = 0.061 > 0.05
    study = load_study(write_study(tmp_path, variants={k: {} for k in ("base", *v)}, seeds=[0, 1, 2]))
    render(study, rows)
    md = (study.store / "table.md").read_text()
    assert "| **yes** | 0.0153 (0.0458) |" in md and "| no | 0.423 (0.423) |" in md
    assert "Holm-Bonferroni p-value over the study's 3 comparison(s)" in md
    header = (study.store / "table.csv").read_text().splitlines()[0]
    assert ",significant,p,p_holm,significant_holm," in header


def test_report_of_a_store_without_runs_of_the_studys_variants_writes_nothing(tmp_path, capsys):
    path = write_study(tmp_path)
    study = load_study(path)
    code, out, err = zoo_cli(["compare", "--config", str(path), "--report"], capsys)
    assert code == 1 and f"the store {study.store} holds no finished runs yet; run `zoo compare --config" in err.splitlines()[0]
    for r in _rows("base", [0.90, 0.92]):
        append_row(study.store / ROWS, dict(r, overrides={}, budget=study.budget))
    render(study, read_rows(study.store))
    before = (study.store / "table.md").read_text()
    write_study(tmp_path, variants={"wide": {"overrides": {"model.init_args.model_kwargs.dim": 96}}}, baseline="wide")
    code, out, err = zoo_cli(["compare", "--config", str(path), "--report"], capsys)  # every variant renamed
    assert code == 1 and "Traceback" not in err
    assert f"the store {study.store} holds no finished runs of its variants and seeds (2 of others)" in err.splitlines()[0]
    assert (study.store / "table.md").read_text() == before  # not replaced by an empty table


def test_table_says_what_the_runs_really_trained_under_the_budget(tmp_path):
    """The budget is one number; the rows record the steps, epochs and samples each run trained. A variant at batch
    size 32 under `max_epochs: 3` trained 117 steps and 3,744 samples against the baseline's 57 and 3,648 (seen on
    vit_digits): the table says so instead of only "budget 3 epochs for every run"."""
    from zoo.compare.report import trained_text

    study = load_study(write_study(tmp_path, variants={"base": {}, "bs32": {}}, budget={"max_epochs": 3}))
    amount = {"base": (57, 3, 3648), "bs32": (117, 3, 3744)}
    rows = [dict(r, steps=amount[r["variant"]][0], epochs=3, samples=amount[r["variant"]][2])
            for r in _rows("base", [0.24, 0.25]) + _rows("bs32", [0.24, 0.26])]
    render(study, rows)
    md = (study.store / "table.md").read_text()
    assert ("**The runs trained different amounts under this budget** (e.g. a batch size, gradient accumulation or early "
            "stopping differs; compare with that in mind): base: 57 steps, 3 epochs, 3,648 samples; bs32: 117 steps, "
            "3 epochs, 3,744 samples.") in md
    same = [dict(r, steps=57, epochs=3, samples=3648) for r in rows]
    assert trained_text(same, study) == "Every run trained 57 steps, 3 epochs, 3,648 samples."
    assert trained_text(_rows("base", [0.2]), study) == ""  # rows that recorded no amounts: no claim
    study.budget = {"max_minutes": 1}
    assert trained_text(rows, study).startswith("At a wall-clock budget each run trains what fits in it: base: 57 steps, "
                                                "3,648 samples; bs32: 117 steps, 3,744 samples")  # no epoch count


def test_a_store_holding_one_run_twice_is_refused_naming_both_lines(tmp_path, capsys):
    """Stores written before the store lock can hold a (variant, seed) twice; the table used the last row without a
    word (a rerun until it looks good would go unseen). Training, --report and --cost refuse it, naming both lines."""
    path = write_study(tmp_path)
    study = load_study(path)
    rows = [dict(r, overrides=study.variants[r["variant"]], budget=study.budget, finished=f"2026-12-0{i + 1}T00:00:00Z")
            for i, r in enumerate(_rows("base", [0.90, 0.92]) + _rows("narrow", [0.80, 0.84]))]
    for r in rows + [dict(rows[0], value=0.95, metrics={"test/acc": 0.95}, finished="2026-12-09T00:00:00Z")]:
        append_row(study.store / ROWS, r)
    message = (f"study tiny: the store {study.store} holds variant base seed 0 twice, lines 1 and 5 of runs.jsonl "
               "(test/acc 0.9000 and 0.9500, finished 2026-12-01T00:00:00Z and 2026-12-09T00:00:00Z); delete the line "
               "of the run to drop, keeping one per variant and seed")
    code, out, err = zoo_cli(["compare", "--config", str(path), "--report"], capsys)
    assert code == 1 and "Traceback" not in err and message in err.splitlines()[0]
    assert not (study.store / "table.md").exists()
    with pytest.raises(StudyError) as e:  # the plan of a training run (run_study) and of --cost
        plan(study)
    assert str(e.value) == message


def test_an_interval_of_a_bounded_metric_is_cut_at_its_range_and_says_so(tmp_path):
    """3 seeds of an exact match near 1 gave [0.9939, 1.0015] (seq2seq_numbers): the t-interval passes the metric's
    range. The task declares the range (metric_ranges); the interval is cut at 1 and marked, the t half-width kept."""
    import statistics

    from scipy import stats

    from zoo.compare.study import metric_range

    base, near = [0.990, 0.992, 0.994], [0.996, 0.998, 0.999]
    rows = _rows("base", base) + _rows("near", near)
    study = load_study(write_study(tmp_path, variants={"base": {}, "near": {}}, seeds=[0, 1, 2]))
    assert metric_range(study) == (0.0, 1.0)  # vit_digits' ImageClassification: test/acc is a fraction
    low, high = stats.t.interval(0.95, 2, loc=statistics.fmean(near), scale=stats.sem(near))
    assert high > 1  # the uncut interval
    s = {r["variant"]: r for r in aggregate(rows, ["base", "near"], "base", bounds=(0.0, 1.0))}
    assert s["near"]["low"] == pytest.approx(low) and s["near"]["high"] == 1.0 and s["near"]["cut"] is True
    assert s["near"]["half"] == pytest.approx((high - low) / 2) and s["base"]["cut"] is False
    assert s["near"]["diff"]["cut"] is False and s["near"]["diff"]["significant"] is True  # 0.006, 0.006, 0.005
    assert aggregate(rows, ["near"], "base")[0]["high"] == pytest.approx(high)  # no range given: not cut
    render(study, rows)
    md = (study.store / "table.md").read_text()
    assert f"| near | 3 | 0.9977 ± 0.0015 | [{low:.4f}, 1.0000]* |" in md and "| base | 3 | 0.9920 ± 0.0020 | [0.9870, 0.9970] |" in md
    assert "Intervals marked \\*: the t-interval reaches past the range of `test/acc` (0 to 1, as its task declares) and is cut at it" in md
    assert "ci_cut" in (study.store / "table.csv").read_text().splitlines()[0]
