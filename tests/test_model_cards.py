"""MODEL_CARDS.md must match the registry: a card per registered model with its parameter count."""
import importlib.util
import re
from pathlib import Path

import pytest

import zoo

ROOT = Path(__file__).resolve().parents[1]
FIX = "run python scripts/make_model_cards.py and commit MODEL_CARDS.md"


def _script():
    spec = importlib.util.spec_from_file_location("make_model_cards", ROOT / "scripts" / "make_model_cards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cards() -> dict[str, int]:
    path = ROOT / "MODEL_CARDS.md"
    assert path.exists(), f"MODEL_CARDS.md is missing; {FIX}"
    text = path.read_text()
    return {name: int(params.replace(",", ""))
            for name, params in re.findall(r"^### (\S+)\n\n- Family: .*\n- Parameters: ([\d,]+)$", text, flags=re.M)}


def test_every_registered_model_has_a_card_with_its_parameter_count():
    cards = _cards()
    names = zoo.list_models()
    missing = [n for n in names if n not in cards]
    stale = [n for n in cards if n not in names]
    assert not missing, f"MODEL_CARDS.md has no card for {missing}; {FIX}"
    assert not stale, f"MODEL_CARDS.md has cards for unregistered models {stale}; {FIX}"
    wrong = {n: (cards[n], zoo.model_info(n)["params"]) for n in names if cards[n] != zoo.model_info(n)["params"]}
    assert not wrong, f"parameter counts in MODEL_CARDS.md differ from the registry (card, registry): {wrong}; {FIX}"


def test_regeneration_keeps_the_hand_written_section(tmp_path):
    mod = _script()
    out = tmp_path / "cards.md"
    names = ["vit_digits", "vit_mnist"]
    first = mod.render(mod.read_preamble(out), names, {}, ({}, {}))
    assert mod.DEFAULT_PREAMBLE.strip() in first
    out.write_text(first.replace(mod.DEFAULT_PREAMBLE.strip(), "Lead's note: vit_mnist reached 97.1 % test accuracy."))
    second = mod.render(mod.read_preamble(out), names, {}, ({}, {}))
    assert "Lead's note: vit_mnist reached 97.1 % test accuracy." in second
    assert mod.DEFAULT_PREAMBLE.strip() not in second
    assert second.count("### ") == 2


def test_cards_show_results_and_macs_with_their_commands():
    mod = _script()
    speed = {"vit_digits": [{"model": "vit_digits", "side": "zoo", "mode": "forward", "precision": "fp32", "batch": 16,
                             "seq_len": None, "tgt_len": None, "params": 136138, "samples_per_s": 812.5, "tokens_per_s": 13000.0,
                             "vs_peer": 1.07, "peer": "timm.VisionTransformer", "date": "2026-01-01T00:00:00Z",
                             "machine": {"cpu": "TestCPU", "torch_threads": 2, "load_avg_1m": 0.5},
                             "command": "zoo bench speed vit_digits --vs-peers"}]}
    training = {"vit_digits": [{"recipe": "vit_digits", "model": "vit_digits", "metric": "test/acc", "value": 0.97,
                                "train_seconds": 120, "epochs": 30, "command": "zoo fit --config configs/vit_digits.yaml",
                                "machine": "TestCPU", "date": "2026-01-01"}]}
    macs = {"vit_digits": {"macs": 2380928.0, "input": "1x8x8 image"}}
    text = mod.render("", ["vit_digits"], macs, (speed, training))
    assert "812.5 samples/s" in text and "1.07x timm.VisionTransformer" in text and "zoo bench speed vit_digits --vs-peers" in text
    assert "test/acc = 0.97" in text and "zoo fit --config configs/vit_digits.yaml" in text
    assert "2.38 MMACs at 1x8x8 image" in text


@pytest.mark.parametrize("name", ["vit_digits", "lstm_seq2seq"])
def test_macs_match_a_hand_count(name):
    """MACs from the flop counter equal the matmul count written out by hand."""
    got = _script().compute_macs(name)["macs"]
    if name == "vit_digits":  # 16 patches + cls, dim 64, depth 4, mlp 128, patch 2x2x1, 10 classes
        n, d, h = 17, 64, 128
        block = n * (4 * d * d + 2 * d * h) + 2 * n * n * d  # qkv+proj, fc1+fc2, scores+values
        expected = 16 * 4 * d + 4 * block + d * 10
    else:  # bi-LSTM encoder over 128 tokens, 32 decoder steps with additive attention
        e, hid, a, v, s, t = 128, 256, 256, 8000, 128, 32
        encoder = s * 2 * 4 * hid * (e + hid)
        keys = s * 2 * hid * a
        step = 4 * hid * (e + 2 * hid + hid) + hid * a + s * a + s * 2 * hid + (3 * hid + e) * e + e * v
        expected = encoder + keys + t * step + hid * hid  # + the initial-state layer
    assert got == expected


def test_a_recipe_comparison_is_a_table_that_names_the_winner():
    mod = _script()
    result = {"recipe": "gpt_pydoc", "model": "gpt2_tiny", "metric": "test/ppl", "value": 100.0, "epochs": 8,
              "train_seconds": 420, "machine": "TestCPU", "date": "2026-01-01", "command": "zoo fit --config c.yaml",
              "comparison": {"title": "gpt_pydoc: GPT vs LSTM vs unigram", "metric": "test/ppl", "lower_is_better": True,
                             "rows": [{"name": "unigram", "value": 600.0, "command": "python u.py", "training": "counts"},
                                      {"name": "GPT", "model": "gpt2_tiny", "value": 100.0, "params": 4.2e6, "epochs": 8,
                                       "train_seconds": 420, "command": "zoo fit --config c.yaml"},
                                      {"name": "LSTM", "model": "lstm_lm", "value": 150.0, "params": 4.2e6, "epochs": 8,
                                       "train_seconds": 480, "command": "zoo fit --config c.yaml --model.init_args.model lstm_lm"}]}}
    lines = mod.comparison_lines(result)
    table = [line for line in lines if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in table] == ["| GPT", "| LSTM", "| unigram"]  # best first
    assert "Winner: GPT (test/ppl 100.0), below LSTM by 1.50x (150.0), unigram by 6.00x (600.0)." in lines
    text = mod.render("", ["gpt2_tiny", "lstm_lm"], {}, ({}, {"gpt2_tiny": [result]}))
    assert "**gpt_pydoc: GPT vs LSTM vs unigram**" in text
    # a comparison that does not say its direction is refused (it was ranked lower-is-better: accuracy backwards)
    result["comparison"].pop("lower_is_better")
    with pytest.raises(SystemExit, match="gpt_pydoc.json: comparison.lower_is_better must be true or false, got None"):
        mod.comparison_lines(result)
    result["comparison"].update(lower_is_better=False, also_run=[{"name": "old LSTM", "value": 95.0, "note": "former split"}])
    lines = mod.comparison_lines(result)
    assert "Winner: unigram (test/ppl 600.0), above LSTM by 4.00x (150.0), GPT by 6.00x (100.0)." in lines
    assert lines[-1] == "Also run (not ranked above): old LSTM: 95.0 (former split)."


def test_a_study_table_carries_each_differences_p_value_and_its_holm_adjustment(tmp_path):
    from zoo.compare import load_study
    from zoo.compare.report import render

    store = tmp_path / "tiny"
    study = tmp_path / "tiny.yaml"
    study.write_text(f"recipe: configs/vit_digits.yaml\nvariants: {{base: {{}}, a: {{}}, b: {{}}, c: {{}}}}\nseeds: [0, 1, 2]\n"
                     f"budget: {{max_steps: 1}}\nstore: {store}\n")
    rows = [{"variant": v, "seed": s, "value": x, "metrics": {"test/acc": x}, "params": 100}
            for v, xs in {"base": [0.90, 0.92, 0.94], "a": [0.95, 0.96, 0.97], "b": [0.92, 0.91, 0.96],
                          "c": [0.958, 0.978, 0.998]}.items()
            for s, x in enumerate(xs)]
    render(load_study(study), rows)
    mod = _script()
    mod.ROOT = tmp_path  # the store's path is shown relative to the repository
    text = "\n".join(mod.study_lines(tmp_path))
    assert "| significant | p (Holm) | params |" in text
    assert "| a | 3 | 0.9600 | [0.9352, 0.9848] | +0.0400 [0.0152, 0.0648] | **yes** | 0.0202 (0.0404) | 100" in text
    assert "| c | 3 | 0.9780 | [0.9283, 1.0000]* |" in text  # an accuracy's interval cut at 1, marked
    assert "Intervals marked \\*: the t-interval reaches past the range of test/acc and is cut at it" in text
    assert "| b | 3 |" in text and "| no | 0.423 (0.423) |" in text
