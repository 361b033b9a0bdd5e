"""Text tasks, offline text data, numerics (bf16 vs fp32), NaN stops, atomic checkpoints."""
from __future__ import annotations

import os

import lightning as L
import pytest
import torch

from zoo import create_model
from zoo.callbacks import AtomicCheckpointIO
from zoo.data.corpus import pydoc_sentences
from zoo.data.numbers import NumberComparison, NumberTranslation, render, split_numbers
from zoo.tasks.text import SequenceClassification, Seq2Seq, TokenClassification, load_matching, mask_tokens


# ---------------------------------------------------------------- masking
def test_mask_tokens_follows_bert_recipe():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 512), generator=g)
    ids[:, 0], ids[:, -40:] = 2, 0  # [CLS] and padding
    maskable = (ids != 2) & (ids != 0)
    random_ids = torch.arange(5, 1000)
    inputs, labels = mask_tokens(ids, maskable, mask_token_id=4, random_ids=random_ids, prob=0.15, generator=g)
    chosen = labels != -100
    assert not chosen[~maskable].any()  # never special tokens or padding
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else changes
    frac = chosen.sum() / maskable.sum()
    assert abs(frac.item() - 0.15) < 0.005
    n = chosen.sum().item()
    masked = (inputs == 4) & chosen
    kept = (inputs == ids) & chosen
    replaced = chosen & ~masked & ~kept
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    assert abs(kept.sum().item() / n - 0.1) < 0.01 + 1 / 995  # a random pick can equal the original
    assert abs(replaced.sum().item() / n - 0.1) < 0.01
    assert (inputs[replaced] >= 5).all()  # random replacements are never special ids


# ---------------------------------------------------------------- init_from
def _save_task_ckpt(model, path):
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)


def test_init_from_loads_encoder_and_reports_skipped(tmp_path):
    torch.manual_seed(0)
    mlm = create_model("bert_tiny", vocab_size=300, max_positions=64)
    _save_task_ckpt(mlm, tmp_path / "mlm.ckpt")
    task = SequenceClassification("bert_tiny", init_from=str(tmp_path / "mlm.ckpt"),
                                  data_overrides={"vocab_size": 300, "num_classes": 2}, model_kwargs={"max_positions": 64})
    cls = task.model
    assert cls.config.head == "cls" and cls.num_classes == 2
    for k, v in mlm.state_dict().items():
        if not k.startswith("mlm_head"):
            assert torch.equal(cls.state_dict()[k], v), k
    report = task.init_report
    assert any(k.startswith("mlm_head") for k in report["skipped"])
    assert {"classifier.weight", "pooler.dense.weight"} <= set(report["new"])


def test_init_from_rejects_an_unrelated_checkpoint(tmp_path):
    vit = create_model("vit_digits")
    _save_task_ckpt(vit, tmp_path / "vit.ckpt")
    model = create_model("bert_tiny", vocab_size=300, head="cls")
    with pytest.raises(ValueError, match="no tensor of the checkpoint fits"):
        load_matching(model, str(tmp_path / "vit.ckpt"))
    t5 = create_model("t5_tiny", vocab_size=300)  # a few norms fit by chance: refused, not 3% of a BERT loaded
    _save_task_ckpt(t5, tmp_path / "t5.ckpt")
    with pytest.raises(ValueError, match=r"only \d+% of the model's weights .* fit the checkpoint, which holds another"):
        load_matching(create_model("bert_tiny", vocab_size=300, head="cls"), str(tmp_path / "t5.ckpt"))


def test_token_classification_loss_ignores_unlabelled_tokens():
    task = TokenClassification("bert_tiny", data_overrides={"vocab_size": 100, "num_classes": 3}).eval()  # no dropout
    ids = torch.randint(5, 100, (2, 7))
    labels = torch.randint(0, 3, (2, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    base = task.training_step(batch, 0)
    batch["labels"] = labels.masked_fill(torch.arange(7) >= 4, -100)
    logits = task(batch)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 3), labels[:, :4].reshape(-1))
    assert torch.allclose(task.training_step(batch, 0), expected, atol=1e-6)
    assert not torch.allclose(base, expected)


