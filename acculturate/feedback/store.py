"""A durable store of served completions and the feedback users give on them.

Two tables (SQLAlchemy Core, so a ``postgresql://`` URL works as well as the default SQLite file):

- ``completions``: every completion the server returns, one row per choice, keyed by
  ``(id, choice_index)``: the request's messages and the rendered prompt, the text, the model and
  adapter version that wrote it, the sampling settings, token counts and the time.
- ``feedback``: one row per user judgement on a completion: its kind (see :data:`FEEDBACK_KINDS`),
  the reward of the original completion, the user's corrected text for an ``adjustment``, an
  optional region and comment, the time, and the ``client`` who gave it (a hash of its API key, or
  ``anonymous``). A client has one judgement per completion choice: a later one replaces it (a
  unique index holds this in SQLite and PostgreSQL alike), so one client cannot stack votes.

Durability: SQLite runs in WAL mode with ``synchronous=FULL``, so a transaction is fsynced to the
write-ahead log before ``commit`` returns; the server answers 200 only after that commit, so a
``kill -9`` right after the answer loses nothing (tested in tests/feedback/test_durability.py).
With ``synchronous=NORMAL`` (SQLite's WAL default) a power cut could lose the last commits.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa


@dataclass(frozen=True)
class FeedbackKind:
    """What one kind of feedback means as rewards."""

    reward: float
    """Reward of the completion the feedback is about."""
    corrected_reward: float | None = None
    """Reward of the user's corrected text (kinds that carry one), else None."""
    needs_text: bool = False
    """Whether the feedback must carry ``corrected_text``."""


# The seed material's three kinds: a culturally correct answer (+1), an inappropriate one (-1), and an
# adjustment, where the user rewrites the answer: +0.5 to the rewrite and -0.5 to the original.
FEEDBACK_KINDS: dict[str, FeedbackKind] = {
    "correct_cultural": FeedbackKind(reward=1.0),
    "inappropriate": FeedbackKind(reward=-1.0),
    "adjustment": FeedbackKind(reward=-0.5, corrected_reward=0.5, needs_text=True),
}

DEFAULT_DB = "sqlite:///acculturate-feedback.db"

metadata = sa.MetaData()

