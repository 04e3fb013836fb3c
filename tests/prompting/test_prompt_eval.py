"""The prompt-eval job: table, per-example JSONL, resume, config checks, shipped configs."""

import json
from pathlib import Path

import pytest

from acculturate.config_loading import ConfigError, from_dict, load_yaml
from acculturate.jobs.prompt_eval import PromptEvalConfig, run_prompt_eval, split_task
from acculturate.prompting import load_svamp

SHIPPED = sorted((Path(__file__).parents[2] / "acculturate" / "configs" / "prompt_eval").glob("**/*.yaml"))


def config(tmp_path, strategies, sample=4):
    return from_dict(PromptEvalConfig, {"name": "t", "output_dir": str(tmp_path), "strategies": strategies,
                                        "task": {"name": "svamp", "sample": sample, "seed": 3}})


def test_runs_strategies_writes_table_and_resumes(tmp_path, scripted, last_user):
    # Right on problems with an even answer, one off on the others.
    gold = {e.meta["question"]: int(e.meta["answers"][0]) for e in load_svamp().examples}

    def respond(prompt, n):
        g = next(v for q, v in gold.items() if q in last_user(prompt))
        return f"The answer is {g if g % 2 == 0 else g + 1}."

    model = scripted(respond)
    cfg = config(tmp_path, [{"strategy": "zero_shot"}, {"strategy": "self_consistency", "label": "sc3",
                                                      "config": {"samples": 3}}])
    summary = run_prompt_eval(cfg, loaded=(model, model.tok), progress=False)
    out = tmp_path / "t"
    rows = [json.loads(line) for line in (out / "outputs" / "sc3.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["extra"]["votes"]) == 1 for r in rows)
    assert list(rows[0]["extra"]["votes"].values()) == [3] and len(rows[0]["trace"]["calls"]) == 3
    expected = sum(int(r["gold"][0]) % 2 == 0 for r in rows)
    res = summary["results"]
    assert set(res) == {"zero_shot", "sc3"} and res["sc3"]["n"] == 4
    assert res["sc3"]["mean_calls"] == 3 and res["zero_shot"]["mean_calls"] == 1
    assert res["sc3"]["mean_completion_tokens"] == 3 * res["zero_shot"]["mean_completion_tokens"]
    assert res["sc3"]["correct"] == res["zero_shot"]["correct"] == expected
    assert all(r["correct"] == (int(r["gold"][0]) % 2 == 0) for r in rows)
    table = (out / "results.md").read_text()
    assert "| sc3 |" in table and "mean tokens generated" in table
    assert json.loads((out / "results.json").read_text())["results"]["sc3"]["n"] == 4
    # Resume: drop one row (as if killed before it was written); only that example is redone.
    lines = (out / "outputs" / "zero_shot.jsonl").read_text().splitlines()
    (out / "outputs" / "zero_shot.jsonl").write_text("\n".join(lines[:-1]) + "\n{\"id\": \"cut")
    before = len(model.prompts)
    run_prompt_eval(cfg, loaded=(model, model.tok), progress=False)
    assert len(model.prompts) == before + 1
    # A different config under the same name is refused.
    with pytest.raises(ConfigError, match="different configuration"):
        run_prompt_eval(config(tmp_path, [{"strategy": "cot"}]), loaded=(model, model.tok), progress=False)


def test_sample_and_pool_are_disjoint():
    task, evaluated = split_task(load_svamp(), 25, seed=1)
    assert len(evaluated) == 25 and len(task.pool) == 975
    assert not {e.meta["id"] for e in evaluated} & {e.meta["id"] for e in task.pool}
    assert [e.meta["id"] for e in split_task(load_svamp(), 25, seed=1)[1]] == [e.meta["id"] for e in evaluated]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"strategies\[0\].*expected one of"):
        config(tmp_path, [{"strategy": "magic"}])
    with pytest.raises(ConfigError, match="samples"):
        config(tmp_path, [{"strategy": "self_consistency", "config": {"samples": 0}}])
    with pytest.raises(ConfigError, match="labels must differ"):
        config(tmp_path, [{"strategy": "cot"}, {"strategy": "cot"}])
    with pytest.raises(ConfigError, match="countries"):
        from_dict(PromptEvalConfig, {"task": {"name": "svamp", "countries": ["UK"]}})


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_load(path):
    cfg = load_yaml(PromptEvalConfig, path)
    assert cfg.strategies and cfg.task.sample
