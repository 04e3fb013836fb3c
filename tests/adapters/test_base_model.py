"""Which base model adapters load on (adapters/base_model.py): the named model, else the adapters'
recorded base, else the embedded default; mixed bases and unloadable records are refused clearly."""

from __future__ import annotations

import json

import pytest

from acculturate.adapters import LoRAConfig, apply_lora, load_adapter, save_adapter
from acculturate.adapters.base_model import pick_base_model, recorded_base
from acculturate.adapters.peft_format import AdapterError
from acculturate.models.loading import DEFAULT_MODEL, EMBEDDED, cache_root

LORA = LoRAConfig(r=2, alpha=4, targets=("q_proj", "v_proj"))


def _adapter(make_llama, path, base, layers: int = 2):
    model = make_llama(layers=layers)
    apply_lora(model, LORA)
    save_adapter(model, path, base, LORA)
    return path


def test_the_named_model_wins_else_the_recorded_base_else_the_default(make_llama, tmp_path):
    gemma = _adapter(make_llama, tmp_path / "gemma", "gemma3-270m")
    unrecorded = _adapter(make_llama, tmp_path / "none", None)
    assert pick_base_model("smollm2-135m", [gemma]) == "smollm2-135m"
    assert pick_base_model(None, [gemma]) == "gemma3-270m"
    assert pick_base_model(None, [gemma, unrecorded]) == "gemma3-270m"   # one that records none agrees
    assert pick_base_model(None, [unrecorded]) == DEFAULT_MODEL
    assert pick_base_model(None, []) == DEFAULT_MODEL
    # A model directory that exists is used as recorded; a Hugging Face name of an embedded model maps to it.
    (tmp_path / "base").mkdir()
    local = _adapter(make_llama, tmp_path / "local", str(tmp_path / "base"))
    assert pick_base_model(None, [local]) == str(tmp_path / "base")
    config = json.loads((gemma / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "google/gemma-3-270m"
    (gemma / "adapter_config.json").write_text(json.dumps(config))
    assert recorded_base(gemma) == "gemma3-270m"


def test_adapters_of_different_bases_are_refused_by_name(make_llama, tmp_path):
    smol = _adapter(make_llama, tmp_path / "uk", "smollm2-135m")
    gemma = _adapter(make_llama, tmp_path / "mx", "gemma3-270m")
    with pytest.raises(AdapterError, match=r"different base models: 'smollm2-135m' \(.*uk\); 'gemma3-270m' "
                                           r"\(.*mx\).*pass --model"):
        pick_base_model(None, [smol, gemma])
    assert pick_base_model("gemma3-270m", [smol, gemma]) == "gemma3-270m"   # the user chose


def test_a_recorded_base_that_cannot_load_is_refused(make_llama, tmp_path):
    adapter = _adapter(make_llama, tmp_path / "a", "some-org/not-here")
    with pytest.raises(AdapterError, match=r"'some-org/not-here', which is neither an embedded model .* --model"):
        pick_base_model(None, [adapter])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pick_base_model(None, [tmp_path / "missing"])


def test_an_embedded_models_cache_paths_are_recorded_by_name(make_llama, tmp_path, monkeypatch):
    """Training on the converted cache directory (or the GGUF file) of an embedded model records its
    name, so the run folder loads on another machine."""
    monkeypatch.setenv("ACCULTURATE_CACHE", str(tmp_path / "cache"))
    converted = cache_root() / "gguf" / "gemma-3-270m-q4_k_m-0123456789abcdef"
    adapter = _adapter(make_llama, tmp_path / "a", str(converted))
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "gemma3-270m"
    gguf = tmp_path / EMBEDDED["smollm2-135m"].filename
    gguf.write_bytes(b"GGUF")
    adapter = _adapter(make_llama, tmp_path / "b", str(gguf))
    assert recorded_base(adapter) == "smollm2-135m"


def test_an_adapter_on_another_base_names_both_models(make_llama, tmp_path):
    adapter = _adapter(make_llama, tmp_path / "a", "gemma3-270m", layers=2)
    other = make_llama(layers=3)   # one layer more: the adapter has no weights for layer 2
    with pytest.raises(AdapterError, match=r"trained on 'gemma3-270m' .* loaded onto 'LlamaForCausalLM': "
                                           r"leave out --model"):
        load_adapter(other, adapter)


def test_commands_refuse_adapters_of_different_bases_before_loading(make_llama, tmp_path):
    """generate, export and serve pick the base before loading any model: mixed bases stop there."""
    from acculturate.cli import main
    from acculturate.serve.app import create_app
    from acculturate.serve.config import ServeConfig

    smol = _adapter(make_llama, tmp_path / "uk", "smollm2-135m")
    gemma = _adapter(make_llama, tmp_path / "mx", "gemma3-270m")
    with pytest.raises(SystemExit, match=r"acculturate generate: error: the adapters were trained on different "
                                         r"base models: 'smollm2-135m' .* 'gemma3-270m'"):
        main(["generate", "Hello", "--adapter", str(smol), "--adapter", str(gemma)])
    with pytest.raises(SystemExit, match="acculturate export: error: the adapters were trained on different"):
        main(["export", "--format", "vllm", "--adapter", str(smol), "--adapter", str(gemma),
              "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(AdapterError, match="different base models"):
        create_app(ServeConfig(adapters={"uk": str(smol), "mx": str(gemma)}, db=str(tmp_path / "db.sqlite")))


@pytest.mark.slow
def test_a_gemma_adapter_runs_on_gemma_without_model(tmp_path, capsys):
    """`acculturate generate --adapter DIR` loads the adapter's recorded base, Gemma 3, not the default;
    an explicit --model that does not fit is refused naming both."""
    import torch

    from acculturate.cli import main
    from acculturate.data import render_prompt
    from acculturate.decode import GenerationConfig, generate
    from acculturate.models import load

    model, tokenizer = load("gemma3-270m", device="cpu", dtype="fp32")
    prompt = [render_prompt([{"role": "user", "content": "What do people eat for breakfast in the UK?"}],
                            tokenizer, "chat")]
    config = GenerationConfig(max_new_tokens=8)
    base_text = generate(model, tokenizer, prompt, config)[0].text
    lora = LoRAConfig(r=4, alpha=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    torch.manual_seed(0)
    apply_lora(model, lora)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)   # a trained-looking adapter (B is zero at init)
    save_adapter(model, tmp_path / "uk", "gemma3-270m", lora)
    expected = generate(model, tokenizer, prompt, config)[0].text
    assert expected != base_text
    assert main(["generate", "What do people eat for breakfast in the UK?", "--adapter", str(tmp_path / "uk"),
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()
    # The user's --model is kept; the adapter does not fit it, and the error names both models.
    with pytest.raises(SystemExit, match=r"trained on 'gemma3-270m' .* loaded onto 'smollm2-135m'"):
        main(["generate", "Hello", "--model", "smollm2-135m", "--adapter", str(tmp_path / "uk")])
