"""The feedback store: durability settings, the three kinds and their rewards, checks, export."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sqlalchemy")

from acculturate.feedback import (  # noqa: E402
    FEEDBACK_KINDS, CompletionRecord, FeedbackError, FeedbackStore, export_feedback,
)


def record(cid: str, index: int = 0, text: str = "Tea with milk.") -> CompletionRecord:
    return CompletionRecord(id=cid, choice_index=index, endpoint="chat.completions", model="uk", adapter="uk",
                            adapter_version="uk@abc123", prompt="<prompt>", completion=text,
                            finish_reason="eos", prompt_tokens=10, completion_tokens=4,
                            sampling={"temperature": 0.0, "max_tokens": 16},
                            messages=[{"role": "user", "content": "What do people drink?"}], region="UK")


def test_sqlite_runs_in_wal_with_full_sync(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert store.url.startswith("sqlite:///") and store.url.endswith("fb.db")


def test_kinds_rewards_and_checks(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    store.record_completions([record("c1"), record("c1", 1, "Coffee."), record("c2")])
    assert store.count("completions") == 3
    up = store.add_feedback("c1", "correct_cultural", region="UK", comment="spot on")
    flag = store.add_feedback("c1", "inappropriate", choice_index=1)
    edit = store.add_feedback("c2", "adjustment", corrected_text="Tea, often with milk.")
    assert (up["reward"], flag["reward"], edit["reward"], edit["corrected_reward"]) == (1.0, -1.0, -0.5, 0.5)
    assert {k: (v.reward, v.corrected_reward) for k, v in FEEDBACK_KINDS.items()} == {
        "correct_cultural": (1.0, None), "inappropriate": (-1.0, None), "adjustment": (-0.5, 0.5)}

    with pytest.raises(FeedbackError, match="kind must be one of") as e:
        store.add_feedback("c1", "great")
    assert e.value.field == "kind"
    with pytest.raises(FeedbackError, match="needs corrected_text"):
        store.add_feedback("c1", "adjustment", corrected_text="  ")
    with pytest.raises(FeedbackError, match="only for kind 'adjustment'"):
        store.add_feedback("c1", "correct_cultural", corrected_text="x")
    with pytest.raises(FeedbackError, match="no completion 'c9'") as e:
        store.add_feedback("c9", "inappropriate")
    assert e.value.not_found
    with pytest.raises(FeedbackError, match="choice index 5"):
        store.add_feedback("c1", "inappropriate", choice_index=5)
    assert store.count() == 3  # the refused ones left nothing behind

    rows = store.feedback()
    assert [r["kind"] for r in rows] == ["correct_cultural", "inappropriate", "adjustment"]
    assert rows[1]["completion"] == "Coffee." and rows[0]["sampling"] == {"temperature": 0.0, "max_tokens": 16}
    assert [r["id"] for r in store.feedback(since_id=rows[1]["id"])] == [rows[2]["id"]]
    store.close()

    reopened = FeedbackStore(tmp_path / "fb.db")  # everything is on disk
    assert reopened.count() == 3 and reopened.completion("c1", 1)["completion"] == "Coffee."


def test_export_rewards_and_preference_pairs(tmp_path):
    db = tmp_path / "fb.db"
    store = FeedbackStore(db)
    store.record_completions([record("c1"), record("c2", text="Only coffee.")])
    store.add_feedback("c1", "correct_cultural")
    store.add_feedback("c2", "adjustment", corrected_text="Mostly tea.", region="UK", comment="tea first")
    store.close()

    counts = export_feedback(db, tmp_path / "out")
    assert (counts["rewards"], counts["preferences"]) == (3, 1)
    rewards = [json.loads(line) for line in (tmp_path / "out" / "rewards.jsonl").read_text().splitlines()]
    assert [(r["completion"], r["reward"], r["source"]) for r in rewards] == [
        ("Tea with milk.", 1.0, "model"), ("Only coffee.", -0.5, "model"), ("Mostly tea.", 0.5, "user")]
    assert rewards[2]["messages"] == [{"role": "user", "content": "What do people drink?"}]
    assert rewards[2]["adapter_version"] == "uk@abc123" and rewards[2]["comment"] == "tea first"
    pairs = [json.loads(line) for line in (tmp_path / "out" / "preferences.jsonl").read_text().splitlines()]
    assert pairs == [{"feedback_id": 2, "completion_id": "c2", "prompt": "<prompt>",
                      "messages": [{"role": "user", "content": "What do people drink?"}],
                      "chosen": "Mostly tea.", "rejected": "Only coffee.", "region": "UK",
                      "adapter_version": "uk@abc123"}]


def test_cli_feedback_export(tmp_path, capsys):
    from acculturate.cli import main

    store = FeedbackStore(tmp_path / "fb.db")
    store.record_completions([record("c1")])
    store.add_feedback("c1", "adjustment", corrected_text="Better.")
    store.close()
    assert main(["feedback", "export", "--db", str(tmp_path / "fb.db"), "--out", str(tmp_path / "o")]) == 0
    assert "2 reward rows" in capsys.readouterr().out
    assert (tmp_path / "o" / "preferences.jsonl").read_text().count("\n") == 1


def test_an_older_store_gains_the_client_column(tmp_path):
    """A store written before feedback recorded its client opens, keeps its rows and takes new ones."""
    import sqlite3

    path = tmp_path / "old.db"
    store = FeedbackStore(path)
    store.record_completions([record("o1")])
    store.add_feedback("o1", "inappropriate")
    store.close()
    with sqlite3.connect(path) as conn:   # back to the old schema: no client column, no index
        conn.execute("DROP INDEX feedback_one_per_client")
        conn.execute("ALTER TABLE feedback DROP COLUMN client")
    store = FeedbackStore(path)
    assert [(r["kind"], r["client"]) for r in store.feedback()] == [("inappropriate", None)]
    store.add_feedback("o1", "correct_cultural", client="key:abcd")
    assert store.add_feedback("o1", "inappropriate", client="key:abcd")["replaced"] == 1
    assert store.count() == 2
    store.close()
