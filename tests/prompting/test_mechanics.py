"""Mechanics of the strategies with a scripted model (conftest.ScriptedLM) inside the real generate loop:
vote counting, one batch for k chains, tree pruning and stopping, refine stopping, program retries,
personas and exemplar choice. Whether the strategies run on the real model is in test_real_model.py."""

import re

import pytest

from acculturate.config_loading import ConfigError
from acculturate.data import Example
from acculturate.prompting import (STRATEGIES, Task, load_svamp, majority_vote, run_strategy, strategy_config)
from acculturate.prompting.critique_refine import accepts
from acculturate.prompting.prompts import select_exemplars, system_prompt
from acculturate.prompting.tree_of_thought import parse_value


def number_task(n=6):
    examples = [Example([{"role": "user", "content": f"Q{i}: {i} + 1?\nAnswer with a number."}],
                        {"id": f"q{i}", "question": f"What is {i} + 1?", "prompt": f"What is {i} + 1?\nAnswer with a number.",
                         "answers": [float(i + 1)], "answer_text": str(i + 1),
                         "solution": f"We need {i} + 1 = {i + 1}.\nThe answer is {i + 1}.",
                         "program": f"print({i} + 1)", "region": None}) for i in range(n)]
    return Task("toy", "number", examples)


# --- voting -------------------------------------------------------------------------------------

def test_majority_vote_counts_keys_and_breaks_ties_by_first_sample():
    assert majority_vote([5.0, 7.0, 7.0, None, 5.0, 7.0], key=lambda a: str(int(a))) == (7.0, {"7": 3, "5": 2})
    winner, votes = majority_vote([5.0, 7.0, 7.0, 5.0], key=lambda a: str(int(a)))
    assert winner == 5.0 and votes == {"5": 2, "7": 2}      # tie: 5 was sampled first
    assert majority_vote([None, None]) == (None, {})
    assert majority_vote(["Tea", "tea.", "coffee"], key=lambda a: a.lower().strip(".")) == ("Tea", {"tea": 2, "coffee": 1})


def test_self_consistency_samples_k_chains_in_one_batch_and_votes(scripted):
    # Each with a leading space: the samples of one prompt share their first token (conftest._Cache).
    replies = [" So 2 + 2 = 4.\nThe answer is 4.", " The answer is 5.", " I get 4.0", " no idea", " The answer is 5",
               " The answer is 5."]
    model = scripted(lambda prompt, n: replies[n])
    task = number_task()
    result = run_strategy("self_consistency", model, model.tok, task, task.examples[3],
                          {"samples": 6, "temperature": 0.7, "seed": 1})
    assert result.answer == 5.0
    assert result.extra["votes"] == {"5": 3, "4": 2}
    assert result.extra["chains"] == ["4", "5", "4", None, "5", "5"]
    assert model.prefills == [1]                              # k chains = one prefill, copied to 6 rows
    assert len(result.trace.calls) == 6 and {c.batch for c in result.trace.calls} == {0}
    assert len(model.prompts) == 6 and len(set(model.prompts)) == 1   # the same prompt, sampled k times
    prompt_tokens = result.trace.calls[0].prompt_tokens
    assert [c.cached_tokens for c in result.trace.calls] == [0] + [prompt_tokens] * 5
    assert "Let's think step by step." in model.prompts[0]    # chains are zero-shot CoT by default
    assert result.trace.completion_tokens == sum(len(r.encode()) + 1 for r in replies)  # +1: EOS


def test_self_consistency_with_exemplar_chains(scripted):
    model = scripted(lambda prompt, n: "The answer is 2.")
    task = number_task()
    result = run_strategy("self_consistency", model, model.tok, task, task.examples[1],
                          {"samples": 3, "cot": {"mode": "exemplar", "k": 2}})
    assert result.answer == 2.0 and result.extra["votes"] == {"2": 3}
    # Two worked exemplars (instruction + solution each), then the question's instruction.
    assert model.prompts[0].count("The answer is") == 2 * 2 + 1
    assert model.prompts[0].count("What is 1 + 1?") == 1      # never its own exemplar


# --- tree of thought ----------------------------------------------------------------------------

