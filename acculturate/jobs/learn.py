"""`acculturate learn`: one round of learning from users' feedback, guarded, as a new adapter version.

A round (:func:`learn_round`), explicitly:

1. read the feedback stored since the current version consumed its own (the store's ids after the
   version store's ``feedback_cursor``); too little (``min_feedback``) and the round is skipped;
2. split it (:func:`acculturate.feedback.online.split_round`): reward rows and SFT examples to
   learn from, a held-apart slice for the guard;
3. load the base model afresh (a learner never touches the model a server is answering with) with
   two adapters from the current version: ``parent`` (frozen) and ``candidate`` (trained);
4. supervised update of the candidate on the users' rewrites (and accepted answers), with
   :func:`acculturate.train.train`;
5. PPO update of the candidate (:func:`acculturate.feedback.ppo.train_ppo`) on the round's prompts,
   scored by a reward function, with the KL penalty taken to ``parent``, the adapter being replaced;
6. the guard (:mod:`acculturate.evaluate.guard`) scores candidate and parent; the candidate is
   written as the next version either way, and becomes current only if nothing regressed beyond
   the configured tolerance.

A round killed half-way changes nothing: the version store is written at the end, atomically, and
running ``acculturate learn`` again redoes the round.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from acculturate.adapters import LoRAConfig, adapter_registry
from acculturate.config_loading import ConfigError
from acculturate.data import tokenize_examples
from acculturate.evaluate.guard import GuardConfig, GuardDecision, blend_accuracy, decide, guard_metrics
from acculturate.feedback.online import RoundData, split_round
from acculturate.feedback.ppo import PPOConfig, RewardFn, train_ppo
from acculturate.feedback.simulated import SimulatedUser
from acculturate.feedback.store import DEFAULT_DB, FeedbackStore
from acculturate.feedback.versions import VersionInfo, VersionStore
from acculturate.io import write_json
from acculturate.models import load
from acculturate.train import TrainConfig, train

log = logging.getLogger(__name__)


@dataclass
class SFTUpdate:
    """The supervised part of a round."""

    enabled: bool = True
    """Train on the users' rewrites (``adjustment`` feedback)."""
    positives: bool = True
    """Also imitate answers the users marked ``correct_cultural``."""
    max_length: int = 192
    """Tokens per example (prompt included)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=8, batch_size=8, lr=5e-4, warmup_ratio=0.0, save_every=0, log_every=1))
    """The update's steps, batch and learning rate (``max_steps`` bounds the round's cost)."""


@dataclass
class PPOUpdate:
    """The reinforcement part of a round."""

    enabled: bool = False
    """Run PPO on the round's prompts."""
    reward: str | dict = "simulated"
    """What scores rollouts: ``simulated`` (the ``simulate`` user's rule), ``"module:function"`` /
    ``"file.py:function"``, or any spec of :func:`acculturate.jobs.rewards.build_reward`, e.g.
    ``{kind: reward_model, path: runs/rm/reward_model}`` (a reward model trained on the feedback),
    ``{kind: rules, ...}``, ``{kind: http, url: ...}``, ``{kind: judge, ...}``."""
    config: PPOConfig = field(default_factory=lambda: PPOConfig(
        steps=2, batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=32, save_every=0,
        temperature=1.0, kl_coef=0.05))
    """PPO's settings (see :class:`acculturate.feedback.ppo.PPOConfig`)."""


@dataclass
class SimulateConfig:
    """The simulated user of the example and of ``reward: simulated`` (see :mod:`acculturate.feedback.simulated`)."""

    region: str = "Indonesia"
    """A BLEnD country (its questions are asked, its name is what ``mentions_region`` looks for)."""
    rule: str = "mentions_region"
    """``mentions_region`` or ``answers_correctly`` (:mod:`acculturate.feedback.simulated`)."""
    adjust_probability: float = 0.5
    """How often a failed answer gets an ``adjustment`` (a rewrite) instead of ``inappropriate``."""
    seed: int = 0
    """Seed of the user's questions and choices."""
    rounds: int = 4
    """Rounds of serve -> feedback -> learn -> hot-swap."""
    questions_per_round: int = 24
    """New questions the user asks each round (each judged into the store)."""
    probe_questions: int = 16
    """Questions held apart from the user's, answered greedily every round, never judged into the store."""
    temperature: float = 0.7
    """Sampling temperature of served answers (0: greedy)."""
    max_tokens: int = 32
    """Tokens per served answer."""

    def user(self) -> SimulatedUser:
        return SimulatedUser(region=self.region, rule=self.rule, adjust_probability=self.adjust_probability,
                             seed=self.seed)


