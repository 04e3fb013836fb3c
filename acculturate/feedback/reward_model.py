"""A reward model: the base model (optionally with a LoRA adapter) and a scalar head on the hidden
state of the last non-pad token of ``prompt + completion + EOS``.

Training is one explicit loop (:func:`train_reward_model`) over two kinds of data, mixable:

- preference pairs ``{"prompt", "chosen", "rejected"}`` with the Bradley-Terry loss
  ``-log sigmoid(r(chosen) - r(rejected))`` (Christiano et al. 2017; Ouyang et al. 2022, eq. 1);
- scalar rewards ``{"prompt", "completion", "reward"}`` (the feedback table's +1/-1/+-0.5) with the
  squared error ``(r - reward)^2``.

Saved as a directory: ``adapter/`` (PEFT format, absent for a head-only model), ``head.safetensors``
and ``reward_model.json`` (base model, offset, metrics). :func:`load_reward_model` turns it back into
a reward function; given an already loaded base model it adds the adapter to that model's adapter
registry, so a PPO run scores with the same base weights its policy uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from acculturate.adapters import LoRAConfig, adapter_registry, save_adapter
from acculturate.config_loading import is_int, is_number
from acculturate.data.errors import DataError, describe
from acculturate.data.jsonl import read_jsonl_objects, text_field
from acculturate.feedback.heads import ScalarHead, hidden_size, last_hidden, last_token_states
from acculturate.feedback.order import cycle_indices
from acculturate.io import append_jsonl, atomic_dir, write_json, write_jsonl
from acculturate.train.checkpoint import find_checkpoint, load_checkpoint, read_state, save_checkpoint
from acculturate.train.tracking import Tracker, check_backends
from acculturate.train.schedule import warmup_cosine_lambda, warmup_steps_for

log = logging.getLogger(__name__)

CONFIG_FILE = "reward_model.json"
HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"
FORMAT = "acculturate-reward-model"
_RESUME_FREE_FIELDS = {"log_every", "save_every", "eval_every", "report_to"}


@dataclass
class RewardModelConfig:
    """How a reward model trains. Every field is validated at construction; errors name the field."""

    epochs: int = 1
    """Passes over the preference pairs (or, without pairs, the scored rows); ignored with max_steps."""
    max_steps: int | None = None
    """Optimizer steps to take; overrides ``epochs``."""
    batch_size: int = 8
    """Pairs (and scored rows) per step."""
    lr: float = 2e-4
    """Peak AdamW learning rate of the LoRA weights (warm-up then cosine decay)."""
    head_lr: float = 1e-3
    """Peak AdamW learning rate of the scalar head."""
    weight_decay: float = 0.0
    """AdamW weight decay of the LoRA matrices."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent in linear warm-up."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm (None or 0: no clipping)."""
    max_length: int = 256
    """Tokens per scored text; longer texts keep their last ``max_length`` tokens (the end is scored)."""
    pair_weight: float = 1.0
    """Weight of the Bradley-Terry loss."""
    regression_weight: float = 1.0
    """Weight of the squared-error loss on scalar rewards."""
    eval_every: int = 0
    """Held-out pair accuracy every this many steps (0: only before and after training)."""
    log_every: int = 10
    """Write a ``metrics.jsonl`` row every this many steps (and at the last)."""
    save_every: int = 50
    """Write ``out_dir/checkpoint`` every this many steps (0: only at the end)."""
    seed: int = 0
    """Seed of the data order and of the head's initialisation."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers for the metrics rows and the config: any of 'tensorboard', 'mlflow',
    'wandb' (offline, under ``<out_dir>/tracking``; see :mod:`acculturate.train.tracking`)."""

    def __post_init__(self):
        def fail(name, expected):
            raise ValueError(f"RewardModelConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        check_backends(self.report_to, "RewardModelConfig.report_to")

        for name in ("epochs", "batch_size", "log_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        if not is_int(self.max_length) or self.max_length < 8:
            fail("max_length", "an integer >= 8")
        for name in ("eval_every", "save_every", "seed"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "an integer >= 0")
        if self.max_steps is not None and (not is_int(self.max_steps) or self.max_steps < 1):
            fail("max_steps", "None or an integer >= 1")
        for name in ("lr", "head_lr"):
            if not is_number(getattr(self, name)) or getattr(self, name) <= 0:
                fail(name, "a number > 0")
        for name in ("weight_decay", "pair_weight", "regression_weight"):
            if not is_number(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "a number >= 0")
        if not is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio <= 1:
            fail("warmup_ratio", "a number in [0, 1]")
        if self.max_grad_norm is not None and (not is_number(self.max_grad_norm) or self.max_grad_norm < 0):
            fail("max_grad_norm", "None or a number >= 0")
        if self.pair_weight == 0 and self.regression_weight == 0:
            fail("pair_weight", "a number > 0 when regression_weight is 0")


@dataclass
class RewardModelResult:
    """What :func:`train_reward_model` did."""

    steps: int
    eval_accuracy_before: float | None
    """Held-out pair accuracy of the untrained model."""
    eval_accuracy: float | None
    """... after training."""
    eval_pairs: int
    train_pairs: int
    train_scored: int
    score_offset: float
    """Mean score of the training texts (subtracted when scoring)."""
    wall_time_s: float
    history: list[dict] = field(default_factory=list)
    head: ScalarHead | None = field(default=None, repr=False)


# --- losses (pure) ----------------------------------------------------------------------------------


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``mean(-log sigmoid(r_chosen - r_rejected))`` over pairs; (P,) scores each."""
    return -F.logsigmoid(chosen - rejected).mean()