def tree_responder(last_user, thoughts, verdicts, final="The answer is 0."):
    """thoughts[depth] = proposals in order; verdicts: substring of a step -> value word."""
    state = {}

    def respond(prompt, n):
        user = last_user(prompt)
        if user.startswith("Question") and "Reply with one word" in user:
            last_step = user.split("Partial solution:\n")[1].split("\n\n")[0].splitlines()[-1]
            return next((v for key, v in verdicts.items() if key in last_step), "likely")
        if "Give the final answer." in user:
            return " " + final.removeprefix("The answer is").strip()
        depth = int(re.search(r"Step (\d+): $", prompt).group(1))
        i = state.get(depth, 0)
        state[depth] = i + 1
        # A leading space: the samples of one prompt share their first token (conftest._Cache).
        return " " + thoughts[depth][i % len(thoughts[depth])]
    return respond


def test_tree_of_thought_prunes_to_the_beam_and_stops_on_a_solution(scripted, last_user):
    thoughts = {1: ["good A", "bad B", "good C", "meh D"],     # 2 kept states x 2 proposals at depth 2
                2: ["The answer is 9.", "good A2", "bad C2", "The answer is 7."]}
    verdicts = {"good": "sure", "bad": "impossible", "meh": "likely", "9": "impossible", "7": "sure"}
    model = scripted(tree_responder(last_user, thoughts, verdicts))
    task = number_task()
    result = run_strategy("tree_of_thought", model, model.tok, task, task.examples[0],
                          {"breadth": 4, "beam": 2, "depth": 3, "value_tokens": 16})  # 1 char = 1 token
    tree = {n["thought"]: n for n in result.extra["tree"]}
    # Depth 1: four proposals from the root, the two "sure" ones kept.
    assert [tree[t]["kept"] for t in thoughts[1]] == [True, False, True, False]
    assert tree["good A"]["value"] == 20 and tree["bad B"]["value"] == 0.001 and tree["meh D"]["value"] == 1
    # Depth 2: only kept states were expanded (breadth 4 from a beam of 2: 4 proposals each, deduplicated).
    depth2 = [n for n in result.extra["tree"] if n["depth"] == 2]
    assert {n["parent"] for n in depth2} == {tree["good A"]["id"], tree["good C"]["id"]}
    # A solution valued "impossible" (9) is pruned; the "sure" one (7) stops the search at depth 2.
    assert result.answer == 7.0 and result.extra["stopped"] == "solution"
    assert result.extra["path"][-1] == "The answer is 7." and len(result.extra["path"]) == 2
    assert not any(n["depth"] == 3 for n in result.extra["tree"])
    steps = [c.step for c in result.trace.calls]
    assert "final" not in steps and steps.count("value") == len(result.extra["tree"]) - 1
    assert [c.batch for c in result.trace.calls if c.step == "thought"][:4] == [0] * 4  # one batch per depth


def test_tree_of_thought_asks_the_best_state_at_the_depth_limit(scripted, last_user):
    thoughts = {1: ["bad X", "good Y"], 2: ["good Z", "bad W"]}
    model = scripted(tree_responder(last_user, thoughts, {"good": "sure", "bad": "impossible"},
                                    final="The answer is 42."))
    task = number_task()
    result = run_strategy("tree_of_thought", model, model.tok, task, task.examples[0],
                          {"breadth": 2, "beam": 1, "depth": 2, "value_tokens": 16})
    assert result.extra["stopped"] == "depth" and result.answer == 42.0
    assert result.extra["path"] == ["good Y", "good Z"]
    final_call = result.trace.calls[-1]
    assert final_call.step == "final" and "Step 1: good Y\nStep 2: good Z" in final_call.prompt


def test_parse_value():
    assert parse_value("Sure.") == 20 and parse_value("likely") == 1 and parse_value("Impossible!") == 0.001
    assert parse_value("I am not sure") == 1 and parse_value("No, it is wrong") == 0.001
    assert parse_value("Hmm.") == 1                           # no verdict: neutral


# --- critique and refine ------------------------------------------------------------------------

def refine_responder(last_user, critiques, revisions, first="The answer is 3."):
    def respond(prompt, n):
        user = last_user(prompt)
        if "Check the reasoning" in user:
            return critiques.pop(0)
        if "Feedback:" in user:
            return revisions.pop(0)
        return first
    return respond


def test_refine_stops_when_the_critique_accepts(scripted, last_user):
    model = scripted(refine_responder(last_user, ["CORRECT"], []))
    task = number_task()
    result = run_strategy("critique_refine", model, model.tok, task, task.examples[2], {"rounds": 3})
    assert result.answer == 3.0 and result.extra["stopped"] == "accepted"
    assert [c.step for c in result.trace.calls] == ["answer", "critique"]