@dataclass
class LearnConfig:
    """`acculturate learn CONFIG`: where feedback and versions live and how a round learns."""

    name: str = "online"
    """The adapter's name when served (clients ask for ``model: <name>``)."""
    model: str | None = None
    """The base model ('smollm2-135m', 'gemma3-270m', an HF directory or a GGUF file); default (null):
    the one ``initial_adapter`` records, else smollm2-135m."""
    db: str = DEFAULT_DB
    """The feedback store (SQLite path or SQLAlchemy URL); a server uses its own store instead."""
    versions_dir: str = "runs/online/versions"
    """The adapter version store."""
    rounds_dir: str = "runs/online/rounds"
    """Each round's logs (SFT and PPO metrics, the round's summary) under ``<rounds_dir>/<version>``."""
    initial_adapter: str | None = None
    """An adapter directory to start from as ``v0`` (default: a new LoRA with ``B = 0``, i.e. the base model)."""
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(r=8, alpha=16, dropout=0.0))
    """The new ``v0`` adapter's shape (ignored with ``initial_adapter``)."""
    min_feedback: int = 4
    """Fewest new feedback rows worth a round."""
    guard_fraction: float = 0.2
    """Share of the new feedback's completions held apart for the guard."""
    seed: int = 0
    """Seed of the split of the new feedback into training and guard rows."""
    sft: SFTUpdate = field(default_factory=SFTUpdate)
    ppo: PPOUpdate = field(default_factory=PPOUpdate)
    guard: GuardConfig = field(default_factory=GuardConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    device: str | None = None
    """Where training runs (default: a GPU if present, else the CPU)."""
    progress: bool = True
    """Show progress bars while training."""

    def __post_init__(self):
        if not self.model:
            from acculturate.adapters.base_model import pick_base_model

            start = self.initial_adapter
            self.model = pick_base_model(None, [start] if start and Path(start).is_dir() else [])
        if not 0 <= self.guard_fraction < 1:
            raise ValueError(f"guard_fraction: expected a number in [0, 1), got {self.guard_fraction!r}")
        if self.min_feedback < 1:
            raise ValueError(f"min_feedback: expected an integer >= 1, got {self.min_feedback!r}")
        if not (self.sft.enabled or self.ppo.enabled):
            raise ValueError("sft.enabled and ppo.enabled are both false: a round would learn nothing")


@dataclass
class RoundResult:
    """What one round did."""

    status: str
    """"accepted", "rejected" or "skipped"."""
    reason: str
    version: VersionInfo | None = None
    parent: str | None = None
    data: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"status": self.status, "reason": self.reason, "parent": self.parent, "data": self.data,
                "seconds": round(self.seconds, 2),
                "version": self.version.to_json() if self.version is not None else None}


# --- pieces ---------------------------------------------------------------------------------------


def resolve_reward(spec, config: LearnConfig, model=None, tokenizer=None) -> RewardFn:
    """The reward function a PPO update scores rollouts with (see :attr:`PPOUpdate.reward`)."""
    if spec == "simulated":
        return config.simulate.user().reward_fn()
    from acculturate.jobs.rewards import build_reward

    return build_reward(spec, model=model, tokenizer=tokenizer)


