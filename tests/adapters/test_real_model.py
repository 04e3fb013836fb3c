"""Adapters on the real default model (SmolLM2-135M-Instruct), against real PEFT and transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from acculturate.adapters import (
    LoRAConfig, apply_lora, export_merged, load_adapter, lora_modules, merge_adapter_dir, merge_lora,
    prepare_model, save_adapter,
)
from acculturate.models import load

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.slow

TEXT = "In Indonesia, people often greet each other by saying selamat pagi in the morning."


@pytest.fixture
def ids(tokenizer):
    return tokenizer(TEXT, return_tensors="pt").input_ids  # (1, T)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits  # (1, T, V)


def _train_steps(model, ids, steps=2, lr=1e-3):
    """Real AdamW steps on the LM loss, so B moves away from zero the way training moves it."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    model.eval()


@pytest.fixture
def trained_lora(fresh_model, ids):
    """The default model with LoRA (r=8, all projections) after two real optimizer steps."""
    model = fresh_model.model
    config = LoRAConfig(r=8, alpha=16, dropout=0.0)
    names = apply_lora(model, config)
    assert len(names) == 30 * 7
    _train_steps(model, ids)
    assert all(torch.count_nonzero(m.lora_B.weight) > 0 for m in lora_modules(model).values())
    return model, config


def test_our_adapter_loads_in_peft(trained_lora, default_model, ids, tmp_path):
    model, config = trained_lora
    ours = _logits(model, ids)
    assert (ours - _logits(default_model.model, ids)).abs().max() > 1e-3  # training changed the model
    save_adapter(model, tmp_path / "adapter", "smollm2-135m", config)
    base, _ = load("smollm2-135m", device="cpu")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    torch.testing.assert_close(_logits(theirs, ids), ours, atol=1e-4, rtol=0)


def test_peft_adapter_loads_in_ours(fresh_model, default_model, ids, tmp_path):
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                             task_type="CAUSAL_LM", init_lora_weights=False)  # random non-zero B
    theirs = peft.get_peft_model(fresh_model.model, config).eval()
    expected = _logits(theirs, ids)
    assert (expected - _logits(default_model.model, ids)).abs().max() > 1e-3
    theirs.save_pretrained(tmp_path / "adapter")
    model, _ = load("smollm2-135m", device="cpu")
    ours = load_adapter(model, tmp_path / "adapter")
    assert (ours.r, ours.alpha) == (4, 8) and set(ours.targets) == {"q_proj", "v_proj", "down_proj"}
    assert len(lora_modules(model)) == 30 * 3
    torch.testing.assert_close(_logits(model, ids), expected, atol=1e-4, rtol=0)


def test_merged_equals_unmerged(trained_lora, ids):
    model, _ = trained_lora
    unmerged = _logits(model, ids)
    merge_lora(model)
    assert not lora_modules(model)
    torch.testing.assert_close(_logits(model, ids), unmerged, atol=1e-4, rtol=0)


def test_exported_dir_reloads_with_transformers(trained_lora, tokenizer, ids, tmp_path):
    model, config = trained_lora
    expected = _logits(model, ids)
    save_adapter(model, tmp_path / "adapter", "smollm2-135m", config)
    out = export_merged(model, tokenizer, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    # Merged weights sum in another order than base + LoRA: logits of size ~10 differ by up to 1.1e-4 in
    # fp32 (seen with CPU kernels picked at load), far below the 1e-3 a merge error would show.
    torch.testing.assert_close(_logits(reloaded, ids), expected, atol=3e-4, rtol=0)
    # The CLI path: base name from the adapter's config, merged on load.
    out2 = merge_adapter_dir(None, tmp_path / "adapter", tmp_path / "merged2")
    model2, tok2 = load(out2, device="cpu")
    torch.testing.assert_close(_logits(model2, ids), expected, atol=3e-4, rtol=0)
    assert tok2(TEXT).input_ids == ids[0].tolist()


def test_head_method_trains_only_the_head(fresh_model, ids):
    model = fresh_model.model
    before_logits = _logits(model, ids)
    summary = prepare_model(model, "head")
    assert summary["trainable"] == 49152 * 576  # lm_head only, now its own copy
    assert torch.equal(_logits(model, ids), before_logits)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train_steps(model, ids, steps=1)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"lm_head.weight"}
