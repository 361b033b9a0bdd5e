"""Autoregressive generation for every zoo model with a decoder: encoder–decoders and decoder-only.

Encoder–decoders provide
    encode(inputs, [attention_mask=...]) -> memory (B, S, D)
    decode(decoder_input_ids, memory, memory_mask=None, decoder_attention_mask=None, cache=None) -> (B, T, V)
and a `.config` with `decoder_start_token_id`, `pad_token_id` and `eos_token_id`. `inputs` are handed
to `encode` untouched, so an image-to-text model (pixels in) works too. The output starts with the
decoder start token.

Decoder-only models (no `encode`) provide
    decode(input_ids, cache=None, attention_mask=None) -> (B, T, V)
and a `.config` with `pad_token_id` / `eos_token_id` (either may be missing). `inputs` is the prompt
(B, T) of token ids: it goes through the KV cache once, then one token per step, and the output is
the prompt followed by the new tokens (as in transformers). Prompts of different lengths are batched
LEFT-padded with `attention_mask` (1 = token, 0 = pad); `decode` then receives the mask of every
position so far, (B, past + new), prompt mask then ones. Positions are the model's business: the
columns are numbered from the first column of the batch, pads included, and `generate` passes no
position ids. Models with relative positions (RoPE) need nothing more (scores depend on offsets only
and pads are never attended); models with absolute positions should number each row from its first
real token, `attention_mask.cumsum(-1) - 1` (transformers' position_ids), so that a padded prompt
decodes exactly as it does alone. `zoo.core.decoder_padding_mask` builds the attention mask.

Both kinds share one search: a `_Setup` holds the tokens every hypothesis starts from (the start
token or the prompt), the memory (None for decoder-only models) and the prompt's mask.
Decoding strategies: greedy, sampling (temperature / top-k / top-p) and beam search with the
GNMT / transformers length penalty (sum of log-probs / generated_length ** length_penalty).
With use_cache=True the first step feeds the whole prefix and later steps only the newest token,
keeping keys/values in a zoo.core.KVCache; with use_cache=False the whole sequence is recomputed
each step (same tokens, slower).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    """What a search starts from. prefix (B, P): the tokens every hypothesis begins with, the
    decoder start token or the prompt; memory / memory_mask: the encoder's output and padding
    (memory None: a decoder-only model); prefix_mask (B, P): a left-padded prompt's 1/0 mask; eos: the id or ids
    that end a hypothesis (kept as a tuple)."""

    prefix: torch.Tensor
    pad: int
    eos: int | tuple[int, ...] | None
    memory: torch.Tensor | None = None
    memory_mask: torch.Tensor | None = None
    prefix_mask: torch.Tensor | None = None

    def __post_init__(self):
        self.eos = eos_ids(self.eos)

    def is_eos(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.isin(tokens, tokens.new_tensor(self.eos))

    @classmethod
    def encoder_decoder(cls, memory, memory_mask, start: int, pad: int, eos: int | tuple[int, ...] | None) -> _Setup:
        prefix = torch.full((memory.shape[0], 1), start, dtype=torch.long, device=memory.device)
        return cls(prefix, pad, eos, memory, memory_mask)

    def repeat(self, k: int) -> _Setup:
        """Every input repeated k times: rows b*k .. b*k+k-1 belong to input b (beam search)."""
        rep = lambda t: None if t is None else t.repeat_interleave(k, 0)  # noqa: E731
        return replace(self, prefix=rep(self.prefix), memory=rep(self.memory), memory_mask=rep(self.memory_mask),
                       prefix_mask=rep(self.prefix_mask))


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


def _step(model, tokens, setup: _Setup, cache: KVCache | None, max_length: int | None = None) -> torch.Tensor:
    """Log-probabilities (float32) of the next token after `tokens`. With a cache, the first call
    feeds the whole prefix and later calls only the newest token. A model's own rules on the next token
    (`process_next_token_logits(logp, length, max_length)`: forced EOS at the length limit, suppressed
    tokens, as converted from a transformers generation config) apply before any search."""
    inp = tokens[:, -1:] if cache is not None and cache.store else tokens
    if setup.memory is not None:
        logits = model.decode(inp, setup.memory, memory_mask=setup.memory_mask, cache=cache)
    else:
        mask = setup.prefix_mask
        if mask is not None:  # the prompt's mask, then ones for the generated tokens
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], tokens.shape[1] - mask.shape[1])], dim=1)
        logits = model.decode(inp, cache=cache, attention_mask=mask)
    logp = logits[:, -1].float().log_softmax(dim=-1)
    hook = getattr(model, "process_next_token_logits", None)
    return logp if hook is None or max_length is None else hook(logp, tokens.shape[1], max_length)


def greedy_search(model, setup: _Setup, max_new_tokens: int, use_cache: bool = True, do_sample: bool = False,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy or sampled decoding after the prefix; finished rows (after EOS) are filled with pad."""
    tokens = setup.prefix
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    cache = KVCache() if use_cache else None
    max_length = tokens.shape[1] + max_new_tokens
    for _ in range(max_new_tokens):
        logp = _step(model, tokens, setup, cache, max_length)
        if do_sample:
            # the best token at 0 before dividing: a temperature near 0 gives -inf elsewhere, never -inf everywhere
            logits = _filter_logits((logp - logp.amax(-1, keepdim=True)) / temperature, top_k, top_p)
            nxt = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)
        else:
            nxt = logp.argmax(dim=-1)
        nxt = nxt.masked_fill(finished, setup.pad)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if setup.eos is not None:
            finished |= setup.is_eos(nxt)
            if finished.all():
                break
    return tokens


