"""`acculturate eval` end to end on the real default model (tiny sample, few tokens), config checks,
resume and rescore."""

import json
from pathlib import Path

import pytest

from acculturate.cli import main
from acculturate.config_loading import ConfigError, from_dict, load_yaml
from acculturate.jobs.system_eval import EvalConfig, resolve_paths, run_eval

CONFIGS = Path(__file__).resolve().parents[2] / "acculturate" / "configs" / "eval"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_yaml(EvalConfig, path)
    assert config.systems and config.tasks


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="kind: expected one of"):
        from_dict(EvalConfig, {"tasks": [{"name": "x", "kind": "bleu"}]})
    with pytest.raises(ConfigError, match="source: expected one of"):
        from_dict(EvalConfig, {"tasks": [{"name": "x", "kind": "nusax", "source": "klingon"}]})
    with pytest.raises(ConfigError, match="names must be unique"):
        from_dict(EvalConfig, {"systems": [{"name": "a"}, {"name": "a"}], "tasks": [{"name": "x", "kind": "blend"}]})
    with pytest.raises(ConfigError, match="strategy"):
        from_dict(EvalConfig, {"systems": [{"name": "a", "strategy": "magic"}], "tasks": [{"name": "x", "kind": "blend"}]})


def test_missing_adapter_says_what_to_run(tmp_path):
    config = load_yaml(EvalConfig, CONFIGS / "smollm2-135m_base-vs-adapt-uk.yaml",
                       [f"systems=[{{name: base}}, {{name: uk, adapter: {tmp_path}/no/adapter}}]"])
    with pytest.raises(FileNotFoundError, match="run `acculturate adapt` first"):
        resolve_paths(config, tmp_path)


def test_a_system_without_model_uses_its_adapters_base(tmp_path):
    """systems[].model unset: the base the adapter records (written into config.json), else the default;
    a named model stays; bases that cannot load are errors naming the system."""
    for name, base in (("gemma", "gemma3-270m"), ("elsewhere", "org/not-here")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "base_model_name_or_path": base}))
    config = from_dict(EvalConfig, {"systems": [{"name": "base"}, {"name": "uk", "adapter": "gemma"},
                                                {"name": "mine", "model": "smollm2-135m", "adapter": "gemma"}],
                                    "tasks": [{"name": "x", "kind": "blend"}]})
    resolve_paths(config, tmp_path)
    assert [s.model for s in config.systems] == ["smollm2-135m", "gemma3-270m", "smollm2-135m"]
    assert config.judge.model == "smollm2-135m"
    config = from_dict(EvalConfig, {"systems": [{"name": "far", "adapter": "elsewhere"}],
                                    "tasks": [{"name": "x", "kind": "blend"}]})
    with pytest.raises(ConfigError, match=r"systems\[far\].model: .*'org/not-here'"):
        resolve_paths(config, tmp_path)