def regression_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean((r - target)^2)``; (N,) each."""
    return ((scores - targets) ** 2).mean()


# --- data ----------------------------------------------------------------------------------------------


def reward_text(prompt: str, completion: str, tokenizer) -> str:
    """What a reward model reads: the rendered prompt, the completion and the end-of-turn token, so
    the scored state is the one after the model would have stopped."""
    eos = tokenizer.eos_token or ""
    return prompt + completion + ("" if completion.endswith(eos) else eos)


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text (verbatim, no special tokens added), keeping the last ``max_length``."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [row[-max_length:] if len(row) > max_length else row for row in ids]


def score_ids(model: nn.Module, head: ScalarHead, ids: Sequence[list[int]], pad_id: int) -> torch.Tensor:
    """(N,) head scores of right-padded token rows at their last real token."""
    device = next(model.parameters()).device
    width = max(len(r) for r in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, row in enumerate(ids):
        input_ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, :len(row)] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    hidden = last_hidden(model, input_ids, mask)                                  # (N, L, H)
    return head(last_token_states(hidden, mask))                                  # (N,)


def read_preference_pairs(path: str | os.PathLike, tokenizer, template: str = "chat",
                          system: str | None = None) -> list[dict]:
    """Preference pairs ``{"prompt", "chosen", "rejected"}`` from a file.

    Accepts the shipped format (a JSON list or JSONL of Alpaca ``instruction``/``input`` with
    ``chosen`` and ``rejected``; the prompt is rendered with ``template``) and the feedback export's
    ``preferences.jsonl`` (``prompt`` already rendered, ``chosen``, ``rejected``).

    Raises:
        DataError: a record without a non-empty string ``chosen``/``rejected``, naming the file and record.
    """
    from acculturate.data import read_examples
    from acculturate.data.templates import render_prompt

    path = Path(path)
    first = path.read_text(encoding="utf-8-sig").lstrip()[:1]
    pairs = []
    if first == "{":
        try:
            head = json.loads(path.read_text(encoding="utf-8-sig").splitlines()[0])
        except (json.JSONDecodeError, IndexError):
            head = {}
        if isinstance(head, dict) and "prompt" in head and "instruction" not in head:
            for lineno, row in read_jsonl_objects(path, encoding="utf-8-sig"):
                pairs.append({key: text_field(path, lineno, row, key) for key in ("prompt", "chosen", "rejected")})
            return pairs
    for i, example in enumerate(read_examples(path, format="alpaca", allow_no_response=True), start=1):
        for key in ("chosen", "rejected"):
            value = example.meta.get(key)
            if not isinstance(value, str) or not value.strip():
                raise DataError(path, None, key, f"a non-empty string in record {i}",
                                "nothing (the field is missing)" if key not in example.meta else describe(value))
        prompt_example = type(example)(example.prompt_messages, example.meta)
        pairs.append({"prompt": render_prompt(prompt_example, tokenizer, template, system=system),
                      "chosen": example.meta["chosen"], "rejected": example.meta["rejected"]})
    return pairs


# --- evaluation ---------------------------------------------------------------------------------------


@torch.no_grad()
def pair_scores(model: nn.Module, head: ScalarHead, tokenizer, pairs: Sequence[dict], max_length: int,
                batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(P,) scores of the chosen and of the rejected completions."""
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        part = pairs[start:start + batch_size]
        texts = [reward_text(p["prompt"], p["chosen"], tokenizer) for p in part] + \
                [reward_text(p["prompt"], p["rejected"], tokenizer) for p in part]
        scores = score_ids(model, head, encode(tokenizer, texts, max_length), tokenizer.pad_token_id)
        chosen.append(scores[:len(part)])
        rejected.append(scores[len(part):])
    return torch.cat(chosen), torch.cat(rejected)