def beam_search(model, setup: _Setup, max_new_tokens: int, num_beams: int, length_penalty: float = 1.0,
                use_cache: bool = True) -> torch.Tensor:
    """Beam search as in transformers: keep `num_beams` live hypotheses per input; a hypothesis
    ending in EOS is moved to a finished list scored sum(log p) / generated_len ** length_penalty;
    an input is done once it has num_beams finished hypotheses and no live beam can still beat
    the worst of them (the transformers "heuristic" stopping rule)."""
    batch, k = setup.prefix.shape[0], num_beams
    device = setup.prefix.device
    setup = setup.repeat(k)  # rows b*k .. b*k+k-1 are the beams of input b
    tokens = setup.prefix
    beam_scores = torch.zeros(batch, k, device=device)
    beam_scores[:, 1:] = float("-inf")  # identical beams at step 0: let only the first one expand
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(batch)]
    done = [False] * batch
    cache = KVCache() if use_cache else None
    candidates = max(2, 1 + len(setup.eos or ())) * k
    for step in range(1, max_new_tokens + 1):
        logp = _step(model, tokens, setup, cache, setup.prefix.shape[1] + max_new_tokens)  # (B*k, V)
        vocab = logp.shape[-1]
        scores = (logp + beam_scores.view(-1, 1)).view(batch, k * vocab)
        # (1 + number of EOS ids) * k candidates (transformers' beams_to_keep): each beam can end in every EOS id, and
        # k live beams must remain after removing them
        top_scores, top_idx = scores.topk(min(candidates, k * vocab), dim=1)
        next_scores = torch.full((batch, k), float("-inf"), device=device)  # a beam left unfilled never wins
        next_tokens = torch.full((batch, k), setup.pad, dtype=torch.long, device=device)
        next_rows = (torch.arange(batch, device=device) * k)[:, None].repeat(1, k)  # unfilled: a dummy of its own input
        for b in range(batch):
            if done[b]:  # keep a dummy beam so the tensors keep their shape
                continue
            filled = 0
            for rank, (score, idx) in enumerate(zip(top_scores[b].tolist(), top_idx[b].tolist())):
                row, tok = b * k + idx // vocab, idx % vocab
                if setup.eos is not None and tok in setup.eos:
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


def _is_encoder_decoder(model) -> bool:
    return callable(getattr(model, "encode", None))


def _encode(model, inputs, attention_mask):
    return model.encode(inputs) if attention_mask is None else model.encode(inputs, attention_mask=attention_mask)


