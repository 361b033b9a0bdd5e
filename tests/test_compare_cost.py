"""zoo compare --cost: time and activation memory vs sequence length on a tiny study, and bad cost blocks."""
import csv
import json
import math
from pathlib import Path

import pytest

from zoo.compare import StudyError, load_study
from zoo.compare.cost import COLUMNS, growth_exponent, markdown, read_csv, run_cost
from zoo.compare.report import render
from zoo.compare.runner import plan

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "transformer_numbers.yaml")
KW = "model.init_args.model_kwargs"


def write_study(tmp_path, cost) -> Path:
    study = {"name": "tiny_cost", "recipe": RECIPE, "baseline": "small",
             "variants": {
                 # max_len 8 < the longest cost length: the cost run must raise it (and say so)
                 "small": {"overrides": {KW: {"d_model": 16, "num_heads": 2, "dim_feedforward": 32,
                                              "num_encoder_layers": 1, "num_decoder_layers": 1, "max_len": 8,
                                              "pos_embed": "rope"}}},
                 "gru": {"overrides": {"model.init_args.model": "gru_seq2seq",
                                       KW: {"embed_dim": 16, "hidden_size": 16, "attn_dim": 16}}}},
             "seeds": [0], "budget": {"max_steps": 1}, "metric": "test/exact_match", "store": str(tmp_path / "store"),
             "cost": cost}
    path = tmp_path / "tiny_cost.yaml"
    path.write_text(json.dumps(study))
    return path


def test_cost_run_writes_csv_png_and_report_section(tmp_path):
    study = load_study(write_study(tmp_path, {"lengths": [8, 16], "batch_size": 2, "rounds": 1, "warmup": 0}))
    lines = []
    csv_path, png_path = run_cost(study, log=lines.append)
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
    rows = read_csv(csv_path)
    assert [(r["variant"], r["length"]) for r in rows] == [("small", 8), ("small", 16), ("gru", 8), ("gru", 16)]
    assert all(r["forward_ms"] > 0 and r["train_step_ms"] > 0 and r["activation_mb"] > 0 for r in rows)
    assert all(r["threads"] == 1 and r["batch_size"] == 2 and r["rounds"] == 1 for r in rows)
    small = [r for r in rows if r["variant"] == "small"]
    assert all(r["max_len"] == "16" for r in small) and any("max_len 8 < 16" in line for line in lines)
    assert all(r["max_len"] == "" for r in rows if r["variant"] == "gru")  # recurrent models have no length limit
    # twice the length saves more for backward
    assert small[1]["activation_mb"] > small[0]["activation_mb"]
    assert png_path.stat().st_size > 1000
    md = markdown(rows)
    assert "## Cost versus sequence length" in md and "| small |" in md and "| gru |" in md
    # the store stays a valid store for the training runs: nothing finished, every run still to do
    assert plan(study) == ([("small", 0), ("gru", 0)], [])
    # and the report of the training runs gains the cost section
    fake = [{"variant": v, "seed": 0, "value": 0.5, "metrics": {"test/exact_match": 0.5}} for v in ("small", "gru")]
    render(study, fake)
    assert "## Cost versus sequence length" in (study.store / "table.md").read_text()


def test_growth_exponent_recovers_a_power_law():
    lengths = [16, 32, 64, 128, 256, 512]
    assert growth_exponent(lengths, [3.0 * n ** 2 for n in lengths]) == pytest.approx(2.0)
    # only the longer half counts: a constant overhead at short lengths does not lower the slope much
    assert growth_exponent(lengths, [1000 + n ** 2 for n in lengths]) > 1.8
    assert math.isnan(growth_exponent([16], [1.0]))


@pytest.mark.parametrize("cost, message", [
    ({"lengths": [16, 8]}, "cost.lengths must be a non-empty list of strictly increasing positive integers"),
    ({"lengths": [0, 8]}, "cost.lengths must be"),
    ({"lengths": [8, 8.5]}, "cost.lengths must be"),
    ({"lengths": []}, "cost.lengths must be"),
    ({"lengths": [8], "batch_size": 0}, "cost.batch_size must be a positive integer"),
    ({"lengths": [8], "rounds": True}, "cost.rounds must be a positive integer"),
    ({"lengths": [8], "warmup": -1}, "cost.warmup must be an integer >= 0"),
    ({"lengths": [8], "variants": ["nope"]}, "cost.variants must be a non-empty list of the study's variants"),
    ({"lengths": [8], "lenghts": [8]}, "cost: unknown key"),
    ([8, 16], "cost must be a mapping"),
])
def test_bad_cost_block_names_the_field(cost, message, tmp_path):
    with pytest.raises(StudyError, match=message):
        load_study(write_study(tmp_path, cost))


def test_no_cost_block_is_an_error_for_cost_runs(tmp_path):
    path = write_study(tmp_path, None)
    study = load_study(path)
    assert study.cost is None
    with pytest.raises(StudyError, match="has no `cost` block"):
        run_cost(study)
