"""`acculturate eval` end to end on the real default model (tiny sample, few tokens), config checks,
resume and rescore."""

import json
from pathlib import Path

import pytest

from acculturate.cli import main
from acculturate.config_loading import ConfigError, from_dict, load_yaml
from acculturate.jobs.evaluate import EvalConfig, resolve_paths, run_eval

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