def sequence_scores(model, inputs, sequences: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    eos_token_id: int | list[int] | None = None) -> torch.Tensor:
    """Sum of the model's log-probabilities of the generated tokens of each sequence (those after
    the start token, or after the prompt `inputs` of a decoder-only model), up to and including the
    first EOS; what beam search maximises when length_penalty=0."""
    if _is_encoder_decoder(model):
        prefix = 1
        logits = model.decode(sequences[:, :-1], _encode(model, inputs, attention_mask), memory_mask=attention_mask)
    else:
        prefix, mask = inputs.shape[1], attention_mask
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], sequences.shape[1] - 1 - prefix)], dim=1)
        logits = model.decode(sequences[:, :-1], attention_mask=mask)
    logp = logits[:, prefix - 1:].float().log_softmax(-1)
    new = sequences[:, prefix:]
    token_logp = logp.gather(-1, new[..., None]).squeeze(-1)
    keep = torch.ones_like(token_logp, dtype=torch.bool)
    if eos_token_id is not None:
        is_eos = torch.isin(new, new.new_tensor(eos_ids(eos_token_id))).long()
        keep = (is_eos.cumsum(1) - is_eos) == 0  # everything up to and including the first EOS
    return (token_logp * keep).sum(-1)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def eos_ids(eos) -> tuple[int, ...] | None:
    """An end-of-sequence id, or a list of them (transformers' eos_token_id, e.g. Llama 3's), as a tuple; None stays
    None. A list was compared with the batch element by element (row i against the i-th id)."""
    if eos is None:
        return None
    ids = (eos,) if not isinstance(eos, (list, tuple)) else tuple(eos)
    if not ids or not all(_is_int(i) for i in ids):
        raise ValueError(f"eos_token_id must be a token id (an int) or a non-empty list of them, got {eos!r}")
    return ids


SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p")


def sampling_field():
    """A config's `sampling` field: generate's defaults, not part of the architecture (a converted GPT-2 with
    transformers' top_k=50 still has the same config as the registered model of its sizes)."""
    return field(default=None, metadata={"architecture": False})


def _check_sampling_values(temperature, top_k, top_p, where: str = "") -> None:
    if temperature is not None and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"{where}temperature must be > 0, got {temperature!r}; use do_sample=False for greedy decoding")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise ValueError(f"{where}top_k must be an int >= 0, got {top_k!r}; top_k=0 keeps every token")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"{where}top_p must be in (0, 1], got {top_p!r}; top_p=1.0 keeps every token")


def check_sampling(sampling, field: str = "sampling") -> None:
    """A model's declared `generate` defaults (config field `field`): None, or a dict of SAMPLING_KEYS, e.g.
    {"do_sample": True, "temperature": 0.6, "top_k": 50, "top_p": 0.9} (what a transformers generation_config
    gives a converted model)."""
    if sampling is None:
        return
    if not isinstance(sampling, dict) or set(sampling) - set(SAMPLING_KEYS):
        raise ValueError(f"{field} must be None or a dict with keys among {', '.join(SAMPLING_KEYS)}, got {sampling!r}")
    if not isinstance(sampling.get("do_sample", False), bool):
        raise ValueError(f"{field}: do_sample must be True or False, got {sampling['do_sample']!r}")
    _check_sampling_values(sampling.get("temperature"), sampling.get("top_k"), sampling.get("top_p"), f"{field}: ")


def resolve_do_sample(model, do_sample: bool | None) -> tuple[bool, dict]:
    """The do_sample a `generate` call runs with (left at None: the model's declared `config.sampling` default, else
    greedy) and the declared defaults (checked; {} when none)."""
    declared = getattr(getattr(model, "config", None), "sampling", None) or {}
    check_sampling(declared or None, f"{type(model).__name__}.config.sampling")
    return (bool(declared.get("do_sample", False)) if do_sample is None else do_sample), declared


