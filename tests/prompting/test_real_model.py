"""Smoke tests: every strategy runs on the real default model (SmolLM2-135M) with tiny budgets, and its
trace accounts for what the model did. Accuracy is measured by `acculturate prompt-eval`, not here."""

import json

import pytest

from acculturate.cli import main
from acculturate.prompting import STRATEGIES, load_blend_task, load_svamp, run_strategy

pytestmark = pytest.mark.slow

TINY = {
    "zero_shot": {"max_new_tokens": 8},
    "few_shot": {"k": 2, "max_new_tokens": 6},
    "cot": {"mode": "exemplar", "k": 1, "max_new_tokens": 16},
    "self_consistency": {"samples": 3, "cot": {"mode": "zero", "max_new_tokens": 12}},
    "tree_of_thought": {"breadth": 2, "beam": 1, "depth": 1, "thought_tokens": 12, "value_tokens": 3,
                        "final_tokens": 6},
    "critique_refine": {"rounds": 1, "critique_tokens": 8, "revise_tokens": 12, "answer": {"max_new_tokens": 12}},
    "program": {"k": 2, "retries": 0, "max_new_tokens": 24},
    "rag": {"k": 1, "max_new_tokens": 12},   # + the index of svamp_index
}


@pytest.fixture(scope="module")
def svamp():
    return load_svamp()


@pytest.fixture(scope="module")
def svamp_index(svamp, tmp_path_factory):
    """A real (all-MiniLM-L6-v2) index of a few SVAMP problem texts, for the rag strategy."""
    from acculturate.rag import update_index

    root = tmp_path_factory.mktemp("svamp-rag")
    (root / "docs").mkdir()
    for ex in svamp.examples[:4]:
        (root / "docs" / f"{ex.meta['id']}.txt").write_text(ex.meta["question"], encoding="utf-8")
    update_index([root / "docs"], root / "index", progress=False)
    return str(root / "index")


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_runs_on_the_real_model(default_model, svamp, name, request):
    model, tok = default_model
    example = svamp.examples[2]
    config = TINY[name] if name != "rag" else {**TINY[name], "index": request.getfixturevalue("svamp_index")}
    result = run_strategy(name, model, tok, svamp, example, config)
    calls = result.trace.calls
    assert calls and all(c.completion_tokens >= 1 and c.prompt_tokens > 0 for c in calls)
    assert all(example.meta["question"] in c.prompt or "Question:" in c.prompt for c in calls[-1:])
    assert result.trace.completion_tokens == sum(c.completion_tokens for c in calls)
    assert result.trace.seconds >= max(c.seconds for c in calls) > 0
    assert result.answer is None or isinstance(result.answer, float)
    json.dumps(result.trace.to_dict())  # the trace is JSON-able as saved by prompt-eval
    if name == "self_consistency":
        assert len(calls) == 3 and {c.batch for c in calls} == {0}
        assert sum(result.extra["votes"].values()) == sum(a is not None for a in result.extra["chains"])
        assert len({c.completion for c in calls}) > 1, "sampled chains should differ"
    if name == "rag":  # the question's own problem text is the passage found
        assert result.extra["passages"][0]["source"].endswith(f"{example.meta['id']}.txt")
    if name == "tree_of_thought":
        assert [c.step for c in calls][:2] == ["thought", "thought"]
        assert result.extra["tree"][0]["depth"] == 0 and len(result.extra["tree"]) >= 2


def test_blend_persona_and_similar_exemplars(default_model):
    model, tok = default_model
    task = load_blend_task(countries=["UK", "Mexico"])
    example = next(e for e in task.examples if "breakfast" in e.meta["question"] and e.meta["region"] == "UK")
    result = run_strategy("few_shot", model, tok, task, example,
                          {"k": 3, "selection": "similar", "persona": "local", "max_new_tokens": 8})
    prompt = result.trace.calls[0].prompt
    assert "You are a local of UK." in prompt
    chosen = [e for e in task.examples if e.meta["id"] in result.extra["exemplars"]]
    assert len(chosen) == 3 and all(e.meta["region"] == "UK" and e is not example for e in chosen)
    # The nearest UK questions by meaning: at least one is about a meal too.
    assert any(w in e.meta["question"].lower() for e in chosen for w in ("breakfast", "lunch", "dinner", "meal", "food"))
    assert isinstance(result.answer, str) or result.answer is None


def test_cli_prompt(capsys):
    assert main(["prompt", "--strategy", "cot", "--task", "svamp", "--set", "max_new_tokens=12", "--json",
                 "Tom had 5 apples and ate 2. How many apples are left?"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trace"]["calls"][0]["step"] == "reasoning" and out["trace"]["completion_tokens"] <= 12
    assert main(["prompt", "--strategy", "zero_shot", "--task", "blend", "--region", "UK", "--set", "persona=local",
                 "--set", "max_new_tokens=6", "What do people eat for breakfast in the UK?"]) == 0
    assert "answer:" in capsys.readouterr().out


def test_cli_prompt_eval(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"name: e\noutput_dir: {tmp_path}\ntask: {{name: svamp, sample: 2}}\n"
                      "strategies:\n  - strategy: zero_shot\n    config: {max_new_tokens: 4}\n"
                      "  - strategy: program\n    config: {max_new_tokens: 24, retries: 0}\n")
    assert main(["prompt-eval", str(config)]) == 0
    assert "| program |" in capsys.readouterr().out
    assert len((tmp_path / "e" / "outputs" / "program.jsonl").read_text().splitlines()) == 2
    assert main(["prompt-eval", str(config), "--set", "task.sample=3"]) == 2  # another config, same name