def test_refine_revises_until_accepted_and_keeps_the_last_answer(scripted, last_user):
    model = scripted(refine_responder(last_user, ["The sum is wrong.", "The answer is correct."],
                                      ["2 + 1 = 3... no, The answer is 4."]))
    task = number_task()
    result = run_strategy("critique_refine", model, model.tok, task, task.examples[2], {"rounds": 3})
    assert [c.step for c in result.trace.calls] == ["answer", "critique", "revise", "critique"]
    assert result.answer == 4.0 and result.extra["stopped"] == "accepted"
    assert "The sum is wrong." in result.trace.calls[2].prompt   # the revision sees the critique


def test_refine_stops_after_the_round_limit(scripted, last_user):
    model = scripted(refine_responder(last_user, ["Incorrect."] * 5, ["I am not sure.", "The answer is 6."]))
    task = number_task()
    result = run_strategy("critique_refine", model, model.tok, task, task.examples[2], {"rounds": 2})
    assert [c.step for c in result.trace.calls] == ["answer", "critique", "revise", "critique", "revise"]
    assert result.extra["stopped"] == "rounds" and result.answer == 6.0
    assert result.extra["rounds"][0]["answer"] is None        # a revision without an answer...
    # ...kept the previous answer until the next revision replaced it.


def test_accepts():
    assert accepts("CORRECT") and accepts("Yes, the answer is correct.")
    assert not accepts("Incorrect: 2 + 2 is 4.") and not accepts("This is not correct.")
    assert not accepts("Correct, however the sum is wrong.") and not accepts("The answer should be 5.")


# --- program ------------------------------------------------------------------------------------

def test_program_runs_in_the_sandbox_and_retries_with_the_error(scripted, last_user):
    replies = ["```python\nprint(undefined_name)\n```", "Here:\n```python\nx = 2 + 1\nprint(x)\n```"]
    model = scripted(lambda prompt, n: replies.pop(0))
    task = number_task()
    result = run_strategy("program", model, model.tok, task, task.examples[2], {"retries": 2})
    assert result.answer == 3.0 and len(result.extra["attempts"]) == 2
    assert "NameError" in result.extra["attempts"][0]["stderr"]
    assert "NameError" in model.prompts[1]
    shown = [f"print({e[1:]} + 1)" for e in result.extra["exemplars"]]
    assert len(shown) == 2 and all(code in model.prompts[0] for code in shown)  # exemplar programs


def test_program_that_breaks_the_sandbox_rules_gives_no_answer(scripted):
    model = scripted(lambda prompt, n: "```python\nprint(open('/etc/passwd').read())\n```")
    task = number_task()
    result = run_strategy("program", model, model.tok, task, task.examples[2], {"retries": 1})
    assert result.answer is None and len(result.extra["attempts"]) == 2
    assert all(a["killed_reason"] == "blocked" for a in result.extra["attempts"])
    assert [e["kind"] for e in result.trace.events] == ["sandbox", "sandbox"]


def test_program_fails_closed_before_asking_the_model_when_a_sandbox_layer_is_missing(scripted, monkeypatch):
    from acculturate.prompting import sandbox

    # Without unshare on PATH the network namespace cannot be set up: a real missing layer.
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox._network_prefix.cache_clear()
    sandbox._probe.cache_clear()
    try:
        model = scripted(lambda prompt, n: "```python\nprint(3)\n```")
        task = number_task()
        with pytest.raises(sandbox.SandboxUnavailable, match="network_namespace"):
            run_strategy("program", model, model.tok, task, task.examples[2])
        assert model.prompts == []  # nothing generated
        weaker = {"sandbox": {"allow_weaker": ["network_namespace"]}}
        result = run_strategy("program", model, model.tok, task, task.examples[2], weaker)
        assert result.answer == 3.0 and result.extra["sandbox_layers"]["network_namespace"] is False
    finally:
        monkeypatch.undo()
        sandbox._network_prefix.cache_clear()
        sandbox._probe.cache_clear()


def test_program_without_code(scripted):
    model = scripted(lambda prompt, n: "I cannot write programs.")
    task = number_task()
    result = run_strategy("program", model, model.tok, task, task.examples[2], {"retries": 0})
    assert result.answer is None and result.extra["attempts"] == [{"code": None,
                                                                   "error": "No Python program found in the reply."}]


# --- zero/few-shot, personas, exemplars ---------------------------------------------------------

