"""Batched generation with a KV cache, stop strings and streaming: our own loop over the model's
forward pass (``model.generate`` is never called), with the maths in :mod:`.sampling`.

Prompts are plain strings, already rendered by the caller (chat template or Alpaca), and are
tokenized exactly as written (``add_special_tokens=False``): a chat template writes its own special
tokens, so letting the tokenizer add them again would double them. The one exception is a BOS
that the tokenizer itself would put first (Llama-2 style): it is prepended unless the prompt
already starts with it. SmolLM2's tokenizer adds no BOS (its ``<|im_start|>`` comes from the chat
template), so its prompts are tokenized verbatim.

A batch is left-padded so every row's next token comes from the last column; ``position_ids``
count only real tokens, so a padded row sees exactly the positions it would see alone.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence, TextIO

import torch

from acculturate.decode.detokenize import TextStream
from acculturate.decode.sampling import GREEDY_TEMPERATURE, apply_repetition_penalty, sample

OnText = Callable[[int, str], None]


@dataclass
class GenerationConfig:
    """How to decode. Defaults: greedy, at most 128 new tokens, stop only at the model's EOS."""

    max_new_tokens: int = 128
    """Upper bound on generated tokens per prompt (the EOS token counts)."""
    temperature: float = 0.0
    """Softmax temperature; <= 1e-5 (the default 0 included) means greedy argmax."""
    top_k: int = 0
    """Sample only from the k most likely tokens; 0 disables."""
    top_p: float = 1.0
    """Sample only from the smallest set of tokens with cumulative probability >= top_p; 1 disables."""
    repetition_penalty: float = 1.0
    """CTRL penalty on every token already in the prompt or the completion; 1 disables, 1.1-1.3 is usual."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion; the text is cut before the first one (finish_reason "stop")."""
    seed: int | None = None
    """Seed for sampling; prompt i draws from its own generator, seeded from (seed, i), so its text does
    not depend on batch_size or on the batch it lands in. None uses torch's global RNG."""
    batch_size: int = 8
    """Rows (completions) run together in one forward pass (sorted by length to waste little padding)."""
    share_prompts: bool = True
    """Prefill each distinct prompt of a batch once and copy its KV cache to every row that repeats
    it (k samples of one prompt, a server request with ``n`` > 1), instead of prefilling each row.
    The copy is exact; the tokens equal the plain path's (tested greedy and seeded on the default
    model), up to the last-bit rounding any change of batch shape can bring. False is the plain
    path, kept for comparison (bench/self_consistency.py)."""
    cuda_graphs: bool = True
    """On a CUDA GPU, decode Llama-style models (:data:`acculturate.decode.static.STATIC_MODEL_TYPES`)
    with a static KV cache, each step replayed as one CUDA graph (:mod:`acculturate.decode.static`):
    the same tokens as the eager loop for greedy and seeded sampling, an order of magnitude more
    tokens/s at small batches. Calls that stream (``on_text``), use a repetition penalty or
    ``share_prompts=False``, and other model types, run the eager loop. False: always the eager loop."""

    def __post_init__(self):
        if isinstance(self.stop, str):  # a lone string would otherwise become one stop per character
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        _check_int(self, "max_new_tokens", 1)
        _check_int(self, "top_k", 0)
        _check_int(self, "batch_size", 1)
        _check_number(self, "temperature")
        _check_number(self, "top_p")
        _check_number(self, "repetition_penalty")
        if self.temperature < 0:
            raise ValueError(f"GenerationConfig.temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"GenerationConfig.repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"GenerationConfig.stop must hold non-empty strings, got {list(self.stop)!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"GenerationConfig.seed must be an integer or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_TEMPERATURE


def _check_int(config, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"GenerationConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(config, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"GenerationConfig.{name} must be a number, got {value!r}")


@dataclass
class Completion:
    """One generated completion.

    ``token_ids`` are all generated ids: with the EOS id last when finish_reason is "eos", and up to
    the token that completed the stop string when it is "stop" (``text`` is cut before the stop).
    """

    text: str
    token_ids: list[int] = field(repr=False)
    finish_reason: str          # "stop" | "length" | "eos"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens this completion did not prefill itself: it reused the KV cache of an identical
    prompt in its batch (``share_prompts``). OpenAI reports these as ``cached_tokens``."""


@dataclass
class PromptRow:
    """Decoding state of one prompt inside a batch."""

    index: int                 # position in the caller's prompt list
    prompt_ids: list[int]
    stream: TextStream
    generator: torch.Generator | None
    finish_reason: str | None = None
    cached_tokens: int = 0


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a completion: the model's ``generation_config.eos_token_id`` (an int or a
    list; SmolLM2's chat end token <|im_end|> is there) and the tokenizer's ``eos_token_id``."""
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Tokenize rendered prompts verbatim, adding only a BOS that the tokenizer would add itself
    and the prompt does not already start with (see the module docstring)."""
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {i} must be a str (render chat messages first, or use "
                            f"generate_chat), got {type(prompt).__name__}")
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos] \
        and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]
    if adds_bos:
        encoded = [ids if ids[:1] == [bos] else [bos] + ids for ids in encoded]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} is empty: there is nothing to continue from")
    return encoded


def forward_names(model) -> tuple[str, bool]:
    """The forward's name for the KV cache (transformers 5.x: ``cache``; 4.x: ``past_key_values``),
    and whether it accepts ``logits_to_keep`` (computing the LM head on the last position only saves
    a (B, T, V) tensor at prefill: 8 x 500 x 49152 floats = 786 MB for SmolLM2)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wrappers
    params = inspect.signature(base.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def cache_of(out):
    """The KV cache of a forward's output."""
    cache = getattr(out, "cache", None)  # transformers 5.x; 4.x calls it past_key_values
    return cache if cache is not None else out.past_key_values


def generate(model, tokenizer, prompts: Sequence[str], config: GenerationConfig | None = None,
             on_text: OnText | None = None, progress: bool = False, n: int = 1) -> list[Completion]:
    """Continue each prompt with the model (``n`` times each).

    Args:
        model: an HF causal LM (plain, LoRA-wrapped or PEFT); it is put in eval mode for the call
            and its mode restored afterwards.
        tokenizer: its tokenizer.
        prompts: rendered prompt strings (see the module docstring for BOS handling).
        config: decoding settings; default ``GenerationConfig()`` (greedy, 128 tokens).
        on_text: called as ``on_text(index, delta)`` with each new piece of text of prompt ``index``
            (its position in ``prompts``) as it is generated; the deltas of one prompt concatenate
            to its final ``Completion.text``. See :func:`print_stream`.
        progress: show a tqdm bar over completions.
        n: completions per prompt (e.g. the k chains of self-consistency). The result is exactly
            ``generate(model, tokenizer, [p for p in prompts for _ in range(n)], config)``: completion
            ``i * n + j`` is sample j of prompt i, seeded from ``(seed, i * n + j)`` and indexed so in
            ``on_text``. With ``config.share_prompts`` each prompt is prefilled once per batch, so
            keep ``batch_size >= n`` to prefill it once in all.
    Returns:
        ``n`` :class:`Completion` per prompt, prompt-major, in the order of ``prompts``.
    """
    config = config or GenerationConfig()
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got a single str (wrap it in a list)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (completions per prompt), got {n!r}")
    if not prompts:
        return []
    encoded = [ids for ids in encode_prompts(tokenizer, prompts) for _ in range(n)]
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    for i, ids in enumerate(encoded):
        if limit and len(ids) + config.max_new_tokens > limit:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; with max_new_tokens="
                             f"{config.max_new_tokens} that exceeds the model's {limit} positions")
    if on_text is None and uses_static_decoder(model, config):
        from acculturate.decode.static import generate_static

        return generate_static(model, tokenizer, prompts, config, num_samples=n)
    rows = [PromptRow(i, ids, TextStream(tokenizer, config.stop), row_generator(config, i))
            for i, ids in enumerate(encoded)]
    # Longest first: similar lengths share a batch (little padding) and a batch that does not fit
    # in memory fails at once rather than at the end. Among equal lengths, copies of one prompt stay
    # together (keyed by its first row), so they land in one batch and share its prefill.
    first_row: dict[tuple[int, ...], int] = {}
    for r in rows:
        first_row.setdefault(tuple(r.prompt_ids), r.index)
    order = sorted(rows, key=lambda r: (-len(r.prompt_ids), first_row[tuple(r.prompt_ids)], r.index))
    from tqdm.auto import tqdm

    eos_ids = eos_token_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(rows), disable=not progress, desc="generate",
                                          unit="prompt") as bar:
            for start in range(0, len(order), config.batch_size):
                batch = order[start:start + config.batch_size]
                _generate_batch(model, tokenizer, batch, config, eos_ids, on_text)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return [Completion(text=r.stream.text, token_ids=list(r.stream.token_ids),
                       finish_reason=r.finish_reason, prompt_tokens=len(r.prompt_ids),
                       completion_tokens=len(r.stream.token_ids), cached_tokens=r.cached_tokens) for r in rows]


def uses_static_decoder(model, config: GenerationConfig) -> bool:
    """Whether :func:`generate` decodes ``model`` with the CUDA-graph decoder (see
    ``GenerationConfig.cuda_graphs``): a CUDA model of a supported type, full attention (no sliding
    window), no prompt-tuning embedding, no repetition penalty, shared prompt prefills."""
    if not (config.cuda_graphs and config.share_prompts and config.repetition_penalty == 1):
        return False
    return static_decoding_supported(model)


def static_decoding_supported(model, device_type: str = "cuda") -> bool:
    """Whether ``model`` can decode through a static KV cache (:mod:`acculturate.decode.static`,
    :mod:`acculturate.decode.slots`): on a ``device_type`` device, a supported model type, full
    attention (no sliding window) and no prompt-tuning embedding."""
    from acculturate.adapters.prompt_tuning import prompt_embedding
    from acculturate.decode.static import STATIC_MODEL_TYPES

    first = next(model.parameters(), None)
    if first is None or first.device.type != device_type:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hf = getattr(base, "config", None)
    if getattr(hf, "model_type", None) not in STATIC_MODEL_TYPES:
        return False
    if getattr(hf, "sliding_window", None) and getattr(hf, "use_sliding_window", True):
        return False
    return prompt_embedding(model) is None


def row_generator(config: GenerationConfig, index: int) -> torch.Generator | None:
    """The sampling generator of prompt ``index`` of a call (seeded by ``config.seed`` and the index,
    so each prompt samples the same whatever it is batched with); None for greedy or unseeded."""
    if config.seed is None or config.greedy:
        return None
    # A CPU generator even for a GPU model: sample() draws one uniform per row from it, and CPU draws
    # cost no kernel launch.
    # Hash (seed, index) rather than seed + index: with the sum, seed 1 prompt 1 and seed 2 prompt 0
    # would share a stream, and calls with seeds 1, 2, 3 over repeated prompts would repeat samples.
    digest = hashlib.sha256(f"{config.seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _generate_batch(model, tokenizer, rows: list[PromptRow], config: GenerationConfig,
                    eos_ids: set[int], on_text: OnText | None) -> None:
    """Run one batch to completion, filling each row's stream and finish_reason."""
    device = next(model.parameters()).device
    cache_name, has_logits_to_keep = forward_names(model)
    extra = {"logits_to_keep": 1} if has_logits_to_keep else {}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)

    # Prefill each distinct prompt once (see GenerationConfig.share_prompts): `source[b]` is the
    # prefill row whose cache row b copies.
    distinct: dict[tuple[int, ...], int] = {}
    source: list[int] = []
    prefill: list[list[int]] = []   # the distinct prompts, in order of first appearance
    for row in rows:
        key = tuple(row.prompt_ids) if config.share_prompts else (row.index,)
        if key in distinct:
            row.cached_tokens = len(row.prompt_ids)
        else:
            distinct[key] = len(prefill)
            prefill.append(row.prompt_ids)
        source.append(distinct[key])

    width = max(len(ids) for ids in prefill)
    input_ids = torch.full((len(prefill), width), pad_id, dtype=torch.long)  # (U, P), left-padded
    mask = torch.zeros((len(prefill), width), dtype=torch.long)               # (U, P)
    for u, ids in enumerate(prefill):
        input_ids[u, width - len(ids):] = torch.tensor(ids)
        mask[u, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    # Real tokens count 0, 1, 2...; padding gets 0 (it is masked out anyway), as HF does.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)                        # (U, P)

    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    cache = cache_of(out)
    logits = out.logits[:, -1, :]                                          # (U, V)
    if len(prefill) < len(rows):
        # Copy each prompt's keys and values to its rows: (U, H, P, D) -> (B, H, P, D) per layer.
        # For k=8 chains of a 265-token prompt on CPU this removes 7 of 8 prefills (docs/benchmarks.md).
        index = torch.tensor(source, device=device)
        cache.batch_select_indices(index)
        logits, input_ids, mask = logits[index], input_ids[index], mask[index]
    next_pos = mask.sum(-1, keepdim=True)                                  # (B, 1)
    # For the repetition penalty: every real token so far, padding as -1 (ignored).
    history = input_ids.masked_fill(mask == 0, -1) if config.repetition_penalty != 1 else None

    active = list(rows)  # rows still generating, in the cache's batch order
    for _ in range(config.max_new_tokens):
        logits = logits.float()                                            # (A, V)
        if history is not None:
            logits = apply_repetition_penalty(logits, history, config.repetition_penalty)
        generators = [r.generator for r in active] if config.seed is not None else None
        tokens = sample(logits, config.temperature, config.top_k, config.top_p, generators)  # (A,)
        keep = [j for j, (row, token) in enumerate(zip(active, tokens.tolist()))
                if not advance_row(row, token, eos_ids, config.max_new_tokens, on_text)]
        if not keep:
            break
        if len(keep) < len(active):
            # Drop finished rows from the batch (and the KV cache) so they cost no more compute.
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            tokens, mask, next_pos = tokens[index], mask[index], next_pos[index]
            history = history[index] if history is not None else None
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)  # (A, P + t)
        if history is not None:
            history = torch.cat([history, tokens[:, None]], dim=-1)
        # One token per row: the cache holds every earlier key and value.
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **{cache_name: cache}, **extra)
        cache = cache_of(out)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1


