"""Text tasks: masked-LM pre-training, sequence / sentence-pair / token classification,
sequence-to-sequence (text-to-text) with validation by generation, and causal (next-token) language
modelling with perplexity.

Batches are dicts made by the zoo.data text modules: input_ids, attention_mask[, token_type_ids],
labels (class ids; -100 where a token has no label) [, target_text, task].
"""
from __future__ import annotations

import re
from collections import defaultdict

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import BLEUScore, CHRFScore

from ..registry import get_config
from ..weights import read_state_dict
from .base import ZooTask, content_generator


# ---------------------------------------------------------------------------------------------
# shared helpers
def load_matching(model: torch.nn.Module, path: str) -> dict[str, list[str]]:
    """Copy every tensor of a checkpoint whose name and shape match into `model` (e.g. a pre-trained
    encoder into a classifier); return what was loaded, skipped (not in the model / other shape) and left new."""
    from ..rundir import resolve_checkpoint

    path = resolve_checkpoint(path)
    sd = read_state_dict(path)
    own = model.state_dict()
    loaded = [k for k, v in sd.items() if k in own and own[k].shape == v.shape]
    skipped = sorted(set(sd) - set(loaded))
    model.load_state_dict({k: sd[k] for k in loaded}, strict=False)
    report = {"loaded": sorted(loaded), "skipped": skipped, "new": sorted(set(own) - set(loaded))}
    if not loaded:
        raise ValueError(f"init_from={path!r}: no tensor of the checkpoint fits the model (names or shapes differ); "
                         "check that both runs use the same model family, size and tokenizer")
    total = sum(v.numel() for v in own.values() if v.is_floating_point())
    fits = sum(own[k].numel() for k in loaded if own[k].is_floating_point())
    if total and fits < 0.5 * total:  # a few layer norms of another architecture fit by chance (T5 into BERT: 3%)
        raise ValueError(f"init_from={path!r}: only {fits / total:.0%} of the model's weights ({len(loaded)} of {len(own)} "
                         "tensors) fit the checkpoint, which holds another architecture; init_from continues a run of the "
                         "same one (bert_mlm into bert_pairs, mae_mnist into mae_mnist_finetune: over 99%): pass such a run")
    rank_zero_info(f"init_from {path}: loaded {len(loaded)} tensors; skipped {len(skipped)} "
                   f"({', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}); newly initialised {len(report['new'])} "
                   f"({', '.join(report['new'][:8])}{' ...' if len(report['new']) > 8 else ''})")
    return report


