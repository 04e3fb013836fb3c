"""Rubrics and the robust parsing of judge replies."""

import pytest

from acculturate.evaluate.judge import judge_messages, load_rubrics, parse_judgement


@pytest.mark.parametrize("reply, score, reason", [
    ("Score: 4\nReason: names the NHS correctly.", 4, "names the NHS correctly"),
    ("Score: **5**/5 because it mentions Bonfire Night", 5, "it mentions Bonfire Night"),
    ("Score: 2 - assumes American school grades", 2, "assumes American school grades"),
    ("Score: I'd give it 3/5. Reason: generic", 3, "generic"),
    ("Rating: 1", 1, ""),
    ("Score:5", 5, ""),
    ("Score: 3.5 out of 5", 3, ""),
])
def test_parse_judgement(reply, score, reason):
    got = parse_judgement(reply)
    assert got[0] == score
    assert got[1] == reason


@pytest.mark.parametrize("reply", ["Score: 7", "Score: 10", "Score: excellent answer", ""])
def test_unparsable_scores_are_none(reply):
    assert parse_judgement(reply)[0] is None


def test_reason_is_short_and_one_line():
    _, reason = parse_judgement("Score: 4\nReason: " + "very long " * 50 + "\nmore")
    assert len(reason) <= 200 and "\n" not in reason


def test_shipped_rubrics_and_prompt():
    rubrics = load_rubrics()
    assert set(rubrics.anchors("UK")) == {1, 2, 3, 4, 5}
    uk = rubrics.criteria("UK")
    assert any("NHS" in c for c in uk)
    other = rubrics.criteria("North_Korea")             # no own rubric: the default, region filled in
    assert any("North Korea" in c for c in other) and not any("{region}" in c for c in other)
    messages = judge_messages("What do people eat at Christmas?", "Turkey.", "UK", rubrics)
    assert messages[-1]["role"] == "user" and "Turkey." in messages[-1]["content"] and uk[0] in messages[-1]["content"]


def test_bad_rubrics_file(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("scale: {1: a, 2: b, 3: c, 4: d, 5: e}\nrubrics: {UK: [x]}\n")
    with pytest.raises(ValueError, match="default"):
        load_rubrics(bad)
    bad.write_text("scale: {1: a}\nrubrics: {default: [x]}\n")
    with pytest.raises(ValueError, match="scale"):
        load_rubrics(bad)
