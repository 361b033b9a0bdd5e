"""MkDocs hook: the lessons (docs/lessons/NN_*.py, Jupytext percent format) and MODEL_CARDS.md become pages.

A lesson's Markdown cells are copied as they are and its code cells become Python code blocks, so the page
shows the text, the formulas, the code and the figures the lesson wrote into docs/figures/ (committed;
executing the lessons at build time would be too slow for CI: tests/test_lessons.py runs them instead).
"""
from __future__ import annotations

from pathlib import Path

import jupytext
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def lesson_markdown(path: Path) -> str:
    """The page of one lesson: Markdown cells verbatim, code cells fenced, and how to run it."""
    notebook = jupytext.read(path, fmt="py:percent")
    parts = []
    for cell in notebook.cells:
        source = cell.source.strip("\n")
        if not source:
            continue
        parts.append(source if cell.cell_type == "markdown" else f"```python\n{source}\n```")
    run = (f"!!! tip \"Run this lesson\"\n    `.venv/bin/python docs/lessons/{path.name}` (it writes its figures into "
           f"`docs/figures/`), or open it as a notebook: `.venv/bin/jupytext --to notebook docs/lessons/{path.name}`. "
           f"Source: [{path.name}]({path.name}).")
    title, _, body = "\n\n".join(parts).partition("\n")
    return f"{title}\n\n{run}\n{body}\n"


def lesson_files() -> list[Path]:
    return sorted(p for p in (ROOT / "docs" / "lessons").glob("[0-9][0-9]_*.py"))


def on_files(files, config):
    for path in lesson_files():
        files.append(File.generated(config, f"lessons/{path.stem}.md", content=lesson_markdown(path)))
    cards = (ROOT / "MODEL_CARDS.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "model_cards.md", content=cards))
    return files
