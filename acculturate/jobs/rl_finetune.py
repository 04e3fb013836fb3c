"""`acculturate ppo CONFIG`: PPO on a LoRA adapter over a prompt set, scored by a reward function or
a reward model, offline. Writes ``runs/<name>/``:

    config.json       the configuration (a re-run of the same config continues the run)
    adapter/          the trained LoRA adapter, PEFT format
    value_head.safetensors
    reference/        the frozen starting adapter the KL penalty is taken against
    metrics.jsonl     one row per step: reward mean/std, KL, clip fraction, entropy, losses
    rollouts.jsonl    a few sampled completions per step with their rewards
    reward.png        reward and KL over steps
    summary.json      held-out greedy reward before/after, first/last rewards, times
    checkpoint/       for resuming
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from acculturate.adapters import LoRAConfig, adapter_registry
from acculturate.config_loading import ConfigError
from acculturate.data import render_prompt, train_test_split
from acculturate.data.sources import DataSource, read_source
from acculturate.data.templates import check_template
from acculturate.decode import GenerationConfig, generate
from acculturate.feedback.ppo import PPOConfig, PPOResult, train_ppo
from acculturate.io import atomic_path, write_json, write_text
from acculturate.jobs.common import AdaptedModelConfig, JobConfig, open_run, resolve_model_name
from acculturate.jobs.rewards import build_reward
from acculturate.models import load
from acculturate.train.tracking import log_report

log = logging.getLogger(__name__)

POLICY = "policy"   # the registry name of the adapter PPO trains


def _default_reward() -> dict:
    # Politeness markers (the shipped preference data's chosen-vs-rejected axis), as plain rules.
    return {"kind": "rules", "rules": [
        {"keywords": ["please", "thank you", "thanks", "happy to help", "glad", "kindly"], "reward": 1.0},
        {"keywords": ["stupid", "idiot", "dumb", "shut up", "obviously", "whatever"], "reward": -1.0}]}


@dataclass
class PromptsConfig:
    """Where PPO's prompts come from and how they are rendered."""

    sources: list[DataSource] = field(default_factory=lambda: [
        DataSource(path="shipped:instructions/instruction-data.json", limit=64)])
    """Data sets whose examples' prompts (everything before the final answer) are used."""
    template: str = "chat"
    """'chat' (the model's chat template) or 'alpaca'."""
    system: str | None = None
    """A system persona put in every prompt."""
    max_prompt_tokens: int = 160
    """Prompts longer than this are left out (they slow rollouts most)."""
    eval_prompts: int = 8
    """Prompts held apart: their greedy completions are scored before and after training."""
    seed: int = 0
    """Seed of the held-apart choice and of ``limit`` sampling."""

    def __post_init__(self):
        check_template(self.template)
        if self.max_prompt_tokens < 4:
            raise ValueError(f"max_prompt_tokens: expected an integer >= 4, got {self.max_prompt_tokens!r}")
        if self.eval_prompts < 0:
            raise ValueError(f"eval_prompts: expected an integer >= 0, got {self.eval_prompts!r}")


@dataclass
class PPOJobConfig(JobConfig):
    """`acculturate ppo CONFIG`."""

    name: str = "ppo"
    model: AdaptedModelConfig = field(default_factory=AdaptedModelConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    adapter: str | None = None
    """Start from this LoRA adapter directory (ours or PEFT's); None: a new adapter from ``lora``."""
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(r=8, alpha=16, dropout=0.0))
    """The new adapter's shape (when ``adapter`` is None)."""
    reference: str = "initial"
    """KL reference: 'initial' (the adapter as training starts) or 'base' (the model without adapter)."""
    reward: dict = field(default_factory=_default_reward)
    """A reward spec: {kind: rules | http | python | reward_model | judge, ...} (docs/learning.md)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)

    def __post_init__(self):
        if self.reference not in ("initial", "base"):
            raise ValueError(f"reference: expected 'initial' or 'base', got {self.reference!r}")
        if "kind" not in self.reward:
            raise ValueError(f"reward: expected a mapping with 'kind', got {self.reward!r}")


def load_prompts(config: PromptsConfig, tokenizer, base_dir: Path | None = None) -> tuple[list[str], list[str]]:
    """Rendered prompts of the sources, short enough, split into (train, held-apart eval)."""
    examples = [ex for src in config.sources for ex in read_source(src, seed=config.seed, base_dir=base_dir)]
    prompts = list(dict.fromkeys(render_prompt(ex, tokenizer, config.template, system=config.system)
                                 for ex in examples))
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    kept = [p for p, n in zip(prompts, lengths) if n <= config.max_prompt_tokens]
    if len(kept) < len(prompts):
        log.info("left out %d of %d prompts longer than %d tokens", len(prompts) - len(kept), len(prompts),
                 config.max_prompt_tokens)
    if len(kept) <= config.eval_prompts:
        raise ConfigError(f"prompts: {len(kept)} prompts of at most {config.max_prompt_tokens} tokens, "
                          f"need more than eval_prompts={config.eval_prompts}")
    if not config.eval_prompts:
        return kept, []
    return train_test_split(kept, test_fraction=config.eval_prompts / len(kept), seed=config.seed)


def greedy_reward(model, tokenizer, prompts: list[str], reward_fn, max_new_tokens: int,
                  stop: tuple[str, ...] = ()) -> dict:
    """Mean reward of greedy completions (deterministic: comparable before and after training)."""
    if not prompts:
        return {"n": 0, "reward_mean": None}
    completions = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=max_new_tokens, stop=stop))
    texts = [c.text for c in completions]
    rewards = reward_fn(prompts, texts)
    return {"n": len(prompts), "reward_mean": sum(rewards) / len(rewards),
            "examples": [{"prompt": p, "completion": t, "reward": r} for p, t, r in list(zip(prompts, texts, rewards))[:4]]}


def plot_rewards(history: list[dict], path: Path, title: str) -> None:
    """Reward mean (with +-1 std band) and KL to the reference over steps, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in history if "reward_mean" in r]
    steps = [r["step"] for r in rows]
    mean = [r["reward_mean"] for r in rows]
    std = [r["reward_std"] for r in rows]
    fig, (ax, ax_kl) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax.plot(steps, mean, marker="o", color="#4c72b0", label="reward (rollouts)")
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                    color="#4c72b0", alpha=0.2, label="± 1 std")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    ax_kl.plot(steps, [r["kl"] for r in rows], marker=".", color="#c44e52")
    ax_kl.set_ylabel("KL to reference (per completion)")
    ax_kl.set_xlabel("PPO step")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _window_mean(values: list[float], first: bool, k: int = 3) -> float | None:
    if not values:
        return None
    part = values[:k] if first else values[-k:]
    return sum(part) / len(part)


