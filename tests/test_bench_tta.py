"""zoo bench tta: its file's errors, the summary against a hand computation, and a tiny run end to end."""
import json
import statistics
from pathlib import Path

import pytest

import zoo.trainer_cli  # noqa: F401  (lightning's log handler binds stderr on import)
from zoo.bench.tta import load_tta, markdown, summarise
from zoo.compare import StudyError
from zoo.compare.runner import read_rows

ROOT = Path(__file__).resolve().parents[1]
DIGITS = "configs/vit_digits.yaml"


def write(tmp_path, **over) -> Path:
    spec = {"name": "tiny_tta", "recipe": DIGITS, "metric": "test/acc", "target": 0.5, "reference": "slow",
            "seeds": [0, 1], "store": str(tmp_path / "store"),
            "settings": {"slow": {"budget": {"max_steps": 2}},
                         "fast": {"description": "narrow", "budget": {"max_steps": 2},
                                  "overrides": {"model.init_args.model_kwargs.dim": 32, "model.init_args.model_kwargs.num_heads": 2}}}}
    spec.update(over)
    path = tmp_path / "tta.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_settings_become_one_variant_studies_with_their_own_budget(tmp_path):
    tta = load_tta(write(tmp_path, settings={"recipe": None, "short": {"budget": {"max_epochs": 3}}}, reference="recipe"))
    assert list(tta.studies) == ["recipe", "short"] and tta.target == 0.5
    # no budget: the recipe's own trainer.max_epochs
    import yaml
    recipe_epochs = yaml.safe_load((ROOT / DIGITS).read_text())["trainer"]["max_epochs"]
    assert tta.studies["recipe"].budget == {"max_epochs": recipe_epochs} and tta.studies["short"].budget == {"max_epochs": 3}
    assert tta.studies["short"].store == (tmp_path / "store" / "short").resolve()
    assert not (tmp_path / "store").exists()  # loading writes nothing


@pytest.mark.parametrize("over,message", [
    ({"target": "high"}, "target must be a number"),
    ({"reference": "nope"}, "reference 'nope' is not one of the settings"),
    ({"settings": {}}, "settings must be a non-empty mapping"),
    ({"settings": {"a": {"budget": {"max_hours": 1}}}, "reference": "a"}, "budget must be one of max_epochs"),
    ({"settings": {"a": {"epochs": 3}}, "reference": "a"}, "unknown: ['epochs']"),
    ({"recipe": "configs/nope.yaml"}, "recipe 'configs/nope.yaml' does not exist"),
    ({"colour": 1}, "unknown key(s) colour"),
    ({"mode": "lower"}, "mode must be 'max'"),
    ({"settings": {"a": {"overrides": {"trainer.max_epochs": 3}}}, "reference": "a"}, "set by the study"),
])
def test_bad_files_name_the_problem(over, message, tmp_path):
    with pytest.raises(StudyError, match=None) as e:
        load_tta(write(tmp_path, **over))
    assert message in str(e.value)


def _row(setting, seed, wall, acc, train=None):
    return {"variant": setting, "seed": seed, "wall_seconds": wall, "train_seconds": train or wall - 10,
            "metrics": {"test/acc": acc}, "threads": 2}


def test_summary_matches_a_hand_computation(tmp_path):
    tta = load_tta(write(tmp_path, target=0.97))
    rows = {"slow": [_row("slow", 0, 480, 0.974), _row("slow", 1, 500, 0.971), _row("slow", 2, 470, 0.975)],
            "fast": [_row("fast", 0, 170, 0.972), _row("fast", 1, 160, 0.968), _row("fast", 2, 200, 0.975)]}
    s = {r["setting"]: r for r in summarise(tta, rows)}
    assert s["slow"]["wall_median_s"] == 480 and s["fast"]["wall_median_s"] == 170
    assert s["fast"]["speedup"] == pytest.approx(480 / 170) and s["slow"]["speedup"] == 1.0
    assert s["fast"]["reached"] == 2 and s["slow"]["reached"] == 3  # 0.968 misses 0.97
    assert s["fast"]["mean"] == pytest.approx(statistics.mean([0.972, 0.968, 0.975])) and s["fast"]["worst"] == 0.968
    assert s["fast"]["train_median_s"] == 160 and (s["fast"]["wall_min_s"], s["fast"]["wall_max_s"]) == (160, 200)
    text = markdown(tta, list(s.values()))
    assert "| fast | 2 steps | 3 | 170 (160–200) |" in text and "| 2/3 | 2.82× |" in text and "`fast`: narrow" in text