@pytest.mark.slow
def test_eval_end_to_end_real_model(tmp_path, capsys):
    config = {
        "name": "tiny", "output_dir": str(tmp_path),
        "systems": [{"name": "base"}],
        "judge": {"max_new_tokens": 8},
        "tasks": [{"name": "blend", "kind": "blend", "countries": ["UK"], "limit": 2, "max_new_tokens": 8},
                  {"name": "mt", "kind": "nusax", "source": "indonesian", "target": "english", "limit": 2,
                   "max_new_tokens": 12},
                  {"name": "ap", "kind": "appropriateness", "region": "UK", "limit": 1, "max_new_tokens": 12},
                  {"name": "math", "kind": "cot", "limit": 1, "samples": 2, "max_new_tokens": 24}]}
    m = run_eval(from_dict(EvalConfig, config), progress=False)
    run = tmp_path / "tiny"
    assert (run / "metrics.json").exists() and "data:image/png;base64," in (run / "report.html").read_text()
    rows = [json.loads(line) for line in (run / "outputs/blend/base.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["output"] for r in rows)
    assert m["tasks"]["blend"]["systems"]["base"]["n"] == 2
    assert 0 <= m["tasks"]["mt"]["systems"]["base"]["chrf"] <= 100
    judged = json.loads((run / "judgements/ap/base.jsonl").read_text().splitlines()[0])
    assert judged["judge_raw"].startswith("Score:")
    chains = json.loads((run / "outputs/math/base.jsonl").read_text())["chains"]
    assert len(chains) == 2
    assert m["efficiency"]["base"]["completion_tokens"] > 0 and m["efficiency"]["base"]["tokens_per_s"] > 0
    # Without --resume an existing run is refused; with it nothing is generated again.
    with pytest.raises(ConfigError, match="--resume"):
        run_eval(from_dict(EvalConfig, config), progress=False)
    timing = (run / "timing/blend/base.jsonl").read_text()
    run_eval(from_dict(EvalConfig, config), resume=True, progress=False)
    assert (run / "timing/blend/base.jsonl").read_text() == timing
    # --rescore from the CLI recomputes the same numbers from the saved outputs.
    (run / "metrics.json").unlink()
    assert main(["eval", str(run), "--rescore"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["tasks"]["blend"]["systems"]["base"]["accuracy"] == m["tasks"]["blend"]["systems"]["base"]["accuracy"]
    assert "report.html" in capsys.readouterr().out


def test_strategy_systems_are_checked_at_load():
    tasks = [{"name": "b", "kind": "blend"}]
    with pytest.raises(ConfigError, match="self_consistency.samplez: unknown field"):
        from_dict(EvalConfig, {"systems": [{"name": "sc", "strategy": "self_consistency",
                                            "strategy_config": {"samplez": 3}}], "tasks": tasks})
    with pytest.raises(ConfigError, match="leave strategy_config empty"):
        from_dict(EvalConfig, {"systems": [{"name": "z", "strategy_config": {"max_new_tokens": 3}}], "tasks": tasks})
    with pytest.raises(ConfigError, match=r"systems\[c\].strategy: cot answers tasks of kind \['blend', 'cot'\], "
                                          r"but task 'mt' is 'nusax'"):
        from_dict(EvalConfig, {"systems": [{"name": "c", "strategy": "cot"}],
                               "tasks": tasks + [{"name": "mt", "kind": "nusax"}]})
    # system_prompt becomes the persona of a strategy that has one (nested for self_consistency).
    cfg = from_dict(EvalConfig, {"systems": [{"name": "sc", "strategy": "self_consistency", "system_prompt": "local",
                                              "strategy_config": {"cot": {"k": 1}}}], "tasks": tasks})
    assert cfg.systems[0].strategy_options() == {"cot": {"persona": "local", "k": 1}}


@pytest.mark.slow
def test_eval_with_prompting_strategies_real_model(tmp_path, default_model, monkeypatch):
    """A cot and a self_consistency system next to the zero-shot base, on 1 BLEnD question and 1
    SVAMP problem: rows carry what the scorers read, and the report compares the three."""
    import acculturate.jobs.system_eval as job

    monkeypatch.setattr(job, "_load_system", lambda *a, **k: default_model)  # one load for the three
    config = {
        "name": "strategies", "output_dir": str(tmp_path),
        "systems": [{"name": "base"},
                    {"name": "cot", "strategy": "cot", "strategy_config": {"max_new_tokens": 16}},
                    {"name": "sc", "strategy": "self_consistency",
                     "strategy_config": {"samples": 2, "cot": {"max_new_tokens": 12}}}],
        "tasks": [{"name": "blend", "kind": "blend", "countries": ["UK"], "limit": 1, "max_new_tokens": 8},
                  {"name": "math", "kind": "cot", "limit": 1, "samples": 2, "max_new_tokens": 12}]}
    m = run_eval(from_dict(EvalConfig, config), progress=False)
    run = tmp_path / "strategies"
    sc = [json.loads(line) for line in (run / "outputs/blend/sc.jsonl").read_text().splitlines()]
    assert len(sc) == 1 and all(r["strategy"] == "self_consistency" and r["calls"] == 2 for r in sc)
    assert all(sum(r["votes"].values()) <= 2 and r["output"] == (r["answer"] or "") for r in sc)
    (math_sc,) = [json.loads(line) for line in (run / "outputs/math/sc.jsonl").read_text().splitlines()]
    assert len(math_sc["chains"]) == 2 and all(math_sc["chains"])
    (math_cot,) = [json.loads(line) for line in (run / "outputs/math/cot.jsonl").read_text().splitlines()]
    assert len(math_cot["chains"]) == 1
    for task in ("blend", "math"):
        assert set(m["tasks"][task]["systems"]) == {"base", "cot", "sc"}
        assert set(m["tasks"][task]["comparisons"]) == {"cot", "sc"}
    # Cost: every token of the two chains is counted in the efficiency table.
    assert m["tasks"]["math"]["systems"]["sc"]["efficiency"]["completion_tokens"] == math_sc["completion_tokens"] > 0
    assert "self_consistency" in (run / "report.html").read_text()
    # --resume generates nothing again for a strategy system either.
    timing = (run / "timing/blend/sc.jsonl").read_text()
    run_eval(from_dict(EvalConfig, config), resume=True, progress=False)
    assert (run / "timing/blend/sc.jsonl").read_text() == timing
