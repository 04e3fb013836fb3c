"""PPO on a LoRA adapter: one explicit loop (set up, roll out, score, update, log, save).

Each step samples one completion per prompt of a batch with our sampler
(:func:`acculturate.decode.generate`: batched, KV cache), scores them with any reward function
``(prompts, completions) -> rewards``, turns the scores into per-token rewards with a KL penalty to
a reference policy, estimates advantages with GAE, and runs ``ppo_epochs`` passes of the clipped
surrogate over shuffled mini-batches (the maths is in :mod:`acculturate.feedback.ppo_loss`).

No second copy of the model is made. The policy is the model's *active* LoRA adapter; the
reference is another adapter of the same :class:`~acculturate.adapters.AdapterRegistry` (by default
a frozen copy of the policy's adapter as it was when training started, i.e. "the adapter being
replaced") or the bare base model, and its log-probabilities are computed by switching adapters,
which moves module references and copies no weight. The value head is a small linear head on the
policy's last hidden state, detached, so only the policy loss moves the LoRA weights (TRL's value
head shares the trunk instead; detaching keeps the policy's gradient the surrogate's alone).

Dropout stays off during updates (the model is kept in eval mode, as TRL does) so the probability
ratio is exactly 1 at the first mini-batch and moves only because the weights move.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from acculturate.adapters import adapter_registry
from acculturate.config_loading import is_int, is_number
from acculturate.decode import GenerationConfig, generate
from acculturate.feedback.heads import ScalarHead, hidden_size, last_hidden
from acculturate.feedback.order import cycle_indices
from acculturate.feedback.ppo_loss import (entropy_from_logits, gae, kl_penalty_rewards, masked_mean,
                                           policy_loss, token_logprobs, value_loss, whiten)
from acculturate.feedback.rewards import RewardFn, check_rewards
from acculturate.io import append_jsonl, write_jsonl
from acculturate.train.checkpoint import find_checkpoint, load_checkpoint, read_state, save_checkpoint
from acculturate.train.tracking import Tracker, check_backends

log = logging.getLogger(__name__)

REFERENCE_COPY = "ppo-reference"      # the registry name of the frozen copy of the starting adapter
# Fields that change only logging or saving, not the weights a run ends with: a resumed run may change them.
_RESUME_FREE_FIELDS = {"log_every", "save_every", "rollouts_to_log", "report_to"}


@dataclass
class PPOConfig:
    """How PPO trains. Every field is validated at construction; errors name the field."""

    steps: int = 20
    """Rollout batches to collect and learn from (PPO iterations)."""
    batch_size: int = 8
    """Prompts per rollout batch (one sampled completion each)."""
    mini_batch_size: int = 4
    """Completions per gradient step inside a rollout batch (must divide ``batch_size``)."""
    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    lr: float = 5e-4
    """AdamW learning rate of the policy's LoRA weights (constant)."""
    value_lr: float = 1e-3
    """AdamW learning rate of the value head."""
    kl_coef: float = 0.05
    """beta: per-token penalty ``-beta * (logp - logp_ref)`` added to the reward."""
    gamma: float = 1.0
    """Discount of GAE (1: a completion's tokens share its final score undiscounted)."""
    lam: float = 0.95
    """lambda of GAE."""
    clip_range: float = 0.2
    """eps of the clipped surrogate ``min(r A, clip(r, 1-eps, 1+eps) A)``."""
    clip_range_value: float = 0.2
    """How far a new value estimate may move from the rollout's before its loss is clipped."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (the loss subtracts ``entropy_coef * entropy``)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (None or 0: no clipping)."""
    whiten_advantages: bool = True
    """Normalise each rollout batch's advantages to mean 0, variance 1 (over real tokens)."""
    score_clip: float | None = None
    """Clip reward-function scores to ``[-score_clip, score_clip]`` (None: no clipping)."""
    target_kl: float | None = None
    """Stop a rollout batch's epochs early once the mean approx KL to the rollout policy exceeds
    this (None: always run all ``ppo_epochs``)."""
    max_new_tokens: int = 32
    """Tokens sampled per completion at most."""
    temperature: float = 1.0
    """Sampling temperature of rollouts; log-probabilities use the same temperature (> 0)."""
    top_k: int = 0
    """Top-k of rollouts (0: off). Anything but 0 samples off the policy's distribution."""
    top_p: float = 1.0
    """Top-p of rollouts (1: off). Anything but 1 samples off the policy's distribution."""
    stop: tuple[str, ...] = ()
    """Stop strings that end a completion (besides EOS)."""
    generation_batch_size: int = 8
    """Prompts generated together in one forward pass."""
    seed: int = 0
    """Seed of the prompt order, the rollouts' sampling, the mini-batch order and the value head."""
    log_every: int = 1
    """Write a metrics row every this many steps (and at the last step)."""
    save_every: int = 10
    """Write ``out_dir/checkpoint`` every this many steps (0: only at the end)."""
    rollouts_to_log: int = 2
    """Completions per step written to ``rollouts.jsonl`` (with prompt and score)."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers for the metrics rows and the config: any of 'tensorboard', 'mlflow',
    'wandb' (offline, under ``<out_dir>/tracking``; see :mod:`acculturate.train.tracking`)."""

    def __post_init__(self):
        def fail(name, expected):
            raise ValueError(f"PPOConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        check_backends(self.report_to, "PPOConfig.report_to")

        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        for name in ("steps", "batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens",
                     "generation_batch_size", "log_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        for name in ("seed", "save_every", "rollouts_to_log", "top_k"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "an integer >= 0")
        if self.mini_batch_size > self.batch_size or self.batch_size % self.mini_batch_size:
            fail("mini_batch_size", f"a divisor of batch_size={self.batch_size}")
        for name in ("lr", "value_lr", "clip_range", "clip_range_value", "temperature"):
            if not is_number(getattr(self, name)) or getattr(self, name) <= 0:
                fail(name, "a number > 0")
        for name in ("kl_coef", "vf_coef", "entropy_coef"):
            if not is_number(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "a number >= 0")
        for name in ("gamma", "lam"):
            if not is_number(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                fail(name, "a number in [0, 1]")
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            fail("top_p", "a number in (0, 1]")
        for name in ("max_grad_norm", "score_clip", "target_kl"):
            value = getattr(self, name)
            if value is not None and (not is_number(value) or value < 0):
                fail(name, "None or a number >= 0")
        if not isinstance(self.whiten_advantages, bool):
            fail("whiten_advantages", "true or false")
        if any(not isinstance(s, str) or not s for s in self.stop):
            fail("stop", "a list of non-empty strings")

    def generation(self, step: int) -> GenerationConfig:
        """The sampling settings of step ``step``'s rollouts (seeded by seed and step)."""
        return GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                top_k=self.top_k, top_p=self.top_p, stop=self.stop,
                                seed=self.seed * 1_000_003 + step, batch_size=self.generation_batch_size)


@dataclass
class PPOResult:
    """What a PPO run did."""

    steps: int
    """Rollout batches done in total (resumed ones included)."""
    adapter: str
    """Registry name of the trained (policy) adapter."""
    reference: str | None
    """Registry name of the reference adapter, None = the base model."""
    history: list[dict]
    """The metrics rows (as in metrics.jsonl)."""
    wall_time_s: float
    """Of this call."""
    resumed_from_step: int = 0
    log_path: Path | None = None
    checkpoint_path: Path | None = None
    value_head: ScalarHead | None = field(default=None, repr=False)

    def reward_means(self) -> list[float]:
        """Mean score of each logged step's rollouts."""
        return [row["reward_mean"] for row in self.history if "reward_mean" in row]


# --- rollouts -------------------------------------------------------------------------------------


def rollout_batch(prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], pad_id: int,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Lay prompts and responses out as TRL does: prompts left-padded to ``P`` columns, responses
    right-padded to ``C``, so every row's response starts at column ``P``.

    Returns:
        ``input_ids``, ``attention_mask``, ``position_ids``: (B, P + C); ``response``,
        ``response_mask``: (B, C).
    """
    width_p = max(len(p) for p in prompt_ids)
    width_c = max(max(len(r) for r in response_ids), 1)
    rows = len(prompt_ids)
    input_ids = torch.full((rows, width_p + width_c), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width_p + width_c), dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[b, width_p - len(p):width_p] = torch.tensor(p, dtype=torch.long)
        mask[b, width_p - len(p):width_p] = 1
        if r:
            input_ids[b, width_p:width_p + len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, width_p:width_p + len(r)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions,
             "response": input_ids[:, width_p:], "response_mask": mask[:, width_p:]}
    return {k: v.to(device) for k, v in batch.items()}


def response_forward(model: nn.Module, batch: dict[str, torch.Tensor], temperature: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and hidden states at the positions that choose each response token.

    Returns:
        ``(logits, hidden)``: (B, C, V) fp32 logits divided by ``temperature`` and (B, C, H) states.
    """
    width_c = batch["response"].shape[1]
    hidden = last_hidden(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])  # (B, L, H)
    # The state at column j predicts token j + 1: the response's tokens P..P+C-1 come from P-1..P+C-2.
    hidden = hidden[:, -width_c - 1:-1]                                                      # (B, C, H)
    logits = model.get_output_embeddings()(hidden).float() / temperature                      # (B, C, V)
    return logits, hidden


@torch.no_grad()
def score_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], temperature: float,
                   chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) log-probabilities of the response tokens and (B, C, H) hidden states, in chunks of rows."""
    logps, hiddens = [], []
    rows = batch["response"].shape[0]
    for start in range(0, rows, chunk):
        part = {k: v[start:start + chunk] for k, v in batch.items()}
        logits, hidden = response_forward(model, part, temperature)
        logps.append(token_logprobs(logits, part["response"]))
        hiddens.append(hidden.float())
    return torch.cat(logps), torch.cat(hiddens)


# --- reference ------------------------------------------------------------------------------------


def prepare_reference(model: nn.Module, reference: str | None, out_dir: Path | None,
                      base_name: str | None, reuse_saved: bool = False) -> tuple[str | None, bool]:
    """Pick the registry adapter whose log-probabilities the KL penalty is taken against.

    ``None`` or ``"initial"``: a frozen copy of the active adapter as it is now (saved under
    ``out_dir/reference`` so a resumed run penalises against the same one; with ``reuse_saved`` it
    is loaded back from there when it exists). ``"base"``/``"none"``: the base model without adapter. Any other string: an
    adapter already loaded in the model's registry (e.g. the version being served).

    Returns:
        ``(name or None for the base, whether this call created it)``.
    """
    registry = adapter_registry(model)
    if isinstance(reference, str) and reference.lower() in ("base", "none"):
        return None, False
    if reference not in (None, "initial"):
        registry.get(reference)   # UnknownAdapterError lists the loaded names
        if reference == registry.active():
            raise ValueError(f"reference {reference!r} is the adapter being trained; pass 'initial' for "
                             f"a frozen copy of it")
        return reference, False
    if REFERENCE_COPY in registry:
        registry.remove(REFERENCE_COPY)
    saved = out_dir / "reference" if out_dir is not None else None
    if reuse_saved and saved is not None and (saved / "adapter_config.json").is_file():
        registry.add(REFERENCE_COPY, saved)
    else:
        # One adapter combined "linearly" with weight 1 is an exact copy of its update B A (registry.py).
        registry.combine([registry.active()], [1.0], REFERENCE_COPY, combination="linear")
        if saved is not None:
            registry.save(REFERENCE_COPY, saved, base_name)
    return REFERENCE_COPY, True


@torch.no_grad()
def reference_logprobs(model: nn.Module, reference: str | None, batch: dict[str, torch.Tensor],
                       temperature: float, chunk: int) -> torch.Tensor:
    """(B, C) log-probabilities of the response tokens under the reference adapter (None: the base)."""
    registry = adapter_registry(model)
    with registry.using(reference):
        logps, _ = score_logprobs(model, batch, temperature, chunk)
    return logps


# --- the loop -------------------------------------------------------------------------------------


def _fingerprint(prompts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def train_ppo(model: nn.Module, tokenizer, prompts: Sequence[str], reward_fn: RewardFn,
              config: PPOConfig | None = None, out_dir: str | Path | None = None, *,
              reference: str | None = None, value_head: ScalarHead | None = None, resume: bool = False,
              base_model_name: str | None = None, progress: bool = True,
              on_step: Callable[[dict], None] | None = None) -> PPOResult:
    """Train the model's active LoRA adapter with PPO on ``prompts`` scored by ``reward_fn``.

    Args:
        model: an HF causal LM with a LoRA adapter active (``apply_lora`` or an
            :class:`~acculturate.adapters.AdapterRegistry` adapter); only that adapter's ``A``/``B``
            (and the value head) change.
        tokenizer: its tokenizer.
        prompts: rendered prompt strings (chat template applied, as :func:`generate` takes them).
        reward_fn: ``(prompts, completions) -> one float per completion``.
        config: :class:`PPOConfig`.
        out_dir: gets ``metrics.jsonl``, ``rollouts.jsonl``, ``checkpoint/`` and ``reference/``;
            None writes nothing.
        reference: ``None``/``"initial"`` (a frozen copy of the adapter as it starts), ``"base"``
            (the model without adapter) or the name of another adapter in the model's registry.
        value_head: continue with this value head (default: a new one).
        resume: continue from ``out_dir/checkpoint`` (same config and prompts) if there is one.
        base_model_name: recorded in the saved reference adapter's config.
        progress: show a tqdm bar.
        on_step: called with each step's metrics row (after it is logged).
    Returns:
        :class:`PPOResult`. The model is left in eval mode with the trained adapter active; a
        reference copy this call made is removed from the registry.
    """
    config = config or PPOConfig()
    if isinstance(prompts, str) or not prompts:
        raise ValueError("train_ppo: prompts must be a non-empty list of rendered prompt strings")
    prompts = list(prompts)
    registry = adapter_registry(model)
    policy_name = registry.active()
    if policy_name is None:
        raise ValueError("train_ppo: the model has no active LoRA adapter to train; apply_lora(model, "
                         "LoRAConfig(...)) or adapter_registry(model).create(name, LoRAConfig(...)) first")
    if registry.merged:
        registry.unmerge()   # merged, the forward pass would not reach A and B
    out_dir = Path(out_dir) if out_dir is not None else None
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ckpt_dir = out_dir / "checkpoint" if out_dir else None
    found = find_checkpoint(ckpt_dir) if (resume and ckpt_dir is not None) else None
    ref_name, made_reference = prepare_reference(model, reference, out_dir, base_model_name,
                                                 reuse_saved=found is not None)
    if registry.active() != policy_name:
        registry.use(policy_name)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"train_ppo: adapter {policy_name!r} has no parameter that requires grad")
    if value_head is None:
        torch.manual_seed(config.seed)
        value_head = ScalarHead(hidden_size(model))
    value_head.to(device)
    optimizer = torch.optim.AdamW([{"params": params, "lr": config.lr, "weight_decay": 0.0},
                                   {"params": list(value_head.parameters()), "lr": config.value_lr,
                                    "weight_decay": 0.0}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)   # constant; kept for checkpoints
    trainable = nn.ModuleDict({"policy": model, "value_head": value_head})  # one namespace for checkpoints

    log_path = out_dir / "metrics.jsonl" if out_dir else None
    rollouts_path = out_dir / "rollouts.jsonl" if out_dir else None
    data_hash = _fingerprint(prompts)
    history: list[dict] = []
    start_step = 0
    if found is not None:
        saved = read_state(found)["config"]
        for name, value in json.loads(json.dumps(asdict(config))).items():
            if name not in _RESUME_FREE_FIELDS and saved.get(name) != value:
                raise ValueError(f"cannot resume from {found}: PPOConfig.{name} was {saved.get(name)!r} "
                                 f"there and is {value!r} now (keep it or start afresh)")
        ckpt = load_checkpoint(found, model=trainable, optimizer=optimizer, scheduler=scheduler)
        if ckpt.progress["data"] != data_hash:
            raise ValueError(f"cannot resume from {found}: the prompts differ from the run that wrote it")
        start_step, history = ckpt.progress["step"], ckpt.metrics
        log.info("resuming PPO from %s at step %d of %d", found, start_step, config.steps)
    if log_path is not None:
        write_jsonl(log_path, history)   # drops rows a killed run logged after its last checkpoint
    tracker = Tracker(out_dir, config.report_to if out_dir is not None else [])
    tracker.params({"ppo": json.loads(json.dumps(asdict(config)))})

    def checkpoint(step: int) -> None:
        if ckpt_dir is not None:
            save_checkpoint(ckpt_dir, model=trainable, optimizer=optimizer, scheduler=scheduler,
                            progress={"step": step, "total_steps": config.steps, "data": data_hash},
                            config=json.loads(json.dumps(asdict(config))), metrics=history)

    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    chunk = max(config.mini_batch_size, 1)
    model.eval()   # no dropout: the ratio is 1 until the weights move (module docstring)
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start_step, disable=not progress, desc="ppo", unit="step")
    try:
        for step in range(start_step, config.steps):
            t_step = time.perf_counter()
            index = cycle_indices(len(prompts), config.batch_size, config.seed, step)
            batch_prompts = [prompts[i] for i in index]
            # 1. Roll out with our sampler, then score.
            completions = generate(model, tokenizer, batch_prompts, config.generation(step))
            texts = [c.text for c in completions]
            raw_scores = torch.tensor(check_rewards(reward_fn(batch_prompts, texts), len(texts), "reward_fn"))
            scores = raw_scores.clamp(-config.score_clip, config.score_clip) if config.score_clip else raw_scores
            batch = rollout_batch([encoded[i] for i in index], [c.token_ids for c in completions], pad_id, device)
            mask = batch["response_mask"].float()                                          # (B, C)
            # 2. Log-probabilities and values before the update, and the reference's.
            old_logp, hidden = score_logprobs(model, batch, config.temperature, chunk)     # (B, C), (B, C, H)
            with torch.no_grad():
                old_values = value_head(hidden) * mask                                     # (B, C)
            ref_logp = reference_logprobs(model, ref_name, batch, config.temperature, chunk)
            # 3. Per-token rewards with the KL penalty, then advantages.
            rewards, kl = kl_penalty_rewards(scores.to(device), old_logp, ref_logp, mask, config.kl_coef)
            advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
            if config.whiten_advantages:
                advantages = whiten(advantages, mask)
            # 4. Several epochs of clipped updates over shuffled mini-batches.
            stats: dict[str, list[float]] = {}
            generator = torch.Generator().manual_seed(config.seed * 100_003 + step)
            epochs_done = 0
            stop_early = False
            for _ in range(config.ppo_epochs):
                order = torch.randperm(len(index), generator=generator).tolist()
                for start in range(0, len(order), config.mini_batch_size):
                    rows = torch.tensor(order[start:start + config.mini_batch_size], device=device)
                    part = {k: v[rows] for k, v in batch.items()}
                    m = mask[rows]
                    logits, hid = response_forward(model, part, config.temperature)
                    logp = token_logprobs(logits, part["response"])
                    values = value_head(hid.detach())
                    pg_loss, pg_stats = policy_loss(logp, old_logp[rows], advantages[rows], m, config.clip_range)
                    vf_loss, vf_stats = value_loss(values, old_values[rows], returns[rows], m,
                                                   config.clip_range_value)
                    entropy = masked_mean(entropy_from_logits(logits), m)
                    loss = pg_loss + config.vf_coef * vf_loss - config.entropy_coef * entropy
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(params + list(value_head.parameters()), config.max_grad_norm)
                    optimizer.step()
                    for key, value in {"policy_loss": pg_loss, "value_loss": vf_loss, "entropy": entropy,
                                       "loss": loss, **pg_stats, **vf_stats}.items():
                        stats.setdefault(key, []).append(float(value.detach()))
                    if config.target_kl is not None and float(pg_stats["approx_kl"]) > config.target_kl:
                        stop_early = True
                        break
                epochs_done += 1
                if stop_early:
                    break
            scheduler.step()
            # 5. Log.
            done = step + 1
            row = {"step": done,
                   "reward_mean": round(float(raw_scores.mean()), 6),
                   "reward_std": round(float(raw_scores.std(unbiased=False)), 6),
                   "kl": round(float(kl.sum(-1).mean()), 6),              # mean per-completion sum of logp - logp_ref
                   "non_score_reward": round(float((rewards.sum(-1) - scores.to(device)).mean()), 6),
                   **{k: round(sum(v) / len(v), 6) for k, v in stats.items()},
                   "ppo_epochs": epochs_done, "early_stop": stop_early,
                   "response_tokens": round(float(mask.sum(-1).mean()), 2),
                   "step_time_s": round(time.perf_counter() - t_step, 3)}
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl']:.3f}",
                            clip=f"{row.get('clip_fraction', 0):.2f}")
            if done % config.log_every == 0 or done == config.steps:
                history.append(row)
                if log_path is not None:
                    append_jsonl(log_path, row)
                tracker.metrics(row)
                if on_step is not None:
                    on_step(row)
            if rollouts_path is not None:
                for i in range(min(config.rollouts_to_log, len(texts))):
                    append_jsonl(rollouts_path, {"step": done, "prompt": batch_prompts[i], "completion": texts[i],
                                                 "reward": float(raw_scores[i])})
            if config.save_every and done % config.save_every == 0 and done < config.steps:
                checkpoint(done)
        if start_step < config.steps:
            checkpoint(config.steps)
    finally:
        bar.close()
        tracker.close()
        if made_reference and REFERENCE_COPY in registry:
            registry.remove(REFERENCE_COPY)
        model.eval()
    return PPOResult(steps=config.steps, adapter=policy_name, reference=ref_name if not made_reference else "initial",
                     history=history, wall_time_s=time.perf_counter() - t0, resumed_from_step=start_step,
                     log_path=log_path, checkpoint_path=ckpt_dir, value_head=value_head)
