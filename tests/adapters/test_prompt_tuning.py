"""Prompt tuning on a tiny Llama: the hooks against a hand-built reference (virtual vectors
concatenated to the input embeddings), the training loss path, left padding, the KV cache, and
PEFT's on-disk format both ways."""

from __future__ import annotations

import json

import pytest
import torch

from acculturate.adapters import METHODS, load_adapter, prepare_model, save_adapter
from acculturate.adapters.peft_format import AdapterError
from acculturate.adapters.prompt_tuning import (
    PromptTuningConfig, apply_prompt_tuning, init_prompt_weight, prompt_embedding, remove_prompt_tuning,
)
from acculturate.train.loss import loss_sum

N = 3  # virtual tokens


def _prompted(model, n=N, seed=0):
    module = apply_prompt_tuning(model, PromptTuningConfig(num_virtual_tokens=n, seed=seed))
    return module.prompt_embeddings.weight


def _reference_logits(model, prompt, ids, mask=None):
    """Logits of the real positions with ``prompt`` (n, d) concatenated in front, hooks bypassed."""
    module = remove_prompt_tuning(model)
    try:
        embeds = model.get_input_embeddings()(ids)                                  # (B, T, d)
        full = torch.cat([prompt.expand(ids.shape[0], -1, -1), embeds], dim=1)     # (B, n + T, d)
        if mask is not None:
            mask = torch.cat([mask.new_ones(ids.shape[0], prompt.shape[0]), mask], dim=1)
        return model(inputs_embeds=full, attention_mask=mask).logits[:, prompt.shape[0]:]
    finally:
        model.prompt_tuning = module
        module.attach(model)


def test_config_validation_names_field():
    for kwargs, field in (({"num_virtual_tokens": 0}, "num_virtual_tokens"),
                          ({"num_virtual_tokens": True}, "num_virtual_tokens"),
                          ({"init_text": "  "}, "init_text"), ({"seed": 1.5}, "seed")):
        with pytest.raises(ValueError, match=f"PromptTuningConfig.{field}"):
            PromptTuningConfig(**kwargs)


def test_registry_has_qlora_and_prompt_tuning():
    assert set(METHODS) == {"full", "head", "lora", "qlora", "prompt_tuning"}


def test_only_the_prompt_trains_and_logits_line_up(tiny_llama, tiny_ids):
    summary = prepare_model(tiny_llama, "prompt_tuning", prompt_tuning=PromptTuningConfig(num_virtual_tokens=N))
    d = tiny_llama.config.hidden_size
    assert summary["trainable"] == N * d
    assert [n for n, p in tiny_llama.named_parameters() if p.requires_grad] == ["prompt_tuning.prompt_embeddings.weight"]
    prompt = prompt_embedding(tiny_llama).prompt_embeddings.weight
    with torch.no_grad():
        logits = tiny_llama(tiny_ids).logits          # positional input_ids, as a user might call it
        expected = _reference_logits(tiny_llama, prompt, tiny_ids)
    assert logits.shape == (*tiny_ids.shape, tiny_llama.config.vocab_size)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    remove_prompt_tuning(tiny_llama)
    with torch.no_grad():
        assert not torch.allclose(logits, tiny_llama(tiny_ids).logits, atol=1e-3)  # the prompt matters


def test_remove_restores_the_base(make_llama, tiny_ids):
    model, base = make_llama(), make_llama()
    _prompted(model)
    remove_prompt_tuning(model)
    with torch.no_grad():
        assert torch.equal(model(tiny_ids).logits, base(tiny_ids).logits)
    assert not hasattr(model, "prompt_tuning")


