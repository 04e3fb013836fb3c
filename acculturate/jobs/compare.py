"""`acculturate compare CONFIG`: train several fine-tuning methods on the same data, budget and
evaluation, and tabulate what each costs and buys.

Every method starts from a freshly loaded base model (``acculturate.models.load``), trains the same
examples for the same number of optimizer steps, and is scored the same way: the eval loss on the
region's held-apart questions and the accuracy of its answers to them (``evaluate_qa``, as ``adapt``).
By default each method runs in its own process so the CPU peak-RSS growth of one method does not
hide inside pages a previous method left in the allocator (and no state can leak between methods).

Layout of ``<output_dir>/<name>/``::

    config.json   the configuration (a rerun with a different one is refused)
    base.json     the untrained model's accuracy (reference row)
    methods/<method>/result.json   written last: a rerun skips a method that has it
    methods/<method>/{train,adapter|model,eval}/
    results.json  results.md  results.png
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.adapters import METHODS, LoRAConfig, PromptTuningConfig
from acculturate.config_loading import from_dict, to_dict
from acculturate.data import blend_countries, load_blend
from acculturate.data.sources import DataConfig, DataSource, read_source
from acculturate.decode import GenerationConfig
from acculturate.evaluate.qa import QAEvalConfig, QAResult, evaluate_qa
from acculturate.io import atomic_path, write_json, write_text
from acculturate.jobs.common import JobConfig, open_run
from acculturate.jobs.finetune import Datasets, MethodConfig, prepare_and_train, save_trained, split_examples, tokenize
from acculturate.models import load
from acculturate.train import TrainConfig, evaluate_loss
from acculturate.train.tracking import log_report
from acculturate.train.sft import prepare_rows

log = logging.getLogger(__name__)


@dataclass
class MethodRun:
    """One method of the comparison and what may differ between methods: the learning rate (full
    fine-tuning diverges at a rate prompt tuning needs) and, for ``head``, the blocks it trains."""

    name: str
    lr: float | None = None
    """None: ``train.lr``."""
    head_blocks: int = 0
    """'head' only: also train the last N transformer blocks."""

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"name: expected one of {sorted(METHODS)}, got {self.name!r}")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
                                    or self.lr <= 0):
            raise ValueError(f"lr: expected None or a number > 0, got {self.lr!r}")
        if isinstance(self.head_blocks, bool) or not isinstance(self.head_blocks, int) or self.head_blocks < 0:
            raise ValueError(f"head_blocks: expected an integer >= 0, got {self.head_blocks!r}")
        if self.head_blocks and self.name != "head":
            raise ValueError(f"head_blocks: only applies to method 'head', not {self.name!r}")


def _all_methods() -> list[MethodRun]:
    # Rates from short runs on the default model: full fine-tuning needs a small one, prompt
    # tuning a large one (Lester et al. train the prompt at 0.3 with Adafactor).
    return [MethodRun("full", lr=5e-5), MethodRun("head", lr=1e-4, head_blocks=2), MethodRun("lora"),
            MethodRun("qlora"), MethodRun("prompt_tuning", lr=3e-2)]


@dataclass
class CompareConfig(JobConfig):
    """`acculturate compare CONFIG`: every method on the same region data, steps and evaluation."""

    name: str = "compare-uk"
    region: str = "UK"
    """A BLEnD country: its questions are split into train and held-apart test."""
    data: DataConfig = field(default_factory=lambda: DataConfig(
        sources=[DataSource(path="shipped:instructions/instruction-data.json", limit=50)],
        test_fraction=0.25, stratify="topic"))
    """General instructions mixed into training (as in `adapt`); the region's questions are added."""
    methods: list[MethodRun] = field(default_factory=_all_methods)
    """The methods to train, each a name and its own settings (default: full, head, lora, qlora, prompt_tuning)."""
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(r=16, alpha=32))
    """'lora' and 'qlora'."""
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=20, batch_size=8, lr=1e-3,
                                                                  group_by_length=True, save_every=0))
    """The shared budget: set max_steps so every method takes the same optimizer steps."""
    eval: QAEvalConfig = field(default_factory=lambda: QAEvalConfig(limit=40))
    isolate: bool = True
    """Each method in its own process (honest CPU peak memory); False: in this one."""

    def __post_init__(self):
        if self.region not in blend_countries():
            raise ValueError(f"region: expected one of the BLEnD countries {blend_countries()}, got {self.region!r}")
        if not self.methods:
            raise ValueError("methods: expected at least one method")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"methods: each method may appear once, got {names}")
        if self.train.max_steps is None:
            raise ValueError("train.max_steps: expected an integer >= 1 (the budget every method shares)")
        if self.data.test_fraction == 0:
            raise ValueError("data.test_fraction: expected > 0 (the held-apart questions are the evaluation)")


