"""`acculturate data STEP ...` and `acculturate data pipeline CONFIG`: the data steps on files.

A single step reads a file, runs one pre-processing step (:data:`acculturate.data.steps.STEPS`) or
generator (``backtranslate``, ``self-instruct``), writes chat JSONL atomically and prints a
before/after summary. A pipeline runs a list of steps in order, each writing
``<output_dir>/<NN>-<step>.jsonl``, then ``<output_dir>/data.jsonl`` and ``summary.md``; a rerun
redoes the cheap steps and resumes the generators where they stopped.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.augment import backtranslate, self_instruct
from acculturate.config_loading import ConfigError, from_dict, to_dict
from acculturate.data import Example, write_examples
from acculturate.data.sources import resolve_path
from acculturate.data.steps import GENERATORS, STEPS, read_input, run_step, step_config_class, step_names
from acculturate.data.summary import format_comparison, summarize
from acculturate.io import write_bytes, write_json, write_text
from acculturate.models import DEFAULT_MODEL

def load_model(name: str):
    from acculturate.models import load

    loaded = load(name)
    loaded.model.eval()
    return loaded


def run_generator(name: str, config, input_path: str | os.PathLike | None, output: str | os.PathLike,
                  model_name: str = DEFAULT_MODEL, loaded=None, format: str = "auto",
                  skip_invalid: bool = False, columns: dict[str, str] | None = None) -> dict:
    """Run ``backtranslate`` on ``input_path`` or ``self-instruct``, then print the summary.

    For self-instruct with an input, the output holds the input's examples followed by the new ones.
    """
    loaded = loaded or load_model(model_name)
    examples = read_input(input_path, format, skip_invalid, columns) if input_path is not None else []
    output = Path(output)
    if name == "backtranslate":
        if not examples:
            raise ConfigError("backtranslate: give the input file whose prompts are paraphrased")
        report = backtranslate(loaded.model, loaded.tokenizer, examples, output, config, model_name=model_name)
        out = _read(output) if report["written"] else list(examples)
    elif name == "self-instruct":
        generated = output.with_name(output.stem + ".generated.jsonl") if examples else output
        report = self_instruct(loaded.model, loaded.tokenizer, generated, config, model_name=model_name)
        new = _read(generated) if report["kept"] else []
        out = list(examples) + new
        if examples:
            write_examples(output, out)
    else:
        raise ConfigError(f"generator: expected one of {list(GENERATORS)}, got {name!r}")
    before, after = summarize(examples), summarize(out)
    write_json(str(output) + ".report.json", {"step": name, "input": str(input_path), "output": str(output),
                                              "before": before, "after": after, "report": report})
    print(format_comparison(name, before, after))
    print(f"{name}: {_report_line(report)}")
    return {"step": name, "before": before, "after": after, "report": report}


def _read(path) -> list[Example]:
    from acculturate.data import read_examples

    return read_examples(path)


def _report_line(report: dict) -> str:
    parts = [f"{k} {v}" for k, v in report.items() if isinstance(v, int)]
    if report.get("rejected"):
        parts.append("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(report["rejected"].items(), key=lambda kv: -kv[1])))
    return "; ".join(parts)


@dataclass
class PipelineStep:
    """One entry of ``steps``: the step's name and its settings."""

    step: str
    settings: dict = field(default_factory=dict)


@dataclass
class DataPipelineConfig:
    """`acculturate data pipeline CONFIG`."""

    input: str = "shipped:instructions/instruction-data.json"
    """The data: a file or ``shipped:<file under resources/data>``."""
    output_dir: str = "runs/data"
    """Where each step's output, data.jsonl and summary.md are written."""
    model: str = DEFAULT_MODEL
    """The model the generators use."""
    group: str | None = None
    """A field whose balance every summary reports (a meta key or 'gender')."""
    steps: list[PipelineStep] = field(default_factory=list)
    """The steps in order, each {step: NAME, settings: {...}} (`acculturate data STEP --settings` lists a step's
    settings)."""

    def __post_init__(self):
        if not self.steps:
            raise ValueError("steps: expected at least one step, e.g. [{step: dedupe}]")
        for i, s in enumerate(self.steps):
            if s.step not in step_names():
                raise ValueError(f"steps[{i}].step: expected one of {step_names()}, got {s.step!r}")
            try:
                from_dict(step_config_class(s.step), s.settings, f"steps[{i}].settings")
            except ConfigError as e:
                raise ValueError(str(e)) from None


def run_pipeline(config: DataPipelineConfig, base_dir: Path | None = None, restart: bool = False) -> dict:
    """Run every step in order; returns ``{"steps": [...], "output"}`` and writes ``summary.md``."""
    out_dir = Path(config.output_dir)
    if restart and out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", to_dict(config))
    current = resolve_path(config.input, base_dir)
    loaded = None
    results = []
    for i, s in enumerate(config.steps, 1):
        step_config = from_dict(step_config_class(s.step), s.settings, f"steps[{i - 1}].settings")
        target = out_dir / f"{i:02d}-{s.step}.jsonl"
        print(f"\n[{i}/{len(config.steps)}] {s.step}")
        if s.step in STEPS:
            result = run_step(s.step, step_config, current, target, group=config.group)
        else:
            loaded = loaded or load_model(config.model)
            result = run_generator(s.step, step_config, current, target, config.model, loaded)
        results.append({"step": s.step, "output": str(target), "before": result["before"]["count"],
                        "after": result["after"]["count"]})
        current = target
    final = out_dir / "data.jsonl"
    write_bytes(final, Path(current).read_bytes())
    lines = ["| # | step | before | after |", "|---|---|---:|---:|"]
    lines += [f"| {i} | {r['step']} | {r['before']} | {r['after']} |" for i, r in enumerate(results, 1)]
    write_text(out_dir / "summary.md", f"# data pipeline\n\ninput: `{config.input}`\n\n" + "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines) + f"\n\nOutput: {final}")
    return {"steps": results, "output": str(final)}
