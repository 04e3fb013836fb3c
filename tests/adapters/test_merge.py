"""export_merged on a tiny Llama: the saved directory is a plain model with the adapted outputs."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from acculturate.adapters.lora import LoRAConfig, apply_lora, lora_modules
from acculturate.adapters.merge import export_merged, merge_adapter_dir
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


def _randomize_b(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_modules(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


def test_merge_adapter_dir_qlora_merges_onto_the_nf4_weights(make_llama, tokenizer, tiny_ids, tmp_path):
    """A QLoRA adapter merged with quantized_base=True (CLI: --qlora) reloads as a plain model with
    the QLoRA model's logits; merged onto the unquantized W it would not."""
    from acculturate.adapters.peft_format import save_adapter
    from acculturate.adapters.qlora import apply_qlora
    from acculturate.cli import main

    make_llama().save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")   # load() wants one; the tiny model reads only ids
    config = LoRAConfig(r=4, alpha=8, dropout=0.0)
    model = make_llama()
    apply_qlora(model, config)
    _randomize_b(model)
    with torch.no_grad():
        expected = model(tiny_ids).logits
    save_adapter(model, tmp_path / "adapter", str(tmp_path / "base"), config)

    assert main(["merge", "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "merged"), "--qlora"]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any(".lora_" in k or "base_layer" in k or "packed" in k for k in reloaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tiny_ids).logits, expected, atol=1e-5, rtol=0)

    plain = merge_adapter_dir(None, tmp_path / "adapter", tmp_path / "plain")   # base recorded in the adapter
    with torch.no_grad():
        onto_w = AutoModelForCausalLM.from_pretrained(plain).eval()(tiny_ids).logits
    assert (onto_w - expected).abs().max() > 1e-3


def test_export_merged_dequantizes_to_the_models_dtype(make_llama, tiny_ids, tmp_path):
    from acculturate.adapters.qlora import apply_qlora

    model = make_llama().to(torch.bfloat16)
    apply_qlora(model, LoRAConfig(r=4, alpha=8, dropout=0.0))
    _randomize_b(model)
    with torch.no_grad():
        expected = model(tiny_ids).logits.float()
    export_merged(model, None, tmp_path / "merged")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_ids).logits.float(), expected, atol=0.05, rtol=0)


def test_prompt_tuned_models_and_adapters_are_not_merged(tiny_llama, tmp_path):
    import pytest

    from acculturate.adapters.peft_format import AdapterError, save_adapter
    from acculturate.adapters.prompt_tuning import PromptTuningConfig, apply_prompt_tuning

    config = PromptTuningConfig(num_virtual_tokens=2)
    apply_prompt_tuning(tiny_llama, config)
    save_adapter(tiny_llama, tmp_path / "pt", "tiny", config)
    with pytest.raises(ValueError, match="prompt-tuned model cannot be merged"):
        export_merged(tiny_llama, None, tmp_path / "merged")
    with pytest.raises(AdapterError, match="only LoRA adapters can be merged"):
        merge_adapter_dir("tiny", tmp_path / "pt", tmp_path / "merged")
