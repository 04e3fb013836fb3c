"""Adapters: which parameters train (full, head, LoRA, QLoRA, prompt tuning), LoRA layers, NF4,
prompt tuning, PEFT-format IO, merging."""

from acculturate.adapters.lora import (
    LoRAConfig, LoRALinear, apply_lora, lora_modules, lora_state_dict, merge_lora,
)
from acculturate.adapters.merge import export_merged, merge_adapter_dir
from acculturate.adapters.methods import METHODS, count_parameters, prepare_model, untie_output_head
from acculturate.adapters.nf4 import bits_per_weight
from acculturate.adapters.peft_format import AdapterError, load_adapter, read_adapter_config, save_adapter
from acculturate.adapters.prompt_tuning import (
    PromptTuningConfig, apply_prompt_tuning, prompt_embedding, remove_prompt_tuning,
)
from acculturate.adapters.qlora import apply_qlora, merge_qlora
from acculturate.adapters.registry import (
    COMBINATIONS, Adapter, AdapterRegistry, UnknownAdapterError, adapter_registry, load_adapters, use_adapter,
)

__all__ = [
    "METHODS", "AdapterError", "LoRAConfig", "LoRALinear", "apply_lora", "count_parameters",
    "export_merged", "load_adapter", "lora_modules", "lora_state_dict", "merge_adapter_dir", "merge_lora",
    "prepare_model", "read_adapter_config", "save_adapter", "untie_output_head",
    # QLoRA and prompt tuning
    "PromptTuningConfig", "apply_prompt_tuning", "apply_qlora", "bits_per_weight", "merge_qlora",
    "prompt_embedding", "remove_prompt_tuning",
    # many adapters on one base (registry.py)
    "COMBINATIONS", "Adapter", "AdapterRegistry", "UnknownAdapterError", "adapter_registry", "load_adapters",
    "use_adapter",
]