def test_seq2seq_loss_is_label_smoothed_cross_entropy():
    task = Seq2Seq("transformer_tiny", label_smoothing=0.1,
                   model_kwargs={"d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
                                 "dim_feedforward": 64, "dropout": 0.0},
                   data_overrides={"vocab_size": 50, "pad_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 1})
    labels = torch.tensor([[5, 6, 2, -100], [7, 8, 9, 2]])
    batch = {"input_ids": torch.tensor([[3, 4, 2, 0], [3, 4, 4, 2]]), "attention_mask": torch.tensor([[1, 1, 1, 0], [1] * 4]),
             "labels": labels}
    logits = task(batch)
    dec_in = task.model.forward.__self__  # the model itself
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1), ignore_index=-100,
                                                 label_smoothing=0.1)
    assert torch.allclose(task.training_step(batch, 0), expected)
    # teacher forcing: decoder input = start token + labels shifted right (pad for -100)
    ref = dec_in(batch["input_ids"], torch.tensor([[1, 5, 6, 2], [1, 7, 8, 9]]), attention_mask=batch["attention_mask"])
    assert torch.allclose(logits, ref, atol=1e-6)


# ---------------------------------------------------------------- data
def test_number_splits_are_disjoint_and_translations_exact():
    parts = split_numbers(999, 100, 50, seed=0)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [850, 50, 100]
    assert set(parts["train"]).isdisjoint(parts["test"]) and set(parts["train"]).isdisjoint(parts["val"])
    assert split_numbers(999, 100, 50, seed=0) == parts and split_numbers(999, 100, 50, seed=1) != parts
    assert render(312, "en") == "three hundred and twelve" and render(312, "fr") == "trois cent douze"
    assert render(312, "digits") == "3 1 2"
    dm = NumberTranslation(tasks=["en-fr", "digits-de", "en-digits"], prefix=True, max_number=999, n_test=100, n_val=50)
    ex = dm.examples
    assert len(ex["train"]) == 3 * 850
    train_numbers = {e["number"] for e in ex["train"]}
    assert train_numbers.isdisjoint({e["number"] for e in ex["test"]})
    by_task = {e["task"]: e for e in ex["test"] if e["number"] == ex["test"][0]["number"]}
    n = ex["test"][0]["number"]
    assert by_task["en-fr"]["source"] == "translate English to French: " + render(n, "en")
    assert by_task["digits-de"]["source"].startswith("digits to German: ") and by_task["en-digits"]["target"] == render(n, "digits")
    with pytest.raises(ValueError, match="source-target"):
        NumberTranslation(tasks=["english"])


def test_small_numbers_can_stay_in_training_and_repeat_there():
    plain = split_numbers(999, 100, 50, seed=0)
    assert split_numbers(999, 100, 50, seed=0, always_train=0) == plain  # the default cut is unchanged
    parts = split_numbers(999, 100, 50, seed=0, always_train=100)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [850, 50, 100]
    assert set(range(100)) <= set(parts["train"]) and min(parts["test"] + parts["val"]) >= 100
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(1000))
    # the held-out numbers are the plain cut's order with the small ones skipped
    assert parts["test"] == [n for n in plain["test"] + plain["val"] + plain["train"] if n >= 100][:100]
    with pytest.raises(ValueError, match="always_train=1001 must lie in 0..1000"):
        split_numbers(999, 100, 50, always_train=1001)
    with pytest.raises(ValueError, match="leave no training numbers in 900..999"):
        split_numbers(999, 50, 50, always_train=900)

    kw = dict(tasks=["en-fr"], max_number=999, n_test=100, n_val=50, vocab_size=300, always_train=100)
    once, thrice = NumberTranslation(**kw), NumberTranslation(**kw, small_repeats=3)
    counts = {}
    for e in thrice.examples["train"]:
        counts[e["number"]] = counts.get(e["number"], 0) + 1
    assert {counts[n] for n in range(100)} == {3} and {c for n, c in counts.items() if n >= 100} == {1}
    assert len(thrice.examples["train"]) == 850 + 2 * 100 and thrice.examples["test"] == once.examples["test"]
    assert thrice.tokenizer.get_vocab() == once.tokenizer.get_vocab()  # the repeats leave the tokenizer alone
    with pytest.raises(ValueError, match="set always_train too"):
        NumberTranslation(tasks=["en-fr"], small_repeats=3)
    with pytest.raises(ValueError, match="small_repeats=0"):
        NumberTranslation(**kw, small_repeats=0)