def ensure_initial_version(versions: VersionStore, config: LearnConfig, loaded=None) -> VersionInfo:
    """The current version, writing ``v0`` first if the store is empty."""
    current = versions.current()
    if current is not None:
        return current
    if versions.names():
        raise ConfigError(f"{versions.root}: versions exist but none is current (state.json is missing); "
                          f"pick one with `acculturate learn --rollback VERSION`")
    if config.initial_adapter:
        return versions.add(config.initial_adapter, parent=None, method="init", accepted=True,
                            reason="the starting adapter", base_model=config.model)
    loaded = loaded or load(config.model, device=config.device)
    registry = adapter_registry(loaded.model)
    registry.create("v0", config.lora, activate=False)   # B = 0: answers exactly as the base model
    try:
        return versions.add(lambda d: registry.save("v0", d, config.model), parent=None, method="init",
                            accepted=True, reason="a new LoRA adapter with B = 0 (the base model's answers)",
                            base_model=config.model)
    finally:
        registry.remove("v0")


def sft_update(model, tokenizer, data: RoundData, config: LearnConfig, out_dir: Path) -> dict | None:
    """Train the active adapter on the round's SFT examples; a summary, or None if there were none."""
    if not (config.sft.enabled and data.sft):
        return None
    features = tokenize_examples(data.sft, tokenizer, "chat", config.sft.max_length, progress=False)
    if not features:
        return None
    result = train(model, features, None, config.sft.train, out_dir, pad_id=tokenizer.pad_token_id,
                   progress=config.progress)
    return {"examples": len(features), "steps": result.steps, "train_loss": result.train_loss,
            "seconds": round(result.wall_time_s, 2),
            "first_loss": next((r["loss"] for r in result.history if "loss" in r), None)}


def ppo_update(model, tokenizer, data: RoundData, config: LearnConfig, out_dir: Path,
               reward_fn: RewardFn | None) -> dict | None:
    """PPO on the active adapter over the round's prompts, KL to the ``parent`` adapter."""
    if not (config.ppo.enabled and data.prompts):
        return None
    reward_fn = reward_fn or resolve_reward(config.ppo.reward, config, model, tokenizer)
    result = train_ppo(model, tokenizer, data.prompts, reward_fn, config.ppo.config, out_dir,
                       reference="parent", base_model_name=config.model, progress=config.progress)
    means = result.reward_means()
    return {"steps": result.steps, "reward_means": means, "seconds": round(result.wall_time_s, 2),
            "kl": [row.get("kl") for row in result.history]}


def parent_metrics(model, tokenizer, parent: VersionInfo, config: LearnConfig, guard_rows: list[dict]) -> dict:
    """The parent's guard metrics: its cached ``blend_accuracy`` when the slice is the same, the
    held-apart feedback score always (the slice is new every round)."""
    cached = parent.guard.get("candidate", {}) if parent.guard.get("fingerprint") == config.guard.fingerprint() else {}
    skip = ("blend_accuracy",) if "blend_accuracy" in cached else ()
    with adapter_registry(model).using("parent"):
        fresh = guard_metrics(model, tokenizer, config.guard, guard_rows, skip=skip)
    return {**{k: v for k, v in cached.items() if k == "blend_accuracy"}, **fresh}


def root_check(model, tokenizer, versions: VersionStore, parent: VersionInfo, candidate: dict,
               config: LearnConfig) -> tuple[dict, GuardDecision] | None:
    """``blend_accuracy`` of the lineage's root against the candidate's (``guard.compare_to_root``);
    None when off, when the parent is the root, or without a BLEnD slice."""
    if not (config.guard.compare_to_root and "blend_accuracy" in candidate):
        return None
    chain = versions.lineage(parent.version)
    root = chain[-1]
    if root.version == parent.version:
        return None
    fingerprint = config.guard.fingerprint()
    score = next((info.guard["parent"]["blend_accuracy"] for info in chain   # the root's child recorded it
                  if info.parent == root.version and info.guard.get("fingerprint") == fingerprint
                  and "blend_accuracy" in info.guard.get("parent", {})), None)
    if score is None:
        registry = adapter_registry(model)
        registry.add("root", root.adapter_dir)
        try:
            with registry.using("root"):
                score = blend_accuracy(model, tokenizer, config.guard)
        finally:
            registry.remove("root")
    baseline = {"version": root.version, "blend_accuracy": score}
    return baseline, decide({"blend_accuracy": score}, {"blend_accuracy": candidate["blend_accuracy"]}, config.guard,
                             expected=["blend_accuracy"])


