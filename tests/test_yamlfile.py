"""zoo.yamlfile: a key given twice in one mapping is refused (yaml.safe_load keeps the last silently), merge keys
still work, invalid YAML is one line naming the file and line; `zoo fit` and `zoo compare` refuse such files."""
import json
from pathlib import Path

import pytest
import yaml

from zoo.cli import main
from zoo.compare import StudyError, load_study
from zoo.yamlfile import DuplicateKeyError, YAMLFileError, load, loads

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "vit_digits.yaml"


def zoo_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("text, key, line, first", [
    ("lr: 1.0e-3\nbatch: 8\nlr: 2.0e-3\n", "lr", 3, 1),  # top level
    ("model:\n  init_args:\n    depth: 2\n    dim: 8\n    depth: 4\n", "depth", 5, 3),  # nested
    ("runs:\n  - {seed: 0}\n  - seed: 1\n    lr: 1\n    seed: 2\n", "seed", 5, 3),  # a list of mappings
    ("a: {x: 1, y: 2, x: 3}\n", "x", 1, 1),  # a flow mapping
    ("base: &b {x: 1}\nrun:\n  <<: *b\n  y: 1\n  y: 2\n", "y", 5, 4),  # explicit keys next to a merge
])
def test_a_key_given_twice_names_both_lines_and_the_key(text, key, line, first):
    assert isinstance(yaml.safe_load(text), dict)  # what PyYAML alone accepts silently
    with pytest.raises(DuplicateKeyError) as e:
        loads(text, source="configs/x.yaml")
    assert str(e.value) == (f"configs/x.yaml line {line}: key {key!r} is given twice in one mapping "
                            f"(first at line {first}); keep one")
    assert isinstance(e.value, ValueError)


def test_what_is_not_a_duplicate_parses_like_safe_load(tmp_path):
    texts = [
        "a: {lr: 1}\nb: {lr: 2}\nlr: 3\n",  # one key in different mappings
        "- {lr: 1}\n- {lr: 2}\n",
        "base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 5\n",  # a merged key overridden explicitly, as YAML specifies
        "a: &a {x: 1}\nb: &b {x: 2, y: 1}\nrun:\n  <<: [*a, *b]\n  y: 3\n",  # merges from a list of mappings
        # a merge source that merges itself, flattened by a later merge before it is constructed
        "a: &a {x: 1}\ndefs:\n  b: &b\n    <<: *a\n    x: 2\nc:\n  <<: *b\n  z: 0\n",
        "",
    ]
    for text in texts:
        assert loads(text) == yaml.safe_load(text), text
    assert loads(texts[2])["run"] == {"x": 5, "y": 2}
    f = tmp_path / "ok.yaml"
    f.write_text(texts[0])
    assert load(f) == {"a": {"lr": 1}, "b": {"lr": 2}, "lr": 3}


def test_invalid_yaml_is_one_line_naming_the_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(YAMLFileError) as e:
        load(f)
    msg = str(e.value)
    assert msg.startswith(f"{f} line 3: not valid YAML (") and msg.endswith("fix the syntax there") and "\n" not in msg
    assert not isinstance(e.value, DuplicateKeyError)


def test_zoo_fit_refuses_a_config_with_a_key_given_twice(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dup = tmp_path / "dup.yaml"
    dup.write_text(DIGITS.read_text() + "seed_everything: 1\n")  # the recipe sets seed_everything: 0 already
    lines = dup.read_text().splitlines()
    first, n = lines.index("seed_everything: 0") + 1, len(lines)
    for argv in (["fit", "--config", str(dup)], ["fit", f"--config={dup}"], ["fit", "-c", str(dup)]):
        code, out, err = zoo_cli(argv, capsys)
        assert code == 1 and "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("zoo")]
        assert lines == [f"zoo fit: error: {dup} line {n}: key 'seed_everything' is given twice in one mapping "
                         f"(first at line {first}); keep one"]
    assert not list(tmp_path.glob("runs*")) and not (tmp_path / "lightning_logs").exists()  # nothing was trained


def test_zoo_compare_refuses_a_study_or_recipe_with_a_key_given_twice(tmp_path, capsys):
    study = {"name": "dup", "recipe": str(DIGITS), "variants": {"base": {}}, "seeds": [0, 1],
             "budget": {"max_steps": 3}, "store": str(tmp_path / "store")}
    path = tmp_path / "dup.yaml"
    path.write_text(json.dumps(study)[:-1] + ', "seeds": [0, 1, 2]}')  # JSON is YAML; seeds given twice
    code, out, err = zoo_cli(["compare", "--config", str(path), "--validate"], capsys)
    assert code == 1 and "Traceback" not in err and "is valid" not in out
    assert err.splitlines()[0] == (f"zoo compare: error: study file {path} line 1: key 'seeds' is given twice in one "
                                   "mapping (first at line 1); keep one")

    recipe = tmp_path / "recipe.yaml"  # the recipe is checked when the study is loaded, before any run
    recipe.write_text(DIGITS.read_text() + "seed_everything: 1\n")
    path.write_text(json.dumps({**study, "recipe": str(recipe)}))
    with pytest.raises(StudyError, match=rf"^study dup \({path}\): recipe {recipe} line \d+: key 'seed_everything' is "
                                         r"given twice in one mapping \(first at line \d+\); keep one$"):
        load_study(path)
    assert not (tmp_path / "store").exists()


def test_time_to_accuracy_recipe_with_a_key_given_twice_is_refused(tmp_path):
    from zoo.bench.tta import load_tta

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(DIGITS.read_text() + "trainer:\n  max_epochs: 3\n")  # `trainer` given twice: the budget read
    path = tmp_path / "tta.yaml"
    path.write_text(json.dumps({"name": "t", "recipe": str(recipe), "target": 0.5, "settings": {"as_is": {}}}))
    with pytest.raises(StudyError, match=rf"^{path}: recipe {recipe} line \d+: key 'trainer' is given twice"):
        load_tta(path, tmp_path / "store")