def test_number_translation_tokenizer_reads_capitals_as_the_words_it_learned():
    from zoo.data.tokenizers import train_tokenizer

    dm = NumberTranslation(tasks=["en-fr"], max_number=999, n_test=100, n_val=50, vocab_size=300)
    tok = dm.tokenizer
    assert tok("Forty-Two THOUSAND")["input_ids"] == tok("forty-two thousand")["input_ids"]
    # num2words writes lowercase, so lowercasing changes no id of the training texts: the same vocabulary and merges
    cased = train_tokenizer("bpe", dm.tokenizer_texts(dm.examples["train"]), 300, model_max_length=dm.max_length)
    assert cased("Forty")["input_ids"] != tok("Forty")["input_ids"]
    assert cased.get_vocab() == tok.get_vocab()
    texts = [e["source"] for e in dm.examples["test"]] + [e["target"] for e in dm.examples["test"]]
    assert cased(texts)["input_ids"] == tok(texts)["input_ids"]
    # with the capitalised T5 instructions in the texts the tokenizer keeps case (as before)
    assert NumberTranslation(tasks=["en-fr"], prefix=True).tokenizer_lowercase is None


def test_an_empty_text_to_predict_is_refused_by_position():
    dm = NumberTranslation(tasks=["en-fr"], max_number=999, n_test=100, n_val=50, vocab_size=300,
                           predict_texts=["twelve", "  "])
    with pytest.raises(ValueError, match="predict text 2 of 2 is empty"):
        dm.setup("predict")
    dm.predict_texts = ["twelve"]
    dm.setup("predict")
    assert len(dm.splits["predict"]) == 1


def test_pair_inputs_to_predict_need_one_separator_and_two_texts():
    dm = NumberComparison(languages=["digits"], max_number=999, n_test=100, n_val=50, pairs_per_split=(300, 50, 100),
                          with_corpus=False)
    assert dm.predict_examples(["forty-two ||| 7"]) == [{"text": "forty-two", "text_pair": "7", "label": -1}]
    for bad in ("no separator", "||| 5", "5 |||", "1 ||| 2 ||| 3"):
        with pytest.raises(ValueError, match="first \\|\\|\\| second"):
            dm.predict_examples([bad])


def test_number_comparison_labels_and_held_out_numbers():
    dm = NumberComparison(languages=["digits"], max_number=999, n_test=100, n_val=50, pairs_per_split=(300, 50, 100),
                          with_corpus=False)
    parts = split_numbers(999, 100, 50)
    for split in ("train", "test"):
        for e in dm.examples[split]:
            a, b = int(e["text"].replace(" ", "")), int(e["text_pair"].replace(" ", ""))
            assert e["label"] == int(a > b) and a != b
            assert a in parts[split] and b in parts[split]
    labels = [e["label"] for e in dm.examples["train"]]
    assert 0.4 < sum(labels) / len(labels) < 0.6
    batch = dm.collate(dm.encode(dm.examples["test"][:4]))
    assert batch["token_type_ids"].max() == 1 and batch["labels"].tolist() == [e["label"] for e in dm.examples["test"][:4]]


def test_pydoc_corpus_is_real_english():
    sents = pydoc_sentences()
    assert len(sents) > 3000
    assert any("assert" in s for s in sents) and all(len(s.split()) >= 3 for s in sents)


def test_local_csv_classification(tmp_path):
    from zoo.data.local import LocalTextClassification

    path = tmp_path / "reviews.csv"
    path.write_text("review,sentiment\n" + "\n".join(f"{'good great' if i % 2 else 'bad awful'} film {i},"
                                                     f"{'pos' if i % 2 else 'neg'}" for i in range(40)))
    dm = LocalTextClassification(str(path), text_column="review", label_column="sentiment", vocab_size=200)
    assert dm.label_names == ["neg", "pos"] and dm.model_overrides["num_classes"] == 2
    assert sum(len(dm.examples[s]) for s in ("train", "val", "test")) == 40 and len(dm.examples["test"]) == 4
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    with pytest.raises(KeyError, match="review"):
        LocalTextClassification(str(path), text_column="text").examples


