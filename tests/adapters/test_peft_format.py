"""PEFT on-disk format: our adapters load in PEFT and PEFT's load here (tiny Llama), plus errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from acculturate.adapters.lora import LoRAConfig, apply_lora, lora_modules
from acculturate.adapters.peft_format import AdapterError, load_adapter, save_adapter

peft = pytest.importorskip("peft")


def _randomize_b(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_modules(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


def _peft_saved(make_llama, path, **lora_kwargs):
    """Save a PEFT adapter with random non-zero B on a tiny Llama; return PEFT's model (eval)."""
    torch.manual_seed(3)
    config = peft.LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **lora_kwargs)
    model = peft.get_peft_model(make_llama(), config).eval()
    model.save_pretrained(path)
    return model


def test_saved_adapter_loads_in_peft_with_same_logits(tiny_llama, make_llama, tiny_ids, tmp_path):
    config = LoRAConfig(r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"))
    apply_lora(tiny_ll := tiny_llama, config)
    _randomize_b(tiny_ll)
    ours = tiny_ll(tiny_ids).logits
    save_adapter(tiny_ll, tmp_path / "ad", "tiny-llama", config)
    theirs = peft.PeftModel.from_pretrained(make_llama(), tmp_path / "ad").eval()
    assert not torch.allclose(ours, make_llama()(tiny_ids).logits)
    torch.testing.assert_close(theirs(tiny_ids).logits, ours, atol=1e-5, rtol=0)


def test_config_has_the_keys_peft_writes(tiny_llama, make_llama, tmp_path):
    config = LoRAConfig(r=4, alpha=8, dropout=0.1, targets=("q_proj",), use_rslora=True)
    apply_lora(tiny_llama, config)
    save_adapter(tiny_llama, tmp_path / "ours", "tiny-llama", config)
    _peft_saved(make_llama, tmp_path / "peft", r=4, target_modules=["q_proj"])
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    theirs = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert set(ours) == set(theirs) - {"peft_version"}
    assert ours["peft_type"] == "LORA" and ours["task_type"] == "CAUSAL_LM" and ours["bias"] == "none"
    assert (ours["r"], ours["lora_alpha"], ours["lora_dropout"], ours["use_rslora"]) == (4, 8, 0.1, True)
    assert ours["target_modules"] == ["q_proj"] and ours["base_model_name_or_path"] == "tiny-llama"
    assert ours["fan_in_fan_out"] is False and ours["inference_mode"] is True
    assert set(load_file(tmp_path / "ours" / "adapter_model.safetensors")) == \
        set(load_file(tmp_path / "peft" / "adapter_model.safetensors"))


@pytest.mark.parametrize("lora_kwargs", [
    {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "o_proj", "gate_proj"]},
    {"r": 8, "lora_alpha": 4, "target_modules": ["v_proj", "up_proj"], "use_rslora": True},
    {"r": 2, "lora_alpha": 2, "target_modules": r".*\.mlp\.(up|down)_proj"},  # a regex
    {"r": 2, "lora_alpha": 2, "target_modules": "all-linear"},
    {"r": 2, "lora_alpha": 2, "target_modules": ["q_proj", "v_proj"], "exclude_modules": ["model.layers.0.self_attn.v_proj"]},
    {"r": 2, "lora_alpha": 2, "target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1]},
    {"r": 2, "lora_alpha": 2, "target_modules": ["o_proj"], "layers_to_transform": 0, "layers_pattern": "layers"},
])
def test_peft_saved_adapter_loads_with_same_logits(make_llama, tiny_ids, tmp_path, lora_kwargs):
    theirs = _peft_saved(make_llama, tmp_path / "ad", **lora_kwargs)
    model = make_llama()
    config = load_adapter(model, tmp_path / "ad")
    assert config.r == lora_kwargs["r"] and config.use_rslora == lora_kwargs.get("use_rslora", False)
    expected = theirs(tiny_ids).logits
    assert not torch.allclose(expected, make_llama()(tiny_ids).logits)
    torch.testing.assert_close(model(tiny_ids).logits, expected, atol=1e-5, rtol=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if "lora_" in n}
    assert apply_lora(make_llama(), config) == list(lora_modules(model))  # the config says what was wrapped


def test_round_trip_through_our_own_format(tiny_llama, make_llama, tiny_ids, tmp_path):
    config = LoRAConfig(r=4, alpha=16, targets=("q_proj", "gate_proj"))
    apply_lora(tiny_llama, config)
    _randomize_b(tiny_llama)
    save_adapter(tiny_llama, tmp_path / "ad", None, config)
    model = make_llama()
    assert load_adapter(model, tmp_path / "ad") == config
    torch.testing.assert_close(model(tiny_ids).logits, tiny_llama(tiny_ids).logits, atol=1e-6, rtol=0)


def test_save_without_lora_is_refused(tiny_llama, tmp_path):
    with pytest.raises(AdapterError, match="no LoRA layers"):
        save_adapter(tiny_llama, tmp_path / "ad", None, LoRAConfig())
    assert not (tmp_path / "ad").exists()


@pytest.fixture
def saved(tiny_llama, tmp_path):
    config = LoRAConfig(r=4, alpha=8, targets=("q_proj", "v_proj"))
    apply_lora(tiny_llama, config)
    return save_adapter(tiny_llama, tmp_path / "ad", None, config)


def _edit_config(adapter_dir, **changes):
    path = adapter_dir / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_dir_and_files(make_llama, saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adapter(make_llama(), tmp_path / "nope")
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors not found"):
        load_adapter(make_llama(), saved)
    (saved / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_config.json not found"):
        load_adapter(make_llama(), saved)


def test_invalid_json_names_the_line(make_llama, saved):
    (saved / "adapter_config.json").write_text('{\n  "r": 4,\n  oops\n}')
    with pytest.raises(AdapterError, match=r"adapter_config.json, line 3: invalid JSON"):
        load_adapter(make_llama(), saved)


@pytest.mark.parametrize("changes, message", [
    ({"peft_type": "IA3"}, r"peft_type is 'IA3'; supported: \['LORA', 'PROMPT_TUNING'\]"),
    ({"use_dora": True}, "use_dora=True is a LoRA variant"),
    ({"bias": "all"}, "bias='all'"),
    ({"rank_pattern": {"q_proj": 8}}, "rank_pattern="),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save="),
    ({"fan_in_fan_out": True}, "fan_in_fan_out=True"),
    ({"r": 0}, r"LoRAConfig\.r must be a positive integer"),
])
def test_unsupported_configs_are_refused_by_name(make_llama, saved, changes, message):
    _edit_config(saved, **changes)
    model = make_llama()
    with pytest.raises(AdapterError, match=message):
        load_adapter(model, saved)
    assert not lora_modules(model)  # nothing half-applied


def test_keys_of_another_model_are_named(make_llama, tmp_path):
    big = make_llama(layers=3)
    config = LoRAConfig(r=4, alpha=8, targets=("q_proj",))
    apply_lora(big, config)
    save_adapter(big, tmp_path / "ad", None, config)
    model = make_llama(layers=2)
    with pytest.raises(AdapterError, match=r"not nn.Linear modules of LlamaForCausalLM: model.layers.2.self_attn.q_proj"):
        load_adapter(model, tmp_path / "ad")
    assert not lora_modules(model)


def test_missing_and_misshapen_weights_are_named(make_llama, saved):
    weights = saved / "adapter_model.safetensors"
    state = load_file(weights)
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    save_file({k: v for k, v in state.items() if "layers.1.self_attn.v_proj" not in k}, weights)
    with pytest.raises(AdapterError, match="no weights for modules that target_modules matches: model.layers.1.self_attn.v_proj"):
        load_adapter(make_llama(), saved)
    save_file({**state, key: torch.zeros(8, 5)}, weights)
    with pytest.raises(AdapterError, match=rf"{key} has shape \(8, 5\), expected \(8, 4\)"):
        load_adapter(make_llama(), saved)
    save_file({**state, "base_model.model.model.embed_tokens.weight": torch.zeros(2)}, weights)
    with pytest.raises(AdapterError, match="not LoRA A/B weights.*embed_tokens"):
        load_adapter(make_llama(), saved)


def test_loading_onto_a_lora_model_is_refused(tiny_llama, saved):
    with pytest.raises(ValueError, match="already has LoRA"):
        load_adapter(tiny_llama, saved)


def test_adapter_of_the_top_layers_loads_in_peft_and_back(make_llama, tiny_ids, tmp_path):
    """``layers`` ("-1:": the last layer only) is saved as PEFT's layers_to_transform, absolute."""
    model = make_llama()
    config = LoRAConfig(r=4, alpha=8, layers="-1:")
    assert {n.split(".")[2] for n in apply_lora(model, config)} == {"1"}
    _randomize_b(model)
    save_adapter(model, tmp_path / "ad", "tiny-llama", config)
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    theirs = peft.PeftModel.from_pretrained(make_llama(), tmp_path / "ad").eval()
    torch.testing.assert_close(theirs(tiny_ids).logits, model(tiny_ids).logits, atol=1e-5, rtol=0)
    again = make_llama()
    assert load_adapter(again, tmp_path / "ad").layers == (1,)
    assert list(lora_modules(again)) == list(lora_modules(model))
