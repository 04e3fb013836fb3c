"""Human ratings of saved outputs: the items to rate (blind to the system) and a SQLite store.

An item is one saved answer of an ``appropriateness`` task: ``(task, system, example id)``. Raters
see it under an opaque key (a hash), so neither the page nor its requests reveal the system; each
rater gets every item in their own seeded shuffled order. Ratings live in ``<run>/ratings.sqlite``
(WAL: the page's writes never block a concurrent ``--rescore`` reading them); rating the same item
again replaces the rater's earlier score.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from acculturate.io import read_appended_jsonl

RATINGS_FILE = "ratings.sqlite"


@dataclass
class RatingItem:
    key: str
    """Opaque: sha256 of task/system/id."""
    task: str
    system: str
    id: str
    prompt: str
    output: str


def item_key(task: str, system: str, example_id: str) -> str:
    return hashlib.sha256(f"{task}\x00{system}\x00{example_id}".encode()).hexdigest()[:16]


def rating_items(run_dir: str | Path) -> list[RatingItem]:
    """Every answer of every ``appropriateness`` task saved in ``run_dir`` (from its config.json).

    Raises:
        FileNotFoundError: ``run_dir`` is not an eval run (no config.json).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not an evaluation run (no config.json); give the folder "
                                "`acculturate eval` wrote, e.g. runs/eval-uk")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    items = []
    for task in config.get("tasks", []):
        if task["kind"] != "appropriateness":
            continue
        for system in config.get("systems", []):
            path = run_dir / "outputs" / task["name"] / f"{system['name']}.jsonl"
            for row in read_appended_jsonl(path):
                items.append(RatingItem(item_key(task["name"], system["name"], row["id"]), task["name"],
                                        system["name"], row["id"], row["prompt"], row["output"]))
    return items


def shuffled_for(items: list[RatingItem], rater: str) -> list[RatingItem]:
    """The rater's own order: a shuffle seeded by their id (stable across page loads), so systems
    are interleaved and no two raters see the same sequence."""
    order = sorted(items, key=lambda it: it.key)
    random.Random(hashlib.sha256(rater.encode()).hexdigest()).shuffle(order)
    return order


class RatingStore:
    """``ratings(item_key, rater, score, created_at)`` in SQLite with WAL; one row per (item, rater)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS ratings (item_key TEXT NOT NULL, rater TEXT NOT NULL, "
                       "score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5), created_at REAL NOT NULL, "
                       "PRIMARY KEY (item_key, rater))")

    def _connect(self) -> sqlite3.Connection:
        # A connection per call: FastAPI runs handlers on worker threads, and sqlite3 connections
        # must not cross threads.
        return sqlite3.connect(self.path, timeout=10)

    def add(self, item: str, rater: str, score: int) -> None:
        """Store (or replace) a rater's 1-5 score of an item.

        Raises:
            ValueError: score outside 1-5 or an empty rater id.
        """
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            raise ValueError(f"score: expected an integer 1-5, got {score!r}")
        if not rater.strip():
            raise ValueError("rater: expected a non-empty id")
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO ratings VALUES (?, ?, ?, ?)", (item, rater.strip(), score, time.time()))

    def rated_by(self, rater: str) -> set[str]:
        with self._connect() as db:
            return {k for (k,) in db.execute("SELECT item_key FROM ratings WHERE rater = ?", (rater.strip(),))}

    def all(self) -> list[dict]:
        """Every rating as ``{"item_key", "rater", "score"}``."""
        with self._connect() as db:
            return [{"item_key": k, "rater": r, "score": s}
                    for k, r, s in db.execute("SELECT item_key, rater, score FROM ratings ORDER BY created_at")]


def ratings_by_item(run_dir: str | Path) -> dict[str, list[int]]:
    """``{item_key: [scores]}`` from the run's store; empty when nobody has rated yet."""
    path = Path(run_dir) / RATINGS_FILE
    if not path.exists():
        return {}
    by: dict[str, list[int]] = {}
    for r in RatingStore(path).all():
        by.setdefault(r["item_key"], []).append(r["score"])
    return by
