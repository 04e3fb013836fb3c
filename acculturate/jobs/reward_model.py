"""`acculturate reward-model train CONFIG`: train a reward model on preference pairs and/or scalar
rewards (files, or a feedback store), report held-out pair accuracy, save it loadable as a reward.

Writes ``runs/<name>/``: ``config.json``, ``reward_model/`` (adapter, head, ``reward_model.json``:
what ``{kind: reward_model, path: runs/<name>/reward_model}`` loads), ``metrics.jsonl``,
``summary.json``, ``checkpoint/``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from acculturate.adapters import LoRAConfig, apply_lora
from acculturate.config_loading import ConfigError
from acculturate.data import DataError, train_test_split
from acculturate.data.errors import describe
from acculturate.data.jsonl import MISSING, read_jsonl_objects, text_field
from acculturate.data.sources import resolve_path
from acculturate.data.templates import check_template
from acculturate.feedback.reward_model import (RewardModelConfig, read_preference_pairs, save_reward_model,
                                               train_reward_model)
from acculturate.feedback.rewards import feedback_rewards
from acculturate.feedback.store import FeedbackStore, preference_pairs
from acculturate.io import write_json, write_text
from acculturate.jobs.common import JobConfig, open_run
from acculturate.models import load
from acculturate.train.tracking import log_report


@dataclass
class RewardDataConfig:
    """What the reward model learns from."""

    preferences: list[str] = field(default_factory=lambda: ["shipped:preference/instruction-data-with-preference.json"])
    """Files of preference pairs: the shipped format (instruction/input/chosen/rejected) or the
    feedback export's ``preferences.jsonl`` (prompt/chosen/rejected)."""
    rewards: list[str] = field(default_factory=list)
    """JSONL files of ``{"prompt", "completion", "reward"}`` (the feedback export's ``rewards.jsonl``)."""
    feedback_db: str | None = None
    """A feedback store (SQLite path or URL): its rewards and adjustment pairs are added."""
    template: str = "chat"
    """How the shipped format's instructions become prompts: 'chat' or 'alpaca'."""
    system: str | None = None
    """A system persona put in those prompts."""
    limit: int | None = None
    """Use this many pairs at most (a seeded sample), e.g. for a quick run."""
    test_fraction: float = 0.1
    """Share of the pairs held out for the pair accuracy."""
    seed: int = 0
    """Seed of the split and of ``limit``."""

    def __post_init__(self):
        check_template(self.template)
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction: expected a number in [0, 1), got {self.test_fraction!r}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit: expected None or an integer >= 2, got {self.limit!r}")


@dataclass
class RewardModelJobConfig(JobConfig):
    """`acculturate reward-model train CONFIG`."""

    name: str = "reward-model"
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    lora: LoRAConfig | None = field(default_factory=lambda: LoRAConfig(r=8, alpha=16, dropout=0.0))
    """The reward model's adapter; null: a head-only reward model on the frozen base."""
    train: RewardModelConfig = field(default_factory=RewardModelConfig)


def read_scored_rows(path: Path) -> list[dict]:
    """``{"prompt", "completion", "reward"}`` rows of a JSONL file; DataError names the line and field."""
    rows = []
    for lineno, row in read_jsonl_objects(path):
        text_field(path, lineno, row, "prompt", allow_empty=True)
        text_field(path, lineno, row, "completion", allow_empty=True)
        reward = row.get("reward")
        if not isinstance(reward, (int, float)) or isinstance(reward, bool):
            raise DataError(path, lineno, "reward", "a number", MISSING if "reward" not in row else describe(reward))
        rows.append({"prompt": row["prompt"], "completion": row["completion"], "reward": float(row["reward"])})
    return rows


def load_reward_data(data: RewardDataConfig, tokenizer, base_dir: Path | None = None) -> tuple[list[dict], list[dict]]:
    """(pairs, scored rows) from the configured files and feedback store."""
    pairs = [p for f in data.preferences
             for p in read_preference_pairs(resolve_path(f, base_dir), tokenizer, data.template, data.system)]
    scored = [r for f in data.rewards for r in read_scored_rows(resolve_path(f, base_dir))]
    if data.feedback_db:
        scored += [{"prompt": r["prompt"], "completion": r["completion"], "reward": r["reward"]}
                   for r in feedback_rewards(data.feedback_db)]
        store = FeedbackStore(data.feedback_db)
        try:
            pairs += [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                      for p in preference_pairs(store.feedback())]
        finally:
            store.close()
    if data.limit is not None and len(pairs) > data.limit:
        pairs = random.Random(data.seed).sample(pairs, data.limit)
    if not pairs and not scored:
        raise ConfigError("data: no preference pairs and no scored rows were read")
    return pairs, scored


def run_reward_model(config: RewardModelJobConfig, *, overwrite: bool = False, base_dir: Path | None = None,
                     progress: bool = True) -> dict:
    """Run ``acculturate reward-model train``; returns ``summary.json``'s content. A re-run of the
    same config continues from the run's checkpoint."""
    out = open_run(config, overwrite)
    t0 = time.perf_counter()
    loaded = load(config.model.name, device=config.model.device, dtype=config.model.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    pairs, scored = load_reward_data(config.data, tokenizer, base_dir)
    if config.data.test_fraction and len(pairs) >= 2:
        train_pairs, eval_pairs = train_test_split(pairs, config.data.test_fraction, seed=config.data.seed)
    else:
        train_pairs, eval_pairs = pairs, []
    torch.manual_seed(config.train.seed)
    if config.lora is not None:
        apply_lora(model, config.lora)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    result = train_reward_model(model, tokenizer, train_pairs, scored, config.train, out, eval_pairs=eval_pairs,
                                resume=True, progress=progress)
    summary = {"train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "scored_rows": len(scored),
               "steps": result.steps, "eval_pair_accuracy_before": result.eval_accuracy_before,
               "eval_pair_accuracy": result.eval_accuracy, "score_offset": result.score_offset,
               "train_wall_time_s": result.wall_time_s, "wall_time_s": time.perf_counter() - t0,
               "device": str(next(model.parameters()).device)}
    save_reward_model(model, result.head, out / "reward_model", config.model.name, config.lora,
                      result.score_offset, config.train.max_length, metrics=summary)
    write_json(out / "summary.json", summary)
    acc = result.eval_accuracy
    write_text(out / "README.md", f"# {config.name}\n\nReward model on {len(train_pairs)} pairs and {len(scored)} "
               f"scored rows, {result.steps} steps.\n\nHeld-out pair accuracy ({len(eval_pairs)} pairs): "
               f"{result.eval_accuracy_before} before -> {acc} after.\n\nUse it as a reward: "
               f"`{{kind: reward_model, path: {out / 'reward_model'}}}`.\n")
    log_report(out, config.train.report_to, [out / "summary.json", out / "README.md"], summary)
    return summary
