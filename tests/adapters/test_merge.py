"""export_merged on a tiny Llama: the saved directory is a plain model with the adapted outputs."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from acculturate.adapters.lora import LoRAConfig, apply_lora, lora_modules
from acculturate.adapters.merge import export_merged
from acculturate.adapters.methods import prepare_model


def test_export_merged_reloads_with_same_logits(tiny_llama, tiny_ids, tmp_path):
    apply_lora(tiny_llama, LoRAConfig(r=4, alpha=8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_modules(tiny_llama).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)
    expected = tiny_llama(tiny_ids).logits
    out = export_merged(tiny_llama, None, tmp_path / "merged")
    assert not lora_modules(tiny_llama)  # merged in place, outputs unchanged
    torch.testing.assert_close(tiny_llama(tiny_ids).logits, expected, atol=1e-5, rtol=0)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(reloaded(tiny_ids).logits, expected, atol=1e-5, rtol=0)
    assert not any(".lora_" in k or "base_layer" in k for k in reloaded.state_dict())


def test_export_keeps_an_untied_head_untied(tiny_llama, tiny_ids, tmp_path):
    prepare_model(tiny_llama, "head")
    with torch.no_grad():
        tiny_llama.lm_head.weight.add_(0.5)  # a trained head, different from the embedding
    expected = tiny_llama(tiny_ids).logits
    out = export_merged(tiny_llama, None, tmp_path / "merged")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.lm_head.weight is not reloaded.model.embed_tokens.weight
    torch.testing.assert_close(reloaded(tiny_ids).logits, expected, atol=1e-5, rtol=0)
