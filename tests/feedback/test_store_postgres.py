"""The feedback store on a real PostgreSQL server (``--db postgresql+psycopg://...``), started by
the ``postgres_url`` fixture (tests/conftest.py)."""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")

from acculturate.feedback import CompletionRecord, FeedbackError, FeedbackStore, export_feedback  # noqa: E402


def record(cid: str, index: int = 0, text: str = "Tea with milk.") -> CompletionRecord:
    return CompletionRecord(id=cid, choice_index=index, endpoint="chat.completions", model="uk", adapter="uk",
                            adapter_version="uk@abc123", prompt="<prompt>", completion=text,
                            finish_reason="eos", prompt_tokens=10, completion_tokens=4,
                            sampling={"temperature": 0.0, "max_tokens": 16},
                            messages=[{"role": "user", "content": "What do people drink? ☕"}], region="UK")


def test_store_round_trips_on_postgres(postgres_url):
    store = FeedbackStore(postgres_url)
    assert store.engine.dialect.name == "postgresql"
    store.record_completions([record("p1"), record("p1", 1, "Coffee."), record("p2")])
    store.add_feedback("p1", "correct_cultural", region="UK")
    store.add_feedback("p1", "inappropriate", choice_index=1)
    store.add_feedback("p2", "adjustment", corrected_text="Tea, often with milk.")
    with pytest.raises(FeedbackError, match="no completion 'p9'"):
        store.add_feedback("p9", "inappropriate")  # the foreign key is checked before the insert
    rows = store.feedback()
    assert [(r["kind"], r["reward"]) for r in rows] == [("correct_cultural", 1.0), ("inappropriate", -1.0),
                                                        ("adjustment", -0.5)]
    assert rows[0]["messages"][0]["content"].endswith("☕") and rows[0]["sampling"]["max_tokens"] == 16
    # A second engine (another process, in effect) sees every committed row.
    other = FeedbackStore(postgres_url)
    assert other.count() == 3 and other.count("completions") == 3
    other.close()
    store.close()


def test_concurrent_writers_lose_nothing(postgres_url):
    store = FeedbackStore(postgres_url)
    before = store.count()
    store.record_completions([record(f"c{i}") for i in range(40)])

    def give(i: int) -> None:
        store.add_feedback(f"c{i}", "correct_cultural" if i % 2 else "inappropriate")

    threads = [threading.Thread(target=give, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() - before == 40
    store.close()


def test_export_from_postgres(postgres_url, tmp_path):
    store = FeedbackStore(postgres_url)
    store.record_completions([record("e1", text="Coffee, black.")])
    store.add_feedback("e1", "adjustment", corrected_text="Builder's tea.")
    store.close()
    result = export_feedback(postgres_url, tmp_path / "out")
    pairs = [json.loads(line) for line in (tmp_path / "out" / "preferences.jsonl").read_text().splitlines()]
    assert {"chosen": "Builder's tea.", "rejected": "Coffee, black."}.items() <= \
        next(p for p in pairs if p["completion_id"] == "e1").items()
    rewards = [json.loads(line) for line in (tmp_path / "out" / "rewards.jsonl").read_text().splitlines()]
    assert sorted(r["reward"] for r in rewards if r["completion_id"] == "e1") == [-0.5, 0.5]
    assert result["preferences"] == len(pairs)


# Feedback values one database would take and the other refuse (or fail on mid-transaction): both
# must refuse them alike, before any query, naming the field.
BAD_FEEDBACK = [
    ({"completion_id": "x" * 65}, "completion_id"),
    ({"completion_id": "b1\ud800"}, "completion_id"),
    ({"completion_id": "b1\x00"}, "completion_id"),
    ({"choice_index": 2 ** 40}, "choice_index"),
    ({"choice_index": 2 ** 70}, "choice_index"),
    ({"choice_index": -1}, "choice_index"),
    ({"region": "R" * 129}, "region"),
    ({"region": "UK\x00"}, "region"),
    ({"comment": "nice \ud83d"}, "comment"),
    ({"comment": "a\x00b"}, "comment"),
    ({"kind": "adjustment", "corrected_text": "tea\x00"}, "corrected_text"),
    ({"kind": "k" * 40}, "kind"),
]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_both_backends_refuse_the_same_feedback_and_keep_one_judgement_per_client(backend, request, tmp_path):
    url = str(tmp_path / "fb.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    store = FeedbackStore(url)
    store.record_completions([record("b1")])
    before = store.count()
    for overrides, field in BAD_FEEDBACK:
        args = {"completion_id": "b1", "kind": "inappropriate", **overrides}
        with pytest.raises(FeedbackError) as e:
            store.add_feedback(**args)
        assert e.value.field == field, (overrides, str(e.value))
    assert store.count() == before
    ok = store.add_feedback("b1", "inappropriate", region="R" * 128, comment="fine ☕")
    assert ok["region"] == "R" * 128
    # One judgement per client: a later one replaces the earlier (a new id); other clients add theirs.
    first = store.add_feedback("b1", "correct_cultural", client="key:aaaa")
    again = store.add_feedback("b1", "inappropriate", client="key:aaaa")
    other = store.add_feedback("b1", "correct_cultural", client="key:bbbb")
    assert again["replaced"] == 1 and again["id"] > first["id"] and other["replaced"] == 0
    mine = [(r["client"], r["kind"]) for r in store.feedback(since_id=ok["id"])]
    assert mine == [("key:aaaa", "inappropriate"), ("key:bbbb", "correct_cultural")]

    errors = []

    def give(i: int) -> None:   # concurrent judgements of one client: exactly one survives
        try:
            store.add_feedback("b1", "correct_cultural" if i % 2 else "inappropriate", client="key:cccc")
        except Exception as e:  # noqa: BLE001 - collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=give, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sum(r["client"] == "key:cccc" for r in store.feedback()) == 1
    store.close()
