"""Answer an evaluation task with a prompting strategy (cot, self_consistency, few_shot, ...).

A system whose ``strategy`` is not the built-in ``zero_shot`` answers each item through
:func:`acculturate.prompting.run_strategy`, one item at a time. The item becomes the strategy's
Example: the same question from :mod:`acculturate.prompting.tasks` (BLEnD for ``blend``, SVAMP for
``cot``), with the task's other questions as the exemplar pool (an evaluated question is never an
exemplar). Each saved row carries what the task's scorer reads, so scoring and ``--rescore`` stay
the same as for zero-shot rows:

- ``blend``: ``output`` is the strategy's extracted answer (scored with ``is_correct``), the full
  replies are in ``completions``;
- ``cot``: ``chains`` are the strategy's reasoning completions (one for ``cot``, k for
  ``self_consistency``, the final revision for ``critique_refine``; the last completion for the
  others), from which the CoT proxies are computed; accuracy is the strategy's own ``answer``
  (a program's output, a tree's final step), not a re-vote over the chains.

The strategy's answer, vote distribution and call count go in the row too; the chunk timing
records its wall time and tokens as for zero-shot rows.
"""

from __future__ import annotations

import time
from pathlib import Path

from acculturate.evaluate.tasks import Item, TaskConfig
from acculturate.io import append_jsonl, read_jsonl_by_key

# Eval task kinds a strategy can answer, and the prompting task that holds their questions.
STRATEGY_TASKS = {"blend": "blend", "cot": "svamp"}
# Trace steps whose completions are chains of thought (saved as ``chains`` on a cot task).
CHAIN_STEPS = ("reasoning", "chain")


def prompting_task(task: TaskConfig, items: list[Item]):
    """The prompting Task behind ``task``'s items, with every other question as the exemplar pool.

    Returns:
        (task, {item id: Example}).
    Raises:
        ValueError: the task kind has no prompting counterpart, or an item is not in it.
    """
    from acculturate.prompting import Task, load_task

    if task.kind not in STRATEGY_TASKS:
        raise ValueError(f"tasks[{task.name}]: a prompting strategy can answer tasks of kind "
                         f"{sorted(STRATEGY_TASKS)}, not {task.kind!r}")
    options = {"countries": task.countries} if task.kind == "blend" and task.countries else {}
    full = load_task(STRATEGY_TASKS[task.kind], **options)
    by_id = {ex.meta["id"]: ex for ex in full.examples}
    missing = [it.id for it in items if it.id not in by_id]
    if missing:
        raise ValueError(f"tasks[{task.name}]: {len(missing)} items are not in the {full.name} questions "
                         f"(first: {missing[0]!r})")
    evaluated = {it.id for it in items}
    pool = [ex for ex in full.examples if ex.meta["id"] not in evaluated] or full.examples
    return Task(full.name, full.kind, full.examples, pool), {it.id: by_id[it.id] for it in items}


def answer_with_strategy(model, tokenizer, items: list[Item], task: TaskConfig, strategy: str, config,
                         out_path: Path, timing_path: Path, *, device: str = "cpu", progress: bool = True,
                         desc: str = "") -> list[dict]:
    """Answer every item not yet in ``out_path`` with ``strategy`` (its config object ``config``).

    Returns:
        The rows for ``items``, in their order (saved and new).
    """
    from tqdm.auto import tqdm

    from acculturate.prompting import run_strategy
    from acculturate.train import PeakMemory

    done = read_jsonl_by_key(out_path, "id")
    todo = [it for it in items if it.id not in done]
    if todo:
        ptask, examples = prompting_task(task, items)
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="ex", disable=not progress)
    for it in todo:
        example = examples[it.id]
        start = time.perf_counter()
        with PeakMemory(device) as mem:
            result = run_strategy(strategy, model, tokenizer, ptask, example, config)
        seconds = time.perf_counter() - start
        trace = result.trace
        append_jsonl(timing_path, {"ids": [it.id], "seconds": seconds, "prompt_tokens": trace.prompt_tokens,
                                   "completion_tokens": trace.completion_tokens,
                                   "peak_memory_bytes": mem.peak_bytes, "memory_kind": mem.kind})
        answer = ptask.display(result.answer)
        row = {"id": it.id, "prompt": it.messages[-1]["content"], **it.meta, "strategy": strategy,
               "answer": answer, "calls": len(trace.calls), "completion_tokens": trace.completion_tokens,
               "votes": result.extra.get("votes")}
        if task.kind == "cot":
            row["chains"] = [c.completion for c in trace.calls if c.step in CHAIN_STEPS] or \
                [trace.calls[-1].completion if trace.calls else ""]
        else:
            row["output"] = answer or ""
            row["completions"] = [c.completion for c in trace.calls]
        done[it.id] = row
        append_jsonl(out_path, row)
        bar.update(1)
    bar.close()
    return [done[it.id] for it in items]
