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


def run_lesson(path: Path, figures: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ZOO_LESSON_FIGURES": str(figures), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(path)], cwd=path.parent, env=env, capture_output=True, text=True, check=False,
                          timeout=TIMEOUT_S)


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


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs(path, tmp_path):
    result = run_lesson(path, tmp_path)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    for name in figures_of(path):
        written = tmp_path / name
        assert written.is_file() and written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} did not write {name}"
