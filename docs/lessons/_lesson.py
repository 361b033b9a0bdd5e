"""What every lesson shares: where its figure goes, a seed, and the shipped (or a stand-in) model.

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
STAND_INS: set[str] = set()  # shipped tags this run replaced by random stand-ins (see `pretrained`)
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
    if STAND_INS:  # say so on the figure: its numbers come from random weights, not from the shipped ones
        fig.text(0.5, -0.1, f"stand-in: random weights for {', '.join(sorted(STAND_INS))} (not shipped in this checkout; "
                 "rerun the lesson once zoo.list_pretrained() lists it)", ha="center", va="top", color="red", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path


# -- the shipped weights (zoo.list_pretrained()); a stand-in until a tag ships ------------------

def pretrained(tag: str, **stand_in):
    """The shipped model `tag` in eval mode; while the tag is not shipped, a randomly initialised model
    of the same architecture (with `stand_in` overrides) so that the lesson's computations still run."""
    import zoo

    if tag in zoo.list_pretrained():
        return zoo.create_model(tag, pretrained=True).eval()
    print(f"note: {tag} is not shipped in this checkout; a randomly initialised stand-in is used")
    STAND_INS.add(tag)
    return zoo.create_model(tag.split(".")[0], **stand_in).eval()


def tokenizer(tag: str):
    """The tokenizer shipped beside `tag`; the stand-in: a BPE trained on the recipe's training numbers."""
    import zoo

    if tag in zoo.list_pretrained():
        return zoo.get_tokenizer(tag)
    if tag.startswith("clip"):
        from zoo.data.multimodal import build_tokenizer

        return build_tokenizer()
    from zoo.data.numbers import render, split_numbers
    from zoo.data.tokenizers import train_tokenizer

    train = split_numbers(9999, 1000, 500)["train"]
    return train_tokenizer("bpe", [render(n, lang) for n in train for lang in ("en", "fr")], vocab_size=1000)
