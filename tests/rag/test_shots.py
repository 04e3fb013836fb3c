"""Solved examples for the base systems: from the training questions, in the real question's format."""

from acculturate.data.questions import question_example
from acculturate.rag.assistant import AssistantSpec, assistant_prompts, closed_book_turn
from acculturate.rag.retrieve import Hit
from acculturate.rag.shots import closed_book_shots, retrieval_shots


def hits(*texts):
    return [Hit({"id": f"p{i}", "text": t, "title": "Doc", "heading": "Food", "source": "d.md", "meta": {}}, 1.0, i + 1)
            for i, t in enumerate(texts)]


QUESTIONS = [question_example("What is a common breakfast?", ["porridge", "toast"], "q1"),
             question_example("What do people drink?", ["tea"], "q2"),
             question_example("Where do people watch football?", ["pub"], "q3")]
HITS = [hits("Lunch is a sandwich.", "Most eat toast. " + "x " * 200), hits("Most drink tea."), hits("Rain.")]


def test_closed_book_shots_are_question_and_first_answer_turns():
    turns = closed_book_shots(QUESTIONS, 2, seed=0)
    assert [t["role"] for t in turns] == ["user", "assistant"] * 2
    asked = {t["content"]: turns[i + 1]["content"] for i, t in enumerate(turns) if t["role"] == "user"}
    for q in QUESTIONS:
        if closed_book_turn(q.meta["question"]) in asked:
            assert asked[closed_book_turn(q.meta["question"])] == q.meta["answers"][0]
    assert closed_book_shots(QUESTIONS, 2, seed=0) == turns            # seeded
    assert len(closed_book_shots(QUESTIONS, 10)) == 6                  # at most every question once
    assert closed_book_shots(QUESTIONS, 0) == []


def test_retrieval_shots_show_the_gold_passage_cut_short_and_cite_it():
    turns = retrieval_shots(QUESTIONS, HITS, 5, seed=0, max_passage_chars=40)
    assert len(turns) == 4                                             # q3's passages hold no answer: skipped
    users = [t["content"] for t in turns if t["role"] == "user"]
    answers = sorted(t["content"] for t in turns if t["role"] == "assistant")
    assert answers == ["tea [1]", "toast [1]"]                         # the answer the gold passage holds
    breakfast = next(u for u in users if "breakfast" in u)
    assert "[1] Doc > Food\nMost eat toast." in breakfast and "sandwich" not in breakfast
    assert len(breakfast) < 140                                        # the passage cut to 40 characters


def test_prompts_put_the_shots_between_the_system_message_and_the_question(tokenizer):
    spec = AssistantSpec(region="UK", model="smollm2-135m", persona="PERSONA")
    shots = closed_book_shots(QUESTIONS[:1], 1)
    [plain] = assistant_prompts(tokenizer, spec, ["What do people drink?"])
    [shown] = assistant_prompts(tokenizer, spec, ["What do people drink?"], shots=shots)
    question = closed_book_turn("What do people drink?")
    assert "breakfast" not in plain and plain.index("PERSONA") < plain.index(question)
    assert shown.index("PERSONA") < shown.index(closed_book_turn("What is a common breakfast?")) \
        < shown.index("porridge") < shown.index(question)
    assert shown.endswith(plain[plain.index(question):])               # the question's turn is unchanged
