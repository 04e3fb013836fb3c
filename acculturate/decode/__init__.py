"""Decoding: sampling maths (pure functions on logits) and the batched generation loop."""

from acculturate.decode.generate import (
    Completion,
    GenerationConfig,
    eos_token_ids,
    generate,
    generate_chat,
    print_stream,
    stream_to_terminal,
)
from acculturate.decode.sampling import (
    apply_repetition_penalty,
    apply_temperature,
    filter_top_k,
    filter_top_p,
    sample,
)

__all__ = [
    "Completion", "GenerationConfig", "eos_token_ids", "generate", "generate_chat", "print_stream",
    "stream_to_terminal", "apply_repetition_penalty", "apply_temperature", "filter_top_k",
    "filter_top_p", "sample",
]