def advance_row(row: PromptRow, token: int, eos_ids: set[int], max_new_tokens: int,
                on_text: OnText | None) -> bool:
    """Add one sampled token to a row; stream its text; return True when the row is finished."""
    if token in eos_ids:
        row.stream.token_ids.append(token)  # kept in token_ids, never part of the text
        row.finish_reason = "eos"
        delta = row.stream.flush()
    else:
        delta = row.stream.add(token)
        if row.stream.stopped:
            row.finish_reason = "stop"
        elif len(row.stream.token_ids) >= max_new_tokens:
            row.finish_reason = "length"
            delta += row.stream.flush()
    if on_text is not None and delta:
        on_text(row.index, delta)
    return row.finish_reason is not None


def generate_chat(model, tokenizer, messages_list: Sequence[list[dict]],
                  config: GenerationConfig | None = None, on_text: OnText | None = None,
                  progress: bool = False) -> list[Completion]:
    """:func:`generate` for conversations: renders each with the tokenizer's chat template and the
    assistant prompt appended (``add_generation_prompt=True``).

    Args:
        messages_list: one conversation per completion, each a list of
            ``{"role": ..., "content": ...}`` ending with the turn to answer.
        config, on_text, progress: as for :func:`generate`.
    Returns:
        One :class:`Completion` per conversation, in order.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; render prompts yourself "
                         "(e.g. with the Alpaca template) and call generate()")
    prompts = []
    for i, messages in enumerate(messages_list):
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError(f"conversation {i} must be a list of {{'role', 'content'}} dicts, "
                             f"got {messages!r:.200}")
        prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return generate(model, tokenizer, prompts, config, on_text=on_text, progress=progress)


def print_stream(file: TextIO | None = None) -> OnText:
    """An ``on_text`` callback that writes each delta to ``file`` (default stdout) as it arrives.
    With several prompts in flight their pieces interleave; use it with one prompt at a time."""
    def on_text(index: int, delta: str) -> None:
        out = file or sys.stdout
        out.write(delta)
        out.flush()
    return on_text


def stream_to_terminal(model, tokenizer, prompt: str, config: GenerationConfig | None = None,
                       file: TextIO | None = None) -> Completion:
    """Generate one completion, printing it to ``file`` (default stdout) as it is produced, then a
    newline. Returns the :class:`Completion`."""
    completion = generate(model, tokenizer, [prompt], config, on_text=print_stream(file))[0]
    (file or sys.stdout).write("\n")
    return completion
