"""Retrieval-aware training examples: the gold passage and distractors as configured."""

import random

from acculturate.data.questions import question_example
from acculturate.rag.raft import RaftConfig, find_gold, raft_example, raft_examples
from acculturate.rag.retrieve import Hit


def hits(*texts):
    return [Hit({"id": f"p{i}", "text": t, "title": "Doc", "heading": "Food", "source": "d.md", "meta": {}}, 1.0, i + 1)
            for i, t in enumerate(texts)]


QUESTION = question_example("What is a common breakfast?", ["porridge", "toast"], "q1")
HITS = hits("People drink tea.", "Lunch is a sandwich.", "Dinner is late.", "Most eat porridge or toast.", "Rain.")


def test_gold_is_the_best_ranked_passage_holding_an_answer():
    assert find_gold(HITS, ["porridge", "toast"]) == (3, "porridge")
    assert find_gold(HITS[:3], ["porridge"]) is None


def test_gold_below_the_shown_k_is_brought_in_and_cited():
    ex = raft_example(QUESTION, HITS, 3, "SYS", random.Random(0), RaftConfig(gold_fraction=1.0))
    user, target = ex.messages[1]["content"], ex.messages[2]["content"]
    assert ex.messages[0] == {"role": "system", "content": "SYS"}
    assert "Most eat porridge or toast." in user and user.count("\n[") + user.startswith("[") >= 2
    assert len(ex.meta["passage_ids"]) == 3 and "p3" in ex.meta["passage_ids"]
    number = ex.meta["passage_ids"].index("p3") + 1
    assert target == f"porridge [{number}]" and ex.meta["raft"] == "gold"
    assert user.endswith("Question: What is a common breakfast?")


def test_without_gold_only_distractors_are_shown_and_the_answer_is_plain():
    ex = raft_example(QUESTION, HITS, 3, "SYS", random.Random(0), RaftConfig(gold_fraction=0.0))
    assert ex.meta["raft"] == "distractors_only" and "p3" not in ex.meta["passage_ids"]
    assert ex.messages[2]["content"] == "porridge"


def test_gold_fraction_sets_the_share_of_examples_with_gold():
    examples = raft_examples([QUESTION] * 200, [HITS] * 200, 3, "SYS", RaftConfig(gold_fraction=0.8), seed=1)
    share = sum(ex.meta["raft"] == "gold" for ex in examples) / 200
    assert 0.7 < share < 0.9
