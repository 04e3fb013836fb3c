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

The settings, completion and per-row step this loop shares with the other decoders live in
:mod:`.step` (re-exported here); a CUDA model of a supported type decodes through :mod:`.static`.
"""

from __future__ import annotations

import sys
from typing import Sequence, TextIO

import torch

from acculturate.decode.detokenize import TextStream
from acculturate.decode.sampling import apply_repetition_penalty, sample
# The shared step pieces, also importable from here (the module most callers know).
from acculturate.decode.step import (
    Completion, GenerationConfig, OnText, PromptRow, advance_row, cache_of, encode_prompts, eos_token_ids,
    forward_names, row_generator,
)


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
