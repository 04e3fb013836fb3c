"""The jobs table: each config-driven verb -> its config class, run function, shipped YAML and summary.

The CLI builds its config verbs from this table (`acculturate/cli/`), the config tests load every
shipped YAML with the class named here, and docs/architecture.md points here. Classes and functions
are named as ``"module:attribute"`` and imported when used, so reading the table (e.g. to build the
CLI's parser) loads neither torch nor transformers.

To add a job: write its config dataclass and ``run_*`` function in ``acculturate/jobs/<name>.py``,
add a row here, and give it a report function in ``acculturate/cli/`` (what the verb prints).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Job:
    """One config-driven job."""

    verb: str
    """The CLI words, e.g. 'train' or 'reward-model train'."""
    config: str
    """The config dataclass, as 'module:Class'."""
    run: str
    """The function that runs the job, as 'module:function'."""
    summary: str
    """One line for `acculturate --help`."""
    configs_dir: str | None = None
    """The folder of shipped YAMLs for this config class, under acculturate/configs/."""
    default: str | None = None
    """The shipped YAML (a file of configs_dir) used when no config is given; None: the fields' defaults."""
    run_folder: bool = True
    """The job writes a resumable run folder (the CLI then offers --restart)."""

    @property
    def default_config(self) -> Path | None:
        return CONFIGS / self.configs_dir / self.default if self.default else None

    @property
    def example(self) -> Path | None:
        """A shipped YAML to show in help: the default, else the first of configs_dir."""
        if self.default_config is not None:
            return self.default_config
        found = sorted((CONFIGS / self.configs_dir).glob("*.yaml")) if self.configs_dir else []
        return found[0] if found else None

    def config_class(self) -> type:
        return _resolve(self.config)

    def run_function(self):
        """The run function, looked up when called (so a test's monkeypatch of the module is seen)."""
        return _resolve(self.run)


def _resolve(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


JOBS: dict[str, Job] = {job.verb: job for job in (
    Job("adapt", "acculturate.jobs.adapt:AdaptConfig", "acculturate.jobs.adapt:run_adapt",
        "adapt a model to a region, evaluate before/after, write a report",
        configs_dir="adapt", default="gemma3-270m_lora.yaml"),
    Job("train", "acculturate.jobs.finetune:FinetuneConfig", "acculturate.jobs.finetune:run_finetune",
        "fine-tune (full, head, lora, qlora, prompt tuning) from a YAML config", configs_dir="train"),
    Job("compare", "acculturate.jobs.compare:CompareConfig", "acculturate.jobs.compare:run_compare",
        "train full, head, lora, qlora, prompt tuning on the same data; table + plot", configs_dir="compare"),
    Job("tune", "acculturate.jobs.tune:TuneConfig", "acculturate.jobs.tune:run_tune",
        "hyperparameter search (Optuna) around a train config: best.yaml + report", configs_dir="tune"),
    Job("prompt-eval", "acculturate.jobs.prompt_eval:PromptEvalConfig", "acculturate.jobs.prompt_eval:run_prompt_eval",
        "compare prompting strategies on a task sample (table + JSONL)", configs_dir="prompt_eval"),
    Job("eval", "acculturate.jobs.system_eval:EvalConfig", "acculturate.jobs.system_eval:run_eval",
        "evaluate systems on tasks (BLEnD, NusaX, appropriateness, CoT): metrics.json + report.html",
        configs_dir="eval", default="gemma3-270m_base-vs-adapt-uk.yaml"),
    Job("rag eval", "acculturate.jobs.rag_eval:RagEvalConfig", "acculturate.jobs.rag_eval:run_rag_eval",
        "recall@k, MRR and accuracy with vs without retrieval on BLEnD documents"),
    Job("reward-model train", "acculturate.jobs.reward_model:RewardModelJobConfig",
        "acculturate.jobs.reward_model:run_reward_model",
        "train a reward model, report held-out pair accuracy, save it loadable as a reward",
        configs_dir="reward_model", default="smollm2-135m_lora.yaml"),
    Job("ppo", "acculturate.jobs.rl_finetune:PPOJobConfig", "acculturate.jobs.rl_finetune:run_ppo",
        "PPO on a LoRA adapter over a prompt set, with a reward function or model",
        configs_dir="ppo", default="smollm2-135m_lora.yaml"),
    Job("learn", "acculturate.jobs.learn:LearnConfig", "acculturate.jobs.learn:run_learn",
        "one guarded learning round from the stored feedback -> a new adapter version",
        configs_dir="learn", run_folder=False),
    Job("data pipeline", "acculturate.jobs.data:DataPipelineConfig", "acculturate.jobs.data:run_pipeline",
        "run the data steps of a YAML config in order", configs_dir="data"),
    Job("serve", "acculturate.serve.config:ServeConfig", "acculturate.serve:run_server",
        "serve models over an OpenAI-compatible API with a web chat and feedback", run_folder=False),
)}
