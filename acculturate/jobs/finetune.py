"""`acculturate train`: read data, split, tokenize, prepare a fine-tuning method, train, save.

The pieces (``build_datasets``, ``prepare_and_train``, ``save_trained``) are reused by ``adapt``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.adapters import LoRAConfig, PromptTuningConfig, export_merged, prepare_model, save_adapter
from acculturate.config_loading import ConfigError, to_dict
from acculturate.data import Example, tokenize_examples, train_test_split
from acculturate.io import write_json, write_text
from acculturate.jobs.sources import DataSource, read_source
from acculturate.models import DEFAULT_MODEL, LoadedModel, load
from acculturate.train import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """Which model to adapt and where it runs."""

    name: str = DEFAULT_MODEL     # 'smollm2-135m', an HF model directory or a .gguf file
    device: str | None = None     # default: a GPU if present, else CPU
    dtype: str | None = None      # default: bf16 on a GPU that has it, else fp32


@dataclass
class DataConfig:
    """Training data and how it becomes token sequences."""

    sources: list[DataSource] = field(default_factory=list)
    template: str = "chat"            # 'chat' (the model's chat template) or 'alpaca'
    system: str | None = None         # a system persona put in every prompt, e.g. a region's
    max_length: int = 256             # tokens per example (longer ones are truncated)
    test_fraction: float = 0.1        # held apart for evaluation
    stratify: str | None = None       # a meta field to stratify the split by (e.g. 'country')
    seed: int = 0                     # split and sampling seed
    skip_invalid: bool = False        # skip malformed rows (counted) instead of stopping

    def __post_init__(self):
        if self.template not in ("chat", "alpaca"):
            raise ValueError(f"template: expected 'chat' or 'alpaca', got {self.template!r}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction: expected a number in [0, 1), got {self.test_fraction}")
        if self.max_length < 8:
            raise ValueError(f"max_length: expected at least 8 tokens, got {self.max_length}")


@dataclass
class MethodConfig:
    """The fine-tuning method: 'full', 'head' (output head or last blocks), 'lora', 'qlora' (LoRA
    over NF4-quantized weights) or 'prompt_tuning' (learned virtual tokens, the model frozen)."""

    name: str = "lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)   # 'lora' and 'qlora'
    head_blocks: int = 0   # 'head': also train the last N transformer blocks (0: only the output head)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)   # 'prompt_tuning'

    def __post_init__(self):
        from acculturate.adapters import METHODS

        if self.name not in METHODS:
            raise ValueError(f"name: expected one of {sorted(METHODS)}, got {self.name!r}")


@dataclass
class FinetuneConfig:
    """`acculturate train CONFIG`."""

    name: str = "finetune"
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(
        sources=[DataSource(path="shipped:instructions/instruction-data.json")]))
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Datasets:
    train_examples: list[Example]
    test_examples: list[Example]
    train_features: list[dict]
    test_features: list[dict]


def split_examples(examples: list[Example], data: DataConfig) -> tuple[list[Example], list[Example]]:
    if data.test_fraction == 0:
        return examples, []
    return train_test_split(examples, test_fraction=data.test_fraction, seed=data.seed, stratify=data.stratify)


def read_sources(data: DataConfig, base_dir: Path | None = None) -> list[Example]:
    """Every example of ``data.sources``, in order (each source's ``limit`` seeded by ``data.seed``)."""
    examples = [ex for src in data.sources
                for ex in read_source(src, seed=data.seed, skip_invalid=data.skip_invalid, base_dir=base_dir)]
    if not examples:
        raise ConfigError("data.sources: no examples were read")
    return examples


def tokenize(examples: list[Example], tokenizer, data: DataConfig) -> list[dict]:
    return tokenize_examples(examples, tokenizer, data.template, data.max_length, system=data.system,
                             progress=bool(examples))


def run_dir(output_dir: str, name: str) -> Path:
    return Path(output_dir) / name


def check_run_dir(out: Path, config, overwrite: bool) -> None:
    """A run directory holds one configuration. Re-running the same config continues it; a different
    config in the same directory is refused unless ``overwrite`` (which deletes the old run), so no
    finished run is mixed with another's outputs."""
    saved = out / "config.json"
    if not saved.exists():
        return
    if overwrite:
        shutil.rmtree(out)
        return
    old = json.loads(saved.read_text())
    new = json.loads(json.dumps(to_dict(config)))
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"{out} already holds a run with a different configuration (differs in: "
                          f"{', '.join(changed)}). Use another name, or --restart to replace it.")


