"""Fine-tuning methods on a tiny tied-embedding Llama: what trains, and that step 0 is unchanged."""

from __future__ import annotations

import pytest
import torch

from acculturate.adapters.lora import LoRAConfig, lora_modules
from acculturate.adapters.nf4 import bits_per_weight
from acculturate.adapters.methods import METHODS, count_parameters, prepare_model, untie_output_head


def _step(model, ids):
    """One real SGD step on the LM loss; returns the parameters before it, by name."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(ids, labels=ids).loss.backward()
    opt.step()
    return before


def _changed(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_registry_is_the_five_methods():
    assert sorted(METHODS) == ["full", "head", "lora", "prompt_tuning", "qlora"]


def test_count_parameters_counts_tied_weights_once(tiny_llama):
    total = sum(p.numel() for p in tiny_llama.parameters())
    assert tiny_llama.lm_head.weight is tiny_llama.model.embed_tokens.weight
    assert count_parameters(tiny_llama) == (total, total)
    assert total == sum(p.numel() for n, p in tiny_llama.named_parameters(remove_duplicate=False)) - 64 * 16


def test_full_trains_everything(tiny_llama):
    for p in tiny_llama.parameters():
        p.requires_grad_(False)
    summary = prepare_model(tiny_llama, "full")
    assert summary["trainable"] == summary["total"] and summary["percent"] == 100.0


def test_head_unties_and_trains_only_the_head(tiny_llama, tiny_ids):
    expected = tiny_llama(tiny_ids).logits
    summary = prepare_model(tiny_llama, "head")
    assert tiny_llama.lm_head.weight is not tiny_llama.model.embed_tokens.weight
    assert tiny_llama.config.tie_word_embeddings is False
    assert summary["trainable"] == 64 * 16
    assert summary["total"] == count_parameters(tiny_llama)[1]
    assert torch.equal(tiny_llama(tiny_ids).logits, expected)  # untying changes nothing at step 0
    before = _step(tiny_llama, tiny_ids)
    assert _changed(tiny_llama, before) == {"lm_head.weight"}  # the embedding did not move


def test_head_blocks_adds_last_blocks_and_final_norm(tiny_llama, tiny_ids):
    summary = prepare_model(tiny_llama, "head", head_blocks=1)
    trainable = {n for n, p in tiny_llama.named_parameters() if p.requires_grad}
    assert "lm_head.weight" in trainable and "model.norm.weight" in trainable
    assert any(n.startswith("model.layers.1.") for n in trainable)
    assert not any(n.startswith(("model.layers.0.", "model.embed_tokens")) for n in trainable)
    assert summary["trainable"] == sum(p.numel() for n, p in tiny_llama.named_parameters() if n in trainable)
    before = _step(tiny_llama, tiny_ids)
    assert _changed(tiny_llama, before) <= trainable and "lm_head.weight" in _changed(tiny_llama, before)


def test_lora_method(tiny_llama):
    summary = prepare_model(tiny_llama, "lora", lora=LoRAConfig(r=2, targets=("q_proj", "v_proj")))
    assert len(lora_modules(tiny_llama)) == 4
    # per layer: q (16->16) and v (16->8, 2 kv heads of 4): A is (2, 16), B is (out, 2)
    assert summary["trainable"] == 2 * ((16 * 2 + 2 * 16) + (16 * 2 + 2 * 8))
    assert 0 < summary["percent"] < 100
    assert "bits_per_weight" not in summary


def test_qlora_method_counts_quantized_weights(tiny_llama, make_llama):
    """QLoRA's total counts every weight once: NF4 weights (buffers) at their logical in x out size,
    so it equals LoRA's total on the same model; bits_per_weight is reported."""
    lora_cfg = LoRAConfig(r=2, targets=("q_proj", "v_proj"))
    lora = prepare_model(make_llama(), "lora", lora=lora_cfg)
    summary = prepare_model(tiny_llama, "qlora", lora=lora_cfg)
    assert (summary["trainable"], summary["total"]) == (lora["trainable"], lora["total"])
    assert sum(p.numel() for p in tiny_llama.parameters()) == lora["total"] - 2 * (16 * 16 + 8 * 16)
    # 15 bits here: a 16x16 layer pays a whole 256-scale block and the mean; SmolLM2 gets 4.127
    assert summary["bits_per_weight"] == round(bits_per_weight(tiny_llama), 4) > 4


def test_untie_is_a_no_op_when_untied(make_llama):
    assert untie_output_head(make_llama(tie=False)) is False


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "dora"}, r"method 'dora' is not one of \['full', 'head', 'lora', 'prompt_tuning', 'qlora'\]"),
    ({"method": "head", "head_blocks": -1}, "head_blocks must be a non-negative integer"),
    ({"method": "head", "head_blocks": 3}, "head_blocks=3 but the model has only 2 blocks"),
    ({"method": "lora", "head_blocks": 1}, "only applies to method 'head'"),
])
def test_bad_arguments_are_named(tiny_llama, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare_model(tiny_llama, **kwargs)
