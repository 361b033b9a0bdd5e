"""A tokenizer travels with the model: fine-tuning (bert_pairs from a bert_mlm checkpoint), testing and
predicting reuse the checkpoint's tokenizer instead of building one, and every module stores it one way."""
import logging
from pathlib import Path

import pytest
import torch
import yaml

from zoo.data import multimodal as mm
from zoo.data.corpus import PydocMLM
from zoo.data.numbers import NumberComparison
from zoo.data.tokenizers import backend_json, load_tokenizer_from, save_tokenizer, tokenizer_to_state

SMALL = dict(max_number=999, n_test=100, n_val=50, max_length=64)  # the number split of both BERT recipes
TEXTS = ["trois cent douze", "ninety-nine", "The assert statement is a convenient way to insert debugging assertions.",
         "quatre mille", "Names refer to objects; names are introduced by name binding operations."]
PAIRS = [("trois cent douze", "ninety-nine"), ("seven hundred and one", "sept cent deux")]


@pytest.fixture(scope="module")
def mlm():
    return PydocMLM(vocab_size=1000, **SMALL)


def lightning_checkpoint(path: Path, datamodule, zoo_record: bool = False) -> Path:
    """A checkpoint laid out as Lightning writes one: the data module's state under its class name."""
    ckpt = {"epoch": 0, "global_step": 10, "pytorch-lightning_version": "2.6.0", "state_dict": {"model.w": torch.zeros(2)},
            "hyper_parameters": {"model": "bert_tiny"}, type(datamodule).__qualname__: datamodule.state_dict()}
    if zoo_record:
        ckpt = {k: v for k, v in ckpt.items() if k != type(datamodule).__qualname__}
        ckpt["zoo"] = {"model": "bert_tiny", "tokenizer": tokenizer_to_state(datamodule.tokenizer)}
    torch.save(ckpt, path)
    return path


def pairs_module(**kwargs) -> NumberComparison:
    return NumberComparison(pairs_per_split=(40, 10, 10), **{**SMALL, "vocab_size": 500, **kwargs})


def ids(tok, texts=TEXTS):
    return tok(list(texts))["input_ids"]


@pytest.mark.parametrize("where", ["datamodule_state", "zoo_record", "folder"])
def test_pairs_module_reuses_the_mlm_tokenizer(mlm, tmp_path, where, caplog):
    if where == "folder":
        save_tokenizer(mlm.tokenizer, tmp_path / "tokenizer")
        source = tmp_path  # a run folder with tokenizer/ in it
    else:
        source = lightning_checkpoint(tmp_path / "last.ckpt", mlm, zoo_record=where == "zoo_record")
    dm = pairs_module(tokenizer=str(source))  # asks for vocab_size=500: the loaded size wins
    with caplog.at_level(logging.INFO, logger="zoo.data.tokenizers"):
        overrides = dm.model_overrides
    assert overrides["vocab_size"] == len(mlm.tokenizer) == 1000 and overrides["pad_token_id"] == 0
    assert any("1000 tokens, not vocab_size=500" in r.getMessage() for r in caplog.records)
    assert ids(dm.tokenizer) == ids(mlm.tokenizer)
    assert backend_json(dm.tokenizer) == backend_json(mlm.tokenizer)
    dm.setup("fit")
    row = dm.splits["train"][0]
    ex = dm.examples["train"][0]
    assert row["input_ids"] == mlm.tokenizer(ex["text"], ex["text_pair"])["input_ids"]


def test_without_a_tokenizer_the_module_trains_its_own(mlm):
    own = pairs_module()
    assert len(own.tokenizer) == 500 and ids(own.tokenizer) != ids(mlm.tokenizer)
    # the same texts and vocab_size as the MLM module: training is deterministic, so the same tokenizer
    same = pairs_module(vocab_size=1000)
    assert backend_json(same.tokenizer) == backend_json(mlm.tokenizer)