def _with_head(model: str, overrides: dict | None, head: str) -> dict:
    """BERT-like models choose their head by config; pick the task's unless the user set one."""
    fields = set(get_config(model).__dataclass_fields__)
    return {"head": head, **(overrides or {})} if "head" in fields else dict(overrides or {})


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, mask_token_id: int, random_ids: torch.Tensor,
                prob: float = 0.15, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose each maskable token with probability `prob`; of the chosen, 80% become
    [MASK], 10% a random token from `random_ids`, 10% stay. Labels are the original ids there, -100 elsewhere."""
    rand = lambda: torch.rand(input_ids.shape, device=input_ids.device, generator=generator)  # noqa: E731
    chosen = (rand() < prob) & maskable
    labels = input_ids.masked_fill(~chosen, -100)
    r = rand()
    to_mask = chosen & (r < 0.8)
    to_random = chosen & (r >= 0.8) & (r < 0.9)
    picks = random_ids.to(input_ids.device)[torch.randint(len(random_ids), input_ids.shape, device=input_ids.device,
                                                          generator=generator)]
    inputs = input_ids.masked_fill(to_mask, mask_token_id)
    inputs = torch.where(to_random, picks, inputs)
    return inputs, labels


def _lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    if not (labels != -100).any():  # nothing to predict in this batch: a zero that keeps the graph
        return logits.sum() * 0.0
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100, label_smoothing=label_smoothing)


class _TextTask(ZooTask):
    """Pops data keys meant for the task (not the model) and applies `init_from`."""

    task_keys: tuple[str, ...] = ()

    def __init__(self, model: str, init_from: str | None = None, data_overrides: dict | None = None, **kwargs):
        overrides = dict(data_overrides or {})
        task_info = {k: overrides.pop(k) for k in self.task_keys if k in overrides}
        super().__init__(model, data_overrides=overrides, **kwargs)
        self.task_info = task_info
        self.init_report = load_matching(self.model, init_from) if init_from else None

    def _model_inputs(self, batch: dict) -> dict:
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return {k: batch[k] for k in keys if k in batch}


# ---------------------------------------------------------------------------------------------
class MaskedLM(_TextTask):
    """Masked-language-model pre-training (BERT): 15% of non-special tokens, 80/10/10; logs loss and masked-token accuracy."""

    test_metrics = ("test/loss", "test/acc")

    task_keys = ("mask_token_id", "special_token_ids")

    def __init__(self, model: str = "bert_tiny", mlm_probability: float = 0.15, mask_token_id: int | None = None,
                 **kwargs):
        super().__init__(model, **kwargs)
        self.mask_token_id = self.task_info.get("mask_token_id", mask_token_id)
        if self.mask_token_id is None:
            raise ValueError("MaskedLM needs the tokenizer's [MASK] id: use a data module that provides mask_token_id "
                             "(e.g. zoo.data.corpus.PydocMLM) or pass mask_token_id=")
        special = torch.tensor(sorted(set(self.task_info.get("special_token_ids", [])) | {self.model.config.pad_token_id,
                                                                                             self.mask_token_id}))
        vocab = torch.arange(self.model.config.vocab_size)
        self.register_buffer("special_ids", special, persistent=False)
        self.register_buffer("random_ids", vocab[~torch.isin(vocab, special)], persistent=False)
        self.val_acc = MulticlassAccuracy(self.model.config.vocab_size, average="micro", ignore_index=-100)
        self.test_acc = MulticlassAccuracy(self.model.config.vocab_size, average="micro", ignore_index=-100)

    def _maskable(self, batch) -> torch.Tensor:
        ids = batch["input_ids"]
        maskable = ~torch.isin(ids, self.special_ids)
        if "attention_mask" in batch:
            maskable &= batch["attention_mask"].bool()
        return maskable

    def _step(self, batch, masked: tuple[torch.Tensor, torch.Tensor] | None = None):
        if masked is None:
            masked = mask_tokens(batch["input_ids"], self._maskable(batch), self.mask_token_id, self.random_ids,
                                 self.hparams.mlm_probability)
        inputs, labels = masked
        logits = self.model(inputs, attention_mask=batch.get("attention_mask"), token_type_ids=batch.get("token_type_ids"))
        return _lm_loss(logits, labels), logits, labels

    def evaluation_masks(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) as `mask_tokens` makes them, each text's drawn from a generator seeded by its own tokens
        (padding left out): every evaluation scores the same tokens of a text, whatever its batch, the batch size or
        the number of processes. With the global generator each validation of the same weights scored other tokens
        (val/loss 6.985 then 6.974), so epochs, `zoo fit`'s test and `zoo test` of one checkpoint differed by the masks."""
        ids, maskable = batch["input_ids"], self._maskable(batch)
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
        inputs, labels = ids.clone(), torch.full_like(ids, -100)
        random_ids = self.random_ids.cpu()
        for i in range(len(ids)):
            row = ids[i][real[i]].cpu()
            row_in, row_labels = mask_tokens(row[None], maskable[i][real[i]].cpu()[None], self.mask_token_id, random_ids,
                                             self.hparams.mlm_probability, generator=content_generator(row))
            inputs[i][real[i]] = row_in[0].to(ids.device)
            labels[i][real[i]] = row_labels[0].to(ids.device)
        return inputs, labels

    def training_step(self, batch, batch_idx):
        loss, _, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def _eval(self, batch, stage: str, metric):
        loss, logits, labels = self._step(batch, self.evaluation_masks(batch))
        n = len(batch["input_ids"])
        # weighted by the batch's masked tokens: the mean loss per masked token of the split, over the tokens val/acc
        # counts (weighted by texts, it changed with the batch size: 6.9273 at 32, 6.9216 at 50, same weights and masks)
        self.log_mean(f"{stage}/loss", loss, (labels != -100).sum(), prog_bar=True, batch_size=n)
        metric(logits.flatten(0, -2), labels.flatten())
        self.log(f"{stage}/acc", metric, batch_size=n)

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx):
        """Fill in [MASK] tokens of the inputs: returns the texts with each [MASK] replaced by the top prediction."""
        ids = batch["input_ids"]
        logits = self.model(ids, attention_mask=batch.get("attention_mask"))
        filled = torch.where(ids == self.mask_token_id, logits.argmax(-1), ids)
        dm = getattr(self.trainer, "datamodule", None)
        return dm.decode(filled) if dm is not None and hasattr(dm, "decode") else filled


