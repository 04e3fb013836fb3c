"""`acculturate compare`: config validation (fast) and a tiny real comparison (slow)."""

import json

import pytest

from acculturate.config_loading import ConfigError, from_dict
from acculturate.jobs.compare import CompareConfig, run_compare


def test_default_config_covers_every_method_with_a_shared_step_budget():
    cfg = CompareConfig()
    assert [m.name for m in cfg.methods] == ["full", "head", "lora", "qlora", "prompt_tuning"]
    assert cfg.train.max_steps and cfg.eval.limit


@pytest.mark.parametrize("data, field", [
    ({"methods": [{"name": "dora"}]}, "methods[0]: name"),
    ({"methods": [{"name": "lora"}, {"name": "lora"}]}, "methods: each method may appear once"),
    ({"methods": [{"name": "lora", "head_blocks": 2}]}, "methods[0]: head_blocks"),
    ({"methods": [{"name": "lora", "lr": 0}]}, "methods[0]: lr"),
    ({"train": {"max_steps": None}}, "train.max_steps"),
    ({"data": {"test_fraction": 0.0}}, "data.test_fraction"),
    ({"region": "Atlantis"}, "region"),
    ({"metods": []}, "metods: unknown field"),
])
def test_invalid_config_names_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        from_dict(CompareConfig, data)


def _tiny(tmp_path, methods, isolate=True):
    return from_dict(CompareConfig, {
        "name": "tiny", "output_dir": str(tmp_path), "isolate": isolate,
        "methods": [{"name": m, **({"lr": 3e-2} if m == "prompt_tuning" else {})} for m in methods],
        "data": {"sources": [{"path": "shipped:instructions/instruction-data.json", "limit": 2}],
                 "test_fraction": 0.25, "stratify": "topic", "max_length": 64},
        "lora": {"r": 4, "alpha": 8},
        "prompt_tuning": {"num_virtual_tokens": 4},
        "train": {"max_steps": 1, "batch_size": 2, "save_every": 0, "log_every": 1, "max_length": 64},
        "eval": {"limit": 2, "max_new_tokens": 4, "batch_size": 2},
    })


@pytest.mark.slow
def test_tiny_comparison_writes_table_json_and_plot_and_resumes(tmp_path):
    cfg = _tiny(tmp_path, ["lora", "prompt_tuning"])
    summary = run_compare(cfg, progress=False)
    out = tmp_path / "tiny"
    rows = {r["method"]: r for r in summary["methods"]}
    assert list(rows) == ["lora", "prompt_tuning"]
    for r in rows.values():
        assert r["steps"] == 1 and r["qa"]["total"] == 2
        assert 0 < r["trainable_params"] < r["total_params"]
        assert r["train_wall_time_s"] > 0 and r["tokens_per_s"] > 0
        assert r["peak_memory_kind"] in ("cpu_rss_growth", "cuda_max_allocated") and r["peak_memory_bytes"] >= 0
        assert r["eval_loss"] is not None and 0 < r["eval_loss"] < 20
        assert r["saved_bytes"] > 0 and (out / "methods" / r["method"] / "adapter").is_dir()
    # 4 virtual tokens x 576 dims vs r=4 LoRA on every linear layer
    assert rows["prompt_tuning"]["trainable_percent"] < rows["lora"]["trainable_percent"] < 100
    assert rows["prompt_tuning"]["saved_bytes"] < rows["lora"]["saved_bytes"]

    assert json.loads((out / "results.json").read_text())["methods"] == summary["methods"]
    table = (out / "results.md").read_text()
    assert "| lora |" in table and "| prompt_tuning |" in table and "cpu_rss_growth" in table
    # one step of training at these rates lowers the eval loss below the untrained model's
    assert summary["base"]["eval_loss"] > rows["lora"]["eval_loss"]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun skips finished methods: their results (and wall times) come back unchanged
    again = run_compare(cfg, progress=False)
    assert again["methods"] == summary["methods"]
