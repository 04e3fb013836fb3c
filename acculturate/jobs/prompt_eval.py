"""`acculturate prompt-eval CONFIG`: several prompting strategies over one sample of a task, side by side.

For each strategy, every example's answer, correctness, tokens, latency and (optionally) full trace is
appended to ``<run>/outputs/<label>.jsonl`` as soon as it is known, so a killed run continues where it
stopped. At the end ``results.json`` and ``results.md`` hold the table: accuracy (with a 95% Wilson
interval), mean tokens generated, mean prompt tokens, mean model calls and mean latency per example.

`acculturate prompt --strategy NAME --task TASK "question"` (:func:`answer_question`) runs one
strategy on one typed question.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.config_loading import apply_overrides
from acculturate.evaluate.qa import wilson_interval
from acculturate.io import append_jsonl, read_jsonl_by_key, write_json, write_text
from acculturate.jobs.common import AdaptedModelConfig, JobConfig, ModelConfig, open_run, resolve_model_name
from acculturate.prompting import STRATEGIES, Task, load_task, run_strategy, strategy_config
from acculturate.prompting.trace import StrategyResult

log = logging.getLogger(__name__)


@dataclass
class StrategyRun:
    """One column of the comparison: a strategy and its settings."""

    strategy: str
    """A key of acculturate.prompting.STRATEGIES."""
    label: str | None = None
    """Name in the table and of the outputs file (default: strategy)."""
    config: dict = field(default_factory=dict)
    """Fields of the strategy's config dataclass."""

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        strategy_config(self.strategy, self.config)  # fail at load, naming the field
        self.label = self.label or self.strategy
        if not self.label.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"label: expected letters, digits, '-' or '_' (it names a file), got {self.label!r}")


@dataclass
class PromptTaskConfig:
    """Which questions, and how many."""

    name: str = "svamp"
    """'svamp' or 'blend'."""
    path: str | None = None
    """A data file instead of the shipped one."""
    countries: list[str] | None = None
    """Blend: only these countries."""
    sample: int | None = 20
    """Evaluate a seeded random sample of N questions (None: all)."""
    seed: int = 0
    """Seed of the sample."""

    def __post_init__(self):
        if self.sample is not None and self.sample < 1:
            raise ValueError(f"sample: expected a positive integer or null, got {self.sample}")
        if self.countries is not None and self.name != "blend":
            raise ValueError(f"countries: only for task 'blend', not {self.name!r}")


@dataclass
class PromptEvalConfig(JobConfig):
    """`acculturate prompt-eval CONFIG`: compare prompting strategies on one task sample."""

    name: str = "prompt-eval"
    model: AdaptedModelConfig = field(default_factory=AdaptedModelConfig)
    adapter: str | None = None
    """A LoRA or prompt-tuning adapter directory applied to the model (which defaults to the adapter's base)."""
    task: PromptTaskConfig = field(default_factory=PromptTaskConfig)
    strategies: list[StrategyRun] = field(default_factory=lambda: [StrategyRun("zero_shot"), StrategyRun("cot")])
    """The strategies compared, each a name and its config fields (see `acculturate prompt --help`)."""
    save_traces: bool = True
    """Keep every prompt and completion in the outputs (large)."""

    def __post_init__(self):
        labels = [s.label for s in self.strategies]
        if not labels:
            raise ValueError("strategies: expected at least one strategy")
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"strategies: labels must differ, {duplicates} repeat (set 'label')")


def load_model(model: ModelConfig, adapter: str | None):
    """The model to prompt (with ``adapter`` applied when given); an unset ``model.name`` is the
    adapter's recorded base, else the embedded default."""
    from acculturate.adapters.base_model import pick_base_model
    from acculturate.models import load

    loaded = load(pick_base_model(model.name, [adapter] if adapter else []), device=model.device, dtype=model.dtype)
    if adapter:
        from acculturate.adapters import load_adapter

        load_adapter(loaded.model, adapter)
        loaded.model.eval()
    return loaded


def split_task(task: Task, sample: int | None, seed: int) -> tuple[Task, list]:
    """A seeded sample of the task's questions to evaluate, and the task with the rest as its
    exemplar pool (an evaluated question is never another's exemplar either)."""
    order = list(range(len(task.examples)))
    random.Random(seed).shuffle(order)
    chosen = sorted(order[:sample]) if sample else order
    chosen_set = set(chosen)
    evaluated = [task.examples[i] for i in chosen]
    pool = [ex for i, ex in enumerate(task.examples) if i not in chosen_set]
    if not pool:
        pool = task.examples  # the whole set is evaluated: exemplars exclude only the question itself
    return Task(task.name, task.kind, task.examples, pool), evaluated


def _read_done(path: Path) -> dict[str, dict]:
    return read_jsonl_by_key(path, "id")


def _row(task: Task, example, result: StrategyResult, save_trace: bool) -> dict:
    row = {"id": example.meta["id"], "question": example.meta["question"],
           "answer": task.display(result.answer),
           "gold": [task.display(a) if task.kind == "number" else a for a in example.meta["answers"]],
           "correct": task.is_correct(result.answer, example),
           "completion_tokens": result.trace.completion_tokens, "prompt_tokens": result.trace.prompt_tokens,
           "calls": len(result.trace.calls), "seconds": round(result.trace.seconds, 3),
           "extra": result.extra}
    if save_trace:
        row["trace"] = result.trace.to_dict()
    return row


