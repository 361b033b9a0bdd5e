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


# -- reproducible training ------------------------------------------------------------------------------

SMALL = CORPUS[::4]  # 20 help topics: enough for ties in the pair counts, fast to train


def _fingerprints(vocab_size: int = 300) -> dict[str, str]:
    import hashlib

    return {kind: hashlib.sha256(train_tokenizer(kind, SMALL, vocab_size, model_max_length=64).backend_tokenizer.to_str()
                                 .encode()).hexdigest() for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_training_twice_in_one_process_is_byte_identical(kind):
    a, b = (train_tokenizer(kind, SMALL, 300, model_max_length=64).backend_tokenizer.to_str() for _ in range(2))
    assert a == b


def test_training_in_two_processes_is_byte_identical():
    """Rust seeds its hash maps per process; PYTHONHASHSEED and the thread count must not matter either."""
    import json
    import os
    import subprocess
    import sys

    code = "import json, tests.test_tokenizers as t; print(json.dumps(t._fingerprints()))"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = []
    for seed, threads in (("1", "1"), ("2", "2")):
        env = {**os.environ, "PYTHONHASHSEED": seed, "RAYON_NUM_THREADS": threads, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1] == _fingerprints()


def test_wordpiece_id_order_is_canonical():
    tok = train_tokenizer("wordpiece", SMALL, 300, model_max_length=64)
    inv = {i: t for t, i in tok.get_vocab().items()}
    order = [inv[i] for i in range(len(inv))]
    n = len(EXPECTED_SPECIALS["wordpiece"])
    cont = [t for t in order[n:] if t.startswith("##") and len(t) == 3]
    singles = [t for t in order[n + len(cont):] if len(t) == 1]
    assert order[n:n + len(cont)] == sorted(cont) and len(cont) > 20  # every "##x" right after the specials, sorted
    assert order[n + len(cont):n + len(cont) + len(singles)] == sorted(singles)  # then the characters, sorted
    assert set(tok.all_special_tokens) == set(EXPECTED_SPECIALS["wordpiece"])
    assert tok.tokenize("##a") == ["#", "#", "a"]  # the pre-registered pieces are ordinary vocabulary, not special tokens


def test_unigram_vocabulary_is_sorted_by_score_then_text():
    import json

    tok = train_tokenizer("unigram", SMALL, 300, model_max_length=64)
    vocab = json.loads(tok.backend_tokenizer.to_str())["model"]["vocab"][len(EXPECTED_SPECIALS["unigram"]):]
    keys = [(-score, piece) for piece, score in vocab]
    assert keys == sorted(keys) and all(round(s, 6) == s for _, s in vocab)


# -- one storage format ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_encodes_identically(toks, kind):
    import json

    from zoo.data.tokenizers import tokenizer_from_state, tokenizer_to_state

    tok = toks[kind]
    tok(["warm up the backend's truncation state"], truncation=True, max_length=8, padding=True)
    state = tokenizer_to_state(tok)
    state = json.loads(json.dumps(state))  # plain JSON
    assert state["kind"] == kind and state["model_max_length"] == 64 and '"truncation": null' in state["tokenizer_json"]
    back = tokenizer_from_state(state)
    texts, pairs = [SAMPLES[3], "Names, objects; and don't (do not) forget!"], ["a second segment", "and another"]
    a, b = encode_batch(tok, texts, text_pairs=pairs), encode_batch(back, texts, text_pairs=pairs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert decode_batch(back, a["input_ids"]) == decode_batch(tok, a["input_ids"])
    assert back.all_special_tokens == tok.all_special_tokens and back.model_input_names == tok.model_input_names
    assert tokenizer_to_state(back) == state
    legacy = tokenizer_from_state(tok.backend_tokenizer.to_str(), model_max_length=64)  # older checkpoints: bare JSON
    assert torch.equal(encode_batch(legacy, texts)["input_ids"], encode_batch(tok, texts)["input_ids"])


def test_load_tokenizer_from_folder_file_and_checkpoint(toks, tmp_path):
    import json

    from zoo.data.tokenizers import load_tokenizer_from, tokenizer_to_state

    tok = toks["wordpiece"]
    ids = tok(SAMPLES)["input_ids"]
    save_tokenizer(tok, tmp_path / "run" / "tokenizer")
    (tmp_path / "state.json").write_text(json.dumps(tokenizer_to_state(tok)))
    (tmp_path / "bare.json").write_text(tok.backend_tokenizer.to_str())
    state = tokenizer_to_state(tok)
    ckpts = {"zoo.ckpt": {"state_dict": {}, "zoo": {"model": "bert_tiny", "tokenizer": state}},
             "datamodule.ckpt": {"state_dict": {}, "epoch": 3, "hyper_parameters": {"tokenizer": "x"}, "PydocMLM": {"tokenizer": state}},
             "older.ckpt": {"state_dict": {}, "PydocMLM": {"tokenizer_json": tok.backend_tokenizer.to_str()}},
             "image_text.ckpt": {"state_dict": {}, "tokenizer_json": tok.backend_tokenizer.to_str()}}
    for name, ckpt in ckpts.items():
        torch.save(ckpt, tmp_path / name)
    sources = [tmp_path / "run" / "tokenizer", tmp_path / "run", tmp_path / "run" / "tokenizer" / "tokenizer.json",
               tmp_path / "state.json", tmp_path / "bare.json"] + [tmp_path / n for n in ckpts]
    for source in sources:
        assert load_tokenizer_from(str(source))(SAMPLES)["input_ids"] == ids, source
    torch.save({"state_dict": {}, "epoch": 1}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="bare.ckpt' holds no tokenizer"):
        load_tokenizer_from(tmp_path / "bare.ckpt")
    with pytest.raises(FileNotFoundError, match="no tokenizer in folder .*empty"):
        (tmp_path / "empty").mkdir()
        load_tokenizer_from(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing.ckpt' does not exist"):
        load_tokenizer_from(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*junk.ckpt"):
        load_tokenizer_from(tmp_path / "junk.ckpt")
