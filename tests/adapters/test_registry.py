"""Many adapters on one base: switching by name, sharing the base, merging, weighted combination.

Unit tests run on the tiny random Llama (conftest.make_tiny_llama) with adapters whose A and B are
random (so each really changes the model); combination is checked against the definition and
against real PEFT. The slow tests train two adapters on the real default model (UK vs Mexico
BLEnD answers) and switch between them in Python and through ``acculturate generate``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from acculturate.adapters import (
    AdapterRegistry, LoRAConfig, UnknownAdapterError, adapter_registry, apply_lora, load_adapter, load_adapters,
    lora_modules, lora_state_dict, save_adapter, use_adapter,
)
from acculturate.adapters import PromptTuningConfig, apply_prompt_tuning, prompt_embedding
from acculturate.adapters.lora import PEFT_PREFIX
from acculturate.adapters.registry import combine_cat, parse_adapter_spec

A_CONFIG = LoRAConfig(r=2, alpha=4, dropout=0.0, targets=("q_proj", "v_proj"))
B_CONFIG = LoRAConfig(r=4, alpha=4, dropout=0.0, targets=("v_proj", "down_proj"))


def _random_adapter(make_llama, path, config, seed):
    """Save an adapter for the tiny Llama (seed 0) whose A and B are random, so it changes outputs."""
    model = make_llama()
    apply_lora(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_modules(model).values():
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * 0.5)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.5)
    save_adapter(model, path, None, config)
    return path


@pytest.fixture
def dirs(make_llama, tmp_path):
    return {"a": _random_adapter(make_llama, tmp_path / "a", A_CONFIG, 1),
            "b": _random_adapter(make_llama, tmp_path / "b", B_CONFIG, 2)}


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits  # (B, T, V)


def _linear_weights(model):
    """Every Linear weight of the base by module path (under a LoRA wrapper: its base_layer's)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith(("lora_A", "lora_B")):
            out[name.removesuffix(".base_layer")] = module.weight
    return out


def test_switching_shares_the_base_and_is_exact(make_llama, dirs, tiny_ids):
    model = make_llama()
    base_logits = _logits(model, tiny_ids)
    base_weights = {p: (id(w), w.data_ptr()) for p, w in _linear_weights(model).items()}
    base_keys = set(model.state_dict())

    registry = adapter_registry(model)
    registry.add("a", dirs["a"])
    registry.add("b", dirs["b"])
    assert registry.names() == ["a", "b"] and registry.active() is None
    assert torch.equal(_logits(model, tiny_ids), base_logits)  # adding activates nothing

    registry.use("a")
    first_a = _logits(model, tiny_ids)
    registry.use("b")
    logits_b = _logits(model, tiny_ids)
    assert (first_a - logits_b).abs().max() > 1e-2 and (first_a - base_logits).abs().max() > 1e-2
    registry.use("a")
    assert torch.equal(_logits(model, tiny_ids), first_a)  # switching back: bit-identical
    for none in (None, "none", "NONE"):
        registry.use(none)
        assert registry.active() is None
        assert torch.equal(_logits(model, tiny_ids), base_logits)
        assert set(model.state_dict()) == base_keys and not lora_modules(model)
    # No base weight was copied or reloaded by any of that.
    assert {p: (id(w), w.data_ptr()) for p, w in _linear_weights(model).items()} == base_weights
    registry.use("b")
    assert {p: (id(w), w.data_ptr()) for p, w in _linear_weights(model).items()} == base_weights


def test_active_adapter_equals_it_loaded_alone(make_llama, dirs, tiny_ids):
    """The registry changes nothing about a single adapter: same logits (bit for bit), same
    LoRA modules, and lora_state_dict keeps PEFT's key names without an adapter name."""
    alone = make_llama()
    load_adapter(alone, dirs["b"])
    model = make_llama()
    registry = adapter_registry(model)
    registry.add("a", dirs["a"])
    registry.add("b", dirs["b"], activate=True)
    assert torch.equal(_logits(model, tiny_ids), _logits(alone, tiny_ids))
    ours, theirs = lora_state_dict(model), lora_state_dict(alone)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(k.startswith(PEFT_PREFIX) and k.endswith(("lora_A.weight", "lora_B.weight")) for k in ours)


def test_adapters_with_different_ranks_and_targets(make_llama, dirs, tiny_ids):
    model = make_llama()
    registry = adapter_registry(model)
    registry.add("a", dirs["a"], activate=True)
    registry.add("b", dirs["b"])
    wrapped = lora_modules(model)
    assert {p.rsplit(".", 1)[-1] for p in wrapped} == {"q_proj", "v_proj"}
    assert {layer.r for layer in wrapped.values()} == {2}
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear  # not targeted by "a": the base
    registry.use("b")
    wrapped = lora_modules(model)
    assert {p.rsplit(".", 1)[-1] for p in wrapped} == {"v_proj", "down_proj"}
    assert {layer.r for layer in wrapped.values()} == {4}
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert registry.get("b").config.r == 4 and registry.get("b").num_parameters() > 0


def test_unknown_name_lists_the_loaded_ones(make_llama, dirs):
    model = make_llama()
    registry = adapter_registry(model)
    with pytest.raises(UnknownAdapterError, match="no adapter named 'uk'; loaded adapters: none yet"):
        registry.use("uk")
    registry.add("a", dirs["a"])
    registry.add("b", dirs["b"])
    with pytest.raises(UnknownAdapterError, match=r"no adapter named 'uk'; loaded adapters: 'a', 'b' \(or 'none'"):
        registry.use("uk")
    with pytest.raises(UnknownAdapterError, match="'a', 'b'"):
        with use_adapter(model, "mx"):
            pass
    assert registry.active() is None


def test_names_are_checked(make_llama, dirs):
    registry = adapter_registry(make_llama())
    registry.add("a", dirs["a"])
    with pytest.raises(ValueError, match="already loaded"):
        registry.add("a", dirs["b"])
    for bad in ("none", "None", "", " a", 3):
        with pytest.raises(ValueError):
            registry.add(bad, dirs["b"])
    assert registry.names() == ["a"]


def test_a_failed_add_leaves_everything_as_it_was(make_llama, dirs, tmp_path, tiny_ids):
    model = make_llama()
    registry = adapter_registry(model)
    registry.add("a", dirs["a"], activate=True)
    before = _logits(model, tiny_ids)
    with pytest.raises(FileNotFoundError):
        registry.add("c", tmp_path / "missing")
    other = _random_adapter(lambda: make_tiny_other(), tmp_path / "other", A_CONFIG, 3)
    with pytest.raises(ValueError, match="shape"):  # an adapter for a wider model
        registry.add("c", other)
    assert registry.names() == ["a"] and registry.active() == "a"
    assert torch.equal(_logits(model, tiny_ids), before)


def make_tiny_other():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_use_adapter_block_restores_the_previous_adapter(make_llama, dirs, tiny_ids):
    model = make_llama()
    registry = adapter_registry(model)
    registry.add("a", dirs["a"], activate=True)
    registry.add("b", dirs["b"])
    logits_a = _logits(model, tiny_ids)
    with use_adapter(model, "b") as adapter:
        assert adapter.name == "b" and registry.active() == "b"
        with use_adapter(model, None) as nothing:  # nested, same thread: the lock is re-entrant
            assert nothing is None and not lora_modules(model)
        assert registry.active() == "b"
    assert registry.active() == "a"
    with pytest.raises(RuntimeError, match="boom"), use_adapter(model, "b"):
        raise RuntimeError("boom")
    assert registry.active() == "a" and torch.equal(_logits(model, tiny_ids), logits_a)


def test_remove(make_llama, dirs, tiny_ids):
    model = make_llama()
    base = _logits(model, tiny_ids)
    registry = adapter_registry(model)
    registry.add("a", dirs["a"], activate=True)
    registry.add("b", dirs["b"])
    registry.remove("a")
    assert registry.names() == ["b"] and registry.active() is None
    assert torch.equal(_logits(model, tiny_ids), base)
    with pytest.raises(UnknownAdapterError, match="'b'"):
        registry.remove("a")


def test_merge_and_unmerge_the_active_adapter(make_llama, dirs, tiny_ids):
    model = make_llama()
    base = _logits(model, tiny_ids)
    weights = {p: w.detach().clone() for p, w in _linear_weights(model).items()}
    registry = adapter_registry(model)
    registry.add("a", dirs["a"], activate=True)
    registry.add("b", dirs["b"])
    logits_a = _logits(model, tiny_ids)
    with registry.using("b"):
        logits_b = _logits(model, tiny_ids)

    registry.merge()
    assert registry.merged
    torch.testing.assert_close(_logits(model, tiny_ids), logits_a, atol=1e-5, rtol=1e-5)
    changed = [p for p, w in _linear_weights(model).items() if not torch.equal(w, weights[p])]
    assert changed and all(p.endswith(("q_proj", "v_proj")) for p in changed)  # a's update is in the base

    with registry.using("b"):  # switching unmerges a first, so b runs on the clean base
        assert not registry.merged
        torch.testing.assert_close(_logits(model, tiny_ids), logits_b, atol=1e-5, rtol=1e-5)
    assert registry.active() == "a" and registry.merged  # the block restored a, merged as it was

    registry.unmerge()
    assert not registry.merged
    for p, w in _linear_weights(model).items():
        torch.testing.assert_close(w, weights[p], atol=1e-6, rtol=0)
    registry.use(None)
    torch.testing.assert_close(_logits(model, tiny_ids), base, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no adapter is active"):
        registry.merge()


def test_changes_outside_the_registry_are_refused(make_llama, dirs):
    from acculturate.adapters import merge_lora

    model = make_llama()
    registry = adapter_registry(model)
    registry.add("a", dirs["a"], activate=True)
    registry.add("b", dirs["b"])
    merge_lora(model)
    with pytest.raises(RuntimeError, match="changed outside the registry"):
        registry.use("b")


def test_only_the_active_adapter_trains(make_llama, dirs, tiny_ids):
    model = make_llama()
    registry = adapter_registry(model)
    registry.add("a", dirs["a"])
    new = registry.create("t", LoRAConfig(r=2, alpha=2, dropout=0.0, targets=("o_proj",)))
    assert registry.active() == "t"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for layer in new.layers.values() for p in (layer.lora_A.weight, layer.lora_B.weight)}
    a_before = {p: layer.lora_B.weight.clone() for p, layer in registry.get("a").layers.items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(tiny_ids, labels=tiny_ids).loss.backward()
    opt.step()
    assert all(torch.count_nonzero(layer.lora_B.weight) for layer in new.layers.values())
    assert all(torch.equal(registry.get("a").layers[p].lora_B.weight, w) for p, w in a_before.items())


def test_existing_lora_layers_are_adopted(make_llama, tiny_ids):
    model = make_llama()
    base = _logits(model, tiny_ids)
    apply_lora(model, A_CONFIG)
    registry = adapter_registry(model)
    assert adapter_registry(model) is registry
    with pytest.raises(ValueError, match="already has an adapter registry"):
        AdapterRegistry(model)
    assert registry.names() == ["default"] and registry.active() == "default"
    config = registry.get("default").config
    assert (config.r, config.alpha, config.dropout) == (2, 4, 0.0) and len(config.targets) == 4
    registry.use(None)
    assert torch.equal(_logits(model, tiny_ids), base)


def test_a_deep_copy_carries_its_own_registry(make_llama, dirs, tiny_ids):
    import copy

    model = make_llama()
    registry = adapter_registry(model)
    registry.add("a", dirs["a"], activate=True)
    registry.add("b", dirs["b"])
    twin = copy.deepcopy(model)
    twin_registry = adapter_registry(twin)
    assert twin_registry is not registry and twin_registry.model is twin and twin_registry.active() == "a"
    twin_registry.use("b")
    assert registry.active() == "a"
    q = "model.layers.0.self_attn.v_proj"
    assert twin_registry.get("b").layers[q].base_layer is twin.get_submodule(q).base_layer  # the copy's base
    with use_adapter(model, "b"):
        assert torch.equal(_logits(twin, tiny_ids), _logits(model, tiny_ids))


def test_a_quantized_base_is_shared_too(make_llama, tiny_ids):
    """quantize_lora_bases under the active adapter swaps the base Linears it wraps for NF4 ones;
    the next adapter (and "none") run on those same NF4 modules."""
    from acculturate.adapters.nf4 import NF4Linear
    from acculturate.adapters.qlora import quantize_lora_bases

    model = make_llama()
    registry = adapter_registry(model)
    registry.create("a", A_CONFIG)
    registry.create("b", B_CONFIG)
    registry.use("a")
    quantize_lora_bases(model)
    nf4 = model.model.layers[0].self_attn.v_proj.base_layer
    assert isinstance(nf4, NF4Linear)
    registry.use("b")
    assert model.model.layers[0].self_attn.v_proj.base_layer is nf4
    assert type(model.model.layers[0].mlp.down_proj.base_layer) is torch.nn.Linear  # "a" never wrapped it
    registry.use(None)
    assert model.model.layers[0].self_attn.v_proj is nf4 and _logits(model, tiny_ids).isfinite().all()


def test_save_an_inactive_adapter(make_llama, dirs, tmp_path, tiny_ids):
    model = make_llama()
    registry = adapter_registry(model)
    registry.add("a", dirs["a"], activate=True)
    registry.add("b", dirs["b"])
    registry.save("b", tmp_path / "b_again", None)
    assert registry.active() == "a"
    again = make_llama()
    load_adapter(again, tmp_path / "b_again")
    with use_adapter(model, "b"):
        assert torch.equal(_logits(model, tiny_ids), _logits(again, tiny_ids))


# -- weighted combination ------------------------------------------------------------------------------


def _delta(layer):
    return layer.delta_weight().detach()  # (out, in)


def test_cat_combination_is_exactly_the_weighted_sum_of_updates(make_llama, dirs, tiny_ids, tmp_path):
    model = make_llama()
    registry = adapter_registry(model)
    a, b = registry.add("a", dirs["a"]), registry.add("b", dirs["b"])
    weights = (0.7, -0.4)
    mix = registry.combine(["a", "b"], weights, "mix", combination="cat")
    assert mix.config.r == 6 and mix.config.alpha == 6 and set(mix.config.targets) == {"q_proj", "v_proj", "down_proj"}
    assert set(mix.layers) == set(a.layers) | set(b.layers)
    for path, layer in mix.layers.items():
        expected = sum(w * _delta(ad.layers[path]) for ad, w in zip((a, b), weights) if path in ad.layers)
        torch.testing.assert_close(_delta(layer), expected, atol=1e-6, rtol=1e-5)
    # The combination is an ordinary adapter: it saves and loads alone, with the same outputs.
    registry.use("mix")
    logits = _logits(model, tiny_ids)
    registry.save("mix", tmp_path / "mix", None)
    alone = make_llama()
    load_adapter(alone, tmp_path / "mix")
    torch.testing.assert_close(_logits(alone, tiny_ids), logits, atol=1e-6, rtol=1e-6)


def test_cat_function_on_fixed_factors():
    a1, b1 = torch.randn(2, 5), torch.randn(3, 2)
    a2, b2 = torch.randn(1, 5), torch.randn(3, 1)
    lora_a, lora_b = combine_cat([(a1, b1, 2.0), (a2, b2, -0.5)], rank=4)  # rank 4: one zero row (PEFT's padding)
    assert lora_a.shape == (4, 5) and lora_b.shape == (3, 4) and not lora_a[3].any()
    torch.testing.assert_close(lora_b @ lora_a, 2.0 * b1 @ a1 - 0.5 * b2 @ a2)


def test_linear_needs_equal_ranks(make_llama, dirs):
    registry = adapter_registry(make_llama())
    registry.add("a", dirs["a"])
    registry.add("b", dirs["b"])
    with pytest.raises(ValueError, match="equal rank"):
        registry.combine(["a", "b"], [0.5, 0.5], "mix", combination="linear")
    with pytest.raises(ValueError, match="combination must be one of"):
        registry.combine(["a", "b"], [0.5, 0.5], "mix", combination="ties")
    with pytest.raises(ValueError, match="one weight per adapter"):
        registry.combine(["a", "b"], [0.5], "mix")
    with pytest.raises(UnknownAdapterError, match="'a', 'b'"):
        registry.combine(["a", "c"], [0.5, 0.5], "mix")
    assert registry.names() == ["a", "b"]


@pytest.mark.parametrize("combination", ["cat", "linear"])
def test_combination_matches_peft(make_llama, tmp_path, tiny_ids, combination):
    """Our combine vs peft 0.21's add_weighted_adapter on the same two adapters: the same A and B
    for every module (so the same model). "linear" needs equal ranks; "cat" gets different ones."""
    peft = pytest.importorskip("peft")
    config_b = B_CONFIG if combination == "cat" else LoRAConfig(r=2, alpha=8, dropout=0.0, targets=("v_proj", "down_proj"))
    dirs = {"a": _random_adapter(make_llama, tmp_path / "a", A_CONFIG, 1),
            "b": _random_adapter(make_llama, tmp_path / "b", config_b, 2)}
    weights = [0.7, -0.4]

    theirs = peft.PeftModel.from_pretrained(make_llama(), dirs["a"], adapter_name="a")
    theirs.load_adapter(dirs["b"], adapter_name="b")
    theirs.add_weighted_adapter(["a", "b"], weights, "mix", combination_type=combination)
    theirs.set_adapter("mix")
    theirs.eval()

    model = make_llama()
    registry = adapter_registry(model)
    registry.add("a", dirs["a"])
    registry.add("b", dirs["b"])
    mix = registry.combine(["a", "b"], weights, "mix", combination=combination, activate=True)

    prefix = "base_model.model."
    peft_layers = {name.removeprefix(prefix): m for name, m in theirs.named_modules()
                   if hasattr(m, "lora_A") and "mix" in getattr(m, "lora_A", {})}
    assert set(peft_layers) == set(mix.layers)
    for path, layer in mix.layers.items():
        torch.testing.assert_close(layer.lora_A.weight, peft_layers[path].lora_A["mix"].weight, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(layer.lora_B.weight, peft_layers[path].lora_B["mix"].weight, atol=1e-6, rtol=1e-6)
        assert layer.scale == peft_layers[path].scaling["mix"] == 1.0
    with torch.no_grad():
        torch.testing.assert_close(_logits(model, tiny_ids), theirs(tiny_ids).logits, atol=1e-5, rtol=1e-5)


# -- specs (the CLI's --adapter) --------------------------------------------------------------------------


def _prompt_adapter(make_llama, path, n, seed):
    """Save a prompt-tuning adapter for the tiny Llama: n random virtual tokens."""
    model = make_llama()
    apply_prompt_tuning(model, PromptTuningConfig(num_virtual_tokens=n, seed=seed))
    with torch.no_grad():  # well away from the embeddings' scale, so the prompt surely changes outputs
        model.prompt_tuning.prompt_embeddings.weight.mul_(5)
    save_adapter(model, path, None, PromptTuningConfig(num_virtual_tokens=n, seed=seed))
    return path


def test_prompt_tuning_adapters_switch_by_name(make_llama, dirs, tmp_path, tiny_ids):
    p_dir, q_dir = _prompt_adapter(make_llama, tmp_path / "p", 3, 1), _prompt_adapter(make_llama, tmp_path / "q", 5, 2)
    model = make_llama()
    base_logits = _logits(model, tiny_ids)
    base_weights = {p: (id(w), w.data_ptr()) for p, w in _linear_weights(model).items()}
    registry = adapter_registry(model)
    registry.add("a", dirs["a"])
    registry.add("p", p_dir)
    registry.add("q", q_dir)
    assert [registry.get(n).kind for n in registry.names()] == ["lora", "prompt_tuning", "prompt_tuning"]
    assert registry.get("q").num_parameters() == 5 * 16 and registry.get("p").config.num_virtual_tokens == 3
    assert prompt_embedding(model) is None and torch.equal(_logits(model, tiny_ids), base_logits)

    # Each prompt adapter answers as it does loaded alone on a fresh copy of the base.
    for name, directory in (("p", p_dir), ("q", q_dir)):
        alone = make_llama()
        load_adapter(alone, directory)
        registry.use(name)
        assert torch.equal(_logits(model, tiny_ids), _logits(alone, tiny_ids))
    registry.use("p")
    first_p = _logits(model, tiny_ids)
    assert first_p.shape == base_logits.shape and (first_p - base_logits).abs().max() > 1e-2
    registry.use("a")   # prompt -> LoRA: the prompt's hooks are gone, the LoRA layers in
    assert prompt_embedding(model) is None and lora_modules(model)
    alone_a = make_llama()
    load_adapter(alone_a, dirs["a"])
    assert torch.equal(_logits(model, tiny_ids), _logits(alone_a, tiny_ids))
    registry.use("q")
    registry.use("p")
    assert torch.equal(_logits(model, tiny_ids), first_p)  # switching back: bit-identical
    with use_adapter(model, "none"):
        assert torch.equal(_logits(model, tiny_ids), base_logits) and prompt_embedding(model) is None
        assert not model._forward_pre_hooks and not model._forward_hooks  # no hook left behind
    assert registry.active() == "p" and prompt_embedding(model) is registry.get("p").prompt
    assert {p: (id(w), w.data_ptr()) for p, w in _linear_weights(model).items()} == base_weights

    # What does not apply to a prompt is refused with the reason.
    with pytest.raises(ValueError, match="prompt tuning: its virtual tokens are inputs"):
        registry.merge()
    with pytest.raises(ValueError, match=r"combine works on LoRA adapters; \['p'\] are prompt tuning"):
        registry.combine(["a", "p"], [1.0, 1.0], "mix")
    # Saved from the registry while inactive, it loads back to the same vectors.
    registry.use("a")
    registry.save("q", tmp_path / "q2", None)
    again = make_llama()
    load_adapter(again, tmp_path / "q2")
    assert torch.equal(again.prompt_tuning.prompt_embeddings.weight, registry.get("q").prompt.prompt_embeddings.weight)
    registry.remove("q")
    assert registry.names() == ["a", "p"] and registry.active() == "a"


def test_created_prompt_adapter_trains_alone_and_outside_changes_are_refused(make_llama, tiny_ids):
    model = make_llama()
    registry = adapter_registry(model)
    registry.create("lo", A_CONFIG)
    registry.create("pt", PromptTuningConfig(num_virtual_tokens=2, seed=3))
    assert registry.active() == "pt"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_tuning.prompt_embeddings.weight"]  # LoRA "lo" is not in the model now
    # An adopted prompt (apply_prompt_tuning before the registry) becomes adapter "default".
    other = make_llama()
    apply_prompt_tuning(other, PromptTuningConfig(num_virtual_tokens=2))
    adopted = AdapterRegistry(other)
    assert adopted.names() == ["default"] and adopted.get("default").kind == "prompt_tuning"
    from acculturate.adapters import remove_prompt_tuning

    remove_prompt_tuning(model)  # behind the registry's back
    with pytest.raises(RuntimeError, match="prompt-tuning prompt is not that of the active adapter 'pt'"):
        registry.use("lo")


def test_adapter_specs(tmp_path, make_llama, dirs):
    assert parse_adapter_spec("uk=/x/y") == ("uk", Path("/x/y"))
    assert parse_adapter_spec(str(dirs["a"])) == ("a", dirs["a"])
    odd = tmp_path / "k=v"
    odd.mkdir()
    assert parse_adapter_spec(str(odd)) == ("k=v", odd)  # an existing directory wins over NAME=DIR
    with pytest.raises(ValueError, match="NAME=DIR"):
        parse_adapter_spec("=dir")
    with pytest.raises(ValueError, match="two adapters are named 'a'"):
        load_adapters(make_llama(), [str(dirs["a"]), f"a={dirs['b']}"])
    model = make_llama()
    registry = load_adapters(model, [f"x={dirs['a']}", f"y={dirs['b']}"])
    assert registry.names() == ["x", "y"] and registry.active() == "x"  # default: the first
    assert load_adapters(make_llama(), [f"x={dirs['a']}", f"y={dirs['b']}"], use="none").active() is None


# -- the real default model ----------------------------------------------------------------------------

PROMPT = "What is a popular food to go with beer?\nAnswer in a few words."


def _train_adapter(model, tokenizer, country, steps=2, lr=2e-2):
    """Two real AdamW steps on one country's BLEnD answers (4 questions, one batch; the loss goes
    from 5.9 to about 3): enough to move the adapters apart, cheap on two CPU cores."""
    from acculturate.data import load_blend, tokenize_examples
    from acculturate.data.batching import pad_collate

    features = tokenize_examples(load_blend(countries=[country])[:4], tokenizer, "chat", max_length=96,
                                 progress=False)
    batch = pad_collate(features, tokenizer.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SmolLM2 with two adapters trained on one shared base (UK and Mexico answers), both saved."""
    from acculturate.models import load

    model, tokenizer = load("smollm2-135m", device="cpu")
    registry = adapter_registry(model)
    config = LoRAConfig(r=8, alpha=16, dropout=0.0, targets=("q_proj", "v_proj"))
    out = tmp_path_factory.mktemp("adapters")
    for name, country in (("uk", "UK"), ("mx", "Mexico")):
        registry.create(name, config)
        _train_adapter(model, tokenizer, country)
        registry.save(name, out / name, "smollm2-135m")
    # A prompt-tuning adapter beside them, initialised from a text (untrained: the text alone steers).
    registry.create("pt", PromptTuningConfig(num_virtual_tokens=8, init_text="Answer as a person from Mexico would:"),
                    tokenizer=tokenizer)
    registry.save("pt", out / "pt", "smollm2-135m")
    registry.use("uk")
    return model, tokenizer, out


def _greedy(model, tokenizer, n=8):
    from acculturate.data import render_prompt
    from acculturate.decode import GenerationConfig, generate

    prompt = render_prompt([{"role": "user", "content": PROMPT}], tokenizer, "chat")
    return generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=n))[0].text


@pytest.mark.slow
def test_two_trained_adapters_on_the_real_model(trained, default_model):
    model, tokenizer, _ = trained
    registry = adapter_registry(model)
    q_weight = model.model.layers[0].self_attn.q_proj.base_layer.weight
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids  # (1, T)

    registry.use("uk")
    uk_text, uk_logits = _greedy(model, tokenizer), _logits(model, ids)
    registry.use("mx")
    mx_text = _greedy(model, tokenizer)
    assert mx_text != uk_text, (uk_text, mx_text)
    registry.use("uk")
    assert _greedy(model, tokenizer) == uk_text and torch.equal(_logits(model, ids), uk_logits)
    with use_adapter(model, "none"):
        assert torch.equal(_logits(model, ids), _logits(default_model.model, ids))
        assert _greedy(model, tokenizer) == _greedy(default_model.model, tokenizer)
        assert model.model.layers[0].self_attn.q_proj.weight is q_weight  # the same tensor, not a reload
        none_text, none_logits = _greedy(model, tokenizer), _logits(model, ids)
    assert registry.active() == "uk"
    # The prompt-tuning adapter switches per request like the LoRA ones, and back bit-identically.
    with use_adapter(model, "pt"):
        pt_text, pt_logits = _greedy(model, tokenizer), _logits(model, ids)
        assert pt_logits.shape == uk_logits.shape  # the caller's positions only
    # The untrained text-initialised prompt moves the logits away from the base's and the LoRA's (its 8
    # greedy tokens may still match theirs).
    assert (pt_logits - none_logits).abs().max() > 1e-1 and (pt_logits - uk_logits).abs().max() > 1e-1, \
        (pt_text, none_text, uk_text)
    assert _greedy(model, tokenizer) == uk_text
    with use_adapter(model, "pt"):
        assert _greedy(model, tokenizer) == pt_text and torch.equal(_logits(model, ids), pt_logits)


@pytest.mark.slow
def test_generate_cli_with_two_adapters(trained, capsys):
    from acculturate.cli import main

    model, tokenizer, out = trained
    with use_adapter(model, "mx"):
        expected = _greedy(model, tokenizer)
    assert main(["generate", PROMPT, "--adapter", f"uk={out / 'uk'}", "--adapter", f"mx={out / 'mx'}",
                 "--use", "mx", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()
    with use_adapter(model, "pt"):
        expected = _greedy(model, tokenizer)
    assert main(["generate", PROMPT, "--adapter", f"uk={out / 'uk'}", "--adapter", f"pt={out / 'pt'}",
                 "--use", "pt", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()
    with pytest.raises(SystemExit, match=r"no adapter named 'fr'; loaded adapters: 'uk', 'mx'"):
        main(["generate", PROMPT, "--adapter", str(out / "uk"), "--adapter", str(out / "mx"), "--use", "fr"])


@pytest.mark.parametrize("tie", [True, False])
def test_new_vocabulary_rows_switch_with_their_adapter(make_llama, tmp_path, tiny_ids, tie):
    """An adapter saved with trained embedding rows (trainable_token_indices) applies them only while
    it is active: the base, and an adapter without rows, see the base embedding (and tied head)."""
    from acculturate.adapters.token_rows import TrainableTokenRows, apply_token_rows

    trained = make_llama(tie=tie)
    apply_lora(trained, A_CONFIG)
    rows = apply_token_rows(trained, [60, 61, 63])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lora_modules(trained).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.5)
        rows.rows.copy_(torch.randn(rows.rows.shape, generator=g))
    save_adapter(trained, tmp_path / "rows", None, A_CONFIG)
    plain_dir = _random_adapter(lambda: make_llama(tie=tie), tmp_path / "plain", B_CONFIG, 2)
    ids = torch.cat([tiny_ids, torch.tensor([[60, 61, 63, 60]] * 2)], dim=1)
    expected_rows = _logits(trained, ids)

    model = make_llama(tie=tie)
    base = _logits(model, ids)
    registry = adapter_registry(model)
    registry.add("rows", tmp_path / "rows")
    registry.add("plain", plain_dir)
    assert registry.get("rows").num_parameters() > registry.get("rows").layers["model.layers.0.self_attn.q_proj"].lora_A.weight.numel()
    assert not isinstance(model.get_input_embeddings(), TrainableTokenRows)   # nothing active yet
    torch.testing.assert_close(_logits(model, ids), base)
    registry.use("rows")
    torch.testing.assert_close(_logits(model, ids), expected_rows)
    registry.use("plain")
    assert not isinstance(model.get_input_embeddings(), TrainableTokenRows)
    plain_alone = make_llama(tie=tie)
    load_adapter(plain_alone, plain_dir)
    torch.testing.assert_close(_logits(model, ids), _logits(plain_alone, ids))
    with registry.using("rows"):
        torch.testing.assert_close(_logits(model, ids), expected_rows)
    registry.use(None)
    torch.testing.assert_close(_logits(model, ids), base)
    registry.save("rows", tmp_path / "resaved", None)   # saved while inactive: rows included
    again = make_llama(tie=tie)
    load_adapter(again, tmp_path / "resaved")
    torch.testing.assert_close(_logits(again, ids), expected_rows)