def summarize(rows: list[dict]) -> dict:
    """Accuracy (Wilson 95%), mean completion/prompt tokens, calls and seconds over one strategy's rows."""
    n = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    mean = (lambda key: sum(r[key] for r in rows) / n) if n else (lambda key: 0.0)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
            "ci95": list(wilson_interval(correct, n)), "answered": sum(r["answer"] is not None for r in rows),
            "mean_completion_tokens": mean("completion_tokens"), "mean_prompt_tokens": mean("prompt_tokens"),
            "mean_calls": mean("calls"), "mean_seconds": mean("seconds")}


def results_table(results: dict, title: str) -> str:
    """The markdown table of :func:`run_prompt_eval`'s results."""
    lines = [f"# {title}", "",
             "| strategy | accuracy | 95% CI | correct / n | answered | mean tokens generated | "
             "mean prompt tokens | mean calls | mean latency (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, s in results.items():
        lo, hi = s["ci95"]
        lines.append(f"| {label} | {100 * s['accuracy']:.1f}% | {100 * lo:.1f}-{100 * hi:.1f}% | "
                     f"{s['correct']} / {s['n']} | {s['answered']} | {s['mean_completion_tokens']:.1f} | "
                     f"{s['mean_prompt_tokens']:.1f} | {s['mean_calls']:.1f} | {s['mean_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def run_prompt_eval(config: PromptEvalConfig, *, overwrite: bool = False, progress: bool = True,
                    loaded=None) -> dict:
    """Run every strategy of ``config`` over the task sample; continue an interrupted run.

    Args:
        config: the comparison.
        overwrite: delete an existing run of this name first (else continue it; a run holding a
            different config is refused).
        progress: show a progress bar per strategy.
        loaded: an already loaded ``(model, tokenizer)`` to use instead of loading ``config.model``.

    Returns:
        ``{"task", "sample", "model", "results": {label: summary}, "wall_time_s"}``, also written to
        ``<run>/results.json``, with the table in ``<run>/results.md``.
    """
    start = time.perf_counter()
    if loaded is None:
        resolve_model_name(config.model, [config.adapter])   # config.json and the summary name the model used
    out = open_run(config, overwrite)
    options = {"countries": config.task.countries} if config.task.countries else {}
    task, evaluated = split_task(load_task(config.task.name, config.task.path, **options),
                                 config.task.sample, config.task.seed)
    model, tokenizer = loaded if loaded is not None else load_model(config.model, config.adapter)
    from tqdm.auto import tqdm

    results = {}
    for run in config.strategies:
        strategy_cfg = strategy_config(run.strategy, run.config)
        path = out / "outputs" / f"{run.label}.jsonl"
        done = _read_done(path)
        for example in tqdm(evaluated, desc=run.label, unit="q", disable=not progress):
            if example.meta["id"] in done:
                continue
            result = run_strategy(run.strategy, model, tokenizer, task, example, strategy_cfg)
            row = _row(task, example, result, config.save_traces)
            append_jsonl(path, row)
            done[row["id"]] = row
        results[run.label] = summarize([done[ex.meta["id"]] for ex in evaluated])
        log.info("%s: accuracy %.3f", run.label, results[run.label]["accuracy"])
    summary = {"task": config.task.name, "sample": len(evaluated), "model": config.model.name,
               "adapter": config.adapter, "results": results, "wall_time_s": round(time.perf_counter() - start, 1)}
    write_json(out / "results.json", summary)
    title = f"Prompting strategies on {config.task.name} ({len(evaluated)} questions, {config.model.name})"
    write_text(out / "results.md", results_table(results, title)
               + f"\nPer-example outputs: `outputs/<strategy>.jsonl`. Wall time of this invocation: "
                 f"{summary['wall_time_s']:.0f} s (a resumed run counts only its own part).\n")
    return summary


def answer_question(strategy: str, task_name: str, question: str, *, overrides: list[str] | None = None,
                    region: str | None = None, model: ModelConfig | None = None,
                    adapter: str | None = None, loaded=None) -> tuple[Task, StrategyResult]:
    """`acculturate prompt`: answer one typed question with one strategy.

    Args:
        strategy: a key of ``STRATEGIES``.
        task_name: the task whose answer format to use (``svamp``: a number; ``blend``: a few words);
            its questions serve as exemplars.
        question: the question.
        overrides: ``field=value`` settings of the strategy's config (``k=4``, ``cot.mode=exemplar``).
        region: the region the question is about (fills a persona's ``{region}``, picks exemplars).
        model, adapter, loaded: the model (``loaded``: an already loaded ``(model, tokenizer)``).

    Returns:
        (task, result).
    """
    config = strategy_config(strategy, apply_overrides({}, overrides or []))
    task = load_task(task_name)
    example = task.question_example(question, region=region)
    if loaded is None:
        loaded = load_model(model or AdaptedModelConfig(), adapter)
    m, tok = loaded
    return task, run_strategy(strategy, m, tok, task, example, config)


__all__ = ["PromptEvalConfig", "StrategyRun", "PromptTaskConfig", "answer_question", "run_prompt_eval",
           "results_table", "split_task", "summarize"]
