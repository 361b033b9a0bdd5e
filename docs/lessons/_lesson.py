"""What every lesson shares: where its figure goes and a seed.

Not a lesson itself (the site skips files that start with "_"). A lesson imports it as `import _lesson`
(the lesson's own folder is on sys.path when it runs as a script or as a notebook next to it).
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no window opens

import torch

for _name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):  # quiet lesson output
    os.environ.setdefault(_name, "1")

REPO = Path(__file__).resolve().parents[2]
FIGURES = Path(os.environ.get("ZOO_LESSON_FIGURES") or REPO / "docs" / "figures")


def setup(seed: int = 0) -> None:
    """One thread unless told otherwise (the lessons are small; timings are steadier) and a fixed seed."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    torch.manual_seed(seed)


def save(fig, name: str) -> Path:
    """Write `fig` as FIGURES/name (docs/figures/ unless ZOO_LESSON_FIGURES says otherwise) and say where."""
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path
