"""`acculturate train` with raw text (data.kind: text), forgetting controls and the report:
every method's wiring on a tiny model (fast), and a small real continued-pre-training run (slow)."""

import json

import pytest

from acculturate.config_loading import ConfigError, from_dict
from acculturate.jobs.finetune import FinetuneConfig, run_finetune


def _config(tmp_path, model: str, method: str, **extra) -> FinetuneConfig:
    data = {
        "name": f"cpt-{method}", "output_dir": str(tmp_path / "runs"), "model": {"name": model},
        "data": {"kind": "text", "max_length": 48, "test_fraction": 0.25, "sources": [
            {"path": "shipped:nusax/valid.csv", "columns": {"text": "javanese"}, "limit": 24},
            {"path": "shipped:nusax/valid.csv", "columns": {"text": "sundanese"}, "limit": 24}]},
        "method": {"name": method, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 3e-3, "log_every": 1, "save_every": 0,
                  "warmup_ratio": 0.0},
        "forgetting": {"kl_weight": 0.5, "general_batch_size": 2},
        "general": {"sources": [{"path": "shipped:instructions/instruction-data.json", "format": "alpaca",
                                 "limit": 12}], "task_examples": 0, "max_length": 96},
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return from_dict(FinetuneConfig, data)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A 2-layer Llama with the real tokenizer (so the text pipeline is the real one), saved as an HF dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow   # the real tokenizer (the session fixture loads the default model)
@pytest.mark.parametrize("method", ["full", "head", "lora", "qlora"])
def test_text_training_with_kl_works_with_every_method(tmp_path, tiny_dir, method):
    metrics = run_finetune(_config(tmp_path, str(tiny_dir), method))
    assert metrics["data_kind"] == "text" and set(metrics["after"]["regional"]) == {"javanese", "sundanese"}
    history = [json.loads(line) for line in (tmp_path / "runs" / f"cpt-{method}" / "train" / "metrics.jsonl")
               .read_text().splitlines()]
    assert all("kl" in row for row in history if "loss" in row)
    report = (tmp_path / "runs" / f"cpt-{method}" / "report.md").read_text()
    assert "| javanese |" in report and "General ability" in report and "KL to before" in report
    assert metrics["after"]["general"]["kl_to_before"] > 0


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="data: kind: expected one of"):
        from_dict(FinetuneConfig, {"data": {"kind": "audio"}})
    with pytest.raises(ConfigError, match="forgetting: ForgettingConfig.general_share"):
        from_dict(FinetuneConfig, {"forgetting": {"general_share": 1.5}})
    with pytest.raises(ConfigError, match="group_dro: needs train.packing false"):
        _config(tmp_path, "smollm2-135m", "lora", forgetting={"group_dro": True}, train={"packing": True})


@pytest.mark.slow
def test_continued_pretraining_lowers_held_apart_perplexity_on_the_real_model(tmp_path):
    # Small on purpose: 3 steps of 2 x 32 tokens (about 20 s on a quiet 2-core machine).
    cfg = _config(tmp_path, "smollm2-135m", "lora",
                  data={"max_length": 32, "sources": [
                      {"path": "shipped:nusax/valid.csv", "columns": {"text": "javanese"}, "limit": 12},
                      {"path": "shipped:nusax/valid.csv", "columns": {"text": "sundanese"}, "limit": 12}]},
                  forgetting={"group_dro": True, "dro_step_size": 0.1, "general_batch_size": 1},
                  general={"sources": [{"path": "shipped:instructions/instruction-data.json", "format": "alpaca",
                                        "limit": 8}]},
                  train={"max_steps": 3, "batch_size": 2})
    metrics = run_finetune(cfg)
    before, after = metrics["before"], metrics["after"]
    for lang in ("javanese", "sundanese"):
        assert after["regional"][lang]["perplexity"] < before["regional"][lang]["perplexity"]
        assert after["regional"][lang]["bits_per_char"] < before["regional"][lang]["bits_per_char"]
    assert after["general"]["loss"] is not None and before["general"]["loss"] is not None
    assert before["general"]["kl_to_before"] == 0 and after["general"]["kl_to_before"] > 0
    last = [json.loads(x) for x in (tmp_path / "runs" / "cpt-lora" / "train" / "metrics.jsonl")
            .read_text().splitlines() if '"loss"' in x][-1]
    assert set(last["dro_weights"]) == {"javanese", "sundanese"} and last["kl"] >= 0
    assert (tmp_path / "runs" / "cpt-lora" / "adapter" / "adapter_model.safetensors").is_file()
