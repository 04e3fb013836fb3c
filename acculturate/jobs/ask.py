"""`acculturate ask --run RUN`: answer questions with the regional assistant an adapt run built,
exactly as its evaluation did (same adapter, index, persona, prompt and decoding).

One question as an argument prints the answer and its cited passages; ``--file`` (JSONL, one
``{"question": ...}`` per line, other fields kept) answers in batches and writes one line per question
to ``--output``: the input's fields plus ``answer``, ``citations`` and ``passages``. A file being
written resumes: questions already in ``--output`` are not answered again.
"""

from __future__ import annotations

from pathlib import Path

from acculturate.data.errors import DataError
from acculturate.data.jsonl import read_jsonl_objects, text_field
from acculturate.io import append_jsonl, read_appended_jsonl


def read_question_file(path: str | Path) -> list[dict]:
    """The rows of a question file; each must have a non-empty string ``question``."""
    rows = []
    for line, row in read_jsonl_objects(path):
        text_field(path, line, row, "question")
        rows.append(row)
    if not rows:
        raise DataError(path, None, None, "at least one {\"question\": ...} line", "an empty file")
    return rows


def run_ask(run: str, *, question: str | None = None, file: str | None = None, output: str | None = None,
            retrieval: bool = True, batch_size: int = 16, seed: int | None = None,
            temperature: float = 0.0) -> int:
    from acculturate.rag.assistant import load_assistant

    if (question is None) == (file is None):
        raise SystemExit("acculturate ask: error: give one question or --file (not both)")
    if file is not None and output is None:
        raise SystemExit("acculturate ask: error: --file needs --output (where the answers go)")
    rows = [{"question": question}] if question is not None else read_question_file(file)
    assistant = load_assistant(run)
    if question is not None:
        answer = assistant.ask([question], retrieval=retrieval, seed=seed, temperature=temperature)[0]
        print(answer["answer"])
        for c in answer["citations"]:
            print(f"  [{c['number']}] {c.get('title') or c['source']} > {c.get('heading', '')}: {c['text'][:160]}")
        return 0
    out = Path(output)
    done = len(read_appended_jsonl(out)) if out.exists() else 0
    todo = rows[done:]

    def save(batch: list[dict]) -> None:
        nonlocal done
        for answer in batch:
            append_jsonl(out, {**rows[done], **answer})
            done += 1

    assistant.ask([r["question"] for r in todo], retrieval=retrieval, batch_size=batch_size, seed=seed,
                  temperature=temperature, on_batch=save)
    print(f"answered {len(todo)} question(s) ({len(rows) - len(todo)} already in {out}); wrote {out}")
    return 0
