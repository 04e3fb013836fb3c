"""Perplexity per group of held-apart text, and a general-ability task score: the numbers of a
continued-pre-training run's report (regional gain next to general loss)."""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch

from acculturate.data import Example, render_prompt
from acculturate.decode import GenerationConfig, generate
from acculturate.evaluate.metrics import corpus_chrf
from acculturate.train.loss import count_targets
from acculturate.train.sft import TrainConfig, collate, evaluate_loss, prepare_rows


def loss_and_perplexity(model: torch.nn.Module, features: Sequence[dict], config: TrainConfig, pad_id: int,
                        device: torch.device | None = None) -> dict:
    """Token-weighted mean next-token loss of ``features`` and its ``exp`` (perplexity).

    The features are prepared as the training loop prepares them (truncated to ``max_length``,
    packed when ``config.packing``), so the number is the one training optimises.

    Returns:
        ``{"loss", "perplexity", "tokens"}`` (None values when there is no target token).
    """
    device = device or next(model.parameters()).device
    rows, _ = prepare_rows(features, config)
    if not rows:
        return {"loss": None, "perplexity": None, "tokens": 0}
    tokens = sum(count_targets(collate(rows[i:i + config.batch_size], config, pad_id))
                 for i in range(0, len(rows), config.batch_size))
    loss = evaluate_loss(model, rows, config, pad_id, device)
    return {"loss": round(loss, 6), "perplexity": round(math.exp(loss), 4), "tokens": tokens}


def group_perplexity(model: torch.nn.Module, features: Sequence[dict], config: TrainConfig, pad_id: int) -> dict:
    """:func:`loss_and_perplexity` of each ``feature["group"]`` (features without one: ``"all"``)."""
    groups: dict[str, list[dict]] = {}
    for f in features:
        groups.setdefault(f.get("group", "all"), []).append(f)
    return {name: loss_and_perplexity(model, rows, config, pad_id) for name, rows in groups.items()}


@torch.no_grad()
def target_log_probs(model: torch.nn.Module, features: Sequence[dict], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Log-probabilities (N, V), fp32 on CPU, at every target position of ``features`` (in order),
    in eval mode: kept before training to measure how far training moved the distribution."""
    from acculturate.data.batching import pad_collate
    from acculturate.train.regularizers import target_logits

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(features), batch_size):
        batch = pad_collate([{"input_ids": f["input_ids"], "labels": f["labels"]}
                             for f in features[start:start + batch_size]], pad_id)
        logits, _, _ = target_logits(model, batch, device)
        out.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def kl_from(reference_log_probs: torch.Tensor, model: torch.nn.Module, features: Sequence[dict], pad_id: int,
            batch_size: int = 8) -> float | None:
    """Mean KL(reference || model) per target position of ``features`` (None when there are none)."""
    now = target_log_probs(model, features, pad_id, batch_size)
    if now.shape != reference_log_probs.shape or now.numel() == 0:
        return None
    kl = torch.nn.functional.kl_div(now, reference_log_probs, reduction="sum", log_target=True)
    return round(float(kl) / now.shape[0], 6)


def task_score(model: torch.nn.Module, tokenizer, examples: Sequence[Example], template: str,
               max_new_tokens: int = 48, batch_size: int = 8) -> dict:
    """Answer ``examples`` greedily and score the answers against their references with corpus chrF.

    Returns:
        ``{"chrf", "n", "seconds", "answers"}``; answers are the generated texts, in order.
    """
    if not examples:
        return {"chrf": None, "n": 0, "seconds": 0.0, "answers": []}
    start = time.perf_counter()
    prompts = [render_prompt(ex, tokenizer, template) for ex in examples]
    references = [ex.messages[-1]["content"] for ex in examples]
    completions = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=max_new_tokens,
                                                                       batch_size=batch_size))
    answers = [c.text.strip() for c in completions]
    try:
        chrf = corpus_chrf(answers, references).score
    except ImportError as e:
        raise ImportError("the general task score needs sacrebleu: pip install 'acculturate[eval]' "
                          "(or set general.task_examples: 0)") from e
    return {"chrf": round(chrf, 3), "n": len(examples),
            "seconds": round(time.perf_counter() - start, 1), "answers": answers}
