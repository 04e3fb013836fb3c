"""QLoRA and prompt tuning on the real default model (SmolLM2-135M): a few steps of
acculturate.train.train lower the loss; adapters round-trip through PEFT; a QLoRA adapter merges
onto the NF4 weights; a prompt-tuned model generates through the KV cache."""

from __future__ import annotations

import pytest
import torch

from acculturate.adapters import PromptTuningConfig, load_adapter, prepare_model, save_adapter
from acculturate.adapters.lora import lora_modules
from acculturate.adapters.nf4 import nf4_modules
from acculturate.adapters.prompt_tuning import init_prompt_weight, prompt_embedding
from acculturate.train import TrainConfig, train
from acculturate.train.loss import loss_sum

pytestmark = pytest.mark.slow

INIT_TEXT = "Answer as a person from the United Kingdom would:"


def _features(tokenizer, data_dir, n=4, max_length=48):
    from acculturate.data import read_examples, tokenize_examples

    examples = read_examples(data_dir / "instructions" / "instruction-data.json")[:n]
    return tokenize_examples(examples, tokenizer, "chat", max_length)


def _mean_loss(model, features, pad_id):
    from acculturate.data.batching import pad_collate

    with torch.no_grad():
        total, count = loss_sum(model, pad_collate(features, pad_id), torch.device("cpu"))
    return total.item() / count


def _train(model, features, tokenizer, out_dir, lr, steps=3):
    config = TrainConfig(max_steps=steps, batch_size=8, lr=lr, warmup_ratio=0.0, save_every=0,
                         log_every=1, max_length=48)
    return train(model, features, None, config, out_dir, pad_id=tokenizer.pad_token_id, progress=False)


# QLoRA ------------------------------------------------------------------------------------------

def test_qlora_trains_saves_and_merges_onto_nf4_weights(fresh_model, data_dir, tmp_path):
    from acculturate.adapters import LoRAConfig, merge_adapter_dir
    from acculturate.models import load

    model, tok = fresh_model
    base_total = sum(p.numel() for p in model.parameters())
    features = _features(tok, data_dir)
    config = LoRAConfig(r=8, alpha=16, dropout=0.0)
    summary = prepare_model(model, "qlora", lora=config)
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = lora_modules(model)
    assert len(layers) == 7 * model.config.num_hidden_layers == len(nf4_modules(model))  # every projection
    assert lora_params == sum(layer.r * (layer.in_features + layer.out_features) for layer in layers.values())
    assert summary["trainable"] == lora_params
    assert summary["total"] == base_total + lora_params            # every weight once, NF4 ones included
    assert summary["bits_per_weight"] == pytest.approx(4.127, abs=0.01)
    before = _mean_loss(model, features, tok.pad_token_id)
    result = _train(model, features, tok, tmp_path / "train", lr=2e-3)
    after = _mean_loss(model, features, tok.pad_token_id)
    print(f"QLoRA r=8, 3 steps on 4 examples: loss {before:.3f} -> {after:.3f}, "
          f"{result.wall_time_s:.1f} s, {summary['bits_per_weight']} bits/weight")
    assert after < before - 0.1
    assert all(not m.packed.requires_grad for m in nf4_modules(model).values())  # NF4 codes stay frozen

    save_adapter(model, tmp_path / "adapter", "smollm2-135m", config)
    ids = torch.tensor([tok("People in the UK often drink tea with milk.")["input_ids"]])
    with torch.no_grad():
        expected = model(ids).logits
    merge_adapter_dir(None, tmp_path / "adapter", tmp_path / "merged", quantized_base=True)
    merged, _ = load(tmp_path / "merged", device="cpu")
    with torch.no_grad():
        got = merged(ids).logits
    print(f"merged vs unmerged QLoRA: max |diff| {(got - expected).abs().max():.2e}")
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


# Prompt tuning ------------------------------------------------------------------------------------

