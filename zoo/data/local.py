"""The user's own data from local files; nothing is ever downloaded.

Text (csv / tsv, json / jsonl, parquet, arrow, or a folder written by `Dataset.save_to_disk`; read with Hugging Face
`datasets`: Arrow-cached, memory-mapped, tokenized with `Dataset.map`):
    LocalTextClassification(train_file="train.csv", text_column="sentence", label_column="label")
    LocalTextClassification(..., text_pair_column="hypothesis")     # sentence pairs
    LocalSeq2Seq(train_file="pairs.jsonl", source_column="en", target_column="fr")
  Without val_file / test_file, `val_fraction` / `test_fraction` of the training rows are held out (seed 0).
  String labels are mapped to ids in sorted order (`label_names`).

Images (torchvision readers over files already on disk):
    TorchvisionImages(dataset="cifar10", root="data/")       # root/cifar-10-batches-py, as torchvision extracts it
    TorchvisionImages(dataset="mnist", root="data/")         # root/MNIST/raw/*-ubyte(.gz)
    TorchvisionImages(dataset="imagefolder", root="data/pets")  # root/train/<class>/*.jpg, optional root/val, root/test
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .base import SplitDataModule
from .images import random_affine, stratified_split
from .textdata import Example, TextDataModule, collate_classification

# extension -> datasets builder and its options
_BUILDERS = {".csv": ("csv", {"sep": ","}), ".tsv": ("csv", {"sep": "\t"}), ".json": ("json", {}), ".jsonl": ("json", {}),
             ".parquet": ("parquet", {}), ".arrow": ("arrow", {})}


class DataFileError(ValueError):
    """A data file that zoo cannot use as it is: the message names the file, the rows or bytes, and the fix."""


class MissingColumnError(DataFileError, KeyError):
    """A column the data module needs is not in the file (also a KeyError)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


def _decode_error(path: str, encoding: str) -> str:
    """Where the file stops being valid `encoding` (byte offset and line), and what it may be instead."""
    import codecs

    with open(path, "rb") as fh:
        data = fh.read()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return ("it starts with a UTF-16 byte-order mark: save it as UTF-8 (e.g. in a text editor), or pass "
                "encoding='utf-16'")
    try:
        codecs.decode(data, encoding)
        return "it could not be decoded"  # pragma: no cover - the reader failed on something we can not reproduce
    except UnicodeDecodeError as e:
        offset, bad = e.start, data[e.start:e.end]
    line = data.count(b"\n", 0, offset) + 1
    guess = ""
    for other, label in (("cp1252", "Windows-1252 / Western European"), ("latin-1", "Latin-1 / ISO-8859-1")):
        try:
            data.decode(other)
            guess = (f"; it decodes as {other} ({label}): pass encoding={other!r} to the data module "
                     f"(--data.encoding {other}), or convert it with `iconv -f {other} -t utf-8`")
            break
        except UnicodeDecodeError:
            continue
    return (f"byte 0x{bad[:1].hex()} at offset {offset} (line {line}) is not valid {encoding}; save the file as "
            f"UTF-8{guess}")


def _row_places(index: list[int], ext: str) -> str:
    """Where rows are in the file: line numbers for csv/tsv (header = line 1) and jsonl, else record numbers."""
    shown = index[:10]
    more = f" ... ({len(index)} rows)" if len(index) > 10 else ""
    if ext in (".csv", ".tsv"):
        return f"lines {', '.join(str(i + 2) for i in shown)}{more} (the header is line 1)"
    if ext == ".jsonl" or ext == ".json":
        return f"rows {', '.join(str(i + 1) for i in shown)}{more} (counting records from 1)"
    return f"rows {', '.join(str(i + 1) for i in shown)}{more} (counting from 1)"


