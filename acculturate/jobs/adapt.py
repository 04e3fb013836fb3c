"""`acculturate adapt`: adapt a model to one region and show what it changed.

Steps (each one skipped when a resumed run already has its output):
1. split the region's BLEnD questions (stratified by topic) into train and held-apart test;
2. answer the test questions with the base model;
3. fine-tune (LoRA by default) on the region's train questions plus general instruction data;
4. answer the test questions with the adapted model;
5. write ``metrics.json`` and ``report.md`` beside the adapter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.config_loading import to_dict
from acculturate.data import load_blend, blend_countries
from acculturate.decode import GenerationConfig
from acculturate.evaluate.qa import QAResult, evaluate_qa
from acculturate.io import write_json, write_text
from acculturate.jobs.finetune import (Datasets, DataConfig, MethodConfig, ModelConfig, check_run_dir,
                                       prepare_and_train, run_dir, save_trained, split_examples, tokenize)
from acculturate.jobs.sources import DataSource, read_source
from acculturate.models import load
from acculturate.train import TrainConfig
from acculturate.train.tracking import log_report

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """How the held-apart questions are answered."""

    limit: int | None = None      # answer only the first N test questions (None: all)
    max_new_tokens: int = 24      # BLEnD answers are a few words
    batch_size: int = 16

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: expected a positive integer, got {self.limit}")


@dataclass
class AdaptConfig:
    """`acculturate adapt [CONFIG]`: adapt the model to one BLEnD region."""

    name: str = "adapt-uk"
    output_dir: str = "runs"
    region: str = "UK"     # a BLEnD country: its questions are split into train and test
    model: ModelConfig = field(default_factory=ModelConfig)
    # General data mixed into training so the model keeps following instructions; the region's
    # BLEnD questions are added by the job itself.
    data: DataConfig = field(default_factory=lambda: DataConfig(
        sources=[DataSource(path="shipped:instructions/instruction-data.json", limit=150)],
        test_fraction=0.25, stratify="topic"))
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, batch_size=8, lr=1e-3,
                                                                  group_by_length=True))
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.region not in blend_countries():
            raise ValueError(f"region: expected one of the BLEnD countries {blend_countries()}, got {self.region!r}")


def _qa_summary(result: QAResult) -> dict:
    return {"accuracy": result.accuracy, "correct": result.correct, "total": result.total,
            "ci95": list(result.ci95), "seconds": round(result.seconds, 1), "by_topic": result.by_group}


def run_adapt(config: AdaptConfig, *, overwrite: bool = False,
              base_dir: Path | None = None, progress: bool = True) -> dict:
    """Run the whole adapt job; returns the metrics also written to ``<run>/metrics.json``."""
    start = time.perf_counter()
    out = run_dir(config.output_dir, config.name)
    check_run_dir(out, config, overwrite)
    write_json(out / "config.json", to_dict(config))
    loaded = load(config.model.name, device=config.model.device, dtype=config.model.dtype)
    tok = loaded.tokenizer

    region = load_blend(countries=[config.region])
    region_train, region_test = split_examples(region, config.data)
    if config.eval.limit:
        region_test = region_test[:config.eval.limit]
    general = [ex for src in config.data.sources
               for ex in read_source(src, seed=config.data.seed, skip_invalid=config.data.skip_invalid,
                                     base_dir=base_dir)]
    train_examples = region_train + general
    datasets = Datasets(train_examples, region_test,
                        tokenize(train_examples, tok, config.data),
                        tokenize(region_test, tok, config.data))
    gen = GenerationConfig(max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size,
                           stop=("\n",))

    def evaluate(tag: str) -> QAResult:
        return evaluate_qa(loaded.model, tok, region_test, gen, template=config.data.template,
                           system=config.data.system, predictions_path=out / "eval" / f"{tag}.jsonl",
                           progress=progress, desc=f"answering {len(region_test)} questions ({tag})")

    base = evaluate("base")
    log.info("base accuracy on %s: %.3f", config.region, base.accuracy)
    summary, result = prepare_and_train(loaded, config.method, config.train, datasets, out, resume=True)
    saved = save_trained(loaded, config.method, out, config.model.name)
    adapted = evaluate("adapted")
    metrics = {
        "region": config.region, "model": config.model.name, "method": config.method.name,
        "train_examples": {"region": len(region_train), "general": len(general)},
        "test_questions": len(region_test),
        "base": _qa_summary(base), "adapted": _qa_summary(adapted),
        "parameters": summary, "train": to_dict(result), "saved": str(saved),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", render_report(config, metrics))
    log_report(out / "train", config.train.report_to, [out / "report.md", out / "metrics.json"], metrics)
    return metrics


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_report(config: AdaptConfig, m: dict) -> str:
    b, a, t, p = m["base"], m["adapted"], m["train"], m["parameters"]
    delta = a["accuracy"] - b["accuracy"]
    lines = [
        f"# Adapting {m['model']} to {m['region']}",
        "",
        f"Method **{m['method']}**, trained on {m['train_examples']['region']} {m['region']} BLEnD questions "
        f"and {m['train_examples']['general']} general instructions; evaluated on {m['test_questions']} "
        "held-apart questions of the same region (correct when an annotator's answer appears in the model's answer).",
        "",
        "| | accuracy | 95% interval | correct |",
        "|---|---|---|---|",
        f"| base | {_pct(b['accuracy'])} | {_pct(b['ci95'][0])}–{_pct(b['ci95'][1])} | {b['correct']}/{b['total']} |",
        f"| adapted | {_pct(a['accuracy'])} | {_pct(a['ci95'][0])}–{_pct(a['ci95'][1])} | {a['correct']}/{a['total']} |",
        "",
        f"Change: {delta * 100:+.1f} points"
        + (" (the intervals overlap: not a clear difference at this sample size)."
           if a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1] else "."),
        "",
        "## Cost",
        "",
        "| trainable parameters | total | training time | tokens/s | peak memory | final train loss | eval loss |",
        "|---|---|---|---|---|---|---|",
        f"| {p['trainable']:,} ({p['percent']:.2f}%) | {p['total']:,} | {t['wall_time_s']:.0f} s | "
        f"{t['tokens_per_s']:.0f} | {t['peak_memory_bytes'] / 2**20:.0f} MiB | {t['train_loss']:.3f} | "
        f"{t['eval_loss'] if t['eval_loss'] is None else round(t['eval_loss'], 3)} |",
        "",
        "## Accuracy by topic",
        "",
        "| topic | base | adapted | n |",
        "|---|---|---|---|",
    ]
    for topic, row in a["by_topic"].items():
        lines.append(f"| {topic} | {_pct(b['by_topic'].get(topic, {}).get('accuracy', 0))} | "
                     f"{_pct(row['accuracy'])} | {row['n']} |")
    lines += ["", f"Adapter: `{m['saved']}`. Per-question answers: `eval/base.jsonl`, `eval/adapted.jsonl`.",
              f"Whole job: {m['wall_time_s']:.0f} s.", ""]
    return "\n".join(lines)