def test_prompt_tuning_trains_and_peft_loads_it(fresh_model, data_dir, tmp_path):
    from peft import PeftModel

    from acculturate.models import load

    model, tok = fresh_model
    features = _features(tok, data_dir)
    config = PromptTuningConfig(num_virtual_tokens=8, init_text=INIT_TEXT)
    summary = prepare_model(model, "prompt_tuning", prompt_tuning=config, tokenizer=tok)
    assert summary["trainable"] == 8 * model.config.hidden_size
    before = _mean_loss(model, features, tok.pad_token_id)
    _train(model, features, tok, tmp_path / "train", lr=3e-2)
    after = _mean_loss(model, features, tok.pad_token_id)
    print(f"prompt tuning, 8 virtual tokens, 3 steps: loss {before:.3f} -> {after:.3f}")
    assert after < before - 0.05

    save_adapter(model, tmp_path / "adapter", "smollm2-135m", config)
    ids = torch.tensor([tok("Breakfast in Manchester is")["input_ids"]])
    base, _ = load("smollm2-135m", device="cpu")
    with torch.no_grad():
        ours = model(ids).logits
        theirs = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(input_ids=ids).logits[:, 8:]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_peft_text_init_equals_ours_and_peft_adapter_loads(fresh_model, default_model, tmp_path):
    from peft import PromptTuningConfig as PeftPromptTuningConfig, get_peft_model

    model, tok = fresh_model
    tok.save_pretrained(tmp_path / "tokenizer")   # PEFT's TEXT init loads a tokenizer by path
    peft_model = get_peft_model(model, PeftPromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=12, prompt_tuning_init="TEXT",
        prompt_tuning_init_text=INIT_TEXT, tokenizer_name_or_path=str(tmp_path / "tokenizer")))
    theirs = peft_model.prompt_encoder["default"].embedding.weight
    ours = init_prompt_weight(default_model.model, PromptTuningConfig(12, init_text=INIT_TEXT), tok)
    assert torch.equal(ours, theirs)
    with torch.no_grad():
        theirs.add_(0.01 * torch.randn(theirs.shape, generator=torch.Generator().manual_seed(0)))  # "trained"
    peft_model.save_pretrained(tmp_path / "peft")
    ids = torch.tensor([tok("Breakfast in Manchester is")["input_ids"]])
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=ids).logits[:, 12:]
    from acculturate.models import load

    mine, _ = load("smollm2-135m", device="cpu")
    assert load_adapter(mine, tmp_path / "peft") == PromptTuningConfig(12, init_text=INIT_TEXT)
    with torch.no_grad():
        torch.testing.assert_close(mine(ids).logits, expected, atol=1e-4, rtol=0)


def test_generate_with_a_prompt_tuned_model(fresh_model, default_model):
    """Batched generation (left padding, KV cache) equals greedy decoding by full recomputation,
    and the virtual tokens change the answer."""
    from acculturate.decode import GenerationConfig, generate

    model, tok = fresh_model
    prepare_model(model, "prompt_tuning", prompt_tuning=PromptTuningConfig(8, init_text=INIT_TEXT), tokenizer=tok)
    module = prompt_embedding(model)
    with torch.no_grad():   # move the vectors off the plain text, as training would
        module.prompt_embeddings.weight.add_(
            0.5 * torch.randn(module.prompt_embeddings.weight.shape, generator=torch.Generator().manual_seed(0))
            * module.prompt_embeddings.weight.std())
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What do people eat for breakfast?", "Name a sport.")]
    config = GenerationConfig(max_new_tokens=10)
    tuned = generate(model, tok, prompts, config)
    base = generate(default_model.model, tok, prompts, config)
    for prompt, completion in zip(prompts, tuned):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        reference = []
        with torch.no_grad():
            for _ in range(len(completion.token_ids)):
                logits = model(input_ids=torch.tensor([ids + reference]), use_cache=False).logits
                reference.append(int(logits[0, -1].argmax()))
        assert completion.token_ids == reference
    print("prompt-tuned:", [c.text for c in tuned], "base:", [c.text for c in base])
    assert [c.token_ids for c in tuned] != [c.token_ids for c in base]
