"""Short-answer QA accuracy (BLEnD): generate an answer per question, score it against the annotators'.

Every prediction is saved per example (JSONL), so a run can be re-scored without re-generating and an
interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.data import Example, is_correct, render_prompt
from acculturate.decode import GenerationConfig, generate
from acculturate.io import append_jsonl, read_jsonl_by_key


@dataclass
class QAEvalConfig:
    """How held-apart questions and the general-skill check are answered (`adapt`, `compare`)."""

    limit: int | None = None
    """Answer only the first N held-apart questions (None: all)."""
    max_new_tokens: int = 24
    """Short answers."""
    batch_size: int = 16
    """Questions answered per generate call."""
    general: int = 40
    """Held-out general instructions for the general-skill check (0: skip)."""
    general_max_new_tokens: int = 48
    """Tokens per general-skill answer."""

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: expected a positive integer, got {self.limit}")
        if self.general < 0:
            raise ValueError(f"general: expected >= 0, got {self.general}")


@dataclass
class QAResult:
    accuracy: float
    correct: int
    total: int
    ci95: tuple[float, float]
    """Wilson score interval of the accuracy."""
    seconds: float
    by_group: dict[str, dict] = field(default_factory=dict)
    """e.g. per topic."""
    predictions_path: str | None = None


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval; unlike the normal approximation it stays inside [0, 1] for small n."""
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _read_done(path: Path) -> dict[str, dict]:
    return read_jsonl_by_key(path, "id")


def evaluate_qa(model, tokenizer, examples: list[Example], generation: GenerationConfig, *,
                template: str = "chat", system: str | None = None, predictions_path: str | Path | None = None,
                group_by: str = "topic", progress: bool = True, desc: str = "evaluating") -> QAResult:
    """Answer each example's question with ``model`` and score it with :func:`acculturate.data.is_correct`.

    Args:
        examples: QA examples whose ``meta["answers"]`` holds every accepted answer, ``meta["id"]`` an id.
        generation: decoding settings (greedy by default).
        template: ``"chat"`` (the model's chat template) or ``"alpaca"``; must match training.
        predictions_path: JSONL of per-example outputs; existing rows are reused (resume).
    Returns:
        :class:`QAResult` with accuracy, Wilson 95% interval and per-group accuracy.
    """
    start = time.perf_counter()
    path = Path(predictions_path) if predictions_path else None
    done = _read_done(path) if path else {}
    todo = [ex for ex in examples if ex.meta["id"] not in done]
    if todo:
        prompts = [render_prompt(ex.prompt_messages, tokenizer, template, system=system) for ex in todo]
        # Generate in chunks so each chunk's rows are saved before the next starts (resumable).
        chunk = max(generation.batch_size * 4, 1)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=desc, unit="q", disable=not progress)
        for i in range(0, len(todo), chunk):
            outs = generate(model, tokenizer, prompts[i:i + chunk], generation)
            for ex, out in zip(todo[i:i + chunk], outs):
                row = {"id": ex.meta["id"], "question": ex.prompt_messages[-1]["content"],
                       "prediction": out.text, "answers": ex.meta["answers"],
                       "correct": is_correct(out.text, ex.meta["answers"]),
                       "group": ex.meta.get(group_by), "completion_tokens": out.completion_tokens}
                done[row["id"]] = row
                if path:
                    append_jsonl(path, row)
            bar.update(len(outs))
        bar.close()
    rows = [done[ex.meta["id"]] for ex in examples]
    correct = sum(r["correct"] for r in rows)
    groups: dict[str, list[bool]] = {}
    for r in rows:
        groups.setdefault(str(r.get("group")), []).append(r["correct"])
    return QAResult(
        accuracy=correct / len(rows) if rows else 0.0, correct=correct, total=len(rows),
        ci95=wilson_interval(correct, len(rows)), seconds=time.perf_counter() - start,
        by_group={g: {"accuracy": sum(v) / len(v), "n": len(v)} for g, v in sorted(groups.items())},
        predictions_path=str(path) if path else None)