def test_recipes_bert_mlm_and_bert_pairs_build_one_tokenizer():
    """configs/bert_pairs.yaml says it uses bert_mlm's tokenizer: both train it on the same texts."""
    root = Path(__file__).resolve().parents[1] / "configs"
    args = {name: yaml.safe_load((root / f"{name}.yaml").read_text())["data"]["init_args"] for name in ("bert_mlm", "bert_pairs")}
    keys = ("languages", "max_number", "n_test", "n_val", "vocab_size", "max_length")
    assert {k: args["bert_mlm"].get(k) for k in keys} == {k: args["bert_pairs"].get(k) for k in keys}
    mlm_args = {k: v for k, v in args["bert_mlm"].items() if k != "batch_size"}
    pairs_args = {k: v for k, v in args["bert_pairs"].items() if k not in ("batch_size", "pairs_per_split")}
    a, b = PydocMLM(**mlm_args), NumberComparison(pairs_per_split=(10, 10, 10), **pairs_args)
    assert a.tokenizer_texts(a.examples["train"]) == b.tokenizer_texts(None)
    assert backend_json(a.tokenizer) == backend_json(b.tokenizer)


def test_stored_by_one_module_restored_by_another(mlm):
    fresh = pairs_module()  # nothing built or encoded yet: the checkpoint's tokenizer is adopted
    fresh.load_state_dict(mlm.state_dict())
    assert ids(fresh.tokenizer) == ids(mlm.tokenizer) and fresh.model_overrides["vocab_size"] == 1000
    a = fresh.tokenizer([p[0] for p in PAIRS], [p[1] for p in PAIRS], return_token_type_ids=True)
    b = mlm.tokenizer([p[0] for p in PAIRS], [p[1] for p in PAIRS], return_token_type_ids=True)
    assert a["input_ids"] == b["input_ids"] and a["token_type_ids"] == b["token_type_ids"]
    # image-text modules store theirs the same way
    captions = mm.MNISTCaptioning()
    other = mm.MNISTCaptioning(vocab_size=300)
    assert len(other.tokenizer) != len(captions.tokenizer)
    other.load_state_dict(captions.state_dict())
    assert ids(other.tokenizer, ["une photo du chiffre sept"]) == ids(captions.tokenizer, ["une photo du chiffre sept"])
    assert torch.equal(other.caption_ids, captions.caption_ids)  # the caption tables were encoded again
    assert torch.equal(other.language_token_ids, captions.language_token_ids)


def test_loading_a_different_tokenizer_after_encoding_is_refused(mlm):
    dm = pairs_module()
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="--data.tokenizer"):
        dm.load_state_dict(mlm.state_dict())
    same = pairs_module()
    same.setup("fit")
    same.load_state_dict(same.state_dict())  # its own tokenizer: nothing to do
    dm.use_tokenizer(mlm.tokenizer)  # handed over explicitly: what was encoded is dropped and encoded again
    assert dm.splits == {}
    dm.setup("fit")
    ex = dm.examples["val"][0]
    assert dm.splits["val"][0]["input_ids"] == mlm.tokenizer(ex["text"], ex["text_pair"])["input_ids"]
    with pytest.raises(TypeError, match="PreTrainedTokenizerFast"):
        dm.use_tokenizer("runs/bert_mlm")


def test_image_text_modules_take_a_tokenizer(tmp_path):
    captions = mm.MNISTCaptioning()
    ckpt = tmp_path / "clip.ckpt"
    torch.save({"state_dict": {}, "tokenizer_json": mm.tokenizer_state(captions.tokenizer)}, ckpt)  # as the image-text tasks wrote it
    for source in (ckpt, lightning_checkpoint(tmp_path / "dm.ckpt", captions)):
        clip = mm.MNISTCaptionsContrastive(tokenizer=str(source), vocab_size=256)
        assert clip.model_overrides["vocab_size"] == len(captions.tokenizer)
        assert ids(clip.tokenizer, ["ein foto der ziffer acht"]) == ids(captions.tokenizer, ["ein foto der ziffer acht"])
    assert load_tokenizer_from(ckpt).extra_special_tokens == captions.tokenizer.extra_special_tokens
    clip = mm.MNISTCaptionsContrastive()
    clip.use_tokenizer(captions.tokenizer)
    assert torch.equal(clip.caption_ids, mm.MNISTCaptionsContrastive(tokenizer=str(ckpt)).caption_ids)
    wordpiece = PydocMLM(vocab_size=200, **SMALL)
    torch.save({"state_dict": {}, "PydocMLM": wordpiece.state_dict()}, tmp_path / "bert.ckpt")
    with pytest.raises(ValueError, match="no language token"):
        mm.MNISTCaptioning(tokenizer=str(tmp_path / "bert.ckpt"))