def check_generate_arguments(inputs, attention_mask, max_new_tokens, num_beams, do_sample, temperature, top_k, top_p,
                             generator, decoder_start_token_id, decoder_only: bool, declared: bool = False) -> None:
    """Refuse invalid or contradictory `generate` arguments, naming the argument, its value and the fix (`declared`:
    do_sample came from the model's config.sampling, not from the call)."""
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}; pass how many tokens to generate")
    if not _is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}; num_beams=1 is greedy search or sampling")
    _check_sampling_values(temperature, top_k, top_p)
    if do_sample and num_beams > 1:
        raise ValueError(f"do_sample=True{' (the model default, config.sampling)' if declared else ''} with "
                         f"num_beams={num_beams}: beam sampling is not supported; use do_sample=True with num_beams=1, or "
                         "num_beams>1 with do_sample=False")
    if not do_sample:
        for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("generator", generator)):
            if value is not None:
                raise ValueError(f"{name}={value!r} only applies to sampling but do_sample=False; pass do_sample=True "
                                 f"to sample, or drop {name} for greedy / beam search")
    if decoder_only and decoder_start_token_id is not None:
        raise ValueError(f"decoder_start_token_id={decoder_start_token_id} only applies to encoder-decoders; a "
                         "decoder-only model continues its prompt: put the start token at the front of inputs")
    if decoder_only and (not torch.is_tensor(inputs) or inputs.dim() != 2 or inputs.shape[1] < 1
                         or inputs.is_floating_point()):
        shape = tuple(inputs.shape) if torch.is_tensor(inputs) else type(inputs).__name__
        raise ValueError(f"a decoder-only model generates from a prompt of token ids (batch, length >= 1), got inputs "
                         f"{shape}; without a prompt, pass the BOS token as a (batch, 1) tensor")
    if attention_mask is None:
        return
    shape, in_shape = tuple(attention_mask.shape), tuple(inputs.shape) if torch.is_tensor(inputs) else None
    if len(shape) != 2 or in_shape is None or shape[0] != in_shape[0] or (len(in_shape) == 2 and shape != in_shape):
        raise ValueError(f"attention_mask has shape {shape} but inputs have shape {in_shape}; "
                         "pass the (batch, length) 1/0 mask that came with these inputs")
    empty = (attention_mask == 0).all(dim=1).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask rows {empty} are all zeros: those inputs have no token; drop them from the "
                         "batch or give each at least one token")
    if decoder_only and (attention_mask[:, 1:].bool() < attention_mask[:, :-1].bool()).any():
        raise ValueError("attention_mask pads a prompt on the right: new tokens would follow the padding; pad "
                         "decoder-only prompts on the left (tokenizer padding_side='left') or generate them one by one")


def _one_input(inputs, **aliases) -> torch.Tensor:
    """`inputs`, or the one transformers keyword (input_ids=, pixel_values=) that gave them."""
    given = {name: value for name, value in {"inputs": inputs, **aliases}.items() if value is not None}
    if len(given) != 1:
        raise ValueError(f"generate takes its inputs once, as inputs (positional), input_ids= or pixel_values=; got "
                         f"{', '.join(given) or 'none'}")
    return next(iter(given.values()))


