"""`acculturate train`: read data, split, tokenize, prepare a fine-tuning method, train, save.

The pieces (``build_datasets``, ``prepare_and_train``, ``save_trained``) are reused by ``adapt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.adapters import LoRAConfig, PromptTuningConfig, export_merged, prepare_model, save_adapter
from acculturate.config_loading import ConfigError, to_dict
from acculturate.data import Example, tokenize_examples, train_test_split
from acculturate.data.sources import DataConfig, DataSource, read_sources, text_datasets
from acculturate.io import write_json, write_text
from acculturate.jobs import cpt
from acculturate.jobs.common import JobConfig, ModelConfig, open_run, run_dir
from acculturate.models import LoadedModel, load
from acculturate.train import TrainConfig, TrainResult, train
from acculturate.train.regularizers import ForgettingConfig, Objective, frozen_reference
from acculturate.train.tracking import log_report

log = logging.getLogger(__name__)


@dataclass
class MethodConfig:
    """The fine-tuning method: 'full', 'head' (output head or last blocks), 'lora', 'qlora' (LoRA
    over NF4-quantized weights) or 'prompt_tuning' (learned virtual tokens, the model frozen)."""

    name: str = "lora"
    """'full', 'head', 'lora', 'qlora' or 'prompt_tuning' (adapters.METHODS)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """'lora' and 'qlora'."""
    head_blocks: int = 0
    """'head': also train the last N transformer blocks (0: only the output head)."""
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    """'prompt_tuning'."""
    train_new_tokens: bool = True
    """Lora/qlora on a model from `acculturate tokenizer extend`: also train the added tokens' embedding rows
    (saved in the adapter as PEFT's trainable_token_indices). full/head train them anyway."""

    def __post_init__(self):
        from acculturate.adapters import METHODS

        if self.name not in METHODS:
            raise ValueError(f"name: expected one of {sorted(METHODS)}, got {self.name!r}")


@dataclass
class FinetuneConfig(JobConfig):
    """`acculturate train CONFIG`."""

    name: str = "finetune"
    data: DataConfig = field(default_factory=lambda: DataConfig(
        sources=[DataSource(path="shipped:instructions/instruction-data.json")]))
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    """Specialise without forgetting: KL to the base, general-data mixing, group DRO (off by default), and the
    general data they use and the report measures."""
    general: cpt.GeneralConfig = field(default_factory=cpt.GeneralConfig)

    def __post_init__(self):
        if self.forgetting.group_dro and self.train.packing:
            raise ValueError("forgetting.group_dro: needs train.packing false (a packed row mixes groups)")


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


def tokenize(examples: list[Example], tokenizer, data: DataConfig) -> list[dict]:
    return tokenize_examples(examples, tokenizer, data.template, data.max_length, system=data.system,
                             progress=bool(examples), loss_turns=data.loss_turns)


def prepare_and_train(loaded: LoadedModel, method: MethodConfig, train_cfg: TrainConfig,
                      datasets: Datasets, out: Path, resume: bool, forgetting: ForgettingConfig | None = None,
                      general_features: list[dict] | None = None, on_eval=None) -> tuple[dict, TrainResult]:
    import torch

    torch.manual_seed(train_cfg.seed)   # the same adapter initialisation in every run and on every rank
    reference = None
    if forgetting is not None and forgetting.kl_weight > 0 and method.name not in ("lora", "qlora"):
        reference = frozen_reference(loaded.model)   # no adapter to switch off: keep a frozen base copy
    summary = prepare_model(loaded.model, method.name, lora=method.lora, head_blocks=method.head_blocks,
                            prompt_tuning=method.prompt_tuning, tokenizer=loaded.tokenizer)
    summary = _train_new_token_rows(loaded, method, summary)
    objective = None
    if forgetting is not None and forgetting.active:
        if forgetting.group_dro and train_cfg.packing:   # FinetuneConfig checks this at load too
            raise ConfigError("forgetting.group_dro: needs train.packing false (a packed row mixes groups)")
        groups = list(dict.fromkeys(f["group"] for f in datasets.train_features if "group" in f))
        objective = Objective(forgetting, general_features or [], groups, reference=reference,
                              max_length=train_cfg.max_length, seed=train_cfg.seed,
                              pad_id=loaded.tokenizer.pad_token_id)
    log.info("method %s: %s trainable of %s parameters (%.3f%%)", method.name,
             f"{summary['trainable']:,}", f"{summary['total']:,}", summary["percent"])
    result = train(loaded.model, datasets.train_features, datasets.test_features or None, train_cfg,
                   out / "train", resume=resume, pad_id=loaded.tokenizer.pad_token_id, objective=objective,
                   on_eval=on_eval)
    return summary, result