def test_settings_run_at_different_revisions_are_named(tmp_path):
    """tta_vit_mnist's speed-ups compare a recipe run at a346330 with a float32 one at 81d1838: other code too. The
    table said nothing of it; it names each setting's revision when they differ, and stays quiet when they agree."""
    tta = load_tta(write(tmp_path, target=0.97))
    rows = {"slow": [dict(_row("slow", 0, 480, 0.974), git_rev="81d1838e9926")],
            "fast": [dict(_row("fast", 0, 170, 0.972), git_rev="a3463300675c")]}
    summary = summarise(tta, rows)
    assert "different git revisions" in markdown(tta, summary)
    assert "`slow` at 81d1838e9926; `fast` at a3463300675c" in markdown(tta, summary)
    rows["fast"][0]["git_rev"] = "81d1838e9926"
    assert "git revisions" not in markdown(tta, summarise(tta, rows))


def test_lower_is_better_metrics_reach_their_target_from_above(tmp_path):
    tta = load_tta(write(tmp_path, metric="test/ppl", target=120, mode="min"))
    rows = {"slow": [dict(_row("slow", i, w, 0), metrics={"test/ppl": p}) for i, (w, p) in enumerate([(300, 118.0), (310, 119.5)])],
            "fast": [dict(_row("fast", i, w, 0), metrics={"test/ppl": p}) for i, (w, p) in enumerate([(150, 117.0), (160, 121.0)])]}
    s = {r["setting"]: r for r in summarise(tta, rows)}
    assert s["slow"]["reached"] == 2 and s["fast"]["reached"] == 1  # 121 is above the target
    assert s["fast"]["worst"] == 121.0 and s["slow"]["worst"] == 119.5  # the highest perplexity is the worst seed
    text = markdown(tta, list(s.values()))
    assert "Target: test/ppl ≤ 120." in text and "| seeds ≤ target |" in text and "| 1/2 |" in text
    assert load_tta(write(tmp_path)).mode == "max" and not load_tta(write(tmp_path, target=0.97)).reaches(0.968)


def test_a_report_before_any_run_says_so(tmp_path, capsys):
    from zoo.bench.tta import main

    path = write(tmp_path)
    assert main(["--config", str(path), "--report"]) == 0
    assert "tiny_tta: no finished run in" in capsys.readouterr().out and not (tmp_path / "store" / "table.md").exists()


@pytest.mark.slow
def test_tiny_tta_end_to_end(tmp_path, capsys):
    from zoo.bench.tta import main

    path = write(tmp_path, seeds=[0], reference="fast", settings={"fast": {"budget": {"max_steps": 2}, "overrides": {
        "model.init_args.model_kwargs.dim": 32, "model.init_args.model_kwargs.num_heads": 2}}})
    assert main(["--config", str(path)]) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "store" / "table.md").read_text()
    assert "| fast | 2 steps | 1 |" in table and "| 1.00× |" in table and "tiny_tta" in out
    rows = read_rows(tmp_path / "store" / "fast")
    assert len(rows) == 1 and rows[0]["wall_seconds"] > rows[0]["train_seconds"] > 0
    assert rows[0]["run_dir"].startswith("runs/fast/seed0")  # relative to the store: the store is committed
    assert main(["--config", str(path)]) == 0  # resumed: nothing left to train
    assert "0 to run" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "bench").glob("tta_*.yaml")), ids=lambda p: p.stem)
def test_shipped_tta_files_validate_without_training(path):
    from zoo.compare import validate_study

    tta = load_tta(path)
    assert tta.reference in tta.studies and tta.target > 0 and tta.mode in ("max", "min")
    for study in tta.studies.values():
        validate_study(study)  # every override through the recipe's parser, every model config built on meta