# ---------------------------------------------------------------------------------------------
class SequenceClassification(_TextTask):
    """One label per text or text pair (BERT head "cls"); cross-entropy, accuracy."""

    test_metrics = ("test/loss", "test/acc")

    head = "cls"

    def __init__(self, model: str = "bert_tiny", label_smoothing: float = 0.0, model_kwargs: dict | None = None, **kwargs):
        super().__init__(model, model_kwargs=_with_head(model, model_kwargs, self.head), **kwargs)
        n = self.model.num_classes
        if n < 2:
            raise ValueError(f"{type(self).__name__} needs num_classes >= 2 from the data module or model_kwargs, got {n}")
        self.val_acc = MulticlassAccuracy(n, average="micro", ignore_index=-100)
        self.test_acc = MulticlassAccuracy(n, average="micro", ignore_index=-100)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**self._model_inputs(batch))

    def _loss(self, logits, labels):
        return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100,
                               label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch, batch_idx):
        loss = self._loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def _eval(self, batch, stage: str, metric):
        logits, n = self(batch), len(batch["input_ids"])
        # weighted by the batch's labelled positions (texts; tokens for TokenClassification): the split's mean
        self.log_mean(f"{stage}/loss", self._loss(logits, batch["labels"]), (batch["labels"] != -100).sum(), prog_bar=True,
                      batch_size=n)
        metric(logits.flatten(0, -2), batch["labels"].flatten())
        self.log(f"{stage}/acc", metric, prog_bar=True, batch_size=n)

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx):
        probs = self(batch).float().softmax(-1)
        return {"pred": probs.argmax(-1), "prob": probs.max(-1).values}


class TokenClassification(SequenceClassification):
    """One label per token (BERT head "token"); labels -100 on padding / sub-word continuations are ignored."""

    head = "token"


# ---------------------------------------------------------------------------------------------
class Seq2Seq(_TextTask):
    """Sequence-to-sequence / text-to-text: teacher forcing with label smoothing; validation and
    test by generation (greedy or beam) scored by exact match, BLEU and chrF, overall and per task.

    Logs train/loss, val/loss, val/exact_match, val/bleu, val/chrf, val/exact_match/<task> (and test/*).
    """

    test_metrics = ("test/loss", "test/exact_match", "test/bleu", "test/chrf", "test/exact_match/*")

    def __init__(self, model: str = "transformer_tiny", label_smoothing: float = 0.1, num_beams: int = 1,
                 max_new_tokens: int = 32, **kwargs):
        super().__init__(model, **kwargs)
        for stage in ("val", "test"):
            setattr(self, f"{stage}_em", MeanMetric())
            setattr(self, f"{stage}_bleu", BLEUScore(n_gram=4, smooth=True))
            setattr(self, f"{stage}_chrf", CHRFScore())

    def forward(self, batch: dict) -> torch.Tensor:
        cfg = self.model.config
        from ..generation import shift_right

        decoder_input_ids = shift_right(batch["labels"], cfg.decoder_start_token_id, cfg.pad_token_id)
        # right-padded targets need no decoder mask: the causal mask already hides later positions
        return self.model(batch["input_ids"], decoder_input_ids, attention_mask=batch.get("attention_mask"))

    def training_step(self, batch, batch_idx):
        loss = _lm_loss(self(batch), batch["labels"], self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def generate(self, batch: dict) -> torch.Tensor:
        return self.model.generate(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                   max_new_tokens=self.hparams.max_new_tokens, num_beams=self.hparams.num_beams)

    def _decode(self, ids: torch.Tensor) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "decode"):
            return [_normalise(t) for t in dm.decode(ids)]
        # no tokenizer at hand: compare token ids up to EOS
        eos = self.model.config.eos_token_id
        out = []
        for row in ids.tolist():
            row = row[1:]
            out.append(" ".join(str(t) for t in (row[:row.index(eos)] if eos in row else row)))
        return out

    def _eval(self, batch, stage: str):
        loss, n = _lm_loss(self(batch), batch["labels"]), len(batch["input_ids"])  # plain cross-entropy
        # weighted by the batch's target tokens: the split's mean loss per target token, whatever the batch size
        self.log_mean(f"{stage}/loss", loss, (batch["labels"] != -100).sum(), prog_bar=True, batch_size=n)
        preds = self._decode(self.generate(batch))
        targets = [_normalise(t) for t in batch["target_text"]]
        hits = torch.tensor([float(p == t) for p, t in zip(preds, targets)], device=self.device)
        em, bleu, chrf = getattr(self, f"{stage}_em"), getattr(self, f"{stage}_bleu"), getattr(self, f"{stage}_chrf")
        em.update(hits)
        bleu.update(preds, [[t] for t in targets])
        chrf.update(preds, [[t] for t in targets])
        self.log(f"{stage}/exact_match", em, prog_bar=True, batch_size=n)
        self.log(f"{stage}/bleu", bleu, batch_size=n)
        self.log(f"{stage}/chrf", chrf, batch_size=n)
        per_task = defaultdict(list)
        for task, h in zip(batch.get("task", []), hits.tolist()):
            per_task[task].append(h)
        # per task where the data has several (its task_names), every batch: decided batch by batch, a batch holding
        # one task alone (a last batch of one row) was left out of val/exact_match/<task>
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        several = len(set(getattr(dm, "task_names", None) or ())) > 1
        if per_task and (stage == "test" or several or len(per_task) > 1):
            for task, hs in sorted(per_task.items()):
                self.log_mean(f"{stage}/exact_match/{task}", torch.tensor(hs))

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self._decode(self.generate(batch))