def prepare_and_train(loaded: LoadedModel, method: MethodConfig, train_cfg: TrainConfig,
                      datasets: Datasets, out: Path, resume: bool, on_eval=None) -> tuple[dict, TrainResult]:
    import torch

    torch.manual_seed(train_cfg.seed)   # the same adapter initialisation in every run and on every rank
    summary = prepare_model(loaded.model, method.name, lora=method.lora, head_blocks=method.head_blocks,
                            prompt_tuning=method.prompt_tuning, tokenizer=loaded.tokenizer)
    log.info("method %s: %s trainable of %s parameters (%.3f%%)", method.name,
             f"{summary['trainable']:,}", f"{summary['total']:,}", summary["percent"])
    result = train(loaded.model, datasets.train_features, datasets.test_features or None, train_cfg,
                   out / "train", resume=resume, pad_id=loaded.tokenizer.pad_token_id, on_eval=on_eval)
    return summary, result


def save_trained(loaded: LoadedModel, method: MethodConfig, out: Path, base_name: str) -> Path:
    """LoRA, QLoRA (a plain LoRA adapter; merge it with ``acculturate merge --qlora``) and prompt
    tuning -> a PEFT-format adapter in ``out/adapter``; full/head -> a plain HF model in ``out/model``."""
    if method.name in ("lora", "qlora"):
        save_adapter(loaded.model, out / "adapter", base_name, method.lora)
        return out / "adapter"
    if method.name == "prompt_tuning":
        save_adapter(loaded.model, out / "adapter", base_name, method.prompt_tuning)
        return out / "adapter"
    export_merged(loaded.model, loaded.tokenizer, out / "model")
    return out / "model"


def _unsharded(loaded: LoadedModel, method: MethodConfig, model: ModelConfig, main: bool) -> LoadedModel | None:
    """After FSDP training: the trained weights gathered from every rank into a plain copy of the
    model on rank 0 (None on the other ranks), which ``save_trained`` saves as usual."""
    from acculturate.train.distributed import full_trainable_state

    state = full_trainable_state(loaded.model)   # collective: every rank takes part
    if not main:
        return None
    plain = load(model.name, device="cpu", dtype=model.dtype)
    prepare_model(plain.model, method.name, lora=method.lora, head_blocks=method.head_blocks,
                  prompt_tuning=method.prompt_tuning, tokenizer=plain.tokenizer)
    params = dict(plain.model.named_parameters())
    for name, tensor in state.items():
        params[name].data.copy_(tensor.to(params[name].dtype))
    return plain


def run_finetune(config: FinetuneConfig, *, resume: bool = False, overwrite: bool = False,
                 base_dir: Path | None = None) -> dict:
    """Run ``acculturate train``; returns the metrics written to ``<run>/metrics.json``.

    Under ``torchrun`` every process runs this; they train together (``train.distributed``: DDP or
    FSDP2) and rank 0 alone writes the run folder."""
    from acculturate.train import distributed

    rank = 0
    if distributed.world_size_from_env() > 1:
        rank, _, device = distributed.init_from_env()
        config.model.device = str(device)
    out = run_dir(config.output_dir, config.name)
    if rank == 0:
        check_run_dir(out, config, overwrite)
        write_json(out / "config.json", to_dict(config))
    distributed.Parallel(rank=rank, world=distributed.world_size_from_env()).barrier()
    loaded = load(config.model.name, device=config.model.device, dtype=config.model.dtype)
    examples = read_sources(config.data, base_dir)
    train_ex, test_ex = split_examples(examples, config.data)
    datasets = Datasets(train_ex, test_ex, tokenize(train_ex, loaded.tokenizer, config.data),
                        tokenize(test_ex, loaded.tokenizer, config.data))
    summary, result = prepare_and_train(loaded, config.method, config.train, datasets, out, resume)
    if distributed.world_size_from_env() > 1 and config.train.distributed == "fsdp":
        loaded = _unsharded(loaded, config.method, config.model, rank == 0)
    if rank != 0:
        return {"rank": rank, "train": to_dict(result)}
    saved = save_trained(loaded, config.method, out, config.model.name)
    metrics = {"method": config.method.name, "parameters": summary, "train": to_dict(result),
               "saved": str(saved), "train_examples": len(train_ex), "test_examples": len(test_ex)}
    write_json(out / "metrics.json", metrics)
    write_text(out / "README.md", f"# {config.name}\n\nSaved: `{saved}`\n\nSee metrics.json.\n")
    return metrics