def test_labels_loss_and_logits_to_keep(tiny_llama, tiny_ids):
    """With labels the model's own loss covers n + T positions (-100 on the virtual ones), as in
    PEFT; .logits is cut to T. The training loss (loss_sum, with a logits_to_keep index) equals
    cross-entropy on the reference logits."""
    prompt = _prompted(tiny_llama)
    labels = tiny_ids.clone()
    labels[:, :3] = -100
    out = tiny_llama(input_ids=tiny_ids, labels=labels)
    ref = _reference_logits(tiny_llama, prompt, tiny_ids)                   # (B, T, V)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
    expected = torch.nn.functional.cross_entropy(ref[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)
    total, count = loss_sum(tiny_llama, {"input_ids": tiny_ids, "labels": labels}, torch.device("cpu"))
    torch.testing.assert_close(total / count, expected, atol=1e-5, rtol=0)
    total.backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0


def test_left_padding_and_positions_match_the_row_alone(tiny_llama):
    """A left-padded row with generate's position_ids gives the logits it gives alone."""
    _prompted(tiny_llama)
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = tiny_llama(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        alone = tiny_llama(input_ids=ids[:1, 2:]).logits
    torch.testing.assert_close(batched[0, 2:], alone[0], atol=1e-5, rtol=0)


def test_packed_rows_are_refused(tiny_llama):
    _prompted(tiny_llama)
    ids = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="packed rows"):
        tiny_llama(input_ids=ids, position_ids=torch.tensor([[0, 1, 0, 1]]), use_cache=False)


def test_kv_cache_decoding_equals_full_recompute(tiny_llama):
    """Prefill then one token at a time through the cache (as decode.generate does) gives the
    logits of running the whole sequence again with the prompt in front."""
    prompt = _prompted(tiny_llama)
    ids = torch.tensor([[3, 9, 4, 1]])
    with torch.no_grad():
        out = tiny_llama(input_ids=ids[:, :2], use_cache=True, logits_to_keep=1)
        steps = [out.logits[:, -1]]
        for t in (2, 3):
            mask = torch.ones(1, t + 1, dtype=torch.long)
            out = tiny_llama(input_ids=ids[:, t:t + 1], attention_mask=mask, position_ids=torch.tensor([[t]]),
                             cache=out.cache if getattr(out, "cache", None) is not None else out.past_key_values,
                             use_cache=True, logits_to_keep=1)
            steps.append(out.logits[:, -1])
        full = _reference_logits(tiny_llama, prompt, ids)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 1:], atol=1e-5, rtol=0)


def test_random_init_follows_the_embedding_statistics(tiny_llama):
    weight = init_prompt_weight(tiny_llama, PromptTuningConfig(num_virtual_tokens=4000, seed=1))
    table = tiny_llama.get_input_embeddings().weight
    torch.testing.assert_close(weight.mean(0), table.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(weight.std(0), table.std(0), atol=0.05, rtol=0.1)
    again = init_prompt_weight(tiny_llama, PromptTuningConfig(num_virtual_tokens=4000, seed=1))
    assert torch.equal(weight, again)


class _Tokenizer:
    def __call__(self, text):
        return {"input_ids": [ord(c) % 64 for c in text]}


def test_text_init_repeats_or_truncates_the_tokens(tiny_llama):
    table = tiny_llama.get_input_embeddings().weight
    weight = init_prompt_weight(tiny_llama, PromptTuningConfig(num_virtual_tokens=5, init_text="abc"), _Tokenizer())
    ids = [ord(c) % 64 for c in "abcab"]
    assert torch.equal(weight, table[ids])
    short = init_prompt_weight(tiny_llama, PromptTuningConfig(num_virtual_tokens=2, init_text="abc"), _Tokenizer())
    assert torch.equal(short, table[ids[:2]])
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        init_prompt_weight(tiny_llama, PromptTuningConfig(init_text="abc"))


def test_applying_twice_is_refused(tiny_llama):
    _prompted(tiny_llama)
    with pytest.raises(ValueError, match="already prompt-tuned"):
        _prompted(tiny_llama)


# PEFT's format, both ways ---------------------------------------------------------------------

def test_saved_prompt_loads_in_peft_with_same_logits(tiny_llama, make_llama, tiny_ids, tmp_path):
    from peft import PeftModel

    _prompted(tiny_llama)
    config = PromptTuningConfig(num_virtual_tokens=N)
    save_adapter(tiny_llama, tmp_path / "pt", "tiny", config)
    with torch.no_grad():
        ours = tiny_llama(tiny_ids).logits
        peft_model = PeftModel.from_pretrained(make_llama(), tmp_path / "pt").eval()
        theirs = peft_model(input_ids=tiny_ids).logits       # (B, n + T, V): PEFT keeps the virtual ones
    assert theirs.shape[1] == N + tiny_ids.shape[1]
    torch.testing.assert_close(theirs[:, N:], ours, atol=1e-5, rtol=0)


def test_peft_saved_prompt_loads_in_ours(make_llama, tiny_ids, tmp_path):
    from peft import PromptTuningConfig as PeftPromptTuningConfig, get_peft_model

    torch.manual_seed(3)
    peft_model = get_peft_model(make_llama(), PeftPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    peft_model.save_pretrained(tmp_path / "peft")
    with torch.no_grad():
        theirs = peft_model(input_ids=tiny_ids).logits[:, 4:]
    model = make_llama()
    config = load_adapter(model, tmp_path / "peft")
    assert config == PromptTuningConfig(num_virtual_tokens=4)
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_ids).logits, theirs, atol=1e-5, rtol=0)
    assert prompt_embedding(model).prompt_embeddings.weight.requires_grad