def test_zero_shot_persona_uses_the_question_region(scripted):
    model = scripted(lambda prompt, n: "Tea.")
    ex = Example([{"role": "user", "content": "x"}], {"id": "a", "question": "Drink?", "prompt": "Drink?",
                                                      "answers": ["tea"], "region": "UK"})
    task = Task("t", "short", [ex])
    result = run_strategy("zero_shot", model, model.tok, task, ex, {"persona": "local"})
    assert result.answer == "Tea" and task.is_correct(result.answer, ex)
    assert "<|im_start|>system\nYou are a local of UK." in model.prompts[0]
    run_strategy("zero_shot", model, model.tok, task, ex, {"persona": "local", "region": "Wales"})
    assert "You are a local of Wales." in model.prompts[1]
    run_strategy("zero_shot", model, model.tok, task, ex, {"persona": "You are a pirate."})
    assert "<|im_start|>system\nYou are a pirate.<|im_end|>" in model.prompts[2]


def test_persona_errors():
    assert system_prompt(None) is None
    with pytest.raises(ValueError, match="unknown 'nobody'"):
        system_prompt("nobody", "UK")
    with pytest.raises(ValueError, match="needs a region"):
        system_prompt("local", None)
    assert "tutor" in system_prompt("tutor").lower()


def test_static_exemplars_are_fixed_and_never_the_question():
    task = number_task(8)
    chosen = {ex.meta["id"]: [e.meta["id"] for e in select_exemplars(task, ex, 3, "static", seed=0)]
              for ex in task.examples}
    for qid, ids in chosen.items():
        assert qid not in ids and len(ids) == 3
    # The same seeded choice for every question that is not in it (8 - 3 of them).
    lists = [tuple(ids) for ids in chosen.values()]
    assert max(lists.count(ids) for ids in lists) == 8 - 3
    assert select_exemplars(task, task.examples[0], 3, "static", seed=1) != \
        select_exemplars(task, task.examples[0], 3, "static", seed=0)


def test_exemplars_prefer_the_same_region():
    examples = [Example([{"role": "user", "content": "q"}],
                        {"id": f"{r}{i}", "question": f"{r} question {i}", "region": r})
                for r in ("UK", "Spain") for i in range(3)]
    task = Task("t", "short", examples)
    picked = select_exemplars(task, examples[0], 2, "static")
    assert all(e.meta["region"] == "UK" and e.meta["id"] != "UK0" for e in picked)


def test_few_shot_shows_exemplars_as_turns(scripted):
    model = scripted(lambda prompt, n: "6")
    task = number_task()
    result = run_strategy("few_shot", model, model.tok, task, task.examples[5], {"k": 2})
    assert result.answer == 6.0
    assert model.prompts[0].count("<|im_start|>assistant\n") == 3  # 2 exemplar answers + the reply
    assert len(result.extra["exemplars"]) == 2 and "q5" not in result.extra["exemplars"]


# --- registry and configs -----------------------------------------------------------------------

def test_every_strategy_is_registered_with_a_config():
    assert set(STRATEGIES) == {"zero_shot", "few_shot", "cot", "self_consistency", "tree_of_thought",
                               "critique_refine", "program", "rag"}
    for name, strategy in STRATEGIES.items():
        assert isinstance(strategy_config(name), strategy.config)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="self_consistency.samples"):
        strategy_config("self_consistency", {"samples": "many"})
    with pytest.raises(ConfigError, match="unknown field"):
        strategy_config("cot", {"steps": 3})
    with pytest.raises(ConfigError, match="mode"):
        strategy_config("cot", {"mode": "deep"})
    with pytest.raises(ConfigError, match="sandbox"):
        strategy_config("program", {"sandbox": {"memory_mb": -1}})
    with pytest.raises(ConfigError, match="allow_weaker"):
        strategy_config("program", {"sandbox": {"allow_weaker": ["landlock"]}})
    with pytest.raises(ValueError, match="expected one of"):
        run_strategy("magic", None, None, number_task(), number_task().examples[0])


def test_svamp_exemplar_solutions_come_from_the_equation():
    task = load_svamp()
    assert len(task.examples) == 1000 and task.kind == "number"
    first = task.examples[0].meta
    assert first["solution"].endswith("The answer is 51.") and "76 - 25 = 51" in first["solution"]
    assert first["program"] == "print(76 - 25)"
    nested = next(e.meta for e in task.examples if e.meta["program"].count("(") > 1)
    assert eval(nested["program"][6:-1]) == pytest.approx(nested["answers"][0])  # the pretty form still computes