def _train_new_token_rows(loaded: LoadedModel, method: MethodConfig, summary: dict) -> dict:
    """LoRA/QLoRA on a vocabulary-extended model: make the added tokens' rows trainable."""
    from acculturate.adapters import count_parameters
    from acculturate.adapters.token_rows import apply_token_rows
    from acculturate.models.vocab import read_new_token_ids

    new_ids = read_new_token_ids(loaded.path)
    if not (new_ids and method.train_new_tokens and method.name in ("lora", "qlora")):
        return summary
    apply_token_rows(loaded.model, new_ids)
    trainable, total = count_parameters(loaded.model)
    log.info("training the %d added tokens' embedding rows beside the adapter", len(new_ids))
    return {**summary, "trainable": trainable, "total": total, "new_token_rows": len(new_ids),
            "percent": round(100.0 * trainable / total, 4)}


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
    out = open_run(config, overwrite) if rank == 0 else run_dir(config.output_dir, config.name)
    distributed.Parallel(rank=rank, world=distributed.world_size_from_env()).barrier()
    loaded = load(config.model.name, device=config.model.device, dtype=config.model.dtype)
    if config.data.kind == "text":
        try:
            train_ex, test_ex, train_f, test_f = text_datasets(config.data, loaded.tokenizer,
                                                                   config.data.max_length, base_dir)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        datasets = Datasets(train_ex, test_ex, train_f, test_f)
    else:
        datasets = _example_datasets(config, loaded, base_dir)
    train_ex, test_ex = datasets.train_examples, datasets.test_examples
    report = config.general.report
    if report is None:
        report = config.data.kind == "text" or config.forgetting.active
    general = None
    if report or config.forgetting.needs_general:
        general = cpt.general_data(config.general, loaded.tokenizer, seed=config.data.seed, base_dir=base_dir)
    text_docs = (test_ex, train_ex) if config.data.kind == "text" else ([], [])
    text_test = datasets.test_features if config.data.kind == "text" else []

    reference: dict = {}   # the untrained model's general log-probs, for the KL in the report

    def measure() -> dict:
        return cpt.measure(loaded, config.train, text_test, *text_docs, general if report else None,
                           config.general, reference)

    before = measure() if report and rank == 0 else {}
    summary, result = prepare_and_train(loaded, config.method, config.train, datasets, out, resume,
                                        forgetting=config.forgetting,
                                        general_features=general.train_features if general else None)
    if distributed.world_size_from_env() > 1 and config.train.distributed == "fsdp":
        loaded = _unsharded(loaded, config.method, config.model, rank == 0)
    if rank != 0:
        return {"rank": rank, "train": to_dict(result)}
    after = measure() if report else {}
    saved = save_trained(loaded, config.method, out, config.model.name)
    metrics = {"method": config.method.name, "parameters": summary, "train": to_dict(result),
               "saved": str(saved), "train_examples": len(train_ex), "test_examples": len(test_ex)}
    if report:
        metrics.update(data_kind=config.data.kind, before=before, after=after)
    write_json(out / "metrics.json", metrics)
    readme = f"# {config.name}\n\nSaved: `{saved}`\n\nSee metrics.json.\n"
    if report:
        readme = cpt.render_report(config.name, config.method.name, before, after, metrics["train"])
        readme += f"\nSaved: `{saved}`. All numbers: metrics.json.\n"
        write_text(out / "report.md", readme)
    write_text(out / "README.md", readme)
    log_report(out / "train", config.train.report_to, [out / "report.md", out / "metrics.json"], metrics)
    return metrics


def _example_datasets(config: FinetuneConfig, loaded: LoadedModel, base_dir: Path | None) -> Datasets:
    examples = read_sources(config.data, base_dir)
    train_ex, test_ex = split_examples(examples, config.data)
    if not config.data.group_by:
        return Datasets(train_ex, test_ex, tokenize(train_ex, loaded.tokenizer, config.data),
                        tokenize(test_ex, loaded.tokenizer, config.data))
    features, dropped = [], []
    for exs in (train_ex, test_ex):
        lost: list[int] = []
        feats = tokenize_examples(exs, loaded.tokenizer, config.data.template, config.data.max_length,
                                  system=config.data.system, progress=bool(exs), dropped=lost,
                                  loss_turns=config.data.loss_turns)
        cpt.attach_groups(exs, feats, config.data.group_by, lost)
        features.append(feats)
    return Datasets(train_ex, test_ex, *features)
