"""`acculturate export --format vllm`: the exported folders have what vLLM reads, checked against
vLLM's expectations without installing it: an HF config with the architecture and sizes, safetensors
weights under HF names in the requested dtype, the tokenizer and chat template, PEFT LoRA adapters
(peft_type, r, lora_alpha, target_modules vLLM supports, lora_A/lora_B tensor names and shapes), and
the exact `vllm serve` command."""

import json
import shlex

import pytest
import torch
from safetensors import safe_open

from acculturate.adapters import LoRAConfig, apply_lora, save_adapter
from acculturate.adapters.peft_format import AdapterError
from acculturate.jobs.export import export_vllm

# the Llama projections vLLM's LoRA layers cover (vllm/model_executor/models/llama.py packed modules)
VLLM_LLAMA_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _adapter(model_dir, out, r, seed):
    from acculturate.models import load

    model, _ = load(model_dir, device="cpu")
    torch.manual_seed(seed)
    apply_lora(model, LoRAConfig(r=r, alpha=2 * r, targets=("q_proj", "v_proj")))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)   # a trained-looking adapter (B is zero at init)
    save_adapter(model, out, str(model_dir), LoRAConfig(r=r, alpha=2 * r, targets=("q_proj", "v_proj")))
    return out


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _check_hf_model_dir(d, dtype):
    config = json.loads((d / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "intermediate_size", "max_position_embeddings", "rms_norm_eps", "rope_theta"):
        assert key in config or key in config.get("rope_parameters", {}), key
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    tensors = _tensors(d / "model.safetensors")
    assert "model.embed_tokens.weight" in tensors and "model.norm.weight" in tensors
    assert all(k.startswith(("model.", "lm_head.")) for k in tensors)
    assert not any("lora" in k for k in tensors)
    assert {t.dtype for t in tensors.values()} == {dtype}
    n = config["num_hidden_layers"]
    assert f"model.layers.{n - 1}.self_attn.q_proj.weight" in tensors
    assert ("lm_head.weight" in tensors) != config.get("tie_word_embeddings", False)
    assert (d / "tokenizer.json").is_file() and (d / "tokenizer_config.json").is_file()
    template = d / "chat_template.jinja"
    assert template.is_file() or "chat_template" in json.loads((d / "tokenizer_config.json").read_text())
    return config, tensors


def test_multi_lora_export_has_what_vllm_serves(tiny_model_dir, tmp_path):
    a = _adapter(tiny_model_dir, tmp_path / "uk", r=4, seed=0)
    b = _adapter(tiny_model_dir, tmp_path / "mx", r=24, seed=1)
    out = tmp_path / "export"
    result = export_vllm(str(tiny_model_dir), [f"uk={a}", f"mexico={b}"], out)
    assert result["layout"] == "multi-lora"
    config, base = _check_hf_model_dir(out / "base", torch.bfloat16)
    for name, r in (("uk", 4), ("mexico", 24)):
        d = out / "adapters" / name
        ac = json.loads((d / "adapter_config.json").read_text())
        assert ac["peft_type"] == "LORA" and ac["r"] == r and ac["lora_alpha"] == 2 * r
        assert set(ac["target_modules"]) <= VLLM_LLAMA_LORA_MODULES and not ac["modules_to_save"]
        assert not ac["use_dora"] and ac["bias"] == "none"
        weights = _tensors(d / "adapter_model.safetensors")
        for key, t in weights.items():
            assert key.startswith("base_model.model.model.layers.") and key.endswith((".lora_A.weight", ".lora_B.weight"))
            module = key.split(".")[-3]
            base_w = base[key.replace("base_model.model.", "").replace(".lora_A", "").replace(".lora_B", "")]
            out_f, in_f = base_w.shape
            assert t.shape == ((r, in_f) if ".lora_A." in key else (out_f, r)), (key, t.shape)
            assert module in ac["target_modules"]
    args = shlex.split(result["command"])
    assert args[:3] == ["vllm", "serve", str(out / "base")] and "--enable-lora" in args
    assert int(args[args.index("--max-lora-rank") + 1]) == 32          # >= 24, a value vLLM accepts
    i = args.index("--lora-modules")
    assert args[i + 1:i + 3] == [f"uk={out / 'adapters' / 'uk'}", f"mexico={out / 'adapters' / 'mexico'}"]
    assert result["command"] in (out / "serve.sh").read_text() and "mexico" in (out / "README.md").read_text()


def test_a_legacy_bin_adapter_exports_as_safetensors(tiny_model_dir, tmp_path):
    """PEFT's older adapter_model.bin loads for serving, so it must export to a complete folder too."""
    from safetensors.torch import load_file

    a = _adapter(tiny_model_dir, tmp_path / "uk", r=4, seed=0)
    tensors = load_file(str(a / "adapter_model.safetensors"))
    torch.save(tensors, a / "adapter_model.bin")
    (a / "adapter_model.safetensors").unlink()
    out = tmp_path / "export"
    result = export_vllm(str(tiny_model_dir), [f"uk={a}"], out)
    exported = out / "adapters" / "uk"
    assert "adapters/uk/adapter_model.safetensors" in result["files"]
    assert not (exported / "adapter_model.bin").exists()
    got = _tensors(exported / "adapter_model.safetensors")
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert (exported / "adapter_config.json").read_text() == (a / "adapter_config.json").read_text()


def test_merged_export_fuses_the_adapter(tiny_model_dir, tmp_path):
    from acculturate.models import load

    a = _adapter(tiny_model_dir, tmp_path / "uk", r=4, seed=0)
    out = tmp_path / "export"
    result = export_vllm(str(tiny_model_dir), [f"uk={a}"], out, merge=True, dtype="bf16")
    assert result["layout"] == "merged" and shlex.split(result["command"])[:3] == ["vllm", "serve", str(out / "model")]
    _check_hf_model_dir(out / "model", torch.bfloat16)
    # the merged model answers as base + adapter does (bf16 rounding aside)
    from acculturate.adapters import load_adapter

    ref, _ = load(tiny_model_dir, device="cpu")
    load_adapter(ref, a)
    merged, _ = load(out / "model", device="cpu", dtype="fp32")
    ids = torch.tensor([[1, 50, 200, 7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, ref(ids).logits, atol=0.05, rtol=0.02)


def test_prompt_tuning_adapters_are_refused(tmp_path, tiny_model_dir):
    d = tmp_path / "pt"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    with pytest.raises(AdapterError, match="vLLM serves LoRA adapters only"):
        export_vllm(str(tiny_model_dir), [str(d)], tmp_path / "out")


@pytest.mark.slow
def test_default_model_exports_for_vllm(tmp_path, default_model):
    """The real default model (its GGUF de-quantized): a merged export vLLM can load."""
    out = tmp_path / "export"
    export_vllm("smollm2-135m", [], out)
    config, tensors = _check_hf_model_dir(out / "model", torch.bfloat16)
    assert config["hidden_size"] == 576 and config["num_hidden_layers"] == 30
