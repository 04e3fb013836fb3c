"""Reward functions: feedback-table rewards, rules, a real HTTP scorer on 127.0.0.1, imports, the factory."""

import socket
import threading
import time

import pytest

from acculturate.config_loading import ConfigError
from acculturate.feedback import CompletionRecord, FeedbackStore
from acculturate.feedback.rewards import (RewardError, feedback_rewards, http_reward, last_user_turn,
                                          lookup_reward, reward_function, rules_reward)


# --- the feedback table -------------------------------------------------------------------------------


def _record(i: int, text: str) -> CompletionRecord:
    return CompletionRecord(id=f"c{i}", choice_index=0, endpoint="chat.completions", model="m", adapter=None,
                            adapter_version="base", prompt=f"prompt {i}", completion=text, finish_reason="eos",
                            prompt_tokens=3, completion_tokens=2, sampling={})


def test_feedback_rewards_follow_the_store_and_its_kinds(tmp_path):
    db = tmp_path / "fb.db"
    store = FeedbackStore(db)
    store.record_completions([_record(0, "good"), _record(1, "rude"), _record(2, "meh")])
    store.add_feedback("c0", "correct_cultural")
    store.add_feedback("c1", "inappropriate")
    store.add_feedback("c2", "adjustment", corrected_text="better")
    store.close()
    rows = feedback_rewards(db)
    got = {(r["prompt"], r["completion"]): r["reward"] for r in rows}
    assert got == {("prompt 0", "good"): 1.0, ("prompt 1", "rude"): -1.0,
                   ("prompt 2", "meh"): -0.5, ("prompt 2", "better"): 0.5}
    assert len(feedback_rewards(db, since_id=2)) == 2    # only the adjustment (feedback id 3) and its rewrite
    reward = lookup_reward(rows, default=0.0)
    assert reward(["prompt 2", "prompt 2", "prompt 0", "x"], ["better", "meh", "good", "unseen"]) == [0.5, -0.5, 1.0, 0.0]
    with pytest.raises(RewardError, match="never judged"):
        lookup_reward(rows)(["x"], ["unseen"])


def test_lookup_reward_averages_repeated_judgements():
    rows = [{"prompt": "p", "completion": "c", "reward": 1.0}, {"prompt": "p", "completion": "c", "reward": -0.5}]
    assert lookup_reward(rows)(["p"], ["c"]) == [0.25]


# --- rules -----------------------------------------------------------------------------------------------


def test_rules_sum_regex_keyword_and_length_rules():
    reward = rules_reward({"base": 0.5, "rules": [
        {"keywords": ["please", "thank you"], "reward": 1.0, "otherwise": -1.0},
        {"regex": r"\bstupid\b", "reward": -2.0},
        {"max_words": 5, "reward": 0.25},
        {"keywords": ["sir"], "per_match": True, "reward": 0.1},
    ]})
    out = reward(["p"] * 4, ["Thank you, sir, sir!", "Please do it, you stupid thing", "no", "pleased to help"])
    # "Thank you, sir, sir!": +1 (keyword), 4 words +0.25, 2 x sir +0.2  -> 0.5 + 1.45
    # "Please do it, you stupid thing": +1, -2, 6 words: no length bonus  -> 0.5 - 1
    # "no": -1 (no keyword), +0.25                                           -> 0.5 - 0.75
    # "pleased to help": "please" is not a whole word here: -1, +0.25        -> 0.5 - 0.75
    assert out == pytest.approx([1.95, -0.5, -0.25, -0.25])


