"""What every decoder shares, one token step at a time: the decoding settings
(:class:`GenerationConfig`), a finished :class:`Completion`, the per-prompt state
(:class:`PromptRow`), prompt encoding, EOS ids, each row's seeded generator and
:func:`advance_row` (add one sampled token, stream its text, decide whether the row is done).

The eager loop (:mod:`.generate`), the continuous-batching engine (:mod:`.engine`), the CUDA-graph
decoder (:mod:`.static`) and the fixed-slot server decoder (:mod:`.slots`) all build on these, so
they produce the same completions; this module imports none of them.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from acculturate.decode.detokenize import TextStream
from acculturate.decode.sampling import GREEDY_TEMPERATURE

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


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector paused, for a CUDA graph capture. A dead decoder still in a
    reference cycle (a bound method of itself) holds its graph and that graph's memory pool; collected
    in the middle of another decoder's capture, it would free device memory, which invalidates the
    capture ("operation failed due to a previous error during capture": seen once on an H200 in
    bench/decode_attention.py, which builds decoder after decoder). torch no longer runs gc.collect()
    before a capture (``torch.compiler.config.force_cudagraph_gc``); the garbage waits until after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