# ---------------------------------------------------------------- trainer behaviour
class _Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _digits_run(precision: str, steps: int = 30):
    from zoo.data.images import Digits
    from zoo.tasks.image import ImageClassification

    L.seed_everything(0)
    rec = _Losses()
    task = ImageClassification("vit_digits", lr=3e-3, data_overrides={"num_classes": 10, "in_chans": 1, "img_size": 8})
    trainer = L.Trainer(max_steps=steps, precision=precision, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[rec])
    trainer.fit(task, datamodule=Digits(batch_size=64, augment=False))
    return rec.losses


def test_bf16_mixed_tracks_float32():
    fp32, bf16 = _digits_run("32-true"), _digits_run("bf16-mixed")
    assert len(fp32) == len(bf16) == 30
    diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
    # bf16 keeps 8 bits of mantissa: per-step losses stay within 0.05 of float32 over 30 steps, and both go down
    assert max(diffs) < 0.05, diffs
    assert fp32[-1] < fp32[0] - 0.1 and bf16[-1] < bf16[0] - 0.1, (fp32, bf16)
    assert max(diffs) > 0  # it really ran in bf16


def test_nan_loss_stops_training_with_a_clear_message():
    from zoo.data.images import Digits
    from zoo.tasks.image import ImageClassification

    class Exploding(ImageClassification):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if batch_idx == 2 else loss

    task = Exploding("vit_digits", data_overrides={"num_classes": 10, "in_chans": 1, "img_size": 8})
    trainer = L.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(FloatingPointError, match=r"nan at step 3.*gradient_clip_val"):
        trainer.fit(task, datamodule=Digits(batch_size=64))
    assert trainer.global_step == 3  # stopped right after the bad (third) step, not at the end of the run


def test_atomic_checkpoint_io_never_leaves_half_a_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as readable as any file, not mkstemp's private 0600

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.ones(3), "bad": Boom()}, path)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact
    assert os.listdir(path.parent) == ["last.ckpt"]  # and no temporary file is left behind


def test_mnist5k_evaluation_splits_hold_every_class_in_their_first_batch():
    """The bundled files are sorted by class: a limited validation (limit_val_batches, fast_dev_run) must not see
    digit 0 alone. The splits hold the same images as the class-balanced split, in a seeded mixed order."""
    import numpy as np

    from zoo.data import MNIST5k
    from zoo.data.images import load_mnist5k, stratified_split

    dm = MNIST5k(batch_size=64)
    dm.setup("fit")
    for split in ("val", "test"):
        first = next(iter(getattr(dm, f"{split}_dataloader")()))[1]
        assert len(first.unique()) == 10, (split, first.tolist())
    _, labels = load_mnist5k()
    test, val, _ = stratified_split(labels, (0.2, 0.08, 0.72), 0)
    for split, idx in (("val", val), ("test", test)):
        assert sorted(dm.splits[split].tensors[1].tolist()) == sorted(labels[idx].tolist())
    again = MNIST5k(batch_size=64)
    again.setup("fit")
    assert torch.equal(again.splits["test"].tensors[0], dm.splits["test"].tensors[0])  # the same order every time
    assert np.bincount(dm.splits["test"].tensors[1].numpy()).tolist() == [100] * 10


def test_masked_lm_evaluation_scores_the_same_masks_every_time():
    """Validating the same weights twice gives the same val/loss and val/acc, at any batch size: the evaluation masks
    are each text's own (they came from the global generator, so every validation scored other tokens and epochs
    differed by the masks alone); training keeps drawing new masks."""
    import lightning as L

    from zoo.data.corpus import PydocMLM
    from zoo.tasks.text import MaskedLM

    dm = PydocMLM(vocab_size=1000, max_number=999, n_test=100, n_val=50, max_length=64, batch_size=32)
    task = MaskedLM("bert_tiny", model_kwargs={"max_positions": 128}, data_overrides=dm.model_overrides)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    first = trainer.validate(task, datamodule=dm, verbose=False)[0]
    torch.rand(100)  # whatever else draws from the global generator in between
    second = trainer.validate(task, datamodule=dm, verbose=False)[0]
    assert first == second and first["val/loss"] > 0
    # each text's masks are its own: another batch size scores the same tokens (they were seeded by the batch index)
    other = trainer.validate(task, datamodule=PydocMLM(vocab_size=1000, max_number=999, n_test=100, n_val=50,
                                                        max_length=64, batch_size=50), verbose=False)[0]
    assert abs(other["val/acc"] - first["val/acc"]) < 1e-6
    assert abs(other["val/loss"] - first["val/loss"]) < 1e-5  # the mean over masked tokens, not over batches of texts
    batch = next(iter(dm.train_dataloader()))
    inputs, labels = task.evaluation_masks(batch)
    assert (labels != -100).any() and torch.equal(inputs[labels == -100], batch["input_ids"][labels == -100])
    assert torch.equal(task.evaluation_masks({k: v[1:] for k, v in batch.items()})[1], labels[1:])
    assert not torch.equal(task._step(batch)[2], task._step(batch)[2])  # training masks are drawn afresh


