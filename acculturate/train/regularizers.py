"""Specialise without forgetting: terms the training loop adds to its loss (``train(objective=...)``).

- **KL to the base** on general data: ``kl_weight * mean_t KL(p_base(. | x_<t) || p_model(. | x_<t))``
  over the target positions of general (instruction) rows. This is the distillation direction of
  "Learning without Forgetting" (Li & Hoiem 2016): the adapted model must keep putting probability
  where the base did. The base's distribution comes from the *same* model with its adapters
  switched off (LoRA/QLoRA scale 0, trained token rows back to their initial values): no second
  copy of the model. Full, head and prompt-tuning runs have no adapter to switch off and pass a
  frozen ``reference`` copy instead (one more model in memory).
- **Mixing** general data: ``general_share`` of every micro-batch's rows come from the general
  data (replay); their next-token loss is averaged with the regional tokens'.
- **Group DRO** (Sagawa et al. 2020, arXiv:1911.08731, Algorithm 1): one weight ``q_g`` per group
  (language, region; the mixed general data is the group ``"general"``), updated each micro-batch
  by exponentiated gradient ``q_g <- q_g * exp(eta * L_g)``, normalised; the loss is
  ``sum_g q_g L_g`` with ``L_g`` the token-mean loss of group g in the batch. Groups absent from a
  batch have ``L_g = 0`` (as in the paper's code), so their weight only moves through the
  normalisation.

The maths is in pure functions (:func:`kl_sum`, :func:`dro_update`, :func:`robust_loss`) tested on
hand-computed values; :class:`Objective` is the stateful piece the loop calls.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from acculturate.data.batching import IGNORE_INDEX, pad_collate
from acculturate.train.loss import MODEL_INPUTS, target_mask

GENERAL_GROUP = "general"


@dataclass
class ForgettingConfig:
    """Options that keep a specialising model close to its general ability. All off by default."""

    kl_weight: float = 0.0
    """Weight of the KL(base || model) term on general data (0: off). 0.1-1 is a useful range."""
    general_share: float = 0.0
    """Fraction of the rows of every micro-batch drawn from the general data (0: no mixing)."""
    general_batch_size: int = 4
    """General rows per micro-batch for the KL term when ``general_share`` is 0."""
    group_dro: bool = False
    """Weight groups (``data`` sources' ``group``) by group DRO instead of by token count."""
    dro_step_size: float = 0.01
    """Step size eta of the exponentiated-gradient update of the group weights."""

    def __post_init__(self):
        def fail(name, expected):
            raise ValueError(f"ForgettingConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        if not isinstance(self.kl_weight, (int, float)) or isinstance(self.kl_weight, bool) or self.kl_weight < 0:
            fail("kl_weight", "a number >= 0")
        if not isinstance(self.general_share, (int, float)) or not 0 <= self.general_share < 1:
            fail("general_share", "a number in [0, 1)")
        if isinstance(self.general_batch_size, bool) or not isinstance(self.general_batch_size, int) \
                or self.general_batch_size < 1:
            fail("general_batch_size", "an integer >= 1")
        if not isinstance(self.group_dro, bool):
            fail("group_dro", "true or false")
        if not isinstance(self.dro_step_size, (int, float)) or self.dro_step_size <= 0:
            fail("dro_step_size", "a number > 0")

    @property
    def active(self) -> bool:
        return self.kl_weight > 0 or self.general_share > 0 or self.group_dro

    @property
    def needs_general(self) -> bool:
        return self.kl_weight > 0 or self.general_share > 0

    def general_rows_per_batch(self, batch_size: int) -> int:
        """General rows per micro-batch of ``batch_size`` regional rows: the share of the mixed batch
        (at least 1 when mixing), else ``general_batch_size`` for the KL term alone."""
        if self.general_share > 0:
            return max(1, round(batch_size * self.general_share / (1 - self.general_share)))
        return self.general_batch_size if self.kl_weight > 0 else 0


# ---- pure maths -------------------------------------------------------------------------------

def kl_sum(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """``sum_n KL(softmax(ref_logits[n]) || softmax(logits[n]))``, in fp32.

    Args:
        logits: (N, V) the model's logits (differentiable).
        ref_logits: (N, V) the reference (base) model's logits.
    Returns:
        A scalar tensor (sum over the N positions).
    """
    log_p = F.log_softmax(logits.float(), dim=-1)           # (N, V)
    log_ref = F.log_softmax(ref_logits.float(), dim=-1)     # (N, V)
    return F.kl_div(log_p, log_ref, reduction="sum", log_target=True)


def dro_update(weights: torch.Tensor, group_losses: torch.Tensor, step_size: float) -> torch.Tensor:
    """One exponentiated-gradient step: ``q * exp(eta * L)``, normalised to sum 1.

    Args:
        weights: (G,) current group weights (sum 1).
        group_losses: (G,) token-mean loss of each group in the batch (0 for absent groups).
        step_size: eta.
    """
    logits = torch.log(weights) + step_size * group_losses.detach().float()
    return torch.softmax(logits, dim=0)      # = q e^{eta L} / sum, computed stably


def robust_loss(weights: torch.Tensor, group_losses: torch.Tensor) -> torch.Tensor:
    """``sum_g q_g L_g`` (differentiable in the losses)."""
    return (weights.to(group_losses) * group_losses).sum()


def group_mean_losses(token_losses: torch.Tensor, token_groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(G,) mean of ``token_losses`` (N,) per group id in ``token_groups`` (N,); 0 where a group has none."""
    sums = torch.zeros(n_groups, dtype=token_losses.dtype, device=token_losses.device).index_add(
        0, token_groups, token_losses)
    counts = torch.bincount(token_groups, minlength=n_groups).to(token_losses)
    return sums / counts.clamp(min=1)


# ---- model plumbing ---------------------------------------------------------------------------

def target_logits(model: torch.nn.Module, batch: dict, device: torch.device, amp_dtype=None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the positions whose next label is a target.

    Returns:
        ``(logits (N, V), targets (N,), row (N,))``: row is the batch row of each position.
    """
    labels = batch["labels"].to(device)                              # (B, T)
    keep = target_mask(labels)                                       # (B, T)
    targets = labels[:, 1:][keep[:, :-1]]                            # (N,)
    rows = torch.arange(labels.shape[0], device=device).unsqueeze(1).expand_as(labels)[keep]   # (N,)
    inputs = {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}
    positions = keep.any(dim=0).nonzero().squeeze(1)                 # (K,)
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with amp:
        logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits   # (B, K, V)
    if logits.shape[1] != positions.numel():
        logits = logits[:, positions]
    return logits[keep[:, positions]], targets, rows


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The model computes as its base: LoRA layers contribute nothing (scale 0), trained token rows
    read their initial values, and the model runs in eval mode (no dropout)."""
    from acculturate.adapters.lora import lora_modules
    from acculturate.adapters.token_rows import token_rows_disabled

    layers = lora_modules(model)
    if any(m.merged for m in layers.values()):
        raise ValueError("adapters_disabled: the model's LoRA layers are merged; the base is gone")
    scales = {name: m.scale for name, m in layers.items()}
    was_training = model.training
    model.eval()
    try:
        for m in layers.values():
            m.scale = 0.0
        with token_rows_disabled(model):
            yield model
    finally:
        for name, m in layers.items():
            m.scale = scales[name]
        model.train(was_training)


def frozen_reference(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen eval-mode copy of ``model`` (for methods with no adapter to switch off)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# ---- the objective the loop calls -------------------------------------------------------------

class Objective:
    """The training loss with forgetting controls, called by :func:`acculturate.train.sft.train`.

    Args:
        config: :class:`ForgettingConfig`.
        general_features: tokenized general data (``input_ids``/``labels``) for KL and mixing.
        groups: the group names of the training rows (for group DRO), in a fixed order.
        reference: a frozen base model for the KL term; None: the trained model with its adapters
            off (LoRA, QLoRA, token rows).
        max_length: general rows are truncated to this; seed: of the general rows drawn each step.
    """

    def __init__(self, config: ForgettingConfig, general_features: Sequence[dict] = (),
                 groups: Sequence[str] = (), reference: torch.nn.Module | None = None,
                 max_length: int = 512, seed: int = 0, pad_id: int = 0):
        self.config = config
        self.general = [{"input_ids": list(f["input_ids"][:max_length]), "labels": list(f["labels"][:max_length])}
                        for f in general_features]
        self.general = [f for f in self.general if any(x != IGNORE_INDEX for x in f["labels"][1:])]
        if config.needs_general and not self.general:
            raise ValueError("forgetting: kl_weight or general_share needs general data (none was given)")
        self.groups = list(groups)
        if config.group_dro:
            if config.general_share > 0 and GENERAL_GROUP not in self.groups:
                self.groups.append(GENERAL_GROUP)
            if not self.groups:
                raise ValueError("forgetting.group_dro: the training rows carry no group")
        self.weights = torch.full((max(len(self.groups), 1),), 1.0 / max(len(self.groups), 1))
        self.reference = reference
        self.seed, self.pad_id = seed, pad_id
        self._step_general: list[list[int]] = []
        self._general_targets = 0
        self._log = {"general_loss": 0.0, "general_targets": 0, "kl": 0.0, "kl_positions": 0}

    # -- state kept in checkpoints
    def state_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "groups": self.groups}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            if state["groups"] != self.groups:
                raise ValueError(f"cannot resume: the checkpoint's DRO groups {state['groups']} differ "
                                 f"from this run's {self.groups}")
            self.weights = torch.tensor(state["weights"], dtype=torch.float32)

    # -- per step
    def start_step(self, step: int, micro_batches: Sequence[Sequence[dict]]) -> None:
        """Draw the general rows of each micro-batch of ``step`` (a pure function of seed and step,
        so a resumed run draws the same ones)."""
        per_batch = [self.config.general_rows_per_batch(len(rows)) for rows in micro_batches]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        self._step_general = [torch.randint(len(self.general), (k,), generator=generator).tolist() if k else []
                              for k in per_batch]
        self._general_targets = sum(
            sum(1 for x in self.general[i]["labels"][1:] if x != IGNORE_INDEX)
            for idx in self._step_general for i in idx) if self.config.general_share > 0 else 0
        self._log = {"general_loss": 0.0, "general_targets": 0, "kl": 0.0, "kl_positions": 0}

    def backward(self, model: torch.nn.Module, batch: dict, n_targets: int, micro_index: int,
                 n_micro: int, device: torch.device, amp_dtype=None) -> torch.Tensor:
        """Compute micro-batch ``micro_index`` of ``n_micro``'s loss, call ``backward`` on it, and
        return the regional next-token loss *sum* (detached; the loop logs it)."""
        cfg = self.config
        logits, targets, rows = target_logits(model, batch, device, amp_dtype)
        token_ce = F.cross_entropy(logits.float(), targets, reduction="none")      # (N,)
        if "loss_weights" in batch:   # examples' meta.weight, as in train.loss.loss_sum
            if cfg.group_dro:
                raise ValueError("group DRO re-weights groups itself: train on examples without "
                                 "meta.weight (or set forgetting.group_dro: false)")
            labels = batch["labels"].to(device)
            token_ce = token_ce * batch["loss_weights"].to(device)[:, 1:][target_mask(labels)[:, :-1]]
        regional_sum = token_ce.sum()
        general_idx = self._step_general[micro_index] if self._step_general else []
        g_ce = g_kl = None
        if general_idx:
            g_batch = pad_collate([self.general[i] for i in general_idx], self.pad_id)
            g_logits, g_targets, _ = target_logits(model, g_batch, device, amp_dtype)
            if cfg.general_share > 0:
                g_ce = F.cross_entropy(g_logits.float(), g_targets, reduction="none")   # (M,)
                self._log["general_loss"] += float(g_ce.detach().sum())
                self._log["general_targets"] += g_ce.numel()
            if cfg.kl_weight > 0:
                with torch.no_grad():
                    ref_logits = self._reference_logits(model, g_batch, device, amp_dtype)
                g_kl = kl_sum(g_logits, ref_logits) / max(g_logits.shape[0], 1)
                self._log["kl"] += float(g_kl.detach()) * g_logits.shape[0]
                self._log["kl_positions"] += g_logits.shape[0]
        if cfg.group_dro:
            names = batch.get("group") or [None] * batch["labels"].shape[0]
            ids = torch.tensor([self.groups.index(n) if n in self.groups else -1 for n in names], device=device)
            if (ids < 0).any():
                raise ValueError(f"group DRO: a row's group {names} is not one of {self.groups}")
            losses = [token_ce]
            token_groups = [ids[rows]]
            if g_ce is not None:
                losses.append(g_ce)
                token_groups.append(torch.full_like(g_ce, self.groups.index(GENERAL_GROUP), dtype=torch.long))
            group_losses = group_mean_losses(torch.cat(losses), torch.cat(token_groups), len(self.groups))
            self.weights = dro_update(self.weights, group_losses.cpu(), cfg.dro_step_size)
            loss = robust_loss(self.weights.to(device), group_losses) / n_micro
        else:
            total = regional_sum + (g_ce.sum() if g_ce is not None else 0.0)
            loss = total / max(n_targets + self._general_targets, 1)
        if g_kl is not None:
            loss = loss + cfg.kl_weight * g_kl / n_micro
        loss.backward()
        return regional_sum.detach()

    def _reference_logits(self, model, batch, device, amp_dtype) -> torch.Tensor:
        if self.reference is not None:
            return target_logits(self.reference, batch, device, amp_dtype)[0]
        with adapters_disabled(model):
            return target_logits(model, batch, device, amp_dtype)[0]

    def log_fields(self) -> dict:
        """Values for the current ``metrics.jsonl`` row (this step's)."""
        out = {}
        if self._log["general_targets"]:
            out["general_loss"] = round(self._log["general_loss"] / self._log["general_targets"], 6)
        if self._log["kl_positions"]:
            out["kl"] = round(self._log["kl"] / self._log["kl_positions"], 6)
        if self.config.group_dro:
            out["dro_weights"] = {g: round(float(w), 4) for g, w in zip(self.groups, self.weights)}
        return out
