"""Answer a task's items with one system and save every answer (JSONL), resumably, with its cost.

Rows go to ``outputs/<task>/<system>.jsonl`` one chunk at a time, so a killed run loses at most a
chunk; each chunk's wall time, tokens and peak memory go to ``timing/<task>/<system>.jsonl``, from
which the efficiency table is summed. The judge stage adds ``judge_score``/``judge_reason`` to the
rows of an ``appropriateness`` task in ``judgements/<task>/<system>.jsonl``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

from acculturate.data import render_prompt
from acculturate.decode import GenerationConfig, generate
from acculturate.evaluate.judge import REPLY_PREFIX, Rubrics, judge_messages, parse_judgement
from acculturate.evaluate.tasks import TASKS, Item, TaskConfig
from acculturate.io import append_jsonl, read_jsonl_by_key

# A strategy turns (model, tokenizer, items, generation config) into one text per item per sample.
Strategy = Callable[..., list[list[str]]]


def read_rows(path: Path) -> dict[str, dict]:
    """Saved rows by id; a line cut by a kill mid-write is skipped (that example is redone)."""
    return read_jsonl_by_key(path, "id")


def _seed_of(item_id: str, seed: int) -> int:
    # Each item's chains get their own seed, so a resumed run samples exactly what a fresh one would.
    return int(hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()[:8], 16)


def generation_config(task: TaskConfig, batch_size: int, temperature: float = 0.0) -> GenerationConfig:
    """The task kind's decoding defaults; ``cot`` samples at the task's temperature."""
    kind = TASKS[task.kind]
    return GenerationConfig(max_new_tokens=task.max_new_tokens or kind.max_new_tokens, stop=kind.stop,
                            batch_size=batch_size,
                            temperature=task.temperature if kind.sampled else temperature)


def answer_items(model, tokenizer, items: list[Item], task: TaskConfig, out_path: Path, timing_path: Path, *,
                 batch_size: int = 8, system_prompt: str | None = None, device: str = "cpu",
                 progress: bool = True, desc: str = "") -> list[dict]:
    """Answer every item not yet in ``out_path`` (zero-shot: the chat template, then our decoder).

    Returns:
        The rows for ``items``, in their order (saved and new).
    """
    from tqdm.auto import tqdm

    from acculturate.train import PeakMemory

    kind = TASKS[task.kind]
    done = read_rows(out_path)
    todo = [it for it in items if it.id not in done]
    gen = generation_config(task, batch_size)
    chunk = 1 if kind.sampled else max(batch_size * 2, 1)
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="ex", disable=not progress)
    for start in range(0, len(todo), chunk):
        batch = todo[start:start + chunk]
        prompts = [render_prompt(it.messages, tokenizer, "chat", system=system_prompt) for it in batch]
        if kind.sampled:   # one item, `samples` chains from its own seed
            gen.seed = _seed_of(batch[0].id, task.seed)
            prompts = prompts * task.samples
        t0 = time.perf_counter()
        with PeakMemory(device) as mem:
            outs = generate(model, tokenizer, prompts, gen)
        seconds = time.perf_counter() - t0
        append_jsonl(timing_path, {"ids": [it.id for it in batch], "seconds": seconds,
                                   "prompt_tokens": sum(o.prompt_tokens for o in outs),
                                   "completion_tokens": sum(o.completion_tokens for o in outs),
                                   "peak_memory_bytes": mem.peak_bytes, "memory_kind": mem.kind})
        for j, it in enumerate(batch):
            row = {"id": it.id, "prompt": it.messages[-1]["content"], **it.meta}
            if kind.sampled:
                row["chains"] = [o.text for o in outs]
                row["completion_tokens"] = sum(o.completion_tokens for o in outs)
            else:
                row["output"] = outs[j].text
                row["completion_tokens"] = outs[j].completion_tokens
                row["finish_reason"] = outs[j].finish_reason
            done[it.id] = row
            append_jsonl(out_path, row)
        bar.update(len(batch))
    bar.close()
    return [done[it.id] for it in items]


def judge_rows(model, tokenizer, rows: list[dict], rubrics: Rubrics, out_path: Path, *,
               max_new_tokens: int = 48, batch_size: int = 8, progress: bool = True,
               desc: str = "judging") -> list[dict]:
    """Score each answer 1-5 for its region with the judge model; saved per id, resumable.

    Returns:
        ``{"id", "judge_score", "judge_reason", "judge_raw"}`` per row, in the order of ``rows``.
    """
    from tqdm.auto import tqdm

    done = read_rows(out_path)
    todo = [r for r in rows if r["id"] not in done]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    chunk = max(batch_size * 2, 1)
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=desc, unit="ex", disable=not progress)
    for start in range(0, len(todo), chunk):
        batch = todo[start:start + chunk]
        prompts = [render_prompt(judge_messages(r["question"], r["output"], r["region"], rubrics), tokenizer, "chat")
                   + REPLY_PREFIX for r in batch]
        for r, out in zip(batch, generate(model, tokenizer, prompts, gen)):
            raw = REPLY_PREFIX + out.text
            score, reason = parse_judgement(raw)
            row = {"id": r["id"], "judge_score": score, "judge_reason": reason, "judge_raw": raw}
            done[r["id"]] = row
            append_jsonl(out_path, row)
        bar.update(len(batch))
    bar.close()
    return [done[r["id"]] for r in rows]
