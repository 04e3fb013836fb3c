"""Supervised fine-tuning: one explicit loop (set up, loop, save) over tokenized features.

The loop trains whatever parameters have ``requires_grad`` (full, head-only or LoRA: the caller
prepares the model). Its data order is a pure function of ``seed`` and the epoch, so a run resumed
from ``out_dir/checkpoint`` replays the same batches from where it stopped and ends with the same
weights as a run that was never interrupted (tests/train/test_resume.py checks this bit for bit
after a SIGKILL).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from acculturate.data.batching import (check_feature, length_grouped_batches, pack_features,
                                       packed_collate, pad_collate, shuffled_batches)
from acculturate.io import append_jsonl, write_jsonl
from acculturate.models.kernels import use_fused_kernels
from acculturate.models.varlen import use_varlen_attention
from acculturate.train import checkpointing, distributed
from acculturate.train.checkpoint import find_checkpoint, load_checkpoint, read_state, save_checkpoint
from acculturate.train.loss import count_targets, loss_sum
from acculturate.train.memory import PeakMemory
from acculturate.train.schedule import warmup_cosine_lambda, warmup_steps_for
from acculturate.train.tracking import Tracker, check_backends

log = logging.getLogger(__name__)

# Fields that only change how often the loop reports or saves, not the weights it ends with: a
# resumed run may change them. Any other field must match the checkpoint's.
_RESUME_FREE_FIELDS = {"eval_every", "save_every", "log_every", "distributed", "report_to",
                       "activation_checkpointing", "memory_budget_gib", "offload_checkpointed_inputs"}


@dataclass
class TrainConfig:
    """How to train. Every field is validated at construction; errors name the field."""

    epochs: int = 1
    """Passes over the training data (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Optimizer steps to take; overrides ``epochs`` (the data repeats as needed)."""
    min_steps: int | None = None
    """At least this many optimizer steps when ``epochs`` gives fewer (a small dataset repeats, e.g. a
    72-question region in the adapt job); ignored when ``max_steps`` is set."""
    batch_size: int = 8
    """Examples (or packed rows) per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the loss is normalised by all their target tokens."""
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to matrices only (not to biases and norm weights)."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent in linear warm-up before the cosine decay."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine decay, as a fraction of ``lr``."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (None or 0: no clipping)."""
    eval_every: int = 0
    """Compute the eval loss every this many steps (0: only at the end)."""
    save_every: int = 50
    """Write ``out_dir/checkpoint`` every this many steps (0: only at the end)."""
    log_every: int = 10
    """Write a ``metrics.jsonl`` row every this many steps (and at the last step)."""
    seed: int = 0
    """Seed of the data order (with the epoch) and of torch's generator."""
    packing: bool = False
    """Pack several examples into each row of ``max_length`` tokens (attention stays per example)."""
    group_by_length: bool = False
    """Batch examples of similar length together to cut padding (without packing)."""
    max_length: int = 512
    """Tokens per example (longer ones are truncated) or per packed row."""
    distributed: str = "ddp"
    """Under torchrun (several processes): 'ddp' (replicated weights) or 'fsdp' (FSDP2, sharded
    parameters, gradients and optimizer state). ``batch_size`` stays the global micro-batch."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers to log the config, losses, learning rate, tokens/s, eval loss, peak memory
    and the final report to: any of 'tensorboard', 'mlflow', 'wandb' (offline, under
    ``<out_dir>/tracking``; each needs its extra installed). Empty: the JSONL log only."""
    activation_checkpointing: str | int = "auto"
    """Recompute activations in the backward pass to save memory: 'off', 'mlp' (each layer's MLP
    block only), 'full' (each layer keeps only its input), a number n (the first n decoder layers
    as under 'full', the layers above keep their activations: faster than 'full', more memory) or
    'auto': off on the CPU; on a GPU the option with the least recomputation whose estimated
    activations fit the free memory (see :mod:`acculturate.train.checkpointing`). A run that
    cannot fit fails before its first step, naming the setting to change."""
    memory_budget_gib: float | None = None
    """GPU memory (GiB, weights included) that 'auto' plans the checkpointing for, when it is less
    than what the device has free: to leave room for other processes on the GPU, or to train as a
    smaller card would. A planning budget, not an allocator limit. None: the free memory."""
    offload_checkpointed_inputs: bool = False
    """On a CUDA GPU: checkpointed layers' inputs wait in pinned host memory between forward and
    backward, copied out and back on a side stream behind the compute (:mod:`acculturate.train.offload`),
    so 'auto' can leave more layers unchecked in the same memory (8B at B4 x 2048: 64 MiB a layer).
    Costs host memory and bus traffic; off by default."""

    def __post_init__(self):
        def fail(name, expected):
            raise ValueError(f"TrainConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("epochs", "batch_size", "grad_accum", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        for name in ("eval_every", "save_every", "log_every", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                fail(name, "an integer >= 0")
        if self.log_every == 0:
            fail("log_every", "an integer >= 1")
        for name in ("max_steps", "min_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                fail(name, "None or an integer >= 1")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            fail("lr", "a number > 0")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            fail("weight_decay", "a number >= 0")
        if not (isinstance(self.warmup_ratio, (int, float)) and 0 <= self.warmup_ratio <= 1):
            fail("warmup_ratio", "a number in [0, 1]")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0 <= self.min_lr_ratio <= 1):
            fail("min_lr_ratio", "a number in [0, 1]")
        if self.max_grad_norm is not None and not (isinstance(self.max_grad_norm, (int, float))
                                                   and self.max_grad_norm >= 0):
            fail("max_grad_norm", "None or a number >= 0")
        for name in ("packing", "group_by_length", "offload_checkpointed_inputs"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")
        if self.distributed not in distributed.STRATEGIES:
            fail("distributed", f"one of {list(distributed.STRATEGIES)}")
        check_backends(self.report_to, "TrainConfig.report_to")
        try:
            self.activation_checkpointing = checkpointing.check_policy(self.activation_checkpointing,
                                                                       "TrainConfig.activation_checkpointing")
        except ValueError as e:
            raise ValueError(str(e)) from None
        if self.memory_budget_gib is not None and not (
                isinstance(self.memory_budget_gib, (int, float)) and not isinstance(self.memory_budget_gib, bool)
                and self.memory_budget_gib > 0):
            fail("memory_budget_gib", "None or a number of GiB > 0")


@dataclass
class TrainResult:
    """What a training run did. Losses are token-weighted means of next-token cross-entropy."""
    steps: int
    """Optimizer steps completed in total (resumed ones included)."""
    train_loss: float | None
    """Over the last log window (the last ``log_every`` steps)."""
    eval_loss: float | None
    """At the end; None without eval features."""
    wall_time_s: float
    """Of this call (a resumed call counts only its own time)."""
    peak_memory_bytes: int
    """See ``peak_memory_kind``."""
    peak_memory_kind: str
    """"cuda_max_allocated" (weights included) or "cpu_rss_growth"."""
    trainable_params: int
    total_params: int
    tokens_per_s: float
    """Non-padding tokens through the model per second, this call."""
    label_tokens_per_s: float
    """Target (loss-bearing) tokens per second, this call."""
    log_path: Path
    checkpoint_path: Path
    resumed_from_step: int = 0
    """0 for a fresh run."""
    dropped_features: int = 0
    """Features with no target token left after truncation."""
    history: list[dict] = field(default_factory=list)
    """The rows of metrics.jsonl."""
    activation_checkpointing: str | int = "off"
    """The policy applied (auto resolved): off, mlp, full or the number of layers checkpointed."""
    activation_estimate_bytes: int | None = None
    """Its estimated activations per micro-batch (GPU)."""
    checkpointed_inputs_offloaded: bool = False
    """Whether checkpointed layers' inputs waited in host memory (``offload_checkpointed_inputs``
    with a policy that checkpoints whole layers)."""


def fingerprint(rows: Sequence[dict]) -> str:
    """A hash of the token ids, labels and loss weights of ``rows``: a resumed run must see the same
    data. (Rows without weights hash as before weights existed, so older checkpoints still resume.)"""
    h = hashlib.sha256()
    for r in rows:
        h.update(np.asarray(r["input_ids"], dtype=np.int64).tobytes())
        h.update(np.asarray(r["labels"], dtype=np.int64).tobytes())
        for key in ("weight", "loss_weights"):
            if key in r:
                h.update(key.encode() + np.asarray(r[key], dtype=np.float64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def prepare_rows(features: Sequence[dict], config: TrainConfig) -> tuple[list[dict], int]:
    """Truncate to ``max_length``, drop features left with no target, pack if asked.

    Returns:
        ``(rows, dropped)``: the rows to batch and how many features had no target token.
    """
    kept, dropped = [], 0
    for i, f in enumerate(features):
        check_feature(f, i)
        ids, labels = list(f["input_ids"][:config.max_length]), list(f["labels"][:config.max_length])
        if all(label == -100 for label in labels[1:]):   # label 0 is never a target (no context)
            dropped += 1
            continue
        kept.append({"input_ids": ids, "labels": labels,
                     **{key: f[key] for key in ("group", "weight") if key in f}})
    rows = pack_features(kept, config.max_length) if config.packing else kept
    return rows, dropped


def epoch_batches(rows: Sequence[dict], config: TrainConfig, epoch: int) -> list[list[int]]:
    """The micro-batches (lists of row indices) of ``epoch``: a pure function of seed and epoch."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    if config.group_by_length and not config.packing:
        return length_grouped_batches([len(r["input_ids"]) for r in rows], config.batch_size, generator)
    return shuffled_batches(len(rows), config.batch_size, generator)


def collate(rows: Sequence[dict], config: TrainConfig, pad_id: int) -> dict[str, torch.Tensor]:
    batch = packed_collate(rows, pad_id) if config.packing else pad_collate(rows, pad_id)
    if not config.packing and any("group" in r for r in rows):   # for group DRO (train/regularizers.py)
        batch["group"] = [r.get("group") for r in rows]
    return batch


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, rows: Sequence[dict], config: TrainConfig, pad_id: int,
                  device: torch.device, amp_dtype: torch.dtype | None = None,
                  parallel: distributed.Parallel | None = None) -> float | None:
    """Token-weighted mean loss over ``rows`` (in order), in eval mode; None if there are none.
    Under ``parallel`` each rank scores its share of every batch and the sums are added up."""
    if not rows:
        return None
    par = parallel or distributed.Parallel(model=model)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for start in range(0, len(rows), config.batch_size):
        idx, weight = par.shard(list(range(start, min(start + config.batch_size, len(rows)))))
        batch = collate([rows[i] for i in idx], config, pad_id)
        batch.pop("loss_weights", None)   # held-out loss is every token's plain mean, comparable across runs
        s, k = loss_sum(par.model, batch, device, amp_dtype)
        total, n = total + s.item() * weight, n + k * weight
    total, n = par.all_sum(total), par.all_sum(n)
    model.train(was_training)
    return total / max(n, 1)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts: tied weights once, NF4-quantized weights at their
    logical size (they are buffers, not parameters)."""
    from acculturate.adapters import count_parameters

    return count_parameters(model)


def _check_resume_config(saved: dict, config: TrainConfig, path: Path) -> None:
    for name, value in asdict(config).items():
        if name not in _RESUME_FREE_FIELDS and saved.get(name) != value:
            raise ValueError(f"cannot resume from {path}: TrainConfig.{name} was {saved.get(name)!r} "
                             f"there and is {value!r} now (it changes the run; keep it or start afresh)")


def _mixed_precision(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> torch.dtype | None:
    """For a bf16 model: keep fp32 master copies of the trainable parameters (AdamW updates of
    ~lr * 1 are below bf16's 8-bit mantissa for weights near 1 and would round away) and run the
    forward under bf16 autocast. Returns the autocast dtype, or None for an fp32 model."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float16:
        raise ValueError("training an fp16 model is not supported (it needs loss scaling): load it "
                         "with dtype='bf16' or 'fp32'")
    if dtype != torch.bfloat16:
        return None
    for p in params:
        p.data = p.data.float()
    return torch.bfloat16


class _Reading:
    """Scalars of the device copied to the host without waiting for the device: on CUDA into
    pinned memory with a non-blocking copy and a timing event after it. :meth:`values` waits for
    that event only (by then long passed when the loop reads a step's values one step later), and
    :meth:`seconds_since` is the device's wall time from an earlier reading's event to this one's
    (idle time included, as a host clock would count it). On the CPU the values are read at once
    and the times are the host's."""

    def __init__(self, values: list[torch.Tensor | None], device: torch.device):
        self.missing = [v is None for v in values]
        present = [v.detach().reshape(1).to(device=device, dtype=torch.float64) for v in values if v is not None]
        flat = torch.cat(present) if present else torch.zeros(0, dtype=torch.float64, device=device)
        self.event = None
        if device.type == "cuda":
            self.host = torch.empty(flat.shape, dtype=torch.float64, pin_memory=True)
            self.host.copy_(flat, non_blocking=True)
            self.event = torch.cuda.Event(enable_timing=True)
            self.event.record()
            self.time = None
        else:
            self.host, self.time = flat, time.perf_counter()

    def values(self) -> list[float | None]:
        if self.event is not None:
            self.event.synchronize()
        found = iter(self.host.tolist())
        return [None if missing else next(found) for missing in self.missing]

    def seconds_since(self, earlier: "_Reading") -> float:
        if self.event is not None and earlier.event is not None:
            self.event.synchronize()
            return earlier.event.elapsed_time(self.event) / 1000
        return self.time - earlier.time


def train(model: torch.nn.Module, train_features: Sequence[dict], eval_features: Sequence[dict] | None,
          config: TrainConfig, out_dir: str | Path, *, resume: bool = False, pad_id: int,
          device: str | torch.device | None = None, progress: bool = True, objective=None,
          on_eval: Callable[[int, float], None] | None = None) -> TrainResult:
    """Fine-tune the parameters of ``model`` that require grad on ``train_features``.

    AdamW, linear warm-up then cosine decay, gradient accumulation (the loss of a step is the sum
    over all its micro-batches' target tokens divided by their count, so 2 x 4 equals 1 x 8),
    global-norm clipping, periodic eval and checkpoints, a ``metrics.jsonl`` log.

    Args:
        model: a Hugging Face causal LM, prepared (its trainable parameters have requires_grad).
        train_features: ``{"input_ids", "labels"}`` dicts, labels -100 where no loss is taken.
        eval_features: the same, for the eval loss (None or empty: no eval).
        config: :class:`TrainConfig`.
        out_dir: gets ``metrics.jsonl`` and ``checkpoint/`` (see :mod:`acculturate.train.checkpoint`).
        resume: continue from ``out_dir/checkpoint`` if there is one (same config and data).
        pad_id: token id used for padding.
        device: move the model there first (default: where its parameters are).
        progress: show a tqdm bar with loss and LR.
        objective: a :class:`acculturate.train.regularizers.Objective` (KL to the base, general-data
            mixing, group DRO) that computes each micro-batch's loss instead; None: plain cross-entropy.
        on_eval: called as ``on_eval(step, eval_loss)`` after each periodic eval (``eval_every``),
            once its row is logged; an exception it raises stops the run (hyperparameter search
            prunes a trial this way, see :mod:`acculturate.train.hpo`).
    Returns:
        :class:`TrainResult`. The model is left in eval mode on ``device``, its trainable
        parameters in the model's original dtype. On CUDA the model keeps Liger's fused kernels
        (and, with packing, the varlen attention) afterwards: see :mod:`acculturate.models.kernels`.
    """
    out_dir = Path(out_dir)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    if device.type == "cuda":   # the GPU fast paths (docs/gpu.md); both keep the model's outputs
        use_fused_kernels(model)          # Liger RMSNorm/RoPE/SwiGLU, where liger-kernel is installed
        if config.packing:
            use_varlen_attention(model)   # FlashAttention varlen over the packed examples
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: no parameter of the model requires grad (prepare it first: full, head or lora)")
    model_dtype = next(model.parameters()).dtype
    amp_dtype = _mixed_precision(model, params)
    # Before the first step: choose the checkpointing policy, or fail now if the run cannot fit.
    free = None
    if device.type == "cuda" and config.memory_budget_gib is not None:
        free = min(torch.cuda.mem_get_info(device)[0],
                   int(config.memory_budget_gib * 2 ** 30) - torch.cuda.memory_allocated(device))
    memory_plan = checkpointing.plan(model, config.activation_checkpointing,
                                     config.batch_size * config.max_length, device, free_bytes=free,
                                     offload=config.offload_checkpointed_inputs)
    offloaded = checkpointing.apply(model, memory_plan.policy, offload=config.offload_checkpointed_inputs)
    # Under torchrun: DDP/FSDP2 wrapping, this rank's share of each batch, sums over ranks.
    par = distributed.setup(model, config.distributed, device)
    params = [p for p in model.parameters() if p.requires_grad]   # FSDP2 replaced them with shards
    progress = progress and par.is_main
    if objective is not None and par.world > 1:
        raise ValueError("train: the forgetting controls (KL to the base, general-data mixing, group DRO) "
                         "run in one process only; launch without torchrun/--gpus or turn them off")

    rows, dropped = prepare_rows(train_features, config)
    if not rows:
        raise ValueError(f"train: none of the {len(train_features)} training features has a target "
                         f"token within max_length={config.max_length}")
    if dropped:
        log.warning("dropped %d of %d training features with no target token within max_length=%d",
                    dropped, len(train_features), config.max_length)
    weights = [float(f.get("weight", 1.0)) for f in train_features]
    if any("weight" in f for f in train_features):
        log.info("loss weights from meta.weight on %d of %d training examples (mean %.3f, min %.3g, "
                 "max %.3g)", sum("weight" in f for f in train_features), len(weights),
                 sum(weights) / len(weights), min(weights), max(weights))
    eval_rows, _ = prepare_rows(eval_features or [], config)
    micro_per_epoch = math.ceil(len(rows) / config.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / config.grad_accum)
    total_steps = config.max_steps or max(config.epochs * steps_per_epoch, config.min_steps or 0)

    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    # Fused AdamW on one GPU (one kernel for all parameters, as bench/gpu.py steps); FSDP2's sharded
    # parameters keep the default multi-tensor path.
    fused = {"fused": True} if device.type == "cuda" and par.world == 1 else {}
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, **fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_lambda(
        warmup_steps_for(config.warmup_ratio, total_steps), total_steps, config.min_lr_ratio))

    log_path, ckpt_dir = out_dir / "metrics.jsonl", out_dir / "checkpoint"
    data_hash = fingerprint(rows)
    history: list[dict] = []
    # The current log window and run totals, saved in checkpoints so a resumed log reads the same.
    window = {"loss": 0.0, "targets": 0, "steps": 0}
    start_step = 0
    found = find_checkpoint(ckpt_dir) if resume else None
    if found is not None:
        _check_resume_config(read_state(found)["config"], config, found)
        ckpt = load_checkpoint(found, model=model, optimizer=optimizer, scheduler=scheduler)
        if ckpt.progress["data"] != data_hash:
            raise ValueError(f"cannot resume from {found}: the training features differ from the run "
                             f"that wrote it (data hash {ckpt.progress['data']} vs {data_hash})")
        start_step, window, history = ckpt.progress["step"], ckpt.progress["window"], ckpt.metrics
        if objective is not None:
            objective.load_state_dict(ckpt.progress.get("objective"))
        log.info("resuming from %s at step %d of %d", found, start_step, total_steps)
    else:
        torch.manual_seed(config.seed)
    if par.is_main:
        write_jsonl(log_path, history)   # drops rows a killed run logged after its last checkpoint
    # TensorBoard / MLflow / wandb (train.report_to), on the main process only; closed on any exit.
    tracker = Tracker(out_dir, config.report_to if par.is_main else [])
    tracker.params({"train": asdict(config), **job_config(out_dir)})

    def checkpoint(step: int) -> None:
        epoch, done = divmod(step, steps_per_epoch)
        progress_state = {"step": step, "epoch": epoch, "micro_batch": done * config.grad_accum,
                          "total_steps": total_steps, "window": window, "data": data_hash}
        if objective is not None:
            progress_state["objective"] = objective.state_dict()
        save_checkpoint(ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                        progress=progress_state, config=asdict(config), metrics=history, write=par.is_main)

    tokens_seen = labels_seen = 0
    last_train_loss = None
    bar = tqdm(total=total_steps, initial=start_step, disable=not progress, desc="train", unit="step")
    model.train()
    batches, batches_epoch = None, -1
    t0 = time.perf_counter()
    window_tokens = window_labels = 0
    # The step's loss and gradient norm stay on the device; a logged row reads them one step later,
    # when the device has long passed them (see _Reading): no step waits for the GPU to drain.
    window_loss = torch.tensor(float(window["loss"]), dtype=torch.float64, device=device)
    window_start = _Reading([], device)   # marks the start of the first log window
    pending: dict | None = None           # the last logged row, its device values not read yet

    def flush() -> None:
        nonlocal pending, last_train_loss
        if pending is None:
            return
        p, pending = pending, None
        loss, grad_norm = p["reading"].values()
        seconds = max(p["reading"].seconds_since(p["start"]), 1e-9)
        last_train_loss = loss / max(p["targets"], 1)
        row = {"step": p["step"], "epoch": p["epoch"], "loss": round(last_train_loss, 6), "lr": p["lr"],
               "grad_norm": grad_norm, "tokens_per_s": round(p["tokens"] / seconds, 2),
               "label_tokens_per_s": round(p["labels"] / seconds, 2), **p["extra"]}
        history.append(row)
        if par.is_main:
            append_jsonl(log_path, row)
        tracker.metrics(row)
        bar.set_postfix(loss=f"{last_train_loss:.4f}", lr=f"{p['lr']:.2e}")

    with tracker:
        with PeakMemory(device) as memory:
            for step in range(start_step, total_steps):
                epoch, k = divmod(step, steps_per_epoch)
                if epoch != batches_epoch:
                    batches, batches_epoch = epoch_batches(rows, config, epoch), epoch
                group_idx = batches[k * config.grad_accum:(k + 1) * config.grad_accum]
                shards = [par.shard(idx) for idx in group_idx]   # one process: (idx, 1.0)
                group = [collate([rows[i] for i in idx], config, pad_id) for idx, _ in shards]
                window_tokens += sum(len(rows[i]["input_ids"]) for idx in group_idx for i in idx)
                n_targets = int(par.all_sum(sum(count_targets(b) * w for b, (_, w) in zip(group, shards))))
                lr = scheduler.get_last_lr()[0]
                optimizer.zero_grad(set_to_none=True)
                step_loss = torch.zeros((), dtype=torch.float64, device=device)
                if objective is not None:
                    objective.start_step(step, [[rows[i] for i in idx] for idx in group_idx])
                for j, (batch, (_, weight)) in enumerate(zip(group, shards)):
                    if objective is None:
                        with par.no_sync(last=j == len(group) - 1):
                            s, _ = loss_sum(par.model, batch, device, amp_dtype)
                            (s * (weight * par.grad_scale) / n_targets).backward()
                    else:   # regularised loss (one process only, checked above); returns the plain loss sum
                        s = objective.backward(model, batch, n_targets, j, len(group), device, amp_dtype)
                    step_loss = step_loss + s.detach().to(torch.float64) * weight
                if par.world > 1:
                    step_loss = torch.tensor(par.all_sum(step_loss.item()), dtype=torch.float64, device=device)
                flush()   # the last logged row: its values were ready before this step's work was queued
                grad_norm = None
                if config.max_grad_norm:
                    norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    grad_norm = norm.detach() if par.world == 1 else distributed.full_tensor(norm)
                optimizer.step()
                scheduler.step()
                window_loss = window_loss + step_loss
                window["targets"] += n_targets
                window["steps"] += 1
                window_labels += n_targets
                bar.update(1)

                done = step + 1
                eval_loss = None
                if config.eval_every and done % config.eval_every == 0 and done < total_steps:
                    eval_loss = evaluate_loss(model, eval_rows, config, pad_id, device, amp_dtype, par)
                if done % config.log_every == 0 or done == total_steps or eval_loss is not None:
                    extra = {} if eval_loss is None else {"eval_loss": round(eval_loss, 6)}
                    if objective is not None:
                        extra.update(objective.log_fields())
                    reading = _Reading([window_loss, grad_norm], device)
                    pending = {"step": done, "epoch": round(done / steps_per_epoch, 4), "lr": lr,
                               "targets": window["targets"], "tokens": window_tokens, "labels": window_labels,
                               "extra": extra, "reading": reading, "start": window_start}
                    tokens_seen, labels_seen = tokens_seen + window_tokens, labels_seen + window_labels
                    window = {"loss": 0.0, "targets": 0, "steps": 0}
                    window_loss = torch.zeros((), dtype=torch.float64, device=device)
                    window_tokens = window_labels = 0
                    window_start = reading
                if eval_loss is not None and on_eval is not None:
                    flush()
                    on_eval(done, eval_loss)
                if config.save_every and done % config.save_every == 0 and done < total_steps:
                    flush()
                    window["loss"] = float(window_loss)
                    checkpoint(done)
            flush()
            bar.close()
            if start_step < total_steps:
                checkpoint(total_steps)
            final_eval = evaluate_loss(model, eval_rows, config, pad_id, device, amp_dtype, par)
        if final_eval is not None:   # logged after the final checkpoint: a resume at the end re-evaluates
            row = {"step": total_steps, "eval_loss": round(final_eval, 6)}
            history.append(row)
            if par.is_main:
                append_jsonl(log_path, row)
            tracker.metrics(row)
        wall = time.perf_counter() - t0
        checkpointing.remove(model, memory_plan.policy)
        if amp_dtype is not None:
            for p in params:
                p.data = p.data.to(model_dtype)
        model.eval()
        trainable, total = count_params(model)
        if last_train_loss is None and history:   # resumed at the very end: report the logged value
            last_train_loss = next((r["loss"] for r in reversed(history) if "loss" in r), None)
        tracker.metrics({"peak_memory_mib": memory.peak_bytes / 2**20, "wall_time_s": wall,
                         "run_tokens_per_s": tokens_seen / wall if wall > 0 else 0.0,
                         "trainable_params": trainable}, step=total_steps)
        return TrainResult(
            steps=total_steps, train_loss=last_train_loss, eval_loss=final_eval, wall_time_s=wall,
            peak_memory_bytes=memory.peak_bytes, peak_memory_kind=memory.kind,
            trainable_params=trainable, total_params=total,
            tokens_per_s=tokens_seen / wall if wall > 0 else 0.0,
            label_tokens_per_s=labels_seen / wall if wall > 0 else 0.0,
            log_path=log_path, checkpoint_path=ckpt_dir, resumed_from_step=start_step,
            dropped_features=dropped, history=history, activation_checkpointing=memory_plan.policy,
            activation_estimate_bytes=memory_plan.activation_bytes,
            checkpointed_inputs_offloaded=offloaded)


def job_config(out_dir: Path) -> dict:
    """The job's whole configuration, when the job saved it beside the training folder
    (``<run>/config.json``, as train/adapt/compare write it): logged to the trackers with TrainConfig."""
    path = Path(out_dir).parent / "config.json"
    if Path(out_dir).name != "train" or not path.is_file():
        return {}
    import json

    try:
        return {"job": json.loads(path.read_text())}
    except ValueError:
        return {}
