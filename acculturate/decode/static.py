"""Decoding with a static KV cache, each step replayed as one CUDA graph.

:func:`acculturate.decode.generate` calls the model's forward once per token: with a dynamic cache
and eager kernels that is hundreds of small launches per token, and at batch 1 the GPU waits on the
Python host most of the time. Here the cache is preallocated (per layer: rows, kv heads, slots, head
dim), every tensor a step touches lives at a fixed address, and the whole step (all layers, the LM
head, temperature/top-k/top-p sampling and the bookkeeping for the next step) is captured once into
a ``torch.cuda.CUDAGraph`` and replayed: one launch per token. The host reads the sampled tokens
back only every ``check_every`` steps, to stop at EOS.

The layer maths calls the model's own modules (norms, projections, MLP), so LoRA-wrapped layers and
Liger's fused modules work unchanged; only attention over the cache is written here. Llama-style
decoders only (``STATIC_MODEL_TYPES``). On the CPU the same code runs eagerly: that is the path the
tests compare with :func:`acculturate.decode.generate` on the real model.

Sampling draws one uniform per row and step from the row's own generator (as ``generate`` does with
a seed) and picks by inverse CDF (:func:`acculturate.decode.sampling.sample_sorted` when top-k or
top-p leave tokens out, else :func:`acculturate.decode.sampling.sample_inverse_cdf`), so a seeded row
gets the same tokens here as there, up to float rounding of the logits.
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch

from acculturate.decode.cache_layer import apply_rope, cache_layer
from acculturate.decode.detokenize import TextStream
from acculturate.decode.sampling import (
    GREEDY_TEMPERATURE, apply_temperature, filters_tokens, sample_inverse_cdf, sample_sorted,
)
from acculturate.decode.step import (
    Completion, GenerationConfig, PromptRow, advance_row, encode_prompts, eos_token_ids, gc_paused, row_generator,
)
from acculturate.models.gpu_start import wait_for_gpu_start_up

# Decoder layers with input_layernorm, self_attn.{q,k,v,o}_proj (no q/k norms), mlp and
# post_attention_layernorm, and standard rotate-half RoPE.
STATIC_MODEL_TYPES = ("llama", "mistral", "qwen2")


class StaticDecoder:
    """Batched decoding of ``batch_size`` rows of at most ``max_length`` tokens (prompt + new).

    Args:
        model: an HF causal LM of a type in ``STATIC_MODEL_TYPES`` (plain, LoRA-wrapped or PEFT).
        batch_size: rows decoded together (prompts x samples).
        max_length: cache slots per row: the longest prompt plus ``max_new_tokens`` must fit.
        temperature, top_k, top_p: as in :class:`acculturate.decode.GenerationConfig`.
        cuda_graph: capture each step as a CUDA graph (default: whenever the model is on CUDA).
        check_every: on the graph path, steps replayed between host reads of the new tokens.
        compile: ``torch.compile`` the one-token step (costs a compilation, tens of seconds): True
            compiles the whole step (layers, final norm, LM head, sampling, bookkeeping) with
            Inductor's coordinate-descent tuning, under which a batch-1 matmul becomes a Triton
            GEMV reduction that the norm before it fuses into; ``"layer"`` compiles only the layer
            function with default settings (the first version, kept for bench/gpu.py's ablation).
            At batch > 1 True also compiles the layer function only (see ``__init__``).
    """

    def __init__(self, model, batch_size: int, max_length: int, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, cuda_graph: bool | None = None, check_every: int = 8,
                 compile: bool | str = False):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = base.config
        if getattr(config, "model_type", None) not in STATIC_MODEL_TYPES:
            raise ValueError(f"StaticDecoder supports model types {STATIC_MODEL_TYPES}, "
                             f"got {getattr(config, 'model_type', None)!r}; use decode.generate")
        self.model, self.decoder, self.head = model, base.get_decoder(), base.get_output_embeddings()
        self.batch_size, self.max_length = batch_size, max_length
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        attn = self.decoder.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_kv = config.num_key_value_heads
        weight = self.decoder.embed_tokens.weight
        self.device = weight.device
        self.dtype = weight.dtype   # the activations' dtype (NF4 layers compute in it too)
        # One (B, Hkv, S, D) tensor per layer, not slices of one (L, ...) tensor: the compiled
        # whole step that wrote into slices of one graph input ran extra full-size copy kernels
        # each step (H200 profile, 2026-12-01); separate inputs are updated in place. With the
        # sampler's searchsorted fallback this took batch 1 from 613 to 801 tokens/s.
        shape = (batch_size, self.n_kv, max_length, self.head_dim)
        self.k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.decoder.layers]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=self.device)  # (B, S)
        self.use_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        self.check_every = max(1, check_every)
        # Step state at fixed addresses (what the captured graph reads and advances).
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=self.device)       # (B,)
        self.positions = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)  # (B, 1)
        self.slot = torch.zeros(1, dtype=torch.long, device=self.device)                   # (1,)
        self.step = torch.zeros(1, dtype=torch.long, device=self.device)                   # (1,)
        self.uniforms = torch.zeros(max_length, batch_size, dtype=torch.float64, device=self.device)
        self.out = torch.zeros(batch_size, max_length, dtype=torch.long, device=self.device)  # (B, S)
        self.graph = None
        # The model's own RoPE function (Liger's fused kernel once models.kernels patched it), else ours.
        module = sys.modules.get(type(attn).__module__)
        self.rope = getattr(module, "apply_rotary_pos_emb", None) or apply_rope
        if compile not in (False, True, "layer"):
            raise ValueError(f"compile must be False, True or 'layer', got {compile!r}")
        # torch.compile the one-token step: Inductor fuses the small elementwise kernels between the
        # matmuls (the graph then replays fewer, larger kernels). Prefill stays eager.
        self._compiled_layer = torch.compile(cache_layer, dynamic=False) if compile == "layer" else None
        self._step = self._decode_step
        if compile is True and batch_size > 1:
            # Batched matmuls stay cuBLAS GEMMs anyway, and the whole step with coordinate-descent
            # tuning hit an Inductor codegen error at batch 32 (torch 2.11, H200, 2026-12-01).
            self._compiled_layer = torch.compile(cache_layer, dynamic=False)
        elif compile is True:
            self._step = torch.compile(self._decode_step, dynamic=False,
                                       options={"coordinate_descent_tuning": True})

    # --- the model step -------------------------------------------------------------------------
    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                 rows: slice = slice(None)) -> torch.Tensor:
        """Run ``ids`` (b, T) at ``positions`` (b, T), writing their keys/values into cache ``slots``
        (T,) of cache ``rows``; returns the last position's logits (b, V) in fp32."""
        b, T = ids.shape
        x = self.decoder.embed_tokens(ids)                                   # (b, T, d)
        cos, sin = self.decoder.rotary_emb(x, positions)                     # (b, T, D) each
        # Key slot j is visible to the query in slot s when j <= s and j holds a real token; each
        # query also sees its own slot, so a padding query never has an all-masked row (NaN).
        slot_ids = torch.arange(self.max_length, device=self.device)
        causal = slot_ids[None, :] <= slots[:, None]                         # (T, S)
        mask = (self.valid[rows][:, None, None, :] & causal) | (slot_ids[None, :] == slots[:, None])  # (b, 1, T, S)
        if T == 1:   # decoding: an additive fp32 bias, one row per (row, kv head), shared by the layers
            bias = torch.zeros(mask.shape, dtype=torch.float32, device=self.device).masked_fill_(~mask, float("-inf"))
            mask = bias.view(b, 1, -1).repeat_interleave(self.n_kv, dim=0)   # (b * Hkv, 1, S)
        layer_fn = self._compiled_layer if (T == 1 and self._compiled_layer is not None) else cache_layer
        for i, layer in enumerate(self.decoder.layers):
            k, v = (self.k[i], self.v[i]) if rows == slice(None) else (self.k[i][rows], self.v[i][rows])
            x = layer_fn(layer, x, cos, sin, k, v, slots, mask, self.rope)
        return self.head(self.decoder.norm(x[:, -1])).float()                         # (b, V)

    def _pick(self, logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Next tokens (b,) from logits (b, V): greedy, or temperature/top-k/top-p by inverse CDF."""
        if self.temperature <= GREEDY_TEMPERATURE:
            return logits.argmax(dim=-1)
        scores = apply_temperature(logits, self.temperature)
        if filters_tokens(self.top_k, self.top_p, scores.shape[-1]):
            return sample_sorted(scores, uniforms, self.top_k, self.top_p)
        return sample_inverse_cdf(scores.softmax(dim=-1), uniforms)

    def _decode_step(self) -> None:
        """One token for every row, reading and advancing only fixed-address state (graph-safe)."""
        self.valid.index_fill_(1, self.slot, True)
        logits = self._forward(self.tokens[:, None], self.positions, self.slot)
        tokens = self._pick(logits, self.uniforms.index_select(0, self.step).squeeze(0))
        self.out.index_copy_(1, self.step, tokens[:, None])
        self.tokens.copy_(tokens)
        self.positions.add_(1)
        self.slot.add_(1)
        self.step.add_(1)

    def _capture(self) -> None:
        wait_for_gpu_start_up()   # a capture must not overlap the load's warm-up thread's CUDA work
        saved = [t.clone() for t in (self.tokens, self.positions, self.slot, self.step, self.valid)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):   # warm-up outside the graph (allocator, cuBLAS handles)
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with gc_paused(), torch.cuda.graph(self.graph):
            self._step()
        for t, s in zip((self.tokens, self.positions, self.slot, self.step, self.valid), saved):
            t.copy_(s)   # capture does not run the step, but the warm-up did

    # --- generation -----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, num_samples: int = 1,
                 generators: Sequence[torch.Generator] | None = None,
                 eos_ids: Sequence[int] = ()) -> list[list[int]]:
        """Continue each prompt ``num_samples`` times.

        Args:
            prompt_ids: token ids of each prompt; prompts x num_samples must not exceed batch_size.
                Each prompt is prefilled once and its cache copied to its samples' rows (for
                self-consistency, k chains cost one prefill).
            max_new_tokens: tokens generated per row at most (an EOS id ends a row early).
            num_samples: rows per prompt.
            generators: one CPU ``torch.Generator`` per row (prompt-major: prompt i's sample j is
                row ``i * num_samples + j``), or None for torch's global RNG.
            eos_ids: ids that end a row; kept as its last token.
        Returns:
            The generated ids of every row, prompt-major.
        """
        n = len(prompt_ids)
        rows = n * num_samples
        if not 0 < rows <= self.batch_size:
            raise ValueError(f"{n} prompts x {num_samples} samples = {rows} rows; this decoder holds 1.."
                             f"{self.batch_size}")
        width = max(len(p) for p in prompt_ids)
        if width + max_new_tokens > self.max_length:
            raise ValueError(f"longest prompt ({width}) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"max_length={self.max_length}")
        if generators is not None and len(generators) != rows:
            raise ValueError(f"got {len(generators)} generators for {rows} rows")
        was_training = self.model.training
        self.model.eval()
        try:
            return self._generate(prompt_ids, max_new_tokens, num_samples, generators, eos_ids, width, rows)
        finally:
            self.model.train(was_training)

    def _generate(self, prompt_ids, max_new_tokens, num_samples, generators, eos_ids, width, rows):
        self._prefill(prompt_ids, num_samples, width, max_new_tokens, generators)
        done, results = [False] * rows, [None] * rows
        eos = set(int(e) for e in eos_ids)
        produced = scanned = 1   # the prefill picked each row's first token
        if self.use_graph and self.graph is None:
            self._capture()
        finished = self._collect(0, produced, rows, eos, done, results)
        while True:
            if scanned < produced:
                finished, scanned = self._collect(scanned, produced, rows, eos, done, results), produced
            if finished or produced >= max_new_tokens:
                break
            burst = min(self.check_every, max_new_tokens - produced)
            for _ in range(burst):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._step()
            produced += burst
        return [results[r] if results[r] is not None else self.out[r, :max_new_tokens].tolist()
                for r in range(rows)]

    def _prefill(self, prompt_ids, num_samples: int, width: int, max_new_tokens: int, generators) -> None:
        n, B = len(prompt_ids), self.batch_size
        ids = torch.zeros(n, width, dtype=torch.long)
        valid = torch.zeros(n, width, dtype=torch.bool)
        for i, p in enumerate(prompt_ids):   # left-padded: every row's next slot is `width`
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            valid[i, width - len(p):] = True
        ids, valid = ids.to(self.device), valid.to(self.device)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)              # (n, P)
        self.valid.zero_()
        self.valid[:n, :width] = valid
        logits = self._forward(ids, positions, torch.arange(width, device=self.device), rows=slice(0, n))
        if num_samples > 1:   # one prefill per prompt, its cache copied to the prompt's samples
            for cache in self.k + self.v:
                cache[:n * num_samples, :, :width] = cache[:n, :, :width].repeat_interleave(num_samples, 0)
            self.valid[:n * num_samples, :width] = valid.repeat_interleave(num_samples, 0)
            logits = logits.repeat_interleave(num_samples, 0)
            positions = positions.repeat_interleave(num_samples, 0)
        rows = n * num_samples
        if rows < B:   # spare rows decode a copy of row 0; their output is dropped
            pad = B - rows
            for cache in self.k + self.v:
                cache[rows:] = cache[:1]
            self.valid[rows:] = self.valid[:1]
            logits = torch.cat([logits, logits[:1].expand(pad, -1)])
            positions = torch.cat([positions, positions[:1].expand(pad, -1)])
        # One uniform per row and step, in each row's generator order (as generate() draws them).
        steps = self.max_length
        if generators is None:
            u = torch.rand(steps, B, dtype=torch.float64)
        else:   # spare rows and steps past max_new_tokens: any value; the global RNG is left alone
            u = torch.zeros(steps, B, dtype=torch.float64)
            for r, g in enumerate(generators):
                u[:max_new_tokens, r] = torch.rand(max_new_tokens, generator=g, dtype=torch.float64)
        self.uniforms.copy_(u)
        first = self._pick(logits, self.uniforms[0])
        self.out.zero_()
        self.out[:, 0] = first
        self.tokens.copy_(first)
        self.positions.copy_(positions[:, -1:] + 1)
        self.slot.fill_(width)
        self.step.fill_(1)

    def _collect(self, start: int, produced: int, rows: int, eos: set[int], done: list, results: list) -> bool:
        """Read the tokens made at steps ``start..produced``; finish rows that hit an EOS there.
        True when every row is done."""
        if not eos:
            return False
        new = self.out[:rows, start:produced].tolist()   # one device-to-host copy of the new steps
        for r in range(rows):
            if done[r]:
                continue
            for t, token in enumerate(new[r]):
                if token in eos:
                    done[r], results[r] = True, self.out[r, :start + t + 1].tolist()
                    break
        return all(done)


def generate_static(model, tokenizer, prompts: Sequence[str], config=None, num_samples: int = 1,
                    compile: bool = False) -> list:
    """:func:`acculturate.decode.generate` through a :class:`StaticDecoder`: the same completions
    (text, stop strings, finish reasons; seeded rows draw the same samples), one CUDA graph replay
    per token on a GPU. ``num_samples`` completions per prompt, prompt-major, each prompt prefilled
    once (self-consistency's k chains). ``config.batch_size`` bounds the rows decoded together.

    Raises:
        ValueError: a repetition penalty (not implemented here: use ``generate``), or a model type
            outside ``STATIC_MODEL_TYPES``.
    """
    config = config or GenerationConfig()
    if config.repetition_penalty != 1:
        raise ValueError("generate_static does not apply a repetition penalty; use decode.generate")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got a single str (wrap it in a list)")
    encoded = encode_prompts(tokenizer, prompts)
    eos = eos_token_ids(model, tokenizer)
    per_batch = max(1, config.batch_size // num_samples)
    # One decoder (cache and captured graph) for every full chunk: the cache holds the longest
    # prompt of the call, so a chunk of shorter prompts reuses it instead of capturing anew.
    max_length = max(map(len, encoded)) + config.max_new_tokens
    decoders: dict[int, StaticDecoder] = {}
    completions = []
    for start in range(0, len(encoded), per_batch):
        chunk = encoded[start:start + per_batch]
        first = start * num_samples   # generator index of the chunk's first row
        rows = [PromptRow(first + j, chunk[j // num_samples], TextStream(tokenizer, config.stop),
                          row_generator(config, first + j)) for j in range(len(chunk) * num_samples)]
        if len(rows) not in decoders:
            decoders.clear()   # the last, smaller chunk: free the full-size cache first
            decoders[len(rows)] = StaticDecoder(model, len(rows), max_length, config.temperature,
                                                config.top_k, config.top_p, compile=compile)
        decoder = decoders[len(rows)]
        generators = [r.generator for r in rows] if rows[0].generator is not None else None
        sampled = decoder.generate(chunk, config.max_new_tokens, num_samples, generators, eos)
        for j, (row, tokens) in enumerate(zip(rows, sampled)):
            _finish(row, tokens, eos, config.max_new_tokens)
            # A prompt is prefilled once for its num_samples rows: the others reuse its cache.
            completions.append(Completion(text=row.stream.text, token_ids=list(row.stream.token_ids),
                                          finish_reason=row.finish_reason, prompt_tokens=len(row.prompt_ids),
                                          completion_tokens=len(row.stream.token_ids),
                                          cached_tokens=len(row.prompt_ids) if j % num_samples else 0))
    return completions


def _finish(row, tokens: list[int], eos: set[int], max_new_tokens: int) -> None:
    """Give ``row`` its generated ``tokens`` (cut after the first EOS), as ``advance_row`` token by token
    would: without stop strings, the text is decoded once for the whole row."""
    if row.stream.stop:
        for token in tokens:
            if advance_row(row, token, eos, max_new_tokens, None):
                return
        return
    end = next((i for i, t in enumerate(tokens) if t in eos), None)
    row.stream.extend(tokens if end is None else tokens[:end])
    if end is not None:
        row.stream.token_ids.append(tokens[end])   # kept in token_ids, never part of the text
        row.finish_reason = "eos"
    elif len(row.stream.token_ids) >= max_new_tokens:
        row.finish_reason = "length"
    row.stream.flush()