# ---------------------------------------------------------------------------------------------
class CausalLM(_TextTask):
    """Next-token language modelling for decoder-only models (GPT-2, Llama): cross-entropy of each
    token given the ones before it, padding ignored (labels -100, or the attention mask's zeros);
    logs train/loss, val/loss, val/ppl (perplexity = exp(mean token loss over the whole split)) and
    test/*. predict_step continues each prompt with `generate` and returns the texts; do_sample, temperature, top_k
    and top_p left at None take the model's defaults (`config.sampling`: a converted model samples as transformers
    would), else greedy decoding."""

    test_metrics = ("test/loss", "test/ppl")

    def __init__(self, model: str = "gpt2_tiny", max_new_tokens: int = 32, do_sample: bool | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None, **kwargs):
        super().__init__(model, **kwargs)
        from ..contract import kind_of
        from ..generation import check_generate_arguments, resolve_do_sample

        # checked now: fit never generates, and a bad setting would surface only at the checkpoint's first predict;
        # do_sample left at None is the model's declared default (config.sampling), as in generate
        sampling, _ = resolve_do_sample(self.model, do_sample)
        check_generate_arguments(torch.ones(1, 1, dtype=torch.long), None, max_new_tokens, 1, sampling, temperature,
                                 top_k, top_p, None, None, decoder_only=True, declared=do_sample is None and sampling)
        if kind_of(self.model) != "decoder_only":
            raise ValueError(f"CausalLM trains decoder-only models; {model!r} is a {kind_of(self.model)} model "
                             "(pick one of zoo.list_models('gpt2*') or zoo.list_models('llama*'))")
        for stage in ("val", "test"):  # sums over the split: ppl = exp(total loss / total tokens)
            setattr(self, f"{stage}_nll", SumMetric())
            setattr(self, f"{stage}_tokens", SumMetric())

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(batch["input_ids"], attention_mask=batch.get("attention_mask"))

    @staticmethod
    def labels_of(batch: dict) -> torch.Tensor:
        labels = batch.get("labels")
        if labels is None:
            labels = batch["input_ids"]
            if "attention_mask" in batch:
                labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
        return labels

    def _losses(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of next-token losses, number of predicted tokens)."""
        logits, labels = self(batch)[:, :-1], self.labels_of(batch)[:, 1:]
        total = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100, reduction="sum")
        return total, (labels != -100).sum()

    def training_step(self, batch, batch_idx):
        total, n = self._losses(batch)
        loss = total / n.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def _eval(self, batch, stage: str):
        total, n = self._losses(batch)
        b = len(batch["input_ids"])
        # weighted by the batch's predicted tokens: val/loss is the mean token loss of the split, log(val/ppl)
        # (weighted by rows, a batch of short texts counted as much as one of long texts)
        self.log_mean(f"{stage}/loss", total / n.clamp(min=1), n, prog_bar=True, batch_size=b)
        nll, tokens = getattr(self, f"{stage}_nll"), getattr(self, f"{stage}_tokens")
        nll.update(total.detach())
        tokens.update(n)

    def _log_ppl(self, stage: str):
        nll, tokens = getattr(self, f"{stage}_nll"), getattr(self, f"{stage}_tokens")
        if self.trainer.sanity_checking:
            nll.reset(), tokens.reset()
            return
        ppl = torch.exp(nll.compute() / tokens.compute().clamp(min=1))
        self.log(f"{stage}/ppl", ppl, prog_bar=True)
        nll.reset(), tokens.reset()

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val")

    def on_validation_epoch_end(self):
        self._log_ppl("val")

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test")

    def on_test_epoch_end(self):
        self._log_ppl("test")

    def fit_prompts(self, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Left-padded prompts too long for the model's positions with max_new_tokens after them keep their first token
        (<s>) and their end, with a warning (transformers' text-generation pipeline, handle_long_generation="hole")."""
        declared, new = getattr(self.model, "max_decode_positions", lambda: None)(), self.hparams.max_new_tokens
        if declared is None or ids.shape[1] + new <= declared[0]:
            return ids, mask
        limit, field = declared
        keep = max(2, limit - new)
        if ids.shape[1] <= keep:
            return ids, mask  # generate itself generates fewer tokens, with a warning
        import warnings

        warnings.warn(f"a prompt of {ids.shape[1]} tokens and max_new_tokens={new} do not fit the {limit} positions of "
                      f"{type(self.model).__name__} ({field}): keeping the prompt's first token and its last {keep - 1}",
                      stacklevel=2)
        first = torch.zeros(len(ids), dtype=torch.long, device=ids.device) if mask is None else mask.long().argmax(1)
        lead, cut = ids[torch.arange(len(ids), device=ids.device), first], first < ids.shape[1] - keep  # rows cut short
        ids = ids[:, -keep:].clone()
        ids[cut, 0] = lead[cut]  # a cut row is all real tokens: its first one replaces the oldest kept
        return ids, None if mask is None else mask[:, -keep:]

    def generate(self, batch: dict) -> torch.Tensor:
        hp = self.hparams
        ids, mask = self.fit_prompts(batch["input_ids"], batch.get("attention_mask"))
        return self.model.generate(ids, attention_mask=mask,
                                   max_new_tokens=hp.max_new_tokens, do_sample=hp.do_sample, temperature=hp.temperature,
                                   top_k=hp.top_k, top_p=hp.top_p)

    def predict_step(self, batch, batch_idx):
        """Each prompt followed by its continuation, as text (token ids without a tokenizer)."""
        out = self.generate(batch)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "decode"):
            return out
        return [_normalise(t) for t in dm.decode(out)]  # pads and <s> / </s> are skipped