def test_causal_lm_validation_loss_is_the_log_of_its_perplexity():
    """val/loss and val/ppl describe the same split: val/loss = log(val/ppl), the mean loss per predicted token
    (val/loss weighted batches by rows: 2e-4 off log(val/ppl) on four batches of an untrained model)."""
    import math

    from zoo.data.corpus import PydocLM
    from zoo.tasks.text import CausalLM

    dm = PydocLM(vocab_size=1000, max_length=64, batch_size=16)
    task = CausalLM("gpt2_tiny", model_kwargs={"max_positions": 128}, data_overrides=dm.model_overrides)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=4)
    out = trainer.validate(task, datamodule=dm, verbose=False)[0]
    assert abs(out["val/loss"] - math.log(out["val/ppl"])) < 1e-5, out


def test_pydoc_mlm_splits_share_no_text():
    """A sentence the help topics repeat went into several splits: held-out MLM text was trained on."""
    from zoo.data.corpus import PydocMLM

    examples = PydocMLM(vocab_size=1000, max_number=999, n_test=100, n_val=50).make_examples()
    texts = {split: [e["text"] for e in rows] for split, rows in examples.items()}
    assert len(texts["val"]) > 100 and len(texts["test"]) > 100
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(texts[a]) & set(texts[b]), (a, b)


def test_seq2seq_validation_loss_is_the_mean_per_target_token_at_any_batch_size():
    """val/loss weighted each batch's token mean by its texts, so it changed with the evaluation batch size."""
    from zoo.data.numbers import NumberTranslation

    make = lambda bs: NumberTranslation(tasks=["en-fr"], max_number=999, n_test=100, n_val=50, vocab_size=500,  # noqa: E731
                                        batch_size=bs)
    torch.manual_seed(0)
    task = Seq2Seq("transformer_tiny", data_overrides=make(16).model_overrides, max_new_tokens=2)
    losses = []
    for bs in (16, 50):
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        losses.append(trainer.validate(task, datamodule=make(bs), verbose=False)[0]["val/loss"])
    assert abs(losses[0] - losses[1]) < 1e-5, losses


def test_per_task_exact_match_counts_a_batch_holding_one_task():
    """val/exact_match/<task> was logged only for batches holding several tasks: a last batch of one row was left out."""
    from zoo.data.numbers import NumberTranslation

    dm = NumberTranslation(tasks=["en-fr", "fr-en"], max_number=999, n_test=100, n_val=50, vocab_size=500, batch_size=33)
    task = Seq2Seq("transformer_tiny", data_overrides=dm.model_overrides, max_new_tokens=2)
    cfg, calls = task.model.config, []

    def generate(batch):  # the reference translations in the last batch (one row), nothing right before it
        calls.append(len(batch["labels"]))
        right = len(calls) == 4
        rows = [[cfg.decoder_start_token_id] + ([t for t in lab.tolist() if t != -100] if right else [cfg.eos_token_id])
                for lab in batch["labels"]]
        width = max(map(len, rows))
        return torch.tensor([r + [cfg.pad_token_id] * (width - len(r)) for r in rows])

    task.generate = generate
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.validate(task, datamodule=dm, verbose=False)[0]
    assert calls == [33, 33, 33, 1]
    assert out["val/exact_match"] == pytest.approx(1 / 100)
    per_task = {k.rsplit("/", 1)[1]: v for k, v in out.items() if k.startswith("val/exact_match/")}
    assert sorted(per_task) == ["en-fr", "fr-en"] and sum(per_task.values()) == pytest.approx(1 / 50), per_task  # 1 of 50