# --- the round ------------------------------------------------------------------------------------


def learn_round(config: LearnConfig, store: FeedbackStore, versions: VersionStore, *,
                reward_fn: RewardFn | None = None, on_event: Callable[[str], None] | None = None) -> RoundResult:
    """Run one learning round (module docstring); returns what it did.

    Args:
        config: :class:`LearnConfig`.
        store: the feedback store to read.
        versions: the adapter version store to read the current version from and write to.
        reward_fn: scores PPO rollouts (default: ``config.ppo.reward``).
        on_event: called with a short message at each stage (a server shows it as the round's status).
    """
    started = time.perf_counter()
    say = on_event or (lambda message: log.info("%s", message))
    # A first round loads the model to write v0 and keeps it for the round.
    loaded = load(config.model, device=config.device) if versions.current() is None else None
    parent = ensure_initial_version(versions, config, loaded)
    cursor = versions.state()["feedback_cursor"]
    feedback = store.feedback(since_id=cursor)
    if len(feedback) < config.min_feedback:
        return RoundResult("skipped", f"{len(feedback)} new feedback rows after id {cursor}; a round needs "
                           f"min_feedback={config.min_feedback}", parent=parent.version,
                           seconds=time.perf_counter() - started)
    data = split_round(feedback, config.guard_fraction, config.sft.positives, config.seed)
    say(f"learning from {len(feedback)} feedback rows on top of {parent.version}")

    loaded = loaded or load(config.model, device=config.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    registry = adapter_registry(model)
    registry.add("parent", parent.adapter_dir)
    registry.add("candidate", parent.adapter_dir, activate=True)
    out_dir = Path(config.rounds_dir) / f"after-{parent.version}-feedback-{data.last_feedback_id}"
    training = {}
    say("supervised update")
    if (sft := sft_update(model, tokenizer, data, config, out_dir / "sft")) is not None:
        training["sft"] = sft
    say("PPO update")
    if (ppo := ppo_update(model, tokenizer, data, config, out_dir / "ppo", reward_fn)) is not None:
        training["ppo"] = ppo
    if not training:
        return RoundResult("skipped", "nothing to learn: no SFT example (no adjustment or accepted answer) "
                           "and PPO is off", parent=parent.version, data=data.summary(),
                           seconds=time.perf_counter() - started)
    method = "+".join(k for k in ("sft", "ppo") if k in training)

    say("guard")
    registry.use("candidate")
    candidate = guard_metrics(model, tokenizer, config.guard, data.guard)
    before = parent_metrics(model, tokenizer, parent, config, data.guard)
    decision = decide(before, candidate, config.guard, expected=config.guard.metrics(config.guard_fraction > 0))
    guard = {"candidate": candidate, "parent": before, "deltas": decision.deltas, "reasons": decision.reasons,
             "fingerprint": config.guard.fingerprint()}
    if (checked := root_check(model, tokenizer, versions, parent, candidate, config)) is not None:
        guard["root"], root_decision = checked
        decision.accepted = decision.accepted and root_decision.accepted
        decision.reasons += [f"vs root {checked[0]['version']}: {r}" for r in root_decision.reasons]
    reason = ("accepted: " if decision.accepted else "rejected: ") + "; ".join(decision.reasons)
    info = versions.add(lambda d: registry.save("candidate", d, config.model), parent=parent.version,
                        method=method, accepted=decision.accepted, feedback_ids=data.feedback_ids,
                        guard=guard,
                        reason=reason, training=training, base_model=config.model,
                        feedback_cursor=data.last_feedback_id if decision.accepted else None)
    result = RoundResult("accepted" if decision.accepted else "rejected", reason, info, parent.version,
                         data.summary(), time.perf_counter() - started)
    write_json(out_dir / "round.json", result.to_json())
    say(f"{info.version} {result.status}")
    return result


def run_learn(config: LearnConfig) -> RoundResult:
    """``acculturate learn CONFIG``: one round against ``config.db`` and ``config.versions_dir``."""
    store = FeedbackStore(config.db)
    try:
        return learn_round(config, store, VersionStore(config.versions_dir))
    finally:
        store.close()
