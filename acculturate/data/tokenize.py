"""Tokenize examples for supervised fine-tuning: labels are the input ids on response tokens and
-100 elsewhere, so the loss is computed on the responses only."""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

from acculturate.data.example import Example, loss_weight
from acculturate.data.templates import render_segments

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


def tokenize_example(
    example: Example, tokenizer, template: str = "chat", max_length: int | None = None, system: str | None = None,
    loss_turns: str = "all",
) -> dict | None:
    """Token ids and labels of one example.

    Each rendered segment is tokenized on its own (``add_special_tokens=False``) and the pieces are
    concatenated, so a token never straddles the prompt/response boundary.

    Args:
        example: an example with at least one assistant turn.
        tokenizer: a Hugging Face tokenizer.
        template: ``"chat"`` or ``"alpaca"`` (see ``templates.render_segments``).
        max_length: keep at most this many tokens (cut from the end); None keeps all.
        system: optional persona replacing or inserting the system message.
        loss_turns: ``"all"`` assistant turns carry loss, or the ``"last"`` only.

    Returns:
        ``{"input_ids": [int], "labels": [int]}`` (python lists of equal length), or None when
        truncation removed every response token (nothing left to learn from). An example with
        ``meta["weight"]`` (as ``acculturate data balance --mode weight`` writes) also gets
        ``"weight"``: the factor on its tokens' loss in training (:func:`acculturate.train.loss.loss_sum`).

    Raises:
        ValueError: the example has no assistant turn, its ``meta["weight"]`` is not a finite
            number >= 0, or ``max_length`` < 1.
    """
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length: expected a positive integer or None, got {max_length!r}")
    segments = render_segments(example, tokenizer, template, system=system, loss_turns=loss_turns)
    if not any(is_response for _, is_response in segments):
        raise ValueError(f"example has no assistant turn to train on (meta={example.meta!r})")
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_response in segments:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if is_response else [IGNORE_INDEX] * len(ids)
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    feature = {"input_ids": input_ids, "labels": labels}
    weight = loss_weight(example.meta)
    if weight is not None:
        feature["weight"] = weight
    return feature



def tokenize_examples(
    examples: list[Example],
    tokenizer,
    template: str = "chat",
    max_length: int | None = None,
    progress: bool = True,
    system: str | None = None,
    dropped: list[int] | None = None,
    loss_turns: str = "all",
) -> list[dict]:
    """``tokenize_example`` over a list, with a progress bar, dropping examples whose response was
    truncated away entirely (a warning gives the count).

    Args:
        examples, tokenizer, template, max_length, system, loss_turns: as for ``tokenize_example``.
        progress: show a tqdm bar.
        dropped: when given, the indices of the dropped examples are appended to it.

    Returns:
        The features, in order, without the dropped examples.
    """
    features: list[dict] = []
    lost: list[int] = []
    for i, example in enumerate(tqdm(examples, desc="tokenize", unit="ex", disable=not progress)):
        feature = tokenize_example(example, tokenizer, template, max_length, system=system, loss_turns=loss_turns)
        if feature is None:
            lost.append(i)
        else:
            features.append(feature)
    if lost:
        log.warning("dropped %d of %d examples: their response starts after max_length=%s tokens",
                    len(lost), len(examples), max_length)
        if dropped is not None:
            dropped.extend(lost)
    return features