def pair_accuracy(model: nn.Module, head: ScalarHead, tokenizer, pairs: Sequence[dict], max_length: int,
                  batch_size: int = 8) -> float | None:
    """Share of pairs whose chosen completion scores above the rejected one (None without pairs)."""
    if not pairs:
        return None
    was_training = model.training
    model.eval()
    chosen, rejected = pair_scores(model, head, tokenizer, pairs, max_length, batch_size)
    model.train(was_training)
    return float((chosen > rejected).float().mean())


# --- training -----------------------------------------------------------------------------------------


def _fingerprint(pairs: Sequence[dict], scored: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for row in list(pairs) + list(scored):
        h.update(json.dumps(row, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()[:16]


def train_reward_model(model: nn.Module, tokenizer, pairs: Sequence[dict] = (), scored: Sequence[dict] = (),
                       config: RewardModelConfig | None = None, out_dir: str | Path | None = None, *,
                       eval_pairs: Sequence[dict] = (), head: ScalarHead | None = None, resume: bool = False,
                       progress: bool = True) -> RewardModelResult:
    """Train a reward model: the model's parameters that require grad (a LoRA adapter, or none for a
    head-only model: freeze the model first) and a scalar head.

    Args:
        model: an HF causal LM, prepared (e.g. ``apply_lora``); fp32 or bf16.
        tokenizer: its tokenizer.
        pairs: ``{"prompt", "chosen", "rejected"}`` (prompt rendered), for the Bradley-Terry loss.
        scored: ``{"prompt", "completion", "reward"}``, for the regression loss.
        config: :class:`RewardModelConfig`.
        out_dir: gets ``metrics.jsonl`` and ``checkpoint/`` (None: nothing written).
        eval_pairs: held-out pairs: accuracy before, every ``eval_every`` steps, and after.
        head: continue from this head (default: a new one).
        resume: continue from ``out_dir/checkpoint`` (same config and data) if there is one.
        progress: show a tqdm bar.
    Returns:
        :class:`RewardModelResult`; save it with :func:`save_reward_model`.
    """
    config = config or RewardModelConfig()
    pairs, scored, eval_pairs = list(pairs), list(scored), list(eval_pairs)
    if not pairs and not scored:
        raise ValueError("train_reward_model: no preference pairs and no scored rows to learn from")
    for i, row in enumerate(scored):
        if not isinstance(row.get("reward"), (int, float)) or isinstance(row.get("reward"), bool):
            raise ValueError(f"scored row {i}: 'reward' must be a number, got {row.get('reward')!r}")
    device = next(model.parameters()).device
    if head is None:
        torch.manual_seed(config.seed)
        head = ScalarHead(hidden_size(model))
    head.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": list(head.parameters()), "lr": config.head_lr, "weight_decay": 0.0}]
    if params:
        groups.append({"params": params, "lr": config.lr, "weight_decay": config.weight_decay})
    optimizer = torch.optim.AdamW(groups)
    n_main = len(pairs) if pairs else len(scored)
    total_steps = config.max_steps or config.epochs * math.ceil(n_main / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_lambda(
        warmup_steps_for(config.warmup_ratio, total_steps), total_steps, 0.0))
    trainable = nn.ModuleDict({"model": model, "head": head})
    pad_id = tokenizer.pad_token_id

    out_dir = Path(out_dir) if out_dir is not None else None
    log_path = out_dir / "metrics.jsonl" if out_dir else None
    ckpt_dir = out_dir / "checkpoint" if out_dir else None
    data_hash = _fingerprint(pairs, scored)
    saved_config = json.loads(json.dumps(asdict(config)))
    history: list[dict] = []
    start_step = 0
    before = None
    found = find_checkpoint(ckpt_dir) if resume and ckpt_dir is not None else None
    if found is not None:
        saved = read_state(found)["config"]
        for name, value in saved_config.items():
            if name not in _RESUME_FREE_FIELDS and saved.get(name) != value:
                raise ValueError(f"cannot resume from {found}: RewardModelConfig.{name} was {saved.get(name)!r} "
                                 f"there and is {value!r} now (keep it or start afresh)")
        ckpt = load_checkpoint(found, model=trainable, optimizer=optimizer, scheduler=scheduler)
        if ckpt.progress["data"] != data_hash:
            raise ValueError(f"cannot resume from {found}: the training data differ from the run that wrote it")
        start_step, history, before = ckpt.progress["step"], ckpt.metrics, ckpt.progress.get("accuracy_before")
    else:
        before = pair_accuracy(model, head, tokenizer, eval_pairs, config.max_length, config.batch_size)
    if log_path is not None:
        write_jsonl(log_path, history)
    tracker = Tracker(out_dir, config.report_to if out_dir is not None else [])
    tracker.params({"reward_model": saved_config})

    def checkpoint(step: int) -> None:
        if ckpt_dir is not None:
            save_checkpoint(ckpt_dir, model=trainable, optimizer=optimizer, scheduler=scheduler,
                            progress={"step": step, "total_steps": total_steps, "data": data_hash,
                                      "accuracy_before": before},
                            config=saved_config, metrics=history)

    t0 = time.perf_counter()
    model.train()
    window: dict[str, list[float]] = {}
    bar = tqdm(total=total_steps, initial=start_step, disable=not progress, desc="reward model", unit="step")
    for step in range(start_step, total_steps):
        lr = scheduler.get_last_lr()[-1]
        loss = torch.zeros((), device=device)
        parts = {}
        if pairs and config.pair_weight:
            batch = [pairs[i] for i in cycle_indices(len(pairs), min(config.batch_size, len(pairs)), config.seed, step)]
            texts = [reward_text(p["prompt"], p["chosen"], tokenizer) for p in batch] + \
                    [reward_text(p["prompt"], p["rejected"], tokenizer) for p in batch]
            scores = score_ids(model, head, encode(tokenizer, texts, config.max_length), pad_id)
            chosen, rejected = scores[:len(batch)], scores[len(batch):]
            bt = bradley_terry_loss(chosen, rejected)
            loss = loss + config.pair_weight * bt
            parts.update(pair_loss=bt.item(), train_pair_accuracy=(chosen > rejected).float().mean().item(),
                         margin=(chosen - rejected).mean().item())
        if scored and config.regression_weight:
            batch = [scored[i] for i in cycle_indices(len(scored), min(config.batch_size, len(scored)),
                                                      config.seed + 1, step)]
            texts = [reward_text(r["prompt"], r["completion"], tokenizer) for r in batch]
            scores = score_ids(model, head, encode(tokenizer, texts, config.max_length), pad_id)
            mse = regression_loss(scores, torch.tensor([float(r["reward"]) for r in batch], device=device))
            loss = loss + config.regression_weight * mse
            parts["regression_loss"] = mse.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params + list(head.parameters()), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        parts["loss"] = loss.item()
        for k, v in parts.items():
            window.setdefault(k, []).append(v)
        bar.update(1)
        bar.set_postfix(loss=f"{parts['loss']:.4f}")
        done = step + 1
        row = None
        if done % config.log_every == 0 or done == total_steps:
            row = {"step": done, "lr": lr, **{k: round(sum(v) / len(v), 6) for k, v in window.items()}}
            window = {}
        if config.eval_every and done % config.eval_every == 0 and done < total_steps and eval_pairs:
            row = row or {"step": done}
            row["eval_pair_accuracy"] = pair_accuracy(model, head, tokenizer, eval_pairs, config.max_length,
                                                      config.batch_size)
        if row is not None:
            history.append(row)
            if log_path is not None:
                append_jsonl(log_path, row)
            tracker.metrics(row)
        if config.save_every and done % config.save_every == 0 and done < total_steps:
            checkpoint(done)
    bar.close()
    if start_step < total_steps:
        checkpoint(total_steps)
    model.eval()
    after = pair_accuracy(model, head, tokenizer, eval_pairs, config.max_length, config.batch_size)
    offset = _mean_score(model, head, tokenizer, pairs, scored, config)
    if after is not None:
        row = {"step": total_steps, "eval_pair_accuracy": after}
        history.append(row)
        if log_path is not None:
            append_jsonl(log_path, row)
        tracker.metrics(row)
    tracker.close()
    return RewardModelResult(steps=total_steps, eval_accuracy_before=before, eval_accuracy=after,
                             eval_pairs=len(eval_pairs), train_pairs=len(pairs), train_scored=len(scored),
                             score_offset=offset, wall_time_s=time.perf_counter() - t0, history=history, head=head)


@torch.no_grad()
def _mean_score(model, head, tokenizer, pairs, scored, config, limit: int = 64) -> float:
    """Mean score over (up to ``limit``) training texts: subtracted when scoring, so rewards are
    centred near 0 (a Bradley-Terry model is defined only up to an additive constant)."""
    texts = [reward_text(p["prompt"], p[k], tokenizer) for p in pairs[:limit // 2] for k in ("chosen", "rejected")]
    texts += [reward_text(r["prompt"], r["completion"], tokenizer) for r in scored[:limit // 2]]
    scores = [score_ids(model, head, encode(tokenizer, texts[i:i + config.batch_size], config.max_length),
                        tokenizer.pad_token_id) for i in range(0, len(texts), config.batch_size)]
    return float(torch.cat(scores).mean()) if scores else 0.0


# --- saving and loading ------------------------------------------------------------------------------


def save_reward_model(model: nn.Module, head: ScalarHead, out_dir: str | Path, base_model: str | None,
                      lora: LoRAConfig | None, score_offset: float = 0.0, max_length: int = 256,
                      metrics: dict | None = None) -> Path:
    """Write ``adapter/`` (PEFT format; only with ``lora``), ``head.safetensors`` and
    ``reward_model.json`` into ``out_dir``, atomically (the directory is replaced whole)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if lora is not None:
            save_adapter(model, tmp / ADAPTER_DIR, base_model, lora)
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(tmp / HEAD_FILE))
        write_json(tmp / CONFIG_FILE, {
            "format": FORMAT, "version": 1, "base_model": base_model, "hidden_size": head.hidden_size,
            "adapter": ADAPTER_DIR if lora is not None else None, "score_offset": score_offset,
            "max_length": max_length, "text": "prompt + completion + eos_token", "metrics": metrics or {}})
    return out_dir


class RewardModel:
    """A loaded reward model; call it as ``reward_model(prompts, completions) -> list[float]``.

    Scores are ``head(h_last) - score_offset``. With an adapter, scoring switches the model's
    registry to it (and back) for the call; without one it scores the bare base model.
    """

    def __init__(self, model: nn.Module, tokenizer, head: ScalarHead, adapter: str | None,
                 score_offset: float = 0.0, max_length: int = 256, batch_size: int = 8):
        self.model, self.tokenizer, self.head = model, tokenizer, head
        self.adapter, self.score_offset = adapter, score_offset
        self.max_length, self.batch_size = max_length, batch_size
        self.__name__ = "reward_model"

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
        texts = [reward_text(p, c, self.tokenizer) for p, c in zip(prompts, completions)]
        out: list[float] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with adapter_registry(self.model).using(self.adapter):
                for start in range(0, len(texts), self.batch_size):
                    ids = encode(self.tokenizer, texts[start:start + self.batch_size], self.max_length)
                    scores = score_ids(self.model, self.head, ids, self.tokenizer.pad_token_id)
                    out += (scores - self.score_offset).tolist()
        finally:
            self.model.train(was_training)
        return out


def load_reward_model(path: str | Path, model: nn.Module | None = None, tokenizer=None,
                      batch_size: int = 8, device: str | None = None) -> RewardModel:
    """Load a reward model directory as a reward function.

    Args:
        path: written by :func:`save_reward_model` (``reward_model.json`` inside).
        model, tokenizer: the base model to score with (its adapter is added to this model's
            registry; the base weights are shared). Default: load the recorded base model.
        batch_size: texts per forward pass.
        device: where a newly loaded base model goes.
    Raises:
        FileNotFoundError: no ``reward_model.json``. ValueError: a file of another format, or a
            head that does not fit the model's hidden size.
    """
    from safetensors.torch import load_file

    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a reward model directory: no {CONFIG_FILE} "
                                f"(train one with `acculturate reward-model train CONFIG`)")
    meta = json.loads(config_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if model is None:
        from acculturate.models import load

        loaded = load(meta.get("base_model") or "smollm2-135m", device=device)
        model, tokenizer = loaded.model, loaded.tokenizer
        for p in model.parameters():
            p.requires_grad_(False)
    if tokenizer is None:
        raise ValueError("load_reward_model: pass the tokenizer with the model")
    if hidden_size(model) != meta["hidden_size"]:
        raise ValueError(f"{config_path}: the head expects hidden size {meta['hidden_size']}, the model has "
                         f"{hidden_size(model)} (a reward model must be used with its base model "
                         f"{meta.get('base_model')!r})")
    head = ScalarHead(meta["hidden_size"])
    head.load_state_dict(load_file(str(path / HEAD_FILE)))
    head.to(next(model.parameters()).device).eval()
    for p in head.parameters():
        p.requires_grad_(False)
    adapter = None
    if meta.get("adapter"):
        registry = adapter_registry(model)
        adapter = "reward-model-" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        if adapter not in registry:
            registry.add(adapter, path / meta["adapter"])
            for p in registry.get(adapter).layers.values():
                p.requires_grad_(False)
    return RewardModel(model, tokenizer, head, adapter, float(meta.get("score_offset", 0.0)),
                       int(meta.get("max_length", 256)), batch_size)
