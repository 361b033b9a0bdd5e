"""The user's own text files through Hugging Face `datasets`: csv, jsonl, parquet, arrow and saved dataset folders."""
from __future__ import annotations

import json

import datasets
import pytest

from zoo.data.local import DataFileError, LocalSeq2Seq, LocalTextClassification, MissingColumnError


def rows(n: int = 40) -> list[dict]:
    return [{"review": f"{'good great' if i % 2 else 'bad awful'} film {i}", "sentiment": "pos" if i % 2 else "neg",
             "other": i} for i in range(n)]


def write(kind: str, folder, data: list[dict]) -> str:
    ds = datasets.Dataset.from_list(data)
    path = folder / f"train.{kind}"
    if kind == "csv":
        ds.to_csv(str(path), index=False)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    elif kind == "json":
        path.write_text(json.dumps(data))
    elif kind == "parquet":
        ds.to_parquet(str(path))
    elif kind == "saved":
        ds.save_to_disk(str(path))
    return str(path)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "json", "parquet", "saved"])
def test_every_format_gives_the_same_examples_and_batches(kind, tmp_path):
    path = write(kind, tmp_path, rows())
    dm = LocalTextClassification(path, text_column="review", label_column="sentiment", vocab_size=200,
                                 cache_dir=str(tmp_path / "cache"))
    assert isinstance(dm.tables["train"], datasets.Dataset)
    assert dm.label_names == ["neg", "pos"] and dm.model_overrides["num_classes"] == 2
    assert [len(dm.examples[s]) for s in ("train", "val", "test")] == [32, 4, 4]
    reference = LocalTextClassification(write("csv", tmp_path / ".." / tmp_path.name, rows()) if kind != "csv" else path,
                                        text_column="review", label_column="sentiment", vocab_size=200)
    assert dm.examples == reference.examples  # the same rows in the same held-out splits, whatever the format
    dm.setup("fit")
    assert isinstance(dm.splits["train"], datasets.Dataset) and len(dm.splits["train"]) == 32
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape[0] == 32
    first = dm.splits["test"][0]
    enc = dm.tokenizer(dm.examples["test"][0]["text"], truncation=True, max_length=dm.max_length)
    assert first["input_ids"] == enc["input_ids"] and first["label"] == dm.label_names.index(dm.examples["test"][0]["label"])


def test_tokenization_is_a_cached_batched_dataset_map(tmp_path, monkeypatch):
    path = write("csv", tmp_path, rows())
    cache = str(tmp_path / "cache")
    make = lambda: LocalTextClassification(path, text_column="review", label_column="sentiment",  # noqa: E731
                                           vocab_size=200, cache_dir=cache)
    first = make()
    calls = []
    original = LocalTextClassification.encode

    def counting(self, examples):
        calls.append(len(examples))
        return original(self, examples)

    monkeypatch.setattr(LocalTextClassification, "encode", counting)
    first.setup("fit")
    assert sum(calls) == 40 and len(calls) == 3  # one batched call per split
    assert first.splits["train"].cache_files  # written to the datasets cache
    second = make()
    second.use_tokenizer(first.tokenizer)
    calls.clear()
    second.setup("fit")
    assert calls == []  # loaded from the cache, not tokenized again
    assert second.splits["train"][:] == first.splits["train"][:]
    third = make()
    from zoo.data.tokenizers import train_tokenizer

    third.use_tokenizer(train_tokenizer("bpe", [r["review"] for r in rows()], 150))
    third.setup("fit")
    assert sum(calls) == 40  # another tokenizer: another fingerprint, tokenized anew


def test_seq2seq_from_jsonl_and_a_saved_dataset_dict_split(tmp_path):
    data = [{"en": f"number {i}", "fr": f"nombre {i}"} for i in range(30)]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(data[:24]), "test": datasets.Dataset.from_list(data[24:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    dm = LocalSeq2Seq(str(tmp_path / "dd" / "train"), test_file=str(tmp_path / "dd" / "test"), source_column="en",
                      target_column="fr", vocab_size=100, val_fraction=0.25)
    assert [len(dm.examples[s]) for s in ("train", "val", "test")] == [18, 6, 6]
    assert dm.examples["test"][0] == {"source": "number 24", "target": "nombre 24", "task": ""}
    dm.setup("fit")
    assert next(iter(dm.val_dataloader()))["labels"].shape[0] == 6
    with pytest.raises(DataFileError, match=r"DatasetDict with the splits \['train', 'test'\].*dd/train"):
        LocalSeq2Seq(str(tmp_path / "dd"), source_column="en", target_column="fr").examples


def test_missing_file_and_column_name_the_file_and_the_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.parquet' does not exist"):
        LocalTextClassification(str(tmp_path / "absent.parquet")).examples
    path = write("parquet", tmp_path, rows())
    with pytest.raises(MissingColumnError, match=r"train.parquet' has no column\(s\) \['text', 'label'\]; its columns are "
                                                 r"\['review', 'sentiment', 'other'\]"):
        LocalTextClassification(path).examples
    saved = write("saved", tmp_path, rows())
    with pytest.raises(MissingColumnError, match=r"train.saved' has no column\(s\) \['label'\]"):
        LocalTextClassification(saved, text_column="review").examples
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataFileError, match="not one written by datasets' save_to_disk"):
        LocalTextClassification(str(tmp_path / "plain")).examples