# ---------------------------------------------------------------------------------------------
# unigram baseline of CausalLM's perplexity
def next_token_targets(batch: dict) -> torch.Tensor:
    """The tokens CausalLM scores in a batch, flat: labels[:, 1:] (every row's tokens after its first),
    padding (-100 / attention mask 0) dropped — the same positions as CausalLM._losses."""
    labels = CausalLM.labels_of(batch)[:, 1:]
    return labels[labels != -100]


def unigram_counts(batches, vocab_size: int) -> torch.Tensor:
    """How often each token id is a next-token target over `batches` (vocab_size,) int64."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for batch in batches:
        counts += torch.bincount(next_token_targets(batch).cpu(), minlength=vocab_size)[:vocab_size]
    return counts


def unigram_perplexity(train_batches, test_batches, vocab_size: int, smoothing: float = 1.0) -> float:
    """Perplexity on `test_batches` of a unigram model fitted on `train_batches`, over the tokens CausalLM
    scores: p(w) = (count(w) + smoothing) / (N + smoothing * vocab_size) (add-one smoothing by default,
    over the whole vocabulary), ppl = exp(-mean over test targets of log p(w)) — CausalLM's test/ppl of a
    model that ignores the context."""
    counts = unigram_counts(train_batches, vocab_size).double()
    logp = ((counts + smoothing) / (counts.sum() + smoothing * vocab_size)).log()
    test = unigram_counts(test_batches, vocab_size).double()
    if test.sum() == 0:
        raise ValueError("the test batches have no scored token (every row shorter than 2 real tokens)")
    return float(torch.exp(-(test * logp).sum() / test.sum()))
