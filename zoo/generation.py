"""Autoregressive generation for every encoder–decoder in zoo.

A model qualifies by providing
    encode(inputs, [attention_mask=...]) -> memory (B, S, D)
    decode(decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None, cache=None) -> (B, T, V)
and a `.config` with `decoder_start_token_id`, `pad_token_id` and `eos_token_id`.
`inputs` are handed to `encode` untouched, so an image-to-text model (pixels in) works too.

Decoding strategies: greedy, sampling (temperature / top-k / top-p) and beam search with the
GNMT / transformers length penalty (sum of log-probs / generated_length ** length_penalty).
With use_cache=True each step feeds only the newest token and keeps keys/values in a
zoo.core.KVCache; with use_cache=False the whole prefix is recomputed (same tokens, slower).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .core import KVCache


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int = 0) -> torch.Tensor:
    """Teacher-forcing decoder input: prepend `start_id`, drop the last label, and replace the
    loss-ignore value -100 by `pad_id` (T5's `_shift_right`)."""
    out = labels.new_full(labels.shape, start_id)
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(out == -100, pad_id)


@dataclass
class _Setup:
    memory: torch.Tensor
    memory_mask: torch.Tensor | None
    start: int
    pad: int
    eos: int | None


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf; the best token always survives."""
    if top_k is not None and top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already cover top_p of the mass
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _step(model, tokens, setup: _Setup, cache: KVCache | None) -> torch.Tensor:
    """Log-probabilities (float32) of the next token after `tokens`."""
    inp = tokens[:, -1:] if cache is not None else tokens
    logits = model.decode(inp, setup.memory, memory_mask=setup.memory_mask, cache=cache)[:, -1]
    return logits.float().log_softmax(dim=-1)


def greedy_search(model, setup: _Setup, max_new_tokens: int, use_cache: bool = True, do_sample: bool = False,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy or sampled decoding; finished rows (after EOS) are filled with pad."""
    batch = setup.memory.shape[0]
    tokens = torch.full((batch, 1), setup.start, dtype=torch.long, device=setup.memory.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    cache = KVCache() if use_cache else None
    for _ in range(max_new_tokens):
        logp = _step(model, tokens, setup, cache)
        if do_sample:
            logits = _filter_logits(logp / temperature, top_k, top_p)
            nxt = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)
        else:
            nxt = logp.argmax(dim=-1)
        nxt = nxt.masked_fill(finished, setup.pad)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if setup.eos is not None:
            finished |= nxt == setup.eos
            if finished.all():
                break
    return tokens


def beam_search(model, setup: _Setup, max_new_tokens: int, num_beams: int, length_penalty: float = 1.0,
                use_cache: bool = True) -> torch.Tensor:
    """Beam search as in transformers: keep `num_beams` live hypotheses per input; a hypothesis
    ending in EOS is moved to a finished list scored sum(log p) / generated_len ** length_penalty;
    an input is done once it has num_beams finished hypotheses and no live beam can still beat
    the worst of them (the transformers "heuristic" stopping rule)."""
    batch, k = setup.memory.shape[0], num_beams
    device = setup.memory.device
    # every input repeated k times: rows b*k .. b*k+k-1 are the beams of input b
    setup = _Setup(setup.memory.repeat_interleave(k, 0),
                   None if setup.memory_mask is None else setup.memory_mask.repeat_interleave(k, 0),
                   setup.start, setup.pad, setup.eos)
    tokens = torch.full((batch * k, 1), setup.start, dtype=torch.long, device=device)
    beam_scores = torch.zeros(batch, k, device=device)
    beam_scores[:, 1:] = float("-inf")  # identical beams at step 0: let only the first one expand
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(batch)]
    done = [False] * batch
    cache = KVCache() if use_cache else None
    for step in range(1, max_new_tokens + 1):
        logp = _step(model, tokens, setup, cache)  # (B*k, V)
        vocab = logp.shape[-1]
        scores = (logp + beam_scores.view(-1, 1)).view(batch, k * vocab)
        top_scores, top_idx = scores.topk(2 * k, dim=1)  # 2k: enough to refill k beams after EOS
        next_scores = torch.zeros(batch, k, device=device)
        next_tokens = torch.full((batch, k), setup.pad, dtype=torch.long, device=device)
        next_rows = torch.zeros(batch, k, dtype=torch.long, device=device)
        for b in range(batch):
            if done[b]:  # keep a dummy beam so the tensors keep their shape
                next_rows[b] = b * k
                continue
            filled = 0
            for rank, (score, idx) in enumerate(zip(top_scores[b].tolist(), top_idx[b].tolist())):
                row, tok = b * k + idx // vocab, idx % vocab
                if setup.eos is not None and tok == setup.eos:
                    if rank < k:  # an EOS outside the top k is not a competitive hypothesis
                        hyp = torch.cat([tokens[row], tokens.new_tensor([tok])])
                        _add_hypothesis(finished[b], k, score / step ** length_penalty, hyp)
                    continue
                next_scores[b, filled], next_tokens[b, filled], next_rows[b, filled] = score, tok, row
                filled += 1
                if filled == k:
                    break
            best_live = next_scores[b].max().item() / step ** length_penalty
            done[b] = len(finished[b]) >= k and min(s for s, _ in finished[b]) >= best_live
        if all(done):
            break
        rows = next_rows.view(-1)
        tokens = torch.cat([tokens[rows], next_tokens.view(-1, 1)], dim=1)
        beam_scores = next_scores
        if cache is not None:
            cache.reorder(rows)
    for b in range(batch):  # inputs still running at the length limit: live beams compete too
        if not done[b]:
            for j in range(k):
                _add_hypothesis(finished[b], k, beam_scores[b, j].item() / step ** length_penalty, tokens[b * k + j])
    best = [max(finished[b], key=lambda h: h[0])[1] for b in range(batch)]
    out = torch.full((batch, max(len(h) for h in best)), setup.pad, dtype=torch.long, device=device)
    for b, hyp in enumerate(best):
        out[b, : len(hyp)] = hyp
    return out


