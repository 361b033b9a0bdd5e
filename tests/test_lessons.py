"""The lessons of docs/lessons/ run as scripts; a lesson whose from-scratch computation disagrees with zoo
(an assert) fails the suite. Each lesson writes its figures into ZOO_LESSON_FIGURES (a temporary folder here,
so the committed figures in docs/figures/ are left alone)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "docs" / "lessons").glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 300  # one lesson; each takes well under a minute on 2 quiet cores


def run_lesson(path: Path, figures: Path, broken: str = "") -> subprocess.CompletedProcess:
    """Run a lesson as a script; `broken`: Python run first in the same process (a zoo broken on purpose)."""
    env = {**os.environ, "ZOO_LESSON_FIGURES": str(figures), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(path)]
    if broken:  # the lesson's folder stays first on sys.path (the working directory, for -c), as for the script
        command = [sys.executable, "-c", f"{broken}\nimport runpy\nrunpy.run_path({str(path)!r}, run_name='__main__')"]
    return subprocess.run(command, cwd=path.parent, env=env, capture_output=True, text=True, check=False, timeout=TIMEOUT_S)


def figures_of(path: Path) -> list[str]:
    """The figure files a lesson's Markdown shows (and therefore must write)."""
    return re.findall(r"\]\(\.\./figures/(lesson_\d\d_[\w-]+\.png)\)", path.read_text(encoding="utf-8"))


def test_about_ten_lessons_follow_the_road():
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers == list(range(1, len(LESSONS) + 1)) and len(LESSONS) >= 10, [p.name for p in LESSONS]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_shape(path):
    """Jupytext percent format; a formula, a check against zoo, a committed figure, what to try next."""
    text = path.read_text(encoding="utf-8")
    assert "format_name: percent" in text and text.count("# %% [markdown]") >= 3
    assert "$$" in text, "the idea's formula"
    assert re.search(r"^\s*(assert |torch\.testing\.assert_close\()", text, re.MULTILINE), "a from-scratch computation checked against zoo"
    assert "from zoo" in text or "import zoo" in text
    figures = figures_of(path)
    assert figures and all(f.startswith(f"lesson_{path.name[:2]}_") for f in figures), figures
    for name in figures:
        assert (ROOT / "docs" / "figures" / name).stat().st_size > 10_000, f"docs/figures/{name} is not committed"
        assert f'"{name}"' in text, f"{path.name} shows {name} but does not write it"
    assert "## What to try next" in text


def test_a_failing_lesson_fails(tmp_path):
    """The runner reports a lesson whose check fails (a non-zero exit with the assertion in stderr)."""
    bad = tmp_path / "99_bad.py"
    bad.write_text("# %%\nimport torch\ntorch.testing.assert_close(torch.ones(2), torch.zeros(2))\n")
    result = run_lesson(bad, tmp_path)
    assert result.returncode != 0 and "AssertionError" in result.stderr


TIMED = ("lesson_01_rnn_vs_attention.png",)  # plots wall times, which differ from run to run


def changed_pixels(a: Path, b: Path) -> float:
    """The fraction of pixels that differ between two PNG files (1.0 when their sizes differ)."""
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (a, b))
    return 1.0 if x.shape != y.shape else float((x != y).any(-1).mean())


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs(path, tmp_path):
    """The lesson runs, and the figures committed in docs/figures/ are the ones it draws now (within 1% of their
    pixels: a timing printed on a figure may differ; new weights, data or code redraw far more)."""
    result = run_lesson(path, tmp_path)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    for name in figures_of(path):
        written = tmp_path / name
        assert written.is_file() and written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} did not write {name}"
        if name not in TIMED:
            changed = changed_pixels(written, ROOT / "docs" / "figures" / name)
            assert changed < 0.01, (f"docs/figures/{name} is stale: {changed:.1%} of its pixels differ from what {path.name} "
                                    f"draws now; run the lesson and commit the figure")


# A zoo broken on purpose, and the lesson check that must catch it (a line of the failing statement, as the traceback
# shows it): a check that still passes compares nothing of the piece it names.
BROKEN = {
    "06-generate-stops-early": ("06_transformer_from_scratch", """
import zoo.generation as g
_search = g.greedy_search
g.greedy_search = lambda model, setup, max_new_tokens, *a, **k: _search(model, setup, min(max_new_tokens, 2), *a, **k)
""", "assert torch.equal(ours, theirs)"),
    "10-t5-bias-reversed": ("10_variants", """
import zoo.core.position as position
_bias = position.RelativePositionBias.forward
position.RelativePositionBias.forward = lambda self, q_len, k_len, offset=0: _bias(self, q_len, k_len, offset).mT
""", "torch.testing.assert_close(t5_weights,"),
    "10-swin-mlp-ratio": ("10_variants", """
import dataclasses
import zoo.registry as registry
registry._ensure_loaded()
entry = registry._REGISTRY["swin_tiny_patch4_window7_224"]
registry._REGISTRY[entry.name] = dataclasses.replace(entry, config=dataclasses.replace(entry.config, mlp_ratio=3.0))
""", 'assert info["params"] == timm_params'),
    "08-digits-std": ("08_end_to_end", """
import zoo.data.images as images
images.Digits.std = 0.4
""", "assert theirs <= ours"),
    "08-saved-without-preprocessing": ("08_end_to_end", """
import zoo.hub as hub
_save = hub.save_pretrained
hub.save_pretrained = lambda source, directory, tokenizer=None, meta=None, **kw: _save(source, directory, tokenizer, **kw)
""", 'assert (data_config["mean"], data_config["std"]) == ((mean,), (std,))'),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_lesson_check_catches_a_broken_zoo(case, tmp_path):
    lesson, broken, check = BROKEN[case]
    result = run_lesson(ROOT / "docs" / "lessons" / f"{lesson}.py", tmp_path, broken=broken)
    assert result.returncode != 0 and "AssertionError" in result.stderr, f"{lesson} passed with {case}"
    assert check in result.stderr, f"{lesson} with {case} failed elsewhere than at `{check}`:\n{result.stderr[-3000:]}"