@pytest.mark.parametrize("rule, message", [
    ({"reward": 1.0}, "exactly one of regex, keywords or min_words/max_words"),
    ({"regex": "(", "keywords": ["a"]}, "exactly one"),
    ({"regex": "("}, "regex: '(' is not a valid regular expression"),
    ({"keywords": []}, "keywords: expected a non-empty list"),
    ({"min_words": 5, "max_words": 2}, "min_words (5) is above max_words (2)"),
    ({"regex": "a", "reward": "lots"}, "reward.rules[0].reward: expected a number"),
])
def test_rule_errors_name_the_field(rule, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        reward_function({"kind": "rules", "rules": [rule]})


# --- the factory -----------------------------------------------------------------------------------------


def test_factory_errors_name_the_field():
    with pytest.raises(ConfigError, match="reward.kind: expected one of"):
        reward_function({"kind": "magic"})
    with pytest.raises(ConfigError, match="reward: rules: expected at least one rule"):
        reward_function({"kind": "rules", "rules": []})
    with pytest.raises(ConfigError, match="reward.url: unknown field|reward: url: expected an http"):
        reward_function({"kind": "http", "url": "ftp://x"})
    with pytest.raises(ConfigError, match="cannot import"):
        reward_function("no_such_module_xyz:fn")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        reward_function("acculturate.feedback.rewards:nope")
    with pytest.raises(ConfigError, match="expected 'package.module:function'"):
        reward_function("just_a_name")


def test_python_rewards_from_a_file_and_a_factory(tmp_path):
    (tmp_path / "my_reward.py").write_text(
        "def length(prompts, completions):\n    return [len(c) for c in completions]\n"
        "def make(bonus):\n    return lambda p, c: [bonus] * len(c)\n"
        "def broken(prompts, completions):\n    return [1.0]\n")
    assert reward_function("my_reward.py:length", base_dir=tmp_path)(["p", "p"], ["ab", "abcd"]) == [2.0, 4.0]
    spec = {"kind": "python", "function": "my_reward.py:make", "args": {"bonus": 3}}
    assert reward_function(spec, base_dir=tmp_path)(["p"], ["x"]) == [3.0]
    with pytest.raises(RewardError, match="returned 1 rewards for 2 completions"):
        reward_function("my_reward.py:broken", base_dir=tmp_path)(["p", "q"], ["a", "b"])
    with pytest.raises(RewardError, match="reward 0 is nan"):
        reward_function(lambda p, c: [float("nan")])(["p"], ["c"])


def test_last_user_turn_of_rendered_prompts(tokenizer):
    from acculturate.data import Example
    from acculturate.data.templates import render_prompt

    chat = render_prompt([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?\nThere"}],
                         tokenizer, "chat")
    assert last_user_turn(chat) == "Hi?\nThere"
    alpaca = render_prompt(Example.from_alpaca("Translate", "bonjour"), tokenizer, "alpaca")
    assert last_user_turn(alpaca) == "Translate\n\nbonjour"
    assert last_user_turn("plain text") == "plain text"


# --- a real HTTP scorer -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scorer_url():
    """A FastAPI scorer served by uvicorn on 127.0.0.1: reward = number of '!' in the completion;
    ``/short`` answers one reward too few; ``/fail`` answers HTTP 500; ``/nojson`` plain text."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse
    from pydantic import BaseModel

    class Batch(BaseModel):
        prompts: list[str]
        completions: list[str]

    app = FastAPI()
    calls = []

    @app.post("/score")
    def score(batch: Batch):
        calls.append(len(batch.completions))
        assert len(batch.prompts) == len(batch.completions)
        return {"rewards": [float(c.count("!")) for c in batch.completions]}

    @app.post("/short")
    def short(batch: Batch):
        return {"rewards": [1.0] * (len(batch.completions) - 1)}

    @app.post("/fail")
    def fail(batch: Batch):
        return PlainTextResponse("scorer exploded", status_code=500)

    @app.post("/nojson")
    def nojson(batch: Batch):
        return PlainTextResponse("hello")

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("the scorer did not start")
        time.sleep(0.05)
    app.state.calls = calls
    yield f"http://127.0.0.1:{port}", calls
    server.should_exit = True
    thread.join(timeout=10)


def test_http_reward_against_a_real_server(scorer_url):
    url, calls = scorer_url
    reward = reward_function({"kind": "http", "url": f"{url}/score", "batch_size": 2})
    assert reward(["a", "b", "c"], ["hi!", "no", "wow!!"]) == [1.0, 0.0, 2.0]
    assert calls[-2:] == [2, 1]       # batch_size splits the request


def test_http_reward_errors_name_the_url(scorer_url):
    url, _ = scorer_url
    with pytest.raises(RewardError, match=r"/short: returned 1 rewards for 2 completions"):
        http_reward(f"{url}/short")(["a", "b"], ["x", "y"])
    with pytest.raises(RewardError, match=r"/fail: HTTP 500: scorer exploded"):
        http_reward(f"{url}/fail", retries=1)(["a"], ["x"])
    with pytest.raises(RewardError, match=r"/nojson: the answer is not JSON"):
        http_reward(f"{url}/nojson")(["a"], ["x"])
    with pytest.raises(RewardError, match=r"reward server http://127.0.0.1:\d+/score: ConnectError"):
        http_reward(f"http://127.0.0.1:{_free_port()}/score", retries=0)(["a"], ["x"])


def test_model_scored_rewards_of_decode_are_kinds_of_the_one_catalogue():
    """Every reward of decode.postprocess.REWARDS can be named as a kind (one catalogue), and a kind
    that scores with the model says so when none is given."""
    from acculturate.config_loading import ConfigError
    from acculturate.decode.postprocess import REWARDS
    from acculturate.feedback.rewards import REWARD_KINDS, reward_function

    assert set(REWARDS) <= set(REWARD_KINDS)
    with pytest.raises(ConfigError, match="reward.kind mean_logprob: needs a loaded model"):
        reward_function({"kind": "mean_logprob"})
    with pytest.raises(ConfigError, match="reward.scale: unknown field"):
        reward_function({"kind": "mean_logprob", "scale": 2})