def _add_hypothesis(hyps: list, k: int, score: float, tokens: torch.Tensor) -> None:
    hyps.append((score, tokens))
    if len(hyps) > k:
        hyps.remove(min(hyps, key=lambda h: h[0]))


def sequence_scores(model, inputs, sequences: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    eos_token_id: int | None = None) -> torch.Tensor:
    """Sum of the model's log-probabilities of each generated sequence (after its start token,
    up to and including the first EOS); what beam search maximises when length_penalty=0."""
    memory = model.encode(inputs) if attention_mask is None else model.encode(inputs, attention_mask=attention_mask)
    logp = model.decode(sequences[:, :-1], memory, memory_mask=attention_mask).float().log_softmax(-1)
    token_logp = logp.gather(-1, sequences[:, 1:, None]).squeeze(-1)
    keep = torch.ones_like(token_logp, dtype=torch.bool)
    if eos_token_id is not None:
        is_eos = (sequences[:, 1:] == eos_token_id).long()
        keep = (is_eos.cumsum(1) - is_eos) == 0  # everything up to and including the first EOS
    return (token_logp * keep).sum(-1)


class GenerationMixin:
    """Adds `generate` to a model with `encode` / `decode` (see the module docstring)."""

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        decoder_start_token_id: int | None = None,
        length_penalty: float = 1.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        ignore_eos: bool = False,
    ) -> torch.Tensor:
        """Token ids (B, T): the decoder start token, then up to max_new_tokens tokens; after EOS
        a row is padded with pad. eos/pad/start default to the model config's ids;
        ignore_eos=True always generates max_new_tokens tokens (benchmarks)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        if do_sample and num_beams > 1:
            raise ValueError("beam sampling is not supported; use do_sample=True with num_beams=1, or num_beams>1 without sampling")
        if do_sample and temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; use do_sample=False for greedy")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        cfg = self.config
        was_training = self.training
        self.eval()
        try:
            return self._generate(inputs, attention_mask, cfg, max_new_tokens, num_beams, do_sample, temperature, top_k,
                                  top_p, eos_token_id, pad_token_id, decoder_start_token_id, length_penalty, use_cache,
                                  generator, ignore_eos)
        finally:
            self.train(was_training)

    def _generate(self, inputs, attention_mask, cfg, max_new_tokens, num_beams, do_sample, temperature, top_k, top_p,
                  eos_token_id, pad_token_id, decoder_start_token_id, length_penalty, use_cache, generator, ignore_eos):
        setup = _Setup(
            memory=self.encode(inputs) if attention_mask is None else self.encode(inputs, attention_mask=attention_mask),
            memory_mask=attention_mask,
            start=cfg.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id,
            pad=cfg.pad_token_id if pad_token_id is None else pad_token_id,
            eos=None if ignore_eos else getattr(cfg, "eos_token_id", None) if eos_token_id is None else eos_token_id,
        )
        if num_beams > 1:
            return beam_search(self, setup, max_new_tokens, num_beams, length_penalty, use_cache)
        return greedy_search(self, setup, max_new_tokens, use_cache, do_sample, temperature, top_k, top_p, generator)