class GenerationMixin:
    """Adds `generate` to a model with `encode` / `decode`, or `decode` only (see the module docstring).

    A family whose decoder has a position table declares its size in `max_decode_positions` (the prompt or the
    start token plus the generated tokens must fit): generate stops there, with a warning, instead of failing
    part-way, and refuses a prompt that leaves no position free before generating anything."""

    def max_decode_positions(self) -> tuple[int, str] | None:
        """(how many positions the decoder side holds, the config field that sets it); None: no limit."""
        return None

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        num_beams: int = 1,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        decoder_start_token_id: int | None = None,
        length_penalty: float = 1.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        ignore_eos: bool = False,
        *,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids (B, T): the decoder start token (encoder–decoders) or the prompt (decoder-only
        models), then up to max_new_tokens tokens; after EOS a row is padded with pad.
        eos/pad/start default to the model config's ids (without a pad id, EOS pads); eos_token_id may be a list of
        ids, any of which ends a row (as in transformers);
        ignore_eos=True always generates max_new_tokens tokens (benchmarks).
        A decoder-only prompt given without attention_mask has its pad tokens masked (as transformers' generate
        does) unless the pad id is an EOS id (the model's or eos_token_id's, also under ignore_eos).
        Sampling (do_sample=True) takes temperature, top_k, top_p and a generator. do_sample, temperature, top_k and
        top_p left at None take the model's declared defaults (`config.sampling`; a model converted from transformers
        carries its generation_config's, with transformers' own top_k=50 where that sets none, so it samples as
        transformers' generate does), else greedy decoding, temperature 1.0 and every token kept.
        transformers' keywords name the inputs too: generate(input_ids=...) or, for images, generate(pixel_values=...)."""
        inputs = _one_input(inputs, input_ids=input_ids, pixel_values=pixel_values)
        decoder_only = not _is_encoder_decoder(self)
        cfg = self.config
        named_eos = eos_ids(getattr(cfg, "eos_token_id", None) if eos_token_id is None else eos_token_id)
        eos = None if ignore_eos else named_eos
        pad = getattr(cfg, "pad_token_id", None) if pad_token_id is None else pad_token_id
        if pad is None:  # pad only fills rows that have finished: EOS does that job as well
            pad = 0 if eos is None else eos[0]
        inferred = False
        if (attention_mask is None and decoder_only and torch.is_tensor(inputs) and inputs.dim() == 2
                and not inputs.is_floating_point() and pad not in (named_eos or ()) and bool((inputs == pad).any())):
            # transformers' generate (decoder-only models) masks the prompt's pad tokens when no mask is given and
            # the pad id is not an EOS id: a left-padded batch then generates what each prompt generates alone
            attention_mask, inferred = inputs.ne(pad).long(), True
        from_config = do_sample is None
        do_sample, declared = resolve_do_sample(self, do_sample)
        try:
            check_generate_arguments(inputs, attention_mask, max_new_tokens, num_beams, do_sample, temperature, top_k,
                                     top_p, generator, decoder_start_token_id, decoder_only, from_config and do_sample)
        except ValueError as e:
            if not inferred:
                raise
            raise ValueError(f"{e} (the mask was inferred from the pad tokens, id {pad}, of inputs: pass attention_mask, "
                             "or pad_token_id if that id is a real token here)") from None
        max_new_tokens = self._fit_decode_positions(inputs if decoder_only else None, max_new_tokens)
        was_training = self.training
        self.eval()
        try:
            if decoder_only:
                setup = _Setup(inputs, pad, eos, prefix_mask=attention_mask)
            else:
                start = getattr(cfg, "decoder_start_token_id", None) if decoder_start_token_id is None else decoder_start_token_id
                if start is None:
                    raise ValueError(f"{type(self).__name__}.config has no decoder_start_token_id; pass decoder_start_token_id")
                setup = _Setup.encoder_decoder(_encode(self, inputs, attention_mask), attention_mask, start, pad, eos)
            if num_beams > 1:
                return beam_search(self, setup, max_new_tokens, num_beams, length_penalty, use_cache)
            if do_sample:  # what the call leaves unset, the model's declared defaults give
                temperature, top_k, top_p = (declared.get(k) if v is None else v for k, v in
                                             (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)))
            return greedy_search(self, setup, max_new_tokens, use_cache, do_sample,
                                 1.0 if temperature is None else temperature, top_k, top_p, generator)
        finally:
            self.train(was_training)

    def _fit_decode_positions(self, prompt: torch.Tensor | None, max_new_tokens: int) -> int:
        """max_new_tokens, or fewer where the prompt (decoder-only) or the start token (encoder-decoders) and
        max_new_tokens would not fit the decoder's positions; a prompt that leaves no position free is refused here,
        before any step."""
        declared = self.max_decode_positions()
        if declared is None:
            return max_new_tokens
        limit, field = declared
        start = prompt.shape[1] if prompt is not None else 1
        room = limit - start
        if room <= 0 and prompt is not None:
            raise ValueError(f"the prompt is {start} tokens long and {type(self).__name__} holds {limit} positions "
                             f"({field}): no room for a new token; pass at most {limit - 1} prompt tokens (e.g. its end, "
                             f"input_ids[:, -{limit - 1}:]) or create the model with a larger {field}")
        if max_new_tokens > room > 0:
            import warnings

            warnings.warn(f"max_new_tokens={max_new_tokens} would take the decoder to {start + max_new_tokens} positions, "
                          f"beyond the {limit} that {type(self).__name__} holds ({field}); generating at most {room}",
                          stacklevel=4)  # the caller of generate (through no_grad's wrapper)
            return room
        return max_new_tokens
