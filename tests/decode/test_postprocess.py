"""Output filters, the judge hook and best-of-n re-ranking."""

from __future__ import annotations

import pytest

from acculturate.data import render_prompt
from acculturate.decode import Completion, GenerationConfig
from acculturate.decode.postprocess import (
    FILTERED, REWARDS, OutputFilterConfig, generate_filtered, mean_logprob_reward, select,
)


def _c(text: str) -> Completion:
    return Completion(text=text, token_ids=[1] * len(text.split()), finish_reason="eos", prompt_tokens=3,
                      completion_tokens=len(text.split()))


def test_blocklist_language_and_fallback():
    config = OutputFilterConfig(blocklist=("indonesia",), languages=("id", "en"))
    details: list = []
    chosen = select(["p", "q"], [[_c("Dasar goblok kamu itu."), _c("Nasi goreng adalah makanan khas Indonesia.")],
                                 [_c("Das ist ein deutscher Satz über das Wetter heute."), _c("Contact me at a@b.co")]],
                    config, details=details)
    assert chosen[0].text == "Nasi goreng adalah makanan khas Indonesia." and chosen[0].finish_reason == "eos"
    assert details[0]["rejected"][0].startswith("blocklist (goblok)") and details[0]["chosen"] == 1
    assert chosen[1].text == config.fallback and chosen[1].finish_reason == FILTERED
    assert details[1]["rejected"][0].startswith("language de") and details[1]["rejected"][1].startswith("blocklist")
    assert chosen[1].completion_tokens == 9 + 4    # every candidate's tokens are counted


def test_reward_ranks_and_judge_vetoes():
    def reward(prompts, texts):
        return [len(t) for t in texts]                 # longest wins

    def judge(prompts, texts):
        return ["bad" not in t for t in texts]

    options = [[_c("short"), _c("a much longer answer"), _c("the longest answer of all, but bad")]]
    details: list = []
    chosen = select(["p"], options, OutputFilterConfig(best_of=3), reward_fn=reward, judge=judge, details=details)
    assert chosen[0].text == "a much longer answer"
    assert details[0]["rejected"][2].startswith("judge") and details[0]["scores"] == [5.0, 20.0]
    assert select(["p"], options, OutputFilterConfig(best_of=3))[0].text == "short"   # no reward: first alive


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="best_of"):
        OutputFilterConfig(best_of=0)
    with pytest.raises(ValueError, match="reward"):
        OutputFilterConfig(reward="nope")
    with pytest.raises(ValueError, match="unknown codes"):
        OutputFilterConfig(languages=("klingon",))
    assert not OutputFilterConfig().active and OutputFilterConfig(patterns=("x",)).active
    assert "mean_logprob" in REWARDS


@pytest.mark.slow
def test_best_of_n_real_model(default_model):
    model, tokenizer = default_model
    prompt = render_prompt("What is the capital of France? Answer in one word.", tokenizer)
    reward = mean_logprob_reward(model, tokenizer)
    # The model's likelihood prefers its own greedy answer to an unrelated sentence.
    right, wrong = reward([prompt, prompt], ["Paris", "Bananas are purple on Tuesdays"])
    assert right > wrong
    details: list = []
    config = GenerationConfig(max_new_tokens=12, seed=3)
    filters = OutputFilterConfig(best_of=3, reward="mean_logprob", patterns=(r"\bLondon\b",))
    out = generate_filtered(model, tokenizer, [prompt], config, filters, details=details)
    d = details[0]
    assert len(d["rejected"]) == 3
    alive = [i for i, r in enumerate(d["rejected"]) if r is None]
    if len(alive) > 1:
        assert d["chosen"] == alive[max(range(len(alive)), key=lambda k: d["scores"][k])]
    assert "London" not in out[0].text
    assert out[0].text


def test_generate_cli_builds_filters(tmp_path):
    from acculturate.cli import build_parser
    from acculturate.decode.postprocess import output_filter_config

    def _output_filters(args):
        return output_filter_config(args.filters, args.blocklist, args.best_of, args.reward)

    path = tmp_path / "filters.yaml"
    path.write_text("languages: [id, en]\nblocklist: [default]\n")
    args = build_parser().parse_args(["generate", "hi", "--filters", str(path), "--blocklist", "indonesia",
                                      "--best-of", "3"])
    filters = _output_filters(args)
    assert filters.blocklist == ("default", "indonesia") and filters.languages == ("id", "en")
    assert filters.best_of == 3 and filters.reward == "mean_logprob"
    assert _output_filters(build_parser().parse_args(["generate", "hi"])) is None
