"""Continuous batching on fixed slots: a static KV cache that requests join and leave between
CUDA-graph replays.

:class:`acculturate.decode.engine.DecodeBatch` grows and re-indexes a dynamic cache and calls the
model's forward once per token: hundreds of small launches, the host between every step. Here the
cache is preallocated for ``slots`` rows (per layer: slots, kv heads, columns, head dim), each row
keeps its tokens at their own positions (column j holds position j: no padding, no shifting when
others join or leave), and one decoding step for every slot (all layers, the LM head, per-row
sampling, the bookkeeping) is captured once as a ``torch.cuda.CUDAGraph`` and replayed:

- **Joining** (:meth:`SlotBatch.add`, between two replays): the new prompts are prefilled eagerly
  into free slots (identical prompts once, their cache copied), their first token picked, and
  their sampling settings written into per-slot tensors that the graph reads. On CUDA the prefill
  runs at a bucketed shape (:func:`prefill_shape`: rows padded to a power of two with copies of the
  first prompt, width to a multiple of 64, then a power of two), and :meth:`SlotBatch.warm` runs
  every bucket once up front: Liger's Triton RoPE kernel is compiled per batch size (``bs`` is a
  ``tl.constexpr``) and per divisibility of the prompt length by 16, so an unpadded prefill paid a
  compilation for each new row count (one client's prefill: 27 ms in one round, 674 ms in the
  next, on an H200).
- **Leaving**: a finished or cancelled row frees its slot at once; a free slot below the highest
  occupied one still runs through the graph (its result is ignored).
- **Widths and rows**: attention reads only the first W columns of the cache, W the smallest of
  128, 256, 512... above the longest active row, and a step runs only the first R slots, R the
  smallest power of two (at most ``slots``) above the highest occupied slot: new rows take the
  lowest free slots, so one client decodes at batch 1's cost, not at that of every slot. One graph
  per (R, W, sampling mode) is captured the first time it is needed (greedy only, temperature, or
  with top-k / top-p / repetition penalty).
- **One step ahead**: the next replay is launched before the host reads the previous step's tokens
  (one pinned copy per step), so detokenizing, stop strings and streaming overlap the GPU's step. A
  row that finished meanwhile gets one wasted step, never a wrong token.

Sampling per row follows :func:`acculturate.decode.sampling.sample` exactly (repetition penalty,
temperature, top-k, top-p, then inverse CDF on one uniform per step, in order of score for rows whose
top-k / top-p leave tokens out): a seeded row draws its
uniforms from its own generator in ``generate``'s order, so its tokens are ``generate``'s, up to
float rounding of the logits. On the CPU the same code runs eagerly (the tests' path); the server
uses it on CUDA (``acculturate.serve.batching``).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Callable

import torch

from acculturate.decode.cache_layer import apply_rope, cache_layer
from acculturate.decode.engine import DecodeRow, distinct_prompts
from acculturate.decode.sampling import GREEDY_TEMPERATURE, sample_inverse_cdf, sample_sorted
from acculturate.decode.step import advance_row, eos_token_ids, gc_paused
from acculturate.models.gpu_start import wait_for_gpu_start_up

MIN_WIDTH = 128   # the narrowest attention width a graph is captured for
# Prefill widths: multiples of PREFILL_STEP up to PREFILL_LINEAR, powers of two beyond. Triton
# specialises the RoPE kernel's length only on its divisibility by 16, so any multiple of 16 would
# do for it; 64 keeps the set of shapes (what cuBLAS and SDPA see, what warm() runs) at 8 up to 512
# tokens for at most 63 padded tokens a row. Longer prompts are rarer: powers of two bound the
# shapes to one per doubling at less than 2x the work.
PREFILL_STEP = 64
PREFILL_LINEAR = 512


def prefill_width(length: int, cap: int | None = None) -> int:
    """The bucketed width of a prefill whose longest prompt has ``length`` tokens (at most ``cap``,
    the cache width, when given; never below ``length``)."""
    if length <= PREFILL_LINEAR:
        width = -(-length // PREFILL_STEP) * PREFILL_STEP
    else:
        width = 1 << (length - 1).bit_length()
    return max(length, min(width, cap)) if cap else width


def prefill_rows(n: int, slots: int) -> int:
    """The bucketed row count of a prefill of ``n`` distinct prompts: the power of two at or above
    ``n``, at most ``slots`` (itself a bucket when it is not a power of two)."""
    return min(1 << (n - 1).bit_length(), slots)


def prefill_shape(n: int, length: int, slots: int, cap: int | None = None) -> tuple[int, int]:
    """``(rows, width)`` a prefill of ``n`` prompts, the longest ``length`` tokens, runs at."""
    return prefill_rows(n, slots), prefill_width(length, cap)


def row_buckets(slots: int) -> list[int]:
    """Every row count :func:`prefill_rows` gives for ``slots`` slots: 1, 2, 4... and ``slots``."""
    return sorted({prefill_rows(n, slots) for n in range(1, slots + 1)})


def width_buckets(longest: int, cap: int | None = None) -> list[int]:
    """Every prefill width :func:`prefill_width` gives for prompts of up to ``longest`` tokens."""
    return sorted({prefill_width(n, cap) for n in range(1, longest + 1)})


class SlotBatch:
    """The running rows of one model (and one active adapter, held by the caller) on fixed slots.

    Same interface as :class:`acculturate.decode.engine.DecodeBatch` (``rows``, ``add``, ``step``,
    ``cancel``, ``can_join``); the cache and the captured graphs live as long as the object, so a
    server keeps one per set of weights.

    Args:
        model: an HF causal LM of a type in :data:`acculturate.decode.static.STATIC_MODEL_TYPES`.
        tokenizer: its tokenizer.
        slots: rows decoded at once.
        cuda_graph: replay each step as a CUDA graph (default: whenever the model is on CUDA).
        pad_prefill: run prefills at bucketed shapes (:func:`prefill_shape`; default: whenever the
            model is on CUDA, where each new shape can cost a kernel compilation; on the CPU
            padding only adds work). The rows' tokens do not depend on it.
    """

    def __init__(self, model, tokenizer, slots: int, cuda_graph: bool | None = None,
                 pad_prefill: bool | None = None):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model, self.tokenizer = model, tokenizer
        self.decoder, self.head = base.get_decoder(), base.get_output_embeddings()
        self.slots = slots
        attn = self.decoder.layers[0].self_attn
        self.head_dim, self.n_kv = attn.head_dim, base.config.num_key_value_heads
        self.limit = getattr(base.config, "max_position_embeddings", None)
        weight = self.decoder.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.vocab = self.head.weight.shape[0]
        self.use_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        self.pad_prefill = self.device.type == "cuda" if pad_prefill is None else pad_prefill
        module = sys.modules.get(type(attn).__module__)
        self.rope = getattr(module, "apply_rotary_pos_emb", None) or apply_rope
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        B, dev = slots, self.device
        # Step state at fixed addresses: what the captured graphs read and advance.
        self.tokens = torch.zeros(B, dtype=torch.long, device=dev)          # (B,) the token each slot feeds next
        self.positions = torch.zeros(B, 1, dtype=torch.long, device=dev)    # (B, 1) its position = cache column
        self.active = torch.zeros(B, dtype=torch.long, device=dev)          # (B,) 1 while a row holds the slot
        self.drawn = torch.zeros(B, dtype=torch.long, device=dev)           # (B,) uniforms used so far
        self.temperature = torch.ones(B, dtype=torch.float32, device=dev)   # (B,) 1 for greedy rows
        self.greedy = torch.ones(B, dtype=torch.bool, device=dev)
        self.top_k = torch.zeros(B, 1, dtype=torch.long, device=dev)        # (B, 1) 0: off
        self.top_p = torch.full((B, 1), float("inf"), device=dev)           # (B, 1) inf: off
        self.penalty = torch.ones(B, 1, dtype=torch.float32, device=dev)    # (B, 1) 1: off
        self.seen = torch.zeros(B, self.vocab, dtype=torch.bool, device=dev)  # (B, V) ids in prompt + output
        self.width = 0              # cache columns per slot (grows by powers of two as rows need)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.valid = self.uniforms = None
        self.graphs: dict[tuple[int, int, str], torch.cuda.CUDAGraph] = {}   # (rows, width, mode)
        self._pool = None
        self._slots: list[DecodeRow | None] = [None] * B
        self._columns = [0] * B     # host copy of each slot's next column
        self._pending: deque = deque()   # launched steps and prefills whose tokens the host has not read
        self._buffers: list[torch.Tensor] = []   # pinned (B,) host buffers not in use by a pending copy

    # --- the interface of DecodeBatch ----------------------------------------------------------------
    @property
    def rows(self) -> list[DecodeRow]:
        return [row for row in self._slots if row is not None]

    def __len__(self) -> int:
        return sum(row is not None for row in self._slots)

    @property
    def can_join(self) -> bool:
        return True

    @property
    def free(self) -> int:
        return sum(row is None for row in self._slots)

    def add(self, rows: list[DecodeRow]) -> None:
        """Prefill ``rows`` into free slots and pick their first tokens (streamed at the next
        :meth:`step`). Raises ValueError when they do not fit the slots or the model's positions."""
        if not rows:
            return
        if len(rows) > self.free:
            raise ValueError(f"{len(rows)} rows do not fit the {self.free} free slots of {self.slots}")
        need = 0
        for row in rows:
            total = len(row.prompt_ids) + row.config.max_new_tokens
            if self.limit and total > self.limit:
                raise ValueError(f"a prompt of {len(row.prompt_ids)} tokens with max_new_tokens="
                                 f"{row.config.max_new_tokens} exceeds the model's {self.limit} positions")
            need = max(need, total)
        with torch.inference_mode():
            self._ensure_width(need)
            self._prefill(rows)

    def step(self) -> list[DecodeRow]:
        """Launch the next step for every occupied slot, then read the step before it (and any new
        rows' first tokens): stream them, free the slots of rows that finished. Returns those rows."""
        with torch.inference_mode():
            launched = bool(len(self))
            if launched:
                self._launch()
            finished = []
            while len(self._pending) > int(launched):
                finished += self._read(self._pending.popleft())
            if not len(self):
                self._pending.clear()   # steps launched for rows that have all finished
        return finished

    def cancel(self, predicate: Callable[[DecodeRow], bool]) -> list[DecodeRow]:
        """Free the slots of the rows for which ``predicate(row)`` is true; returns them."""
        gone = [s for s, row in enumerate(self._slots) if row is not None and predicate(row)]
        removed = [self._slots[s] for s in gone]
        self._release(gone)
        return removed

    def reset(self) -> None:
        """Free every slot (after a failed step: the rows' jobs were failed by the caller)."""
        self._release([s for s, row in enumerate(self._slots) if row is not None])
        self._pending.clear()

    # --- cache and prefill ---------------------------------------------------------------------------
    def _ensure_width(self, need: int) -> None:
        if need <= self.width:
            return
        width = MIN_WIDTH
        while width < need:
            width *= 2
        if self.limit:
            width = max(need, min(width, self.limit))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)   # replays in flight read the old cache
        self.graphs.clear()
        self._pool = None   # the pool goes with its last graph; a stale handle fails the next capture
        shape = (self.slots, self.n_kv, width, self.head_dim)
        old = self.width

        def grown(t: torch.Tensor | None, shape, dim: int, dtype) -> torch.Tensor:
            new = torch.zeros(shape, dtype=dtype, device=self.device)
            if t is not None and old:
                new.narrow(dim, 0, old).copy_(t)
            return new

        self.k = [grown(self.k[i] if self.k else None, shape, 2, self.dtype) for i in range(len(self.decoder.layers))]
        self.v = [grown(self.v[i] if self.v else None, shape, 2, self.dtype) for i in range(len(self.decoder.layers))]
        self.valid = grown(self.valid, (self.slots, width), 1, torch.bool)               # (B, S)
        self.uniforms = grown(self.uniforms, (self.slots, width), 1, torch.float64)      # (B, S)
        self.width = width

    def _prefill(self, rows: list[DecodeRow]) -> None:
        """Prefill the distinct prompts of ``rows`` (right-padded: each row's tokens sit at their own
        positions), copy each into its rows' slots and pick every row's first token."""
        prompts, source = distinct_prompts(rows)
        n, longest = len(prompts), max(map(len, prompts))
        m, P = prefill_shape(n, longest, self.slots, self.width) if self.pad_prefill else (n, longest)
        # Pad rows repeat the first prompt: a row's attention sees only its own keys, so they change
        # no real row's values, and their results are never read (``src`` indexes real rows only).
        prompts = prompts + [prompts[0]] * (m - n)
        free = [s for s, row in enumerate(self._slots) if row is None][:len(rows)]
        # Every host-to-device copy of a join in one pinned, asynchronous transfer: a plain copy would
        # wait for the step in flight.
        ids = torch.full((m, P), self.pad_id, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, :len(p)] = torch.tensor(p)
        meta = torch.tensor([len(p) for p in prompts] + free + source, dtype=torch.long)
        ids, meta = self._upload(ids), self._upload(meta)
        lengths, slots, src = meta[:m], meta[m:m + len(rows)], meta[m + len(rows):]       # (m,) (N,) (N,)
        keys, values, logits = self._forward(ids, lengths)
        real = torch.arange(P, device=self.device)[None, :] < lengths[:, None]             # (m, P)

        for cache, new in zip(self.k + self.v, keys + values):
            cache[slots, :, :P] = new[src]
        self.valid[slots] = False
        self.valid[slots, :P] = real[src]
        # The repetition penalty's history: each row's prompt ids (padding repeats the first id).
        prompt_ids = torch.where(real[src], ids[src], ids[src][:, :1])
        self.seen[slots] = torch.zeros((len(rows), self.vocab), dtype=torch.bool,
                                       device=self.device).scatter_(1, prompt_ids, True)
        self._configure(rows, slots)
        self.drawn[slots] = 0
        first = self._pick(logits[src], slots)                                             # (N,)
        self.tokens[slots] = first
        self.seen[slots, first] = True
        self.positions[slots, 0] = lengths[src]
        self.drawn[slots] = 1
        self.active[slots] = 1
        for row, s in zip(rows, free):
            self._slots[s] = row
            self._columns[s] = len(row.prompt_ids)
        self._record(first, list(zip(free, rows)), by_slot=False)

    def _forward(self, ids: torch.Tensor, lengths: torch.Tensor):
        """The prefill forward of ``ids`` (n, P), row b's prompt in its first ``lengths[b]`` columns.
        Returns each layer's keys and values (n, Hkv, P, D) and the logits (n, V) at each last token."""
        n, P = ids.shape
        columns = torch.arange(P, device=self.device)
        real = columns[None, :] < lengths[:, None]                                          # (n, P)
        # Key j is visible to query i when j <= i and j is a real token; every query sees itself.
        mask = ((columns[None, :] <= columns[:, None])[None] & real[:, None, :]) | torch.eye(
            P, dtype=torch.bool, device=self.device)[None]
        mask = mask[:, None]                                                                # (n, 1, P, P)
        x = self.decoder.embed_tokens(ids)                                                  # (n, P, d)
        cos, sin = self.decoder.rotary_emb(x, columns[None].expand(n, P))
        keys = [torch.zeros((n, self.n_kv, P, self.head_dim), dtype=self.dtype, device=self.device)
                for _ in self.decoder.layers]
        values = [torch.zeros_like(k) for k in keys]
        for layer, k, v in zip(self.decoder.layers, keys, values):
            x = cache_layer(layer, x, cos, sin, k, v, columns, mask, self.rope)
        last = x[torch.arange(n, device=self.device), lengths - 1]                         # (n, d)
        return keys, values, self.head(self.decoder.norm(last)).float()                    # (n, V)

    def warm(self, prompt_tokens: int, new_tokens: int = 0) -> dict:
        """Run what the first requests would otherwise pay for, before they come: the prefill at every
        bucketed shape for prompts of up to ``prompt_tokens`` tokens (rows 1, 2, 4... ``slots``) and,
        with CUDA graphs, the capture of the decoding step's graphs (greedy and sampling; every row
        bucket and attention width of a cache wide enough for ``prompt_tokens + new_tokens``).

        Returns:
            ``{"seconds", "prefill_shapes", "graphs"}``: the time it took and what it ran.
        """
        started = time.perf_counter()
        shapes = 0
        with torch.inference_mode():
            need = prompt_tokens + new_tokens
            self._ensure_width(min(need, self.limit) if self.limit else need)
            for P in width_buckets(min(prompt_tokens, self.width), self.width):
                for n in row_buckets(self.slots):
                    ids = torch.full((n, P), self.pad_id, dtype=torch.long, device=self.device)
                    self._forward(ids, torch.full((n,), P, dtype=torch.long, device=self.device))
                    shapes += 1
            captured = len(self.graphs)
            if self.use_graph and not len(self):
                width = MIN_WIDTH
                while True:
                    for rows in row_buckets(self.slots):
                        for mode in ("greedy", "sample"):
                            if (rows, min(width, self.width), mode) not in self.graphs:
                                self._capture((rows, min(width, self.width), mode))
                    if width >= self.width:
                        break
                    width *= 2
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return {"seconds": time.perf_counter() - started, "prefill_shapes": shapes,
                "graphs": len(self.graphs) - captured}

    def _configure(self, rows: list[DecodeRow], slots: torch.Tensor) -> None:
        """Write each row's sampling settings and uniforms into its slot (``slots`` (N,) on the device)."""
        settings = torch.tensor([[c.temperature <= GREEDY_TEMPERATURE,
                                  1.0 if c.temperature <= GREEDY_TEMPERATURE else c.temperature,
                                  c.top_k if 0 < c.top_k < self.vocab else 0,
                                  c.top_p if c.top_p < 1 else float("inf"),
                                  c.repetition_penalty] for c in (r.config for r in rows)], dtype=torch.float64)
        # One uniform per token, drawn as generate() draws them for each row (seeded: its own generator).
        u = torch.rand(len(rows), self.width, dtype=torch.float64)
        for i, row in enumerate(rows):
            if row.generator is not None:
                m = row.config.max_new_tokens
                u[i, :m] = torch.rand(m, generator=row.generator, dtype=torch.float64)
        settings, u = self._upload(settings), self._upload(u)
        self.greedy[slots] = settings[:, 0] > 0
        self.temperature[slots] = settings[:, 1].float()
        self.top_k[slots, 0] = settings[:, 2].long()
        self.top_p[slots, 0] = settings[:, 3].float()
        self.penalty[slots, 0] = settings[:, 4].float()
        self.uniforms[slots] = u

    def _upload(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the model's device; on CUDA through pinned memory, without waiting for the stream."""
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def _release(self, slots: list[int]) -> None:
        if not slots:
            return
        index = self._upload(torch.tensor(slots, dtype=torch.long))
        self.active[index] = 0
        self.positions[index] = 0   # a free slot writes (ignored) keys at column 0, inside any width
        for s in slots:
            self._slots[s] = None
            self._columns[s] = 0

    # --- one step ------------------------------------------------------------------------------------
    def _mode(self) -> str:
        configs = [row.config for row in self._slots if row is not None]
        if any(c.top_k or c.top_p < 1 or c.repetition_penalty != 1 for c in configs):
            return "filter"
        return "greedy" if all(c.temperature <= GREEDY_TEMPERATURE for c in configs) else "sample"

    def _launch(self) -> None:
        occupied = [s for s, row in enumerate(self._slots) if row is not None]
        need = 1 + max(self._columns[s] for s in occupied)
        width = MIN_WIDTH
        while width < need:
            width *= 2
        width = min(width, self.width)
        rows = 1
        while rows <= occupied[-1]:
            rows *= 2
        key = (min(rows, self.slots), width, self._mode())
        if self.use_graph:
            if key not in self.graphs:
                self._capture(key)
            self.graphs[key].replay()
        else:
            self._step(*key)
        snapshot = [(s, row) for s, row in enumerate(self._slots) if row is not None]
        for s, _ in snapshot:
            self._columns[s] += 1
        self._record(self.tokens, snapshot, by_slot=True)

    def _record(self, tokens: torch.Tensor, snapshot: list, by_slot: bool) -> None:
        """Queue a device-to-host copy of ``tokens`` (a step's, indexed by slot; or a prefill's, in the
        order of ``snapshot``) without waiting for it: the host reads it one step later."""
        buffer = self._buffers.pop() if self._buffers else torch.zeros(
            self.slots, dtype=torch.long, pin_memory=self.device.type == "cuda")
        buffer[:len(tokens)].copy_(tokens, non_blocking=self.device.type == "cuda")
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._pending.append((buffer, event, snapshot, by_slot))

    def _read(self, pending) -> list[DecodeRow]:
        """Stream the tokens of one launched step or prefill; free the slots of rows that finished."""
        buffer, event, snapshot, by_slot = pending
        if event is not None:
            event.synchronize()
        tokens = buffer.tolist()
        self._buffers.append(buffer)
        if by_slot:
            return self._advance([(s, row, tokens[s]) for s, row in snapshot])
        return self._advance([(s, row, t) for (s, row), t in zip(snapshot, tokens)])

    def _advance(self, items) -> list[DecodeRow]:
        finished, done = [], []
        for s, row, token in items:
            if s < 0 or self._slots[s] is not row or row.finish_reason is not None:
                continue   # the row left (finished or cancelled) after this step was launched
            on_text = (lambda _i, delta, r=row: r.on_text(delta)) if row.on_text is not None else None
            if advance_row(row, token, self.eos_ids, row.config.max_new_tokens, on_text):
                finished.append(row)
                done.append(s)
        self._release(done)
        return finished

    def _step(self, rows: int, width: int, mode: str) -> None:
        """One token for each of the first ``rows`` slots over the first ``width`` cache columns
        (graph-safe: reads and advances only views of fixed-address state)."""
        n = rows
        cols = self.positions[:n]                                             # (R, 1)
        valid = self.valid[:n]
        valid.scatter_(1, cols, True)
        x = self.decoder.embed_tokens(self.tokens[:n, None])                  # (R, 1, d)
        cos, sin = self.decoder.rotary_emb(x, cols)
        bias = torch.zeros((n, width), dtype=torch.float32, device=self.device)
        bias = bias.masked_fill_(~valid[:, :width], float("-inf"))
        bias = bias.view(n, 1, width).repeat_interleave(self.n_kv, dim=0)    # (R * Hkv, 1, W)
        for layer, k, v in zip(self.decoder.layers, self.k, self.v):
            x = cache_layer(layer, x, cos, sin, k[:n, :, :width], v[:n, :, :width], cols, bias, self.rope)
        logits = self.head(self.decoder.norm(x[:, -1])).float()               # (R, V)
        new = self._pick(logits, slice(0, n), mode)
        self.tokens[:n].copy_(new)
        self.seen[:n].scatter_(1, new[:, None], True)
        cols.add_(self.active[:n, None])
        self.drawn[:n].add_(self.active[:n])

    def _pick(self, logits: torch.Tensor, slots: torch.Tensor | slice, mode: str = "filter") -> torch.Tensor:
        """Next tokens (b,) from logits (b, V) for ``slots`` (indices, or a slice of the first b) with
        each slot's settings, in the order of :func:`acculturate.decode.sampling.sample` (penalty,
        temperature, top-k, top-p, inverse CDF)."""
        at = lambda t: t[slots]  # noqa: E731
        if mode == "filter":
            penalty = at(self.penalty)
            penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
            logits = torch.where(at(self.seen), penalized, logits)
        greedy = logits.argmax(dim=-1)
        if mode == "greedy":
            return greedy
        scores = logits / at(self.temperature)[:, None]
        u = at(self.uniforms).gather(1, at(self.drawn)[:, None]).squeeze(1)      # (b,)
        sampled = sample_inverse_cdf(scores.softmax(dim=-1), u)
        if mode == "filter":   # rows with top-k / top-p draw in order of score, as sample() does
            top_k, top_p = at(self.top_k), at(self.top_p)
            filtered = sample_sorted(scores, u, top_k, top_p)
            sampled = torch.where((top_k[:, 0] > 0) | (top_p[:, 0] < 1), filtered, sampled)
        return torch.where(at(self.greedy), greedy, sampled)

    def _capture(self, key: tuple[int, int, str]) -> None:
        wait_for_gpu_start_up()   # a capture must not overlap the load's warm-up thread's CUDA work
        state = (self.tokens, self.positions, self.drawn, self.valid, self.seen)
        saved = [t.clone() for t in state]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):   # warm-up outside the graph (allocator, cuBLAS handles)
            for _ in range(2):
                self._step(*key)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with gc_paused(), torch.cuda.graph(graph, pool=self._pool):
            self._step(*key)
        for t, s in zip(state, saved):
            t.copy_(s)   # capture does not run the step, but the warm-up did
        self.graphs[key] = graph