def test_config_has_the_keys_peft_writes(tiny_llama, make_llama, tmp_path):
    from peft import PromptTuningConfig as PeftPromptTuningConfig, get_peft_model

    get_peft_model(make_llama(), PeftPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N)) \
        .save_pretrained(tmp_path / "peft")
    _prompted(tiny_llama)
    save_adapter(tiny_llama, tmp_path / "ours", "tiny", PromptTuningConfig(num_virtual_tokens=N))
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert set(ours) == set(peft_config) - {"peft_version"}
    for key in ("num_attention_heads", "num_layers", "token_dim", "num_virtual_tokens",
                "num_transformer_submodules", "peft_type", "task_type", "prompt_tuning_init"):
        assert ours[key] == peft_config[key], key
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "ours" / "adapter_model.safetensors")) == {"prompt_embeddings"}


def test_text_init_is_recorded_as_peft_text_init(tiny_llama, tmp_path):
    from peft import PeftConfig

    config = PromptTuningConfig(num_virtual_tokens=N, init_text="abc")
    apply_prompt_tuning(tiny_llama, config, _Tokenizer())
    with pytest.raises(AdapterError, match="base_model_name_or_path"):
        save_adapter(tiny_llama, tmp_path / "x", None, config)
    save_adapter(tiny_llama, tmp_path / "pt", "some/base", config)
    loaded = PeftConfig.from_pretrained(tmp_path / "pt")
    assert (loaded.prompt_tuning_init, loaded.prompt_tuning_init_text, loaded.tokenizer_name_or_path) == \
        ("TEXT", "abc", "some/base")


@pytest.fixture
def saved_prompt(tiny_llama, tmp_path):
    _prompted(tiny_llama)
    return save_adapter(tiny_llama, tmp_path / "pt", "tiny", PromptTuningConfig(num_virtual_tokens=N))


@pytest.mark.parametrize("changes, message", [
    ({"peft_type": "PREFIX_TUNING"}, "supported: \\['LORA', 'PROMPT_TUNING'\\]"),
    ({"task_type": "SEQ_2_SEQ_LM"}, "task_type"),
    ({"num_transformer_submodules": 2}, "num_transformer_submodules"),
    ({"token_dim": 32}, "token_dim is 32"),
    ({"num_virtual_tokens": 4}, "expected \\(4, 16\\)"),
    ({"num_virtual_tokens": "3"}, "'num_virtual_tokens' must be a positive integer"),
])
def test_bad_prompt_adapters_are_named(make_llama, saved_prompt, changes, message):
    path = saved_prompt / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    with pytest.raises(AdapterError, match=message):
        load_adapter(make_llama(), saved_prompt)


def test_save_checks_the_model_and_config(tiny_llama, tmp_path):
    with pytest.raises(AdapterError, match="not prompt-tuned"):
        save_adapter(tiny_llama, tmp_path / "a", "tiny", PromptTuningConfig())
    _prompted(tiny_llama)
    with pytest.raises(AdapterError, match="num_virtual_tokens is 20 but the model has 3"):
        save_adapter(tiny_llama, tmp_path / "a", "tiny", PromptTuningConfig())
    with pytest.raises(TypeError, match="config must be one of"):
        save_adapter(tiny_llama, tmp_path / "a", "tiny", {"r": 4})