def _saved_dataset(path: str) -> bool:
    """A folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return any(os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_info.json", "dataset_dict.json"))


def _load_saved(path: str):
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        raise DataFileError(f"{path!r} holds a DatasetDict with the splits {list(ds)}; pass one split's folder "
                            f"(e.g. {os.path.join(path, next(iter(ds)))!r}) as train_file, val_file and test_file")
    return ds


def _load_file(path: str, ext: str, encoding: str, cache_dir: str | None, wanted: str):
    """`datasets.load_dataset` of one local file (Arrow-cached, memory-mapped), its errors named."""
    import datasets

    if ext != ".parquet" and ext != ".arrow":  # name the byte and line where the text stops being `encoding`
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            raise DataFileError(f"data file {path!r} is not valid {encoding} text: {_decode_error(path, encoding)}") from None
        if not text.strip():
            raise DataFileError(f"data file {path!r} holds no data (blank lines only); it needs {wanted}")
    builder, kw = _BUILDERS[ext]
    if builder == "csv":
        # only empty cells are missing: a label or text "NA" / "None" / "null" stays a string
        kw = {**kw, "keep_default_na": False, "na_values": [""], "encoding": encoding}
    elif builder == "json":
        kw = {**kw, "encoding": encoding}
    try:
        return datasets.load_dataset(builder, data_files=path, split="train", cache_dir=cache_dir, **kw)
    except ImportError as e:
        raise ImportError(f"reading {path!r} needs an extra package ({e})") from e
    except Exception as e:  # noqa: BLE001 - datasets wraps the parser's error; name the file and the fix
        cause = e.__cause__ or e.__context__ or e
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if "corresponds to no data" in str(e):  # a header and nothing else
            raise DataFileError(f"data file {path!r} has its columns but no rows; it needs {wanted}") from None
        if builder == "json":
            raise DataFileError(f"data file {path!r} is not valid {ext[1:]} ({text}); write one JSON object per line "
                                "(.jsonl) or a JSON array of objects (.json)") from None
        if builder == "csv":
            raise DataFileError(f"data file {path!r} is not well-formed {ext[1:]}: {text}; quote fields that "
                                "contain the separator or a newline") from None
        raise DataFileError(f"cannot read data file {path!r} as {ext[1:]}: {text}") from None


def read_table(path: str, columns: list[str], encoding: str = "utf-8", cache_dir: str | None = None):
    """A local csv / tsv / json / jsonl / parquet / arrow file, or a folder written by `Dataset.save_to_disk`,
    as a `datasets.Dataset` holding `columns` (read with `datasets.load_dataset` / `load_from_disk`:
    Arrow-cached and memory-mapped).

    Refused with a `DataFileError` naming the file and the fix: an empty file, a file that is not
    valid `encoding` (the byte offset and line), a missing column (the columns present), and
    blank values in `columns` (the rows)."""
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        if not _saved_dataset(path):
            raise DataFileError(f"data file {path!r} is a directory but not one written by datasets' save_to_disk "
                                f"(no state.json); pass a {', '.join(sorted(_BUILDERS))} file or a saved dataset folder")
        ds, ext = _load_saved(path), ".arrow"
        wanted = f"the column(s) {columns}"
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file {path!r} does not exist; pass a local csv, json, jsonl, parquet or arrow "
                                    "file, or a folder written by Dataset.save_to_disk")
        if ext not in _BUILDERS:
            raise ValueError(f"cannot read {path!r}: supported extensions are {', '.join(sorted(_BUILDERS))} "
                             "(or a folder written by Dataset.save_to_disk)")
        wanted = f"a header row with the column(s) {columns} and one row per example" if ext in (".csv", ".tsv") else \
            f"one record per example with the field(s) {columns}"
        if os.path.getsize(path) == 0:
            raise DataFileError(f"data file {path!r} is empty (0 bytes); it needs {wanted}")
        ds = _load_file(path, ext, encoding, cache_dir, wanted)
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise MissingColumnError(f"{path!r} has no column(s) {missing}; its columns are {ds.column_names}. "
                                 "Set the column mapping, e.g. --data.text_column <name>")
    if len(ds) == 0:
        raise DataFileError(f"data file {path!r} has its columns but no rows; it needs {wanted}")
    for col in columns:
        rows = [i for i, v in enumerate(ds[col]) if v is None or (isinstance(v, float) and v != v)
                or (isinstance(v, str) and not v.strip())]
        if rows:
            raise DataFileError(
                f"data file {path!r} has blank values in column {col!r} at {_row_places(rows, ext)}; drop those rows or "
                f"fill them in (datasets: ds.filter(lambda r: r[{col!r}] is not None)); blank "
                + ("labels would otherwise become a class named 'nan'" if "label" in col.lower() else "cells would otherwise become the text 'nan'"))
    return ds


class _LocalText(TextDataModule):
    """Rows come from `read_table` (datasets); each split is tokenized once with `Dataset.map` (batched, cached
    in the datasets cache under a fingerprint of the data, the tokenizer and the settings)."""

    def __init__(self, train_file: str, val_file: str | None = None, test_file: str | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0, encoding: str = "utf-8",
                 cache_dir: str | None = None, **kwargs):
        """train_file / val_file / test_file: csv, tsv, json, jsonl, parquet or arrow files, or folders written by
        `Dataset.save_to_disk`. cache_dir: the datasets cache (default: HF_DATASETS_CACHE)."""
        super().__init__(**kwargs)
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.encoding, self.cache_dir = encoding, cache_dir
        self._tables = None

    columns: list[str] = []

    def rows(self, table) -> list[Example]:
        """Examples from a table (a Dataset or a batch dict: both give `table[column]` as a list)."""
        raise NotImplementedError

    def check_table(self, table, path: str, split: str) -> None:
        """Refuse a file that reads but cannot train the task (subclasses)."""

    def _read(self, split: str, path: str):
        table = read_table(path, self.columns, self.encoding, self.cache_dir)
        self.check_table(table, path, split)
        return table

    @property
    def tables(self) -> dict:
        """The splits as datasets.Dataset objects (held-out splits are `select`ions of the training file)."""
        if self._tables is None:
            out = {split: self._read(split, path) for split, path in self.files.items() if path}
            train = out["train"]
            held = [s for s, f in (("test", self.test_fraction), ("val", self.val_fraction)) if s not in out]
            if held:
                order = np.random.default_rng(self.split_seed).permutation(len(train)).tolist()
                start = 0
                for split in held:
                    n = max(1, int(round(len(train) * (self.test_fraction if split == "test" else self.val_fraction))))
                    out[split] = train.select(order[start:start + n])
                    start += n
                out["train"] = train.select(order[start:])
            if not len(out["train"]):
                raise ValueError(f"{self.files['train']!r} leaves no training rows after holding out val/test; lower the fractions")
            self._tables = out
        return self._tables

    def make_examples(self):
        return {split: self.rows(table) for split, table in self.tables.items()}

    def _encode_batch(self, batch: dict) -> dict:
        encoded = self.encode(self.rows(batch))
        return {key: [row[key] for row in encoded] for key in encoded[0]} if encoded else {}

    def setup(self, stage: str | None = None):
        if stage != "predict" and not self.splits.get("train"):
            import hashlib

            from .tokenizers import backend_json

            settings = json.dumps([hashlib.sha256(backend_json(self.tokenizer).encode()).hexdigest(), self.max_length,
                                   type(self).__qualname__, self.columns, getattr(self, "text_pair_column", None)])
            for split, table in self.tables.items():
                fingerprint = hashlib.sha256(f"{table._fingerprint}|{settings}".encode()).hexdigest()[:32]
                self.splits[split] = table.map(self._encode_batch, batched=True, remove_columns=table.column_names,
                                               new_fingerprint=fingerprint, desc=f"tokenizing {split}")
        super().setup(stage)


class LocalTextClassification(_LocalText):
    """Text (or text-pair) classification from local files; WordPiece tokenizer trained on the training texts."""

    tokenizer_kind = "wordpiece"

    def __init__(self, train_file: str, text_column: str = "text", label_column: str = "label",
                 text_pair_column: str | None = None, vocab_size: int = 8000, **kwargs):
        self.text_column, self.label_column, self.text_pair_column = text_column, label_column, text_pair_column
        super().__init__(train_file, vocab_size=vocab_size, **kwargs)
        self.columns = [c for c in (text_column, label_column, text_pair_column) if c]
        self._labels: list | None = None

    def check_table(self, table, path: str, split: str) -> None:
        classes = list(dict.fromkeys(table[self.label_column]))
        if split == "train" and len(classes) < 2:
            raise DataFileError(
                f"the label column {self.label_column!r} of {path!r} holds a single class ({classes[0]!r} in all "
                f"{len(table)} rows); a classifier needs at least two: check label_column, and that the file is complete "
                "(not the first rows of a sorted file)")

    def rows(self, table):
        texts = [str(t) for t in table[self.text_column]]
        pair = [str(p) for p in table[self.text_pair_column]] if self.text_pair_column else [None] * len(texts)
        return [{"text": t, "text_pair": p, "label": y} for t, p, y in zip(texts, pair, table[self.label_column])]

    @property
    def label_names(self) -> list:
        if self._labels is None:
            self._labels = sorted({ex["label"] for ex in self.examples["train"]}, key=str)
        return self._labels

    def tokenizer_texts(self, train):
        return [ex["text"] for ex in train] + [ex["text_pair"] for ex in train if ex["text_pair"]]

    @property
    def model_overrides(self):
        return {**super().model_overrides, "num_classes": len(self.label_names)}

    def encode(self, examples):
        ids = {y: i for i, y in enumerate(self.label_names)}
        unknown = {ex["label"] for ex in examples if ex["label"] is not None and ex["label"] not in ids}
        if unknown:
            raise ValueError(f"labels {sorted(unknown, key=str)[:5]} do not occur in the training file; "
                             f"known labels: {self.label_names[:20]}")
        pairs = [ex["text_pair"] for ex in examples] if self.text_pair_column else None
        enc = self.tokenizer([ex["text"] for ex in examples], pairs, truncation=True, max_length=self.max_length,
                             return_token_type_ids=True)
        return [{"input_ids": i, "token_type_ids": t, "label": ids.get(ex["label"], -100)}
                for i, t, ex in zip(enc["input_ids"], enc["token_type_ids"], examples)]

    def collate(self, rows):
        return collate_classification(rows, self.tokenizer.pad_token_id)

    def predict_examples(self, texts):
        return [{"text": t, "text_pair": None, "label": None} for t in texts]


class LocalSeq2Seq(_LocalText):
    """Source -> target pairs from local files (optional task column for per-task scores); BPE tokenizer by default."""

    def __init__(self, train_file: str, source_column: str = "source", target_column: str = "target",
                 task_column: str | None = None, tokenizer_kind: str = "bpe", vocab_size: int = 8000, **kwargs):
        self.source_column, self.target_column, self.task_column = source_column, target_column, task_column
        super().__init__(train_file, vocab_size=vocab_size, **kwargs)
        self.columns = [c for c in (source_column, target_column, task_column) if c]
        self.tokenizer_kind = tokenizer_kind

    def rows(self, table):
        sources, targets = [str(v) for v in table[self.source_column]], [str(v) for v in table[self.target_column]]
        tasks = [str(v) for v in table[self.task_column]] if self.task_column else [""] * len(sources)
        return [{"source": s, "target": t, "task": k} for s, t, k in zip(sources, targets, tasks)]

    # the same encoding as the number translation data
    from .numbers import NumberTranslation as _NT

    tokenizer_texts = _NT.tokenizer_texts
    model_overrides = _NT.model_overrides
    encode = _NT.encode
    collate = _NT.collate
    predict_examples = _NT.predict_examples
    del _NT


# -------------------------------------------------------------------------------------------------
class _FolderImages(Dataset):
    def __init__(self, folder, transform):
        self.folder, self.transform = folder, transform

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        image, label = self.folder[i]
        return self.transform(image), label


class TorchvisionImages(SplitDataModule):
    """CIFAR-10 / MNIST / an ImageFolder tree that is already on disk (download is never attempted).

    CIFAR-10 and MNIST use their official test split; `val_fraction` of the training images
    (stratified, seed 0) are held out for validation. Training batches get a random flip (CIFAR/folders)
    and a small random shift/rotation/zoom on the device, as zoo.data.images does.
    """

    _STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), "mnist": ((0.1307,), (0.3081,))}

    def __init__(self, dataset: str = "cifar10", root: str = "data", batch_size: int = 128, val_fraction: float = 0.1,
                 img_size: int | None = None, augment: bool = True, flip: bool | None = None, max_shift: float = 0.1,
                 max_rotate: float = 10.0, scale: tuple[float, float] = (0.9, 1.1), split_seed: int = 0, num_workers: int = 0):
        super().__init__()
        if dataset not in ("cifar10", "mnist", "imagefolder"):
            raise ValueError(f"dataset must be 'cifar10', 'mnist' or 'imagefolder', got {dataset!r}")
        self.save_hyperparameters()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.splits: dict[str, Dataset] = {}
        self._num_classes = None

    def _check_files(self) -> None:
        """Name what is missing and where it should be, instead of torchvision's 'use download=True'."""
        hp, root = self.hparams, self.hparams.root
        if hp.dataset == "cifar10":
            folder = os.path.join(root, "cifar-10-batches-py")
            need = [os.path.join(folder, f) for f in ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]]
            hint = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
                    f"into {root!r} (it creates cifar-10-batches-py/)")
        elif hp.dataset == "mnist":
            folder = os.path.join(root, "MNIST", "raw")
            names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
            need = [os.path.join(folder, n) for n in names if not os.path.exists(os.path.join(folder, n + ".gz"))]
            hint = f"put the four MNIST idx files (train/t10k images and labels, .gz or not) into {folder!r}"
        else:
            need = [os.path.join(root, "train")]
            hint = f"arrange the images as {root}/train/<class name>/<image> (optional {root}/val and {root}/test)"
        missing = [p for p in need if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"{hp.dataset} files not found: {', '.join(missing)}. zoo never downloads data; {hint}.")

    @property
    def img_size(self) -> int:
        return self.hparams.img_size or {"cifar10": 32, "mnist": 28, "imagefolder": 224}[self.hparams.dataset]

    @property
    def in_chans(self) -> int:
        return 1 if self.hparams.dataset == "mnist" else 3

    @property
    def num_classes(self) -> int:
        if self.hparams.dataset != "imagefolder":
            return 10
        if self._num_classes is None:
            self._num_classes = len([d for d in os.scandir(os.path.join(self.hparams.root, "train")) if d.is_dir()])
        return self._num_classes

    @property
    def model_overrides(self) -> dict:
        return {"num_classes": self.num_classes, "in_chans": self.in_chans, "img_size": self.img_size}

    def _arrays(self, train: bool):
        import torchvision

        hp = self.hparams
        cls = torchvision.datasets.CIFAR10 if hp.dataset == "cifar10" else torchvision.datasets.MNIST
        ds = cls(hp.root, train=train, download=False)
        x = torch.as_tensor(np.asarray(ds.data))
        x = x.permute(0, 3, 1, 2) if x.dim() == 4 else x[:, None]
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in self._STATS[hp.dataset])
        x = (x.float() / 255.0 - mean) / std
        if self.img_size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", antialias=True)
        return x, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)

    def setup(self, stage: str | None = None):
        if self.splits:
            return
        self._check_files()
        hp = self.hparams
        if hp.dataset == "imagefolder":
            return self._setup_folder()
        x, y = self._arrays(train=True)
        val, train = stratified_split(y.numpy(), (hp.val_fraction, 1 - hp.val_fraction), hp.split_seed)
        xt, yt = self._arrays(train=False)
        self.splits = {"train": TensorDataset(x[train], y[train]), "val": TensorDataset(x[val], y[val]),
                       "test": TensorDataset(xt, yt)}

    def _setup_folder(self):
        import torchvision
        from torchvision import transforms as T

        hp = self.hparams
        tf = T.Compose([T.Resize((self.img_size, self.img_size)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
        tf = T.Compose([T.Lambda(lambda im: im.convert("RGB")), tf])
        full = torchvision.datasets.ImageFolder(os.path.join(hp.root, "train"))
        parts = {}
        for split in ("val", "test"):
            path = os.path.join(hp.root, split)
            if os.path.isdir(path):
                parts[split] = _FolderImages(torchvision.datasets.ImageFolder(path), tf)
        if "val" not in parts:
            labels = np.asarray(full.targets)
            val, train = stratified_split(labels, (hp.val_fraction, 1 - hp.val_fraction), hp.split_seed)
            parts["val"] = _FolderImages(torch.utils.data.Subset(full, val.tolist()), tf)
            full = torch.utils.data.Subset(full, train.tolist())
        parts["train"] = _FolderImages(full, tf)
        parts.setdefault("test", parts["val"])
        self.splits = parts

    def on_after_batch_transfer(self, batch, dataloader_idx):
        hp = self.hparams
        if hp.augment and self.trainer is not None and self.trainer.training:
            images, labels = batch
            flip = hp.dataset != "mnist" if hp.flip is None else hp.flip
            if flip:
                mirror = torch.rand(images.shape[0], device=images.device) < 0.5
                images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
            batch = (random_affine(images, hp.max_shift, hp.max_rotate, tuple(hp.scale)), labels)
        return batch
