"""Continuous batching: one decoding batch that requests join and leave between tokens.

:func:`acculturate.decode.generate` runs a fixed batch until its longest row ends, so a request
that arrives meanwhile waits for the whole batch, and rows that end early leave their slot idle.
A :class:`DecodeBatch` instead admits new rows between two decoding steps: it prefills them on
their own (one forward pass over their prompts), then appends their KV cache to the running
batch's, left-padding whichever is shorter so that every row still ends in the last column. Rows
leave as soon as they finish. A server stepping one batch (``acculturate.serve.batching``) keeps
the batch full under load instead of in waves.

Every row carries its own :class:`GenerationConfig` (temperature, top-k, top-p, repetition
penalty, stop strings, max tokens, seed): rows that share sampling settings are sampled together
with the pure functions of :mod:`.sampling`, so mixed settings cost one ``sample`` call per
distinct setting, not per row. A seeded row draws from its own generator, seeded as ``generate``
seeds prompt ``index`` (``(seed, index)``), so a request's draws do not depend on its batch mates.

Joining a running batch needs plain growing caches (``DynamicLayer`` in transformers 5.x, the
default for full-attention models such as SmolLM2/Llama/Qwen). With anything else (sliding-window
layers, a prompt-tuned model whose virtual tokens must stay the cache's first columns),
:attr:`DecodeBatch.can_join` is False while rows run, and callers wait for the batch to drain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from acculturate.decode.detokenize import TextStream
from acculturate.decode.sampling import apply_repetition_penalty, sample
from acculturate.decode.step import (GenerationConfig, advance_row, cache_of, eos_token_ids, forward_names,
                                     row_generator)


@dataclass(eq=False)
class DecodeRow:
    """One prompt being decoded, with its own settings.

    ``on_text(delta)`` receives the row's new text as it is generated; ``tag`` is the caller's
    handle (a server keeps ``(job, index)`` there). ``index`` seeds the row's generator, as
    prompt ``index`` of one ``generate`` call is seeded.
    """

    prompt_ids: list[int]
    config: GenerationConfig
    stream: TextStream
    generator: torch.Generator | None
    on_text: Callable[[str], None] | None = None
    tag: object = None
    index: int = 0
    finish_reason: str | None = None
    cached_tokens: int = 0     # prompt tokens whose KV cache was copied from an identical row


def make_row(tokenizer, prompt_ids: list[int], config: GenerationConfig, index: int = 0,
             on_text: Callable[[str], None] | None = None, tag: object = None) -> DecodeRow:
    """A :class:`DecodeRow` for ``prompt_ids`` (see :func:`acculturate.decode.generate.encode_prompts`)."""
    if not prompt_ids:
        raise ValueError("a prompt must have at least one token")
    return DecodeRow(list(prompt_ids), config, TextStream(tokenizer, config.stop),
                     row_generator(config, index), on_text, tag, index)


def distinct_prompts(rows: list[DecodeRow]) -> tuple[list[tuple[int, ...]], list[int]]:
    """(the distinct prompts of ``rows`` in first-seen order, each row's index into them); a row whose
    prompt an earlier row already has gets ``cached_tokens`` = its prompt length (prefilled once, copied)."""
    distinct: dict[tuple[int, ...], int] = {}
    source = [distinct.setdefault(tuple(r.prompt_ids), len(distinct)) for r in rows]
    seen: set[int] = set()
    for row, j in zip(rows, source):
        row.cached_tokens = len(row.prompt_ids) if j in seen else 0
        seen.add(j)
    return list(distinct), source


def _sampling_key(row: DecodeRow) -> tuple:
    c = row.config
    if c.greedy:
        return ("greedy", c.repetition_penalty)
    return (c.temperature, c.top_k, c.top_p, c.repetition_penalty, row.generator is not None)


class DecodeBatch:
    """The running batch of one model (and one active adapter: the caller keeps the same adapter
    active for every step; rows that need another adapter belong to another batch).

    State, for A active rows: the KV cache (A rows of width W), ``mask`` (A, W) with 0 over each
    row's left padding, ``positions`` (A, 1) the next position of each row, ``history`` (A, W)
    the token ids in the cache (-1 for padding; the repetition penalty reads it) and ``logits``
    (A, V): the next-token logits not yet sampled.
    """

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.cache_name, has_logits_to_keep = forward_names(model)
        self.extra = {"logits_to_keep": 1} if has_logits_to_keep else {}
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        self.rows: list[DecodeRow] = []
        self._clear()

    def _clear(self) -> None:
        self.rows = []
        self.cache = self.mask = self.positions = self.history = self.logits = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def can_join(self) -> bool:
        """Whether new rows may join now (always when the batch is empty)."""
        return not self.rows or _joinable(self.cache, self.model)

    def add(self, rows: list[DecodeRow]) -> None:
        """Prefill ``rows`` and make them part of the batch (their first token is sampled at the next
        :meth:`step`). Raises RuntimeError if the batch is running and :attr:`can_join` is False."""
        if not rows:
            return
        if not self.can_join:
            raise RuntimeError("this model's cache cannot take rows mid-batch; wait until the batch is empty")
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        for row in rows:
            if limit and len(row.prompt_ids) + row.config.max_new_tokens > limit:
                raise ValueError(f"a prompt of {len(row.prompt_ids)} tokens with max_new_tokens="
                                 f"{row.config.max_new_tokens} exceeds the model's {limit} positions")
        # Identical prompts (a request's n choices) are prefilled once and their cache rows copied.
        prompts, source = distinct_prompts(rows)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # (U, P), left-padded
        mask = torch.zeros((len(prompts), width), dtype=torch.long)             # (U, P)
        for b, prompt in enumerate(prompts):
            ids[b, width - len(prompt):] = torch.tensor(prompt)
            mask[b, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **self.extra)
        cache, logits = cache_of(out), out.logits[:, -1, :].float()
        if len(prompts) < len(rows):
            index = torch.tensor(source, device=self.device)
            cache.batch_select_indices(index)  # (U, ...) -> (N, ...): repeated indices copy rows
            ids, mask, logits = ids[index], mask[index], logits[index]
        new = (cache, mask, mask.sum(-1, keepdim=True), ids.masked_fill(mask == 0, -1), logits)
        if not self.rows:
            self.cache, self.mask, self.positions, self.history, self.logits = new
        else:
            self._append(*new)
        self.rows.extend(rows)

    def _append(self, cache, mask, positions, history, logits) -> None:
        """Join a prefilled group to the running rows: left-pad the narrower side to the common width."""
        old_w, new_w = self.mask.shape[1], mask.shape[1]
        width = max(old_w, new_w)
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width - old_w, -2), _pad_left(theirs.keys, width - new_w, -2)])
            mine.values = torch.cat([_pad_left(mine.values, width - old_w, -2),
                                     _pad_left(theirs.values, width - new_w, -2)])
        self.mask = torch.cat([_pad_left(self.mask, width - old_w, -1), _pad_left(mask, width - new_w, -1)])
        self.history = torch.cat([_pad_left(self.history, width - old_w, -1, -1),
                                  _pad_left(history, width - new_w, -1, -1)])
        self.positions = torch.cat([self.positions, positions])
        self.logits = torch.cat([self.logits, logits])

    def step(self) -> list[DecodeRow]:
        """Sample one token for every row, stream it, drop the rows that finished and run the
        forward pass for the others. Returns the rows that finished at this step."""
        if not self.rows:
            return []
        tokens = self._sample()                                              # (A,)
        finished, keep = [], []
        for j, (row, token) in enumerate(zip(self.rows, tokens.tolist())):
            on_text = (lambda _i, delta, r=row: r.on_text(delta)) if row.on_text is not None else None
            if advance_row(row, token, self.eos_ids, row.config.max_new_tokens, on_text):
                finished.append(row)
            else:
                keep.append(j)
        if not keep:
            self._clear()
            return finished
        tokens = tokens.to(self.device)   # sampled on the CPU side; the index below lives on the model's device
        if len(keep) < len(self.rows):
            index = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(index)
            tokens, self.mask, self.positions = tokens[index], self.mask[index], self.positions[index]
            self.history = self.history[index]
            self.rows = [self.rows[j] for j in keep]
            self._trim()
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=-1)
        self.history = torch.cat([self.history, tokens[:, None]], dim=-1)
        with torch.inference_mode():
            out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.positions,
                             use_cache=True, **{self.cache_name: self.cache}, **self.extra)
        self.cache = cache_of(out)
        self.logits = out.logits[:, -1, :].float()
        self.positions = self.positions + 1
        return finished

    def cancel(self, predicate: Callable[[DecodeRow], bool]) -> list[DecodeRow]:
        """Remove the rows for which ``predicate(row)`` is true (a client went away); returns them."""
        gone = [j for j, row in enumerate(self.rows) if predicate(row)]
        if not gone:
            return []
        removed = [self.rows[j] for j in gone]
        keep = [j for j in range(len(self.rows)) if j not in set(gone)]
        if not keep:
            self._clear()
            return removed
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.history, self.logits = self.history[index], self.logits[index]
        self.rows = [self.rows[j] for j in keep]
        self._trim()
        return removed

    def _trim(self) -> None:
        """Drop leading columns that are padding in every remaining row (left by rows that left)."""
        if not _joinable(self.cache, self.model):
            return  # columns of such caches may carry meaning (virtual tokens) or be windowed
        used = (self.mask > 0).any(dim=0)
        first = int(used.nonzero()[0]) if bool(used.any()) else 0
        if first == 0:
            return
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
        self.mask, self.history = self.mask[:, first:], self.history[:, first:]

    def _sample(self) -> torch.Tensor:
        """One token per row; rows with equal sampling settings are sampled in one call."""
        groups: dict[tuple, list[int]] = {}
        for j, row in enumerate(self.rows):
            groups.setdefault(_sampling_key(row), []).append(j)
        tokens = torch.empty(len(self.rows), dtype=torch.long)
        for members in groups.values():
            c = self.rows[members[0]].config
            index = torch.tensor(members, device=self.logits.device)
            logits = self.logits[index]                                      # (G, V)
            if c.repetition_penalty != 1:
                logits = apply_repetition_penalty(logits, self.history[index], c.repetition_penalty)
            generators = [self.rows[j].generator for j in members]
            generators = generators if generators[0] is not None else None
            tokens[members] = sample(logits, c.temperature, c.top_k, c.top_p, generators).cpu()
        return tokens


def _pad_left(t: torch.Tensor, amount: int, dim: int, value: float = 0) -> torch.Tensor:
    if amount == 0:
        return t
    dim = dim % t.ndim
    pad = [0, 0] * (t.ndim - 1 - dim) + [amount, 0]  # F.pad lists the last dimension first
    return F.pad(t, pad, value=value)


def _joinable(cache, model) -> bool:
    from transformers.cache_utils import DynamicLayer

    from acculturate.adapters.prompt_tuning import prompt_embedding

    layers = getattr(cache, "layers", None)
    return (layers is not None and all(type(layer) is DynamicLayer for layer in layers)
            and prompt_embedding(model) is None)