completions_table = sa.Table(
    "completions", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("choice_index", sa.Integer, primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),          # unix time, seconds
    sa.Column("endpoint", sa.String(32), nullable=False),        # "chat.completions" | "completions"
    sa.Column("model", sa.String(256), nullable=False),          # the name the client asked for
    sa.Column("adapter", sa.String(256)),                        # None = the base model
    sa.Column("adapter_version", sa.String(256), nullable=False),
    sa.Column("messages", sa.JSON),                              # chat requests only
    sa.Column("prompt", sa.Text, nullable=False),                # the rendered prompt the model saw
    sa.Column("completion", sa.Text, nullable=False),
    sa.Column("finish_reason", sa.String(16), nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("sampling", sa.JSON, nullable=False),
    sa.Column("region", sa.String(128)),
)

feedback_table = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("completion_id", sa.String(64), nullable=False, index=True),
    sa.Column("choice_index", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("reward", sa.Float, nullable=False),
    sa.Column("corrected_text", sa.Text),
    sa.Column("corrected_reward", sa.Float),
    sa.Column("region", sa.String(128)),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("client", sa.String(64)),                          # serve.auth.client_id; None: written
    sa.ForeignKeyConstraint(["completion_id", "choice_index"],    # before clients were recorded
                            ["completions.id", "completions.choice_index"]),
    # Ids never come back after a replaced judgement is deleted (SQLite would reuse the largest one),
    # so a learning round's cursor (feedback id > last seen) always sees the new judgement.
    sqlite_autoincrement=True,
)
one_judgement_per_client = sa.Index("feedback_one_per_client", feedback_table.c.completion_id,
                                    feedback_table.c.choice_index, feedback_table.c.client, unique=True)


class FeedbackError(ValueError):
    """Feedback that cannot be stored: unknown kind, missing text, a value the database cannot hold,
    or no such completion."""

    def __init__(self, message: str, field: str | None = None, not_found: bool = False):
        super().__init__(message)
        self.field = field
        self.not_found = not_found


# What both databases hold: the tightest column of each field, the range of PostgreSQL's INTEGER.
# Checked before any query, so SQLite (which would store anything) and PostgreSQL (which would fail
# mid-transaction) accept and refuse the same values.
MAX_CHARS = {"completion_id": 64, "region": 128, "kind": 32, "model": 256}
MAX_INDEX = 2 ** 31 - 1


def check_storable(value, field: str, max_chars: int | None = None) -> None:
    """Raise :class:`FeedbackError` naming ``field`` unless ``value`` (a string, or None) can be
    stored alike in SQLite and PostgreSQL: valid Unicode (no lone surrogate), no NUL character,
    at most ``max_chars`` (default: the field's column width, if it has one) characters."""
    if value is None:
        return
    if not isinstance(value, str):
        raise FeedbackError(f"{field} must be a string, got {type(value).__name__}", field=field)
    limit = max_chars if max_chars is not None else MAX_CHARS.get(field)
    if limit is not None and len(value) > limit:
        raise FeedbackError(f"{field} is {len(value)} characters long; at most {limit}", field=field)
    if "\x00" in value:
        raise FeedbackError(f"{field} contains a NUL character (\\u0000), which cannot be stored", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FeedbackError(f"{field} is not valid Unicode (a lone surrogate such as \\ud800)", field=field) from None


@dataclass
class CompletionRecord:
    """One served choice, as stored."""

    id: str
    choice_index: int
    endpoint: str
    model: str
    adapter: str | None
    adapter_version: str
    prompt: str
    completion: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    sampling: dict
    messages: list[dict] | None = None
    region: str | None = None
    created_at: float = 0.0


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")     # readers never block the writer
    cursor.execute("PRAGMA synchronous=FULL")     # fsync the WAL at every commit (see module doc)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")   # wait for a concurrent writer instead of failing
    cursor.close()


def database_url(db: str | os.PathLike) -> str:
    """A SQLAlchemy URL for ``db``: URLs (``sqlite:///...``, ``postgresql://...``) are kept, anything
    else is taken as a SQLite file path."""
    text = str(db)
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


class FeedbackStore:
    """Completions and feedback in one database; safe to share between threads.

    Args:
        db: a SQLAlchemy URL or a SQLite file path; tables are created if missing.
    """

    def __init__(self, db: str | os.PathLike = DEFAULT_DB):
        self.url = database_url(db)
        is_sqlite = self.url.startswith("sqlite")
        if is_sqlite and ":memory:" not in self.url and self.url != "sqlite://":
            path = self.url.split("///", 1)[1] if "///" in self.url else ""
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(
            self.url, connect_args={"check_same_thread": False} if is_sqlite else {})
        if is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a store written by an older version up to this schema (adds ``feedback.client``)."""
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns("feedback")}
        if "client" not in columns:
            with self.engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE feedback ADD COLUMN client VARCHAR(64)"))
        one_judgement_per_client.create(self.engine, checkfirst=True)

    def close(self) -> None:
        self.engine.dispose()

    # --- writing --------------------------------------------------------------------------------

    def record_completions(self, records: list[CompletionRecord]) -> None:
        """Store served choices in one committed transaction."""
        if not records:
            return
        now = time.time()
        rows = [{**r.__dict__, "created_at": r.created_at or now} for r in records]
        with self.engine.begin() as conn:
            conn.execute(completions_table.insert(), rows)

    def add_feedback(self, completion_id: str, kind: str, choice_index: int = 0,
                     corrected_text: str | None = None, region: str | None = None,
                     comment: str | None = None, client: str | None = None) -> dict:
        """Store one judgement on a served completion; returns the stored row as a dict.

        ``client`` (who judges) keeps one judgement per completion choice: an earlier one of the
        same client is replaced (deleted, and this one stored with a new id, so the next learning
        round reads it). None stores the row without that rule (the Python API, tests).

        Raises:
            FeedbackError: unknown ``kind``, an ``adjustment`` without ``corrected_text`` (or text on
                another kind), or no completion ``(completion_id, choice_index)`` in the store.
        """
        check_storable(completion_id, "completion_id")
        if isinstance(choice_index, bool) or not isinstance(choice_index, int) or not 0 <= choice_index <= MAX_INDEX:
            raise FeedbackError(f"choice_index must be an integer from 0 to {MAX_INDEX}, got {choice_index!r:.40}",
                                field="choice_index")
        for name, value in (("corrected_text", corrected_text), ("region", region), ("comment", comment),
                            ("client", client)):
            check_storable(value, name, 64 if name == "client" else None)
        if kind not in FEEDBACK_KINDS:
            raise FeedbackError(f"kind must be one of {sorted(FEEDBACK_KINDS)}, got {kind!r}", field="kind")
        spec = FEEDBACK_KINDS[kind]
        if spec.needs_text and not (isinstance(corrected_text, str) and corrected_text.strip()):
            raise FeedbackError(f"kind {kind!r} needs corrected_text: the user's rewrite of the answer",
                                field="corrected_text")
        if not spec.needs_text and corrected_text is not None:
            raise FeedbackError(f"corrected_text is only for kind 'adjustment', not {kind!r}",
                                field="corrected_text")
        row = {"completion_id": completion_id, "choice_index": choice_index, "kind": kind,
               "reward": spec.reward, "corrected_text": corrected_text,
               "corrected_reward": spec.corrected_reward, "region": region, "comment": comment,
               "created_at": time.time(), "client": client}
        for attempt in range(3):   # a concurrent judgement of the same client may win the unique index
            try:
                with self.engine.begin() as conn:
                    # FOR UPDATE (PostgreSQL): judgements of one completion take turns, so a client's
                    # concurrent ones replace each other instead of racing for the unique index.
                    found = conn.execute(sa.select(completions_table.c.id).where(
                        completions_table.c.id == completion_id,
                        completions_table.c.choice_index == choice_index).with_for_update()).first()
                    if found is None:
                        raise FeedbackError(f"no completion {completion_id!r} with choice index {choice_index} "
                                            f"in the store", field="completion_id", not_found=True)
                    replaced = 0
                    if client is not None:
                        f = feedback_table.c
                        replaced = conn.execute(feedback_table.delete().where(
                            f.completion_id == completion_id, f.choice_index == choice_index,
                            f.client == client)).rowcount
                    row.pop("id", None)
                    row["id"] = conn.execute(feedback_table.insert(), row).inserted_primary_key[0]
                return {**row, "replaced": replaced}
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # --- reading --------------------------------------------------------------------------------

    def completion(self, completion_id: str, choice_index: int = 0) -> dict | None:
        """The stored completion row as a dict, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(completions_table).where(
                completions_table.c.id == completion_id,
                completions_table.c.choice_index == choice_index)).mappings().first()
        return dict(row) if row else None

    def feedback(self, since_id: int = 0) -> list[dict]:
        """Every feedback row with id > ``since_id`` joined with its completion, oldest first.
        Keys: the feedback's columns plus ``prompt``, ``messages``, ``completion``, ``model``,
        ``adapter``, ``adapter_version``, ``sampling``, ``endpoint``."""
        f, c = feedback_table, completions_table
        query = (sa.select(f, c.c.prompt, c.c.messages, c.c.completion, c.c.model, c.c.adapter,
                           c.c.adapter_version, c.c.sampling, c.c.endpoint,
                           c.c.region.label("completion_region"))
                 .join(c, sa.and_(f.c.completion_id == c.c.id, f.c.choice_index == c.c.choice_index))
                 .where(f.c.id > since_id).order_by(f.c.id))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def count(self, table: str = "feedback") -> int:
        tables = {"feedback": feedback_table, "completions": completions_table}
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(tables[table])).scalar_one()