# ---------------------------------------------------------------------------------------------------
# data and evaluation shared by every method


def _region_split(config: CompareConfig):
    region = load_blend(countries=[config.region])
    region_train, region_test = split_examples(region, config.data)
    if config.eval.limit:
        region_test = region_test[:config.eval.limit]
    return region_train, region_test


def _datasets(config: CompareConfig, tokenizer, base_dir: Path | None) -> Datasets:
    """The same examples for every method: the split and the source sampling are seeded."""
    region_train, region_test = _region_split(config)
    general = [ex for src in config.data.sources
               for ex in read_source(src, seed=config.data.seed, skip_invalid=config.data.skip_invalid,
                                     base_dir=base_dir)]
    train_examples = region_train + general
    return Datasets(train_examples, region_test, tokenize(train_examples, tokenizer, config.data),
                    tokenize(region_test, tokenizer, config.data))


def _evaluate(model, tokenizer, config: CompareConfig, examples, path: Path, tag: str,
              progress: bool) -> QAResult:
    gen = GenerationConfig(max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size,
                           stop=("\n",))
    return evaluate_qa(model, tokenizer, examples, gen, template=config.data.template, system=config.data.system,
                       predictions_path=path, progress=progress, desc=f"answering {len(examples)} questions ({tag})")


def _qa(result: QAResult) -> dict:
    return {"accuracy": result.accuracy, "correct": result.correct, "total": result.total,
            "ci95": list(result.ci95), "seconds": round(result.seconds, 1)}


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (or of ``path`` itself when it is a file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------
# one method


def run_method(config: CompareConfig, method: MethodRun, out: Path, *, base_dir: Path | None = None,
               progress: bool = True) -> dict:
    """Train and evaluate one method on a fresh base model; writes and returns ``out/result.json``."""
    start = time.perf_counter()
    loaded = load(config.model.name, device=config.model.device, dtype=config.model.dtype)
    datasets = _datasets(config, loaded.tokenizer, base_dir)
    method_cfg = MethodConfig(name=method.name, lora=config.lora, head_blocks=method.head_blocks,
                              prompt_tuning=config.prompt_tuning)
    train_cfg = from_dict(TrainConfig, {**to_dict(config.train), "lr": method.lr or config.train.lr})
    summary, result = prepare_and_train(loaded, method_cfg, train_cfg, datasets, out, resume=True)
    saved = save_trained(loaded, method_cfg, out, config.model.name)
    loaded.model.eval()
    qa = _evaluate(loaded.model, loaded.tokenizer, config, datasets.test_examples, out / "eval" / "answers.jsonl",
                   method.name, progress)
    row = {
        "method": method.name, "lr": train_cfg.lr, "head_blocks": method.head_blocks,
        "trainable_params": summary["trainable"], "total_params": summary["total"],
        "trainable_percent": 100.0 * summary["trainable"] / summary["total"],
        "steps": result.steps, "resumed_from_step": result.resumed_from_step,
        "train_wall_time_s": round(result.wall_time_s, 2), "tokens_per_s": round(result.tokens_per_s, 1),
        "peak_memory_bytes": result.peak_memory_bytes, "peak_memory_kind": result.peak_memory_kind,
        "saved": str(saved), "saved_bytes": dir_bytes(saved),
        "train_loss": result.train_loss, "eval_loss": result.eval_loss,
        "qa": _qa(qa), "bits_per_weight": summary.get("bits_per_weight"),
        "method_wall_time_s": round(time.perf_counter() - start, 1),
    }
    write_json(out / "result.json", row)
    log_report(out / "train", train_cfg.report_to, [out / "result.json"], row)
    return row


def _run_isolated(config: CompareConfig, method: MethodRun, out: Path, base_dir: Path | None,
                  progress: bool) -> dict:
    """Run :func:`run_method` in a new Python process (``python -m acculturate.jobs.compare``).

    A new interpreter rather than fork: a forked child would inherit the parent's heap and start
    its RSS from there; and rather than multiprocessing's spawn, which re-runs the caller's
    ``__main__`` (a script without an ``if __name__ == "__main__"`` guard would recurse).
    """
    run = out.parent.parent   # <run>/methods/<method>
    cmd = [sys.executable, "-m", "acculturate.jobs.compare", str(run), method.name]
    if base_dir:
        cmd += ["--base-dir", str(base_dir)]
    if not progress:
        cmd.append("--no-progress")
    code = subprocess.run(cmd).returncode
    if code != 0 or not (out / "result.json").exists():
        raise RuntimeError(f"method {method.name!r} failed in its process (exit code {code}); "
                           f"see the log above. A rerun continues from {out}")
    return json.loads((out / "result.json").read_text())


def _main(argv: list[str] | None = None) -> int:
    """The isolated method process: reads ``<run>/config.json`` and runs one of its methods."""
    import argparse

    from acculturate.config_loading import load_yaml

    p = argparse.ArgumentParser(prog="python -m acculturate.jobs.compare")
    p.add_argument("run_dir")
    p.add_argument("method")
    p.add_argument("--base-dir")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = Path(args.run_dir)
    config = load_yaml(CompareConfig, run / "config.json")   # JSON is YAML
    method = next((m for m in config.methods if m.name == args.method), None)
    if method is None:
        raise SystemExit(f"{run / 'config.json'}: methods: no method {args.method!r}")
    run_method(config, method, run / "methods" / method.name,
               base_dir=Path(args.base_dir) if args.base_dir else None, progress=not args.no_progress)
    return 0


# ---------------------------------------------------------------------------------------------------
# the whole comparison


def run_compare(config: CompareConfig, *, overwrite: bool = False, base_dir: Path | None = None,
                progress: bool = True) -> dict:
    """Run every method of ``config`` (skipping finished ones) and write the tables and the plot.

    Returns:
        ``{"region", "model", "steps", "train_examples", "test_questions", "base", "methods": [row...],
        "files": {...}}``, also written to ``results.json``.
    """
    out = open_run(config, overwrite)

    region_train, region_test = _region_split(config)
    base_path = out / "base.json"
    if base_path.exists():
        base = json.loads(base_path.read_text())
    else:
        loaded = load(config.model.name, device=config.model.device, dtype=config.model.dtype)
        base = _qa(_evaluate(loaded.model, loaded.tokenizer, config, region_test, out / "eval" / "base.jsonl",
                             "base", progress))
        # the untrained model's eval loss on the same rows train() scores each method on
        eval_rows, _ = prepare_rows(tokenize(region_test, loaded.tokenizer, config.data), config.train)
        base["eval_loss"] = evaluate_loss(loaded.model, eval_rows, config.train, loaded.tokenizer.pad_token_id,
                                          next(loaded.model.parameters()).device)
        write_json(base_path, base)
        del loaded

    rows = []
    for method in config.methods:
        mdir = out / "methods" / method.name
        done = mdir / "result.json"
        if done.exists():
            log.info("%s: already done (%s), skipped", method.name, done)
            rows.append(json.loads(done.read_text()))
            continue
        log.info("%s: training %d steps", method.name, config.train.max_steps)
        if config.isolate:
            rows.append(_run_isolated(config, method, mdir, base_dir, progress))
        else:
            rows.append(run_method(config, method, mdir, base_dir=base_dir, progress=progress))

    summary = {"region": config.region, "model": config.model.name, "steps": config.train.max_steps,
               "batch_size": config.train.batch_size, "test_questions": len(region_test),
               "region_train_questions": len(region_train), "base": base, "methods": rows,
               "files": {"table": str(out / "results.md"), "plot": str(out / "results.png")}}
    write_json(out / "results.json", summary)
    write_text(out / "results.md", render_table(summary))
    plot_results(summary, out / "results.png")
    return summary


def _mib(n: int | float) -> str:
    return f"{n / 2**20:,.1f}"


def render_table(summary: dict) -> str:
    """The comparison as a markdown table, one row per method."""
    b = summary["base"]
    kinds = sorted({r["peak_memory_kind"] for r in summary["methods"]})
    lines = [
        f"# Fine-tuning methods on {summary['model']}, BLEnD {summary['region']}",
        "",
        f"Same budget for every method: {summary['steps']} optimizer steps of {summary['batch_size']} examples "
        f"(the region's {summary['region_train_questions']} train questions plus general instructions), each from a "
        f"fresh base model. Evaluation: eval loss and accuracy on {summary['test_questions']} held-apart questions "
        f"(base model: accuracy {100 * b['accuracy']:.1f}%, {b['correct']}/{b['total']}; "
        f"eval loss {_fmt(b.get('eval_loss'))}).",
        "",
        "| method | lr | trainable params | trainable % | train time (s) | tokens/s | peak memory (MiB) | "
        "saved (MiB) | train loss | eval loss | accuracy | 95% interval |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["methods"]:
        qa = r["qa"]
        name = r["method"] + (f" (+{r['head_blocks']} blocks)" if r.get("head_blocks") else "")
        lines.append(
            f"| {name} | {r['lr']:g} | {r['trainable_params']:,} | {r['trainable_percent']:.3f} | "
            f"{r['train_wall_time_s']:.1f} | {r['tokens_per_s']:.0f} | {_mib(r['peak_memory_bytes'])} | "
            f"{_mib(r['saved_bytes'])} | {_fmt(r['train_loss'])} | {_fmt(r['eval_loss'])} | "
            f"{100 * qa['accuracy']:.1f}% ({qa['correct']}/{qa['total']}) | "
            f"{100 * qa['ci95'][0]:.1f}–{100 * qa['ci95'][1]:.1f}% |")
    lines += ["", f"Peak memory: {', '.join(kinds)} (`cpu_rss_growth`: the growth of the process's resident set "
              "during training over its value at the start, the loaded weights excluded; `cuda_max_allocated`: "
              "everything on the GPU, weights included). Saved: the adapter directory (lora, qlora, prompt_tuning) "
              "or the whole exported model (full, head).", ""]
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def plot_results(summary: dict, path: Path) -> None:
    """Six bar charts (trainable %, train time, peak memory, saved size, eval loss, accuracy) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")   # no display; also safe in a worker thread
    import matplotlib.pyplot as plt

    rows = summary["methods"]
    names = [r["method"] for r in rows]
    panels = [
        ("trainable parameters (%, log)", [r["trainable_percent"] for r in rows], True),
        ("train time (s)", [r["train_wall_time_s"] for r in rows], False),
        (f"peak memory (MiB, {rows[0]['peak_memory_kind']})", [r["peak_memory_bytes"] / 2**20 for r in rows], False),
        ("saved on disk (MiB, log)", [r["saved_bytes"] / 2**20 for r in rows], True),
        ("eval loss", [r["eval_loss"] if r["eval_loss"] is not None else float("nan") for r in rows], False),
        ("accuracy (%)", [100 * r["qa"]["accuracy"] for r in rows], False),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, values, log_scale) in zip(axes.flat, panels):
        ax.bar(names, values, color="#4c72b0")
        ax.set_title(title, fontsize=10)
        if log_scale:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    axes.flat[5].axhline(100 * summary["base"]["accuracy"], color="#c44e52", linestyle="--", label="base model")
    axes.flat[5].legend(fontsize=8)
    if summary["base"].get("eval_loss") is not None:
        axes.flat[4].axhline(summary["base"]["eval_loss"], color="#c44e52", linestyle="--", label="base model")
        axes.flat[4].legend(fontsize=8)
    fig.suptitle(f"{summary['model']} on BLEnD {summary['region']}: {summary['steps']} steps per method")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(_main())
