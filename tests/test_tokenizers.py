"""Tokenizers: round trips, special-token ids, pairs, save/load, length limits, and a BERT forward on the output."""
import pytest
import torch
from pydoc_data.topics import topics  # English help texts shipped with Python: an offline corpus

import zoo
from zoo.data.tokenizers import (
    KINDS, decode_batch, encode_batch, load_tokenizer, save_tokenizer, tokenizer_for_family, train_tokenizer,
)

CORPUS = [topics[k] for k in sorted(topics)]
SAMPLES = [CORPUS[i][:300] for i in (3, 17, 40)] + ["The  quick brown fox jumps over the lazy dog; numbers 1, 2 and 3!"]
EXPECTED_SPECIALS = {
    "wordpiece": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4},
    "unigram": {"<pad>": 0, "</s>": 1, "<unk>": 2},
    "bpe": {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3},
}


@pytest.fixture(scope="module")
def toks():
    # Unigram's EM training is the slow one: a third of the corpus is plenty for these checks.
    return {kind: train_tokenizer(kind, CORPUS if kind != "unigram" else CORPUS[::3], vocab_size=1500, model_max_length=64)
            for kind in KINDS}


def normalised(tok, kind, text):
    backend = tok.backend_tokenizer
    norm = backend.normalizer.normalize_str(text)
    if kind == "wordpiece":  # BERT decoding re-joins words with single spaces, punctuation split off
        return " ".join(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(norm))
    return norm


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_gives_normalised_text(toks, kind):
    tok = toks[kind]
    ids = [tok(t, verbose=False)["input_ids"] for t in SAMPLES]  # no length limit: the round trip is the point
    assert all(tok.unk_token_id not in row for row in ids)
    decoded = decode_batch(tok, ids, clean_up_tokenization_spaces=False)
    assert decoded == [normalised(tok, kind, t) for t in SAMPLES]
    if kind == "wordpiece":
        assert decoded[3] == "the quick brown fox jumps over the lazy dog ; numbers 1 , 2 and 3 !"
        assert decode_batch(tok, ids[3:])[0] == "the quick brown fox jumps over the lazy dog ; numbers 1, 2 and 3!"
    elif kind == "unigram":
        assert decoded[3] == "The quick brown fox jumps over the lazy dog; numbers 1, 2 and 3!"  # spaces collapsed
    else:
        assert decoded == SAMPLES  # byte-level BPE is lossless


@pytest.mark.parametrize("kind", KINDS)
def test_special_token_ids(toks, kind):
    tok = toks[kind]
    assert {t: tok.convert_tokens_to_ids(t) for t in EXPECTED_SPECIALS[kind]} == EXPECTED_SPECIALS[kind]
    assert tok.pad_token_id == 0 and tok.model_max_length == 64 and len(tok) == 1500
    ids = tok("hello world")["input_ids"]
    if kind == "wordpiece":
        assert (tok.cls_token, tok.sep_token, tok.mask_token, tok.unk_token) == ("[CLS]", "[SEP]", "[MASK]", "[UNK]")
        assert ids[0] == 2 and ids[-1] == 3
    else:
        assert tok.eos_token == "</s>" and ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1
        assert kind == "unigram" or (tok.bos_token_id == 1 and 1 not in ids)  # <s> starts the decoder, not the source


def test_pair_encoding_token_types(toks):
    tok = toks["wordpiece"]
    out = encode_batch(tok, ["how are you", "a"], text_pairs=["fine thanks", "b c d e f"])
    ids, types, mask = out["input_ids"], out["token_type_ids"], out["attention_mask"]
    for i in range(2):
        n = int(mask[i].sum())
        row, tt = ids[i, :n].tolist(), types[i, :n].tolist()
        first_sep = row.index(3)
        assert row[0] == 2 and row[-1] == 3 and row.count(3) == 2
        assert tt == [0] * (first_sep + 1) + [1] * (n - first_sep - 1)
        assert ids[i, n:].eq(0).all() and types[i, n:].eq(0).all()
    unigram = encode_batch(toks["unigram"], ["how are you"], text_pairs=["fine"])
    assert "token_type_ids" not in unigram and unigram["input_ids"][0].tolist().count(1) == 2  # A </s> B </s>


def test_padding_and_dtypes(toks):
    out = encode_batch(toks["bpe"], ["a much longer text than the other one", "short"])
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].dtype == torch.long and out["input_ids"].shape == out["attention_mask"].shape
    n = int(out["attention_mask"][1].sum())
    assert out["attention_mask"][1, n:].eq(0).all() and out["input_ids"][1, n:].eq(0).all()
    fixed = encode_batch(toks["bpe"], ["short"], max_length=16, padding="max_length")
    assert fixed["input_ids"].shape == (1, 16)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(toks, kind, tmp_path):
    tok = toks[kind]
    save_tokenizer(tok, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    texts, pairs = [SAMPLES[3], "Names, objects; and don't (do not) forget!"], ["a second segment", "and another"]
    a, b = encode_batch(tok, texts, text_pairs=pairs), encode_batch(loaded, texts, text_pairs=pairs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.model_max_length == 64 and loaded.all_special_tokens == tok.all_special_tokens
    assert decode_batch(loaded, a["input_ids"]) == decode_batch(tok, a["input_ids"])


def test_too_long_text_is_rejected_or_truncated_with_warning(toks):
    tok = toks["wordpiece"]
    long_text = CORPUS[0]
    n = len(tok(long_text)["input_ids"])
    assert n > 64
    with pytest.raises(ValueError, match=f"{n} tokens long, over the limit of max_length=64"):
        encode_batch(tok, ["short", long_text], truncation=False)
    with pytest.warns(UserWarning, match="1 of 2 texts exceed max_length=32"):
        out = encode_batch(tok, ["short", long_text], max_length=32)
    assert out["input_ids"].shape == (2, 32) and out["input_ids"][1, -1] == 3  # still ends in [SEP]
    with pytest.raises(ValueError, match="exceeds the tokenizer's model_max_length=64"):
        encode_batch(tok, ["short"], max_length=65)


def test_family_mapping_and_bad_arguments(toks):
    assert [tokenizer_for_family(f) for f in ("bert", "t5", "transformer")] == ["wordpiece", "unigram", "bpe"]
    with pytest.raises(ValueError, match="no tokenizer kind for family 'gpt'"):
        tokenizer_for_family("gpt")
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        train_tokenizer("sentencepiece", ["a b"], 100)
    with pytest.raises(TypeError, match="list of texts"):
        encode_batch(toks["bpe"], "a single string")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer("/nonexistent/dir")


def test_encoded_batch_feeds_bert(toks):
    tok = toks["wordpiece"]
    model = zoo.create_model("bert_tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                             max_positions=tok.model_max_length, dim=32, num_heads=2, depth=1).eval()
    out = encode_batch(tok, ["how are you", "a"], text_pairs=["fine thanks", "b"])
    assert model(**out).shape == (2, out["input_ids"].shape[1], len(tok))