# --- export -------------------------------------------------------------------------------------


def reward_rows(feedback: list[dict]) -> Iterator[dict]:
    """Reward-labelled (prompt, completion) rows: one per feedback, plus one for the corrected text
    of an ``adjustment`` (+0.5 beside the original's -0.5)."""
    for fb in feedback:
        base = {"feedback_id": fb["id"], "completion_id": fb["completion_id"],
                "choice_index": fb["choice_index"], "kind": fb["kind"], "prompt": fb["prompt"],
                "messages": fb["messages"], "region": fb["region"] or fb["completion_region"],
                "comment": fb["comment"], "model": fb["model"], "adapter": fb["adapter"],
                "adapter_version": fb["adapter_version"], "sampling": fb["sampling"],
                "created_at": fb["created_at"]}
        yield {**base, "completion": fb["completion"], "reward": fb["reward"], "source": "model"}
        if fb["corrected_text"] is not None:
            yield {**base, "completion": fb["corrected_text"], "reward": fb["corrected_reward"],
                   "source": "user"}


def preference_pairs(feedback: list[dict]) -> Iterator[dict]:
    """(chosen, rejected) pairs: each ``adjustment`` prefers the user's text over the model's."""
    for fb in feedback:
        if fb["kind"] == "adjustment":
            yield {"feedback_id": fb["id"], "completion_id": fb["completion_id"], "prompt": fb["prompt"],
                   "messages": fb["messages"], "chosen": fb["corrected_text"], "rejected": fb["completion"],
                   "region": fb["region"] or fb["completion_region"], "adapter_version": fb["adapter_version"]}


def export_feedback(db: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``rewards.jsonl`` (reward-labelled rows) and ``preferences.jsonl`` (chosen/rejected
    pairs) under ``out_dir``, atomically.

    Returns:
        ``{"rewards": count, "preferences": count, "rewards_path": ..., "preferences_path": ...}``.
    """
    from acculturate.io import write_jsonl

    store = FeedbackStore(db)
    try:
        feedback = store.feedback()
    finally:
        store.close()
    out_dir = Path(out_dir)
    rewards, pairs = list(reward_rows(feedback)), list(preference_pairs(feedback))
    write_jsonl(out_dir / "rewards.jsonl", rewards)
    write_jsonl(out_dir / "preferences.jsonl", pairs)
    return {"rewards": len(rewards), "preferences": len(pairs),
            "rewards_path": str(out_dir / "rewards.jsonl"),
            "preferences_path": str(out_dir / "preferences.jsonl")}