def run_ppo(config: PPOJobConfig, *, overwrite: bool = False, base_dir: Path | None = None,
            progress: bool = True) -> dict:
    """Run ``acculturate ppo``; returns the summary written to ``<run>/summary.json``. A re-run of the
    same config in the same run directory resumes from its checkpoint."""
    resolve_model_name(config.model, [config.adapter])   # unset: the starting adapter's base
    out = open_run(config, overwrite)
    t0 = time.perf_counter()
    loaded = load(config.model.name, device=config.model.device, dtype=config.model.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    train_prompts, eval_prompts = load_prompts(config.prompts, tokenizer, base_dir)
    registry = adapter_registry(model)
    torch.manual_seed(config.ppo.seed)   # the new adapter's A init
    if config.adapter:
        registry.add(POLICY, config.adapter, activate=True)
    else:
        registry.create(POLICY, config.lora)
    reward_fn = build_reward(config.reward, model=model, tokenizer=tokenizer, base_dir=base_dir)
    resumed = (out / "checkpoint").exists()
    before = None
    if eval_prompts:
        before_path = out / "eval_before.json"
        if resumed and before_path.exists():
            import json

            before = json.loads(before_path.read_text())
        else:
            before = greedy_reward(model, tokenizer, eval_prompts, reward_fn, config.ppo.max_new_tokens, config.ppo.stop)
            write_json(before_path, before)
    result: PPOResult = train_ppo(model, tokenizer, train_prompts, reward_fn, config.ppo, out,
                                  reference=config.reference, resume=True, base_model_name=config.model.name,
                                  progress=progress)
    registry.save(POLICY, out / "adapter", config.model.name)
    from safetensors.torch import save_file

    with atomic_path(out / "value_head.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in result.value_head.state_dict().items()}, str(tmp))
    after = greedy_reward(model, tokenizer, eval_prompts, reward_fn, config.ppo.max_new_tokens, config.ppo.stop) \
        if eval_prompts else None
    rewards = result.reward_means()
    steps_s = [r["step_time_s"] for r in result.history if "step_time_s" in r]
    summary = {
        "steps": result.steps, "train_prompts": len(train_prompts), "eval_prompts": len(eval_prompts),
        "reward_first_steps": _window_mean(rewards, True), "reward_last_steps": _window_mean(rewards, False),
        "eval_before": before, "eval_after": after,
        "kl_last": result.history[-1]["kl"] if result.history else None,
        "mean_step_time_s": sum(steps_s) / len(steps_s) if steps_s else None,
        "wall_time_s": time.perf_counter() - t0, "resumed_from_step": result.resumed_from_step,
        "adapter": str(out / "adapter"), "reference": config.reference, "reward": config.reward,
    }
    write_json(out / "summary.json", summary)
    plot_rewards(result.history, out / "reward.png",
                 f"PPO {config.name}: {config.model.name}, {result.steps} steps x {config.ppo.batch_size} prompts")
    b = before["reward_mean"] if before else None
    a = after["reward_mean"] if after else None
    write_text(out / "README.md", f"# {config.name}\n\nPPO for {result.steps} steps on {len(train_prompts)} prompts.\n\n"
               f"- rollout reward, first 3 steps -> last 3: {summary['reward_first_steps']} -> "
               f"{summary['reward_last_steps']}\n- held-apart greedy reward before -> after: {b} -> {a}\n\n"
               f"Adapter: `adapter/`; per-step metrics: `metrics.jsonl`; plot: `reward.png`.\n")
    log_report(out, config.ppo.report_to, [out / "summary.json", out / "README.md", out / "reward.png"], summary)
    return summary
