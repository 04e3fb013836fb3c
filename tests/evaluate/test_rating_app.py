"""The rating page: blind, shuffled per rater, ratings stored in SQLite (WAL) and replaced on re-rating."""

import json
import sqlite3

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from acculturate.evaluate.rating_app import create_app  # noqa: E402
from acculturate.evaluate.ratings import RatingStore, item_key, rating_items, ratings_by_item  # noqa: E402

SYSTEMS = ["base-secret", "adapted-secret"]


def make_run(tmp_path, n=5):
    config = {"name": "r", "systems": [{"name": s} for s in SYSTEMS],
              "tasks": [{"name": "approp", "kind": "appropriateness", "region": "UK"},
                        {"name": "qa", "kind": "blend"}]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for s in SYSTEMS:
        out = tmp_path / "outputs" / "approp"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{s}.jsonl").write_text("".join(
            json.dumps({"id": f"q{i}", "prompt": f"Question {i}?", "output": f"answer {i} by {s[:4]}"}) + "\n"
            for i in range(n)))
    return tmp_path


def test_items_only_from_appropriateness_tasks(tmp_path):
    items = rating_items(make_run(tmp_path))
    assert len(items) == 10 and {it.task for it in items} == {"approp"}
    with pytest.raises(FileNotFoundError, match="not an evaluation run"):
        rating_items(tmp_path / "nowhere")


def test_rating_flow_blind_and_stored(tmp_path):
    run = make_run(tmp_path)
    client = TestClient(create_app(run))
    assert "Rate the answers" in client.get("/").text
    seen = []
    while True:
        r = client.get("/api/next", params={"rater": "alice"})
        assert r.status_code == 200
        body = r.json()
        if body["item"] is None:
            break
        assert not any(s in r.text for s in SYSTEMS)           # the system is never sent to the page
        seen.append(body["item"])
        assert client.post("/api/rate", json={"rater": "alice", "item": body["item"], "score": 1 + len(seen) % 5}).json() == {"ok": True}
    assert len(seen) == 10 and len(set(seen)) == 10 and body["total"] == 10 and body["rated"] == 10
    # Re-rating replaces, never duplicates.
    client.post("/api/rate", json={"rater": "alice", "item": seen[0], "score": 5})
    db = sqlite3.connect(run / "ratings.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM ratings WHERE rater='alice'").fetchone()[0] == 10
    assert db.execute("SELECT score FROM ratings WHERE item_key=?", (seen[0],)).fetchone()[0] == 5
    by_item = ratings_by_item(run)
    assert by_item[item_key("approp", "base-secret", "q0")] in ([1], [2], [3], [4], [5])


def test_orders_differ_between_raters_and_are_stable(tmp_path):
    client = TestClient(create_app(make_run(tmp_path)))
    first = lambda rater: client.get("/api/next", params={"rater": rater}).json()["item"]  # noqa: E731
    assert first("alice") == first("alice")
    assert len({first(f"rater{i}") for i in range(8)}) > 1


def test_bad_ratings_rejected(tmp_path):
    client = TestClient(create_app(make_run(tmp_path)))
    item = client.get("/api/next", params={"rater": "bob"}).json()["item"]
    assert client.post("/api/rate", json={"rater": "bob", "item": item, "score": 6}).status_code == 422
    assert client.post("/api/rate", json={"rater": " ", "item": item, "score": 3}).status_code == 422
    assert client.post("/api/rate", json={"rater": "bob", "item": "nope", "score": 3}).status_code == 404
    assert client.get("/api/next", params={"rater": ""}).status_code == 422
    with pytest.raises(ValueError, match="1-5"):
        RatingStore(tmp_path / "x.sqlite").add("k", "bob", 0)


def test_run_without_answers_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"systems": [{"name": "a"}], "tasks": [{"name": "t", "kind": "blend"}]}))
    with pytest.raises(FileNotFoundError, match="no answers to rate"):
        create_app(tmp_path)
