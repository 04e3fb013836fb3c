"""`acculturate eval CONFIG`: several systems (model + adapter + strategy + decoding) on several tasks,
one ``metrics.json`` and one self-contained ``report.html``.

The run folder ``<output_dir>/<name>/`` holds ``config.json``, ``outputs/<task>/<system>.jsonl`` (every
answer), ``judgements/`` (judge scores), ``timing/`` (cost per chunk), ``ratings.sqlite`` (human
ratings from ``acculturate rate``), ``metrics.json`` and ``report.html``. ``resume`` answers only the
examples not saved yet; :func:`rescore` recomputes metrics and report from the saved files alone.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.config_loading import ConfigError, from_dict
from acculturate.evaluate.tasks import TASKS, TaskConfig
from acculturate.io import write_json, write_text
from acculturate.jobs.common import RunConfig, open_run, run_dir

log = logging.getLogger(__name__)

@dataclass
class SystemConfig:
    """One system under evaluation: model + adapter + prompting strategy + its decoding settings."""

    name: str
    model: str | None = None
    """An embedded name ('smollm2-135m', 'gemma3-270m'), an HF model directory or a .gguf file; default
    (null): the base model the adapter records, else smollm2-135m."""
    adapter: str | None = None
    """An adapter directory (LoRA or prompt tuning; e.g. runs/adapt-uk/adapter)."""
    strategy: str = "zero_shot"
    """A key of acculturate.prompting.STRATEGIES; zero_shot is batched, the others run per example on blend
    and cot tasks."""
    strategy_config: dict = field(default_factory=dict)
    """Fields of that strategy's config (its decoding too: max_new_tokens, samples, temperature, top_p...)."""
    system_prompt: str | None = None
    """A persona put in every prompt (a strategy's `persona` if it has none)."""
    device: str | None = None
    dtype: str | None = None
    batch_size: int = 8

    def __post_init__(self):
        from acculturate.prompting import STRATEGIES, strategy_config

        if not self.name or "/" in self.name:
            raise ValueError(f"name: expected a non-empty name without '/', got {self.name!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy == "zero_shot" and self.strategy_config:
            raise ValueError("strategy_config: the built-in zero_shot takes its decoding from each task "
                             "(max_new_tokens) and its persona from system_prompt; leave strategy_config empty")
        strategy_config(self.strategy, self.strategy_options())  # fail at load, naming the field
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {self.batch_size}")

    def strategy_options(self) -> dict:
        """``strategy_config`` with ``system_prompt`` as the persona where the strategy has one and
        none is set (self_consistency and critique_refine keep theirs in ``cot``/``answer``)."""
        from acculturate.prompting import STRATEGIES

        options = dict(self.strategy_config)
        if self.system_prompt and self.strategy != "zero_shot":
            fields = STRATEGIES[self.strategy].config.__dataclass_fields__
            nested = next((n for n in ("cot", "answer") if n in fields), None)
            if "persona" in fields:
                options.setdefault("persona", self.system_prompt)
            elif nested:
                options[nested] = {"persona": self.system_prompt, **dict(options.get(nested) or {})}
        return options


@dataclass
class JudgeConfig:
    """The model that rates cultural appropriateness (may be bigger than the judged ones)."""

    model: str | None = None
    """The judge model: an embedded name, an HF model directory or a GGUF file; default (null): the
    base model the judge's adapter records, else smollm2-135m."""
    adapter: str | None = None
    """A LoRA adapter directory the judge uses (None: the base model)."""
    rubrics: str | None = None
    """A rubrics YAML; default the shipped resources/rubrics.yaml."""
    max_new_tokens: int = 48
    """Tokens the judge may write per rating."""
    batch_size: int = 8
    """Answers judged per generate call."""


@dataclass
class EvalConfig(RunConfig):
    """`acculturate eval CONFIG`."""

    name: str = "eval"
    systems: list[SystemConfig] = field(default_factory=lambda: [SystemConfig("base")])
    """The systems compared: a model, an optional adapter, a prompting strategy, a system prompt."""
    tasks: list[TaskConfig] = field(default_factory=list)
    """The tasks each system answers (kinds: blend, nusax, appropriateness, cot)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def __post_init__(self):
        for what, items in (("systems", self.systems), ("tasks", self.tasks)):
            names = [x.name for x in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what}: names must be unique, repeated: {dupes}")
        if not self.systems:
            raise ValueError("systems: expected at least one system")
        if not self.tasks:
            raise ValueError("tasks: expected at least one task (kinds: " + ", ".join(sorted(TASKS)) + ")")
        from acculturate.evaluate.strategies import STRATEGY_TASKS

        for s in self.systems:
            for t in self.tasks:
                if s.strategy != "zero_shot" and t.kind not in STRATEGY_TASKS:
                    raise ValueError(f"systems[{s.name}].strategy: {s.strategy} answers tasks of kind "
                                     f"{sorted(STRATEGY_TASKS)}, but task {t.name!r} is {t.kind!r}; "
                                     "evaluate that task with zero_shot systems (in another config)")


def _resolve(path: str, base_dir: Path | None) -> Path:
    """A relative path: beside the config when it exists there, else from the working directory."""
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        return (base_dir / p).resolve()
    return p.resolve()


def resolve_paths(config: EvalConfig, base_dir: Path | None) -> None:
    """Make adapter/rubrics/ids_from paths absolute and check that they exist, with an error that says
    what to run when an adapter is missing; fill in each unset model with its adapter's base
    (:func:`acculturate.adapters.base_model.pick_base_model`), so config.json records the model used."""
    from acculturate.adapters import AdapterError
    from acculturate.adapters.base_model import pick_base_model

    for s in config.systems:
        if s.adapter:
            path = _resolve(s.adapter, base_dir)
            if not (path / "adapter_config.json").exists():
                raise FileNotFoundError(
                    f"systems[{s.name}].adapter: no adapter at {path} (expected adapter_config.json there). "
                    "The default eval config compares the base model with the adapter that `acculturate adapt` "
                    "writes to runs/adapt-uk/adapter: run `acculturate adapt` first (from this directory), "
                    "or point the system's adapter to yours with --set.")
            s.adapter = str(path)
        try:
            s.model = pick_base_model(s.model, [s.adapter] if s.adapter else [])
        except AdapterError as e:
            raise ConfigError(f"systems[{s.name}].model: {e}") from None
    if config.judge.adapter:
        config.judge.adapter = str(_resolve(config.judge.adapter, base_dir))
    try:
        config.judge.model = pick_base_model(config.judge.model, [config.judge.adapter] if config.judge.adapter else [])
    except (AdapterError, FileNotFoundError) as e:
        raise ConfigError(f"judge.model: {e}") from None
    if config.judge.rubrics:
        config.judge.rubrics = str(_resolve(config.judge.rubrics, base_dir))
    for t in config.tasks:
        if t.ids_from:
            path = _resolve(t.ids_from, base_dir)
            if not path.exists():
                raise FileNotFoundError(f"tasks[{t.name}].ids_from: {path} does not exist (e.g. "
                                        "runs/adapt-uk/eval/base_closed_book.jsonl, written by `acculturate adapt`)")
            t.ids_from = str(path)


def _load_system(model: str, adapter: str | None, device: str | None, dtype: str | None):
    from acculturate.adapters import load_adapter
    from acculturate.models import load

    loaded = load(model, device=device, dtype=dtype)
    if adapter:
        load_adapter(loaded.model, adapter)
    loaded.model.eval()
    return loaded


def run_eval(config: EvalConfig, *, resume: bool = False, overwrite: bool = False, base_dir: Path | None = None,
             progress: bool = True) -> dict:
    """Answer every task with every system (skipping saved answers when ``resume``), judge, score,
    write ``metrics.json`` and ``report.html``.

    Args:
        resume: continue a run of the same config; without it an existing run is refused.
        overwrite: delete an existing run of this name first.
        base_dir: the config's folder (relative paths resolve against it first).
    Returns:
        The metrics written to ``metrics.json``.
    """
    from acculturate.evaluate.judge import load_rubrics
    from acculturate.evaluate.runner import answer_items, judge_rows
    from acculturate.evaluate.strategies import answer_with_strategy
    from acculturate.prompting import strategy_config

    resolve_paths(config, base_dir)
    out = run_dir(config.output_dir, config.name)
    if (out / "config.json").exists() and not (resume or overwrite):
        raise ConfigError(f"{out} already holds an evaluation run: use --resume to continue it, "
                          "--rescore to recompute its metrics, --restart to replace it, or another --name")
    open_run(config, overwrite)
    rubrics = load_rubrics(config.judge.rubrics)   # fail on a bad rubrics file before any generation
    items = {t.name: TASKS[t.kind].load(t, base_dir) for t in config.tasks}
    start = time.perf_counter()
    judged: dict[tuple[str, str], list[dict]] = {}
    for s in config.systems:
        loaded = _load_system(s.model, s.adapter, s.device, s.dtype)
        device = str(next(loaded.model.parameters()).device)
        for t in config.tasks:
            paths = out / "outputs" / t.name / f"{s.name}.jsonl", out / "timing" / t.name / f"{s.name}.jsonl"
            if s.strategy == "zero_shot":
                rows = answer_items(loaded.model, loaded.tokenizer, items[t.name], t, *paths,
                                    batch_size=s.batch_size, system_prompt=s.system_prompt, device=device,
                                    progress=progress, desc=f"{t.name} / {s.name}")
            else:
                rows = answer_with_strategy(loaded.model, loaded.tokenizer, items[t.name], t, s.strategy,
                                            strategy_config(s.strategy, s.strategy_options()), *paths,
                                            device=device, progress=progress, desc=f"{t.name} / {s.name} ({s.strategy})")
            if t.kind == "appropriateness":
                judged[(t.name, s.name)] = rows
        del loaded
        gc.collect()
    if judged:
        j = config.judge
        judge = _load_system(j.model, j.adapter, None, None)
        for (task_name, system_name), rows in judged.items():
            judge_rows(judge.model, judge.tokenizer, rows, rubrics, out / "judgements" / task_name / f"{system_name}.jsonl",
                       max_new_tokens=j.max_new_tokens, batch_size=j.batch_size, progress=progress,
                       desc=f"judging {task_name} / {system_name}")
    log.info("generation and judging took %.1f s", time.perf_counter() - start)
    return rescore(out)


def rescore(run: str | Path) -> dict:
    """Recompute ``metrics.json`` and ``report.html`` of a run from its saved outputs (no model).

    Raises:
        FileNotFoundError: ``run`` is not an eval run folder, or outputs are missing.
    """
    from acculturate.evaluate.report import render_html
    from acculturate.evaluate.summary import score_run

    run = Path(run)
    config_path = run / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run}: not an evaluation run (no config.json)")
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    # Validate what was saved the same way a fresh config is (a hand-edited config.json fails here).
    from_dict(EvalConfig, saved)
    metrics = score_run(run, saved)
    write_json(run / "metrics.json", metrics)
    write_text(run / "report.html", render_html(metrics))
    return metrics
