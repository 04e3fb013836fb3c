"""The ``retrieval`` option of ``POST /v1/chat/completions`` and ``/v1/completions``: answer from an
index's passages.

Request (an extra body field; with the openai client pass it through ``extra_body``)::

    "retrieval": {"index": "uk-docs", "k": 4, "mode": "hybrid", "filters": {"region": "UK"}}

The last user message is the query; the passages go into that message, numbered, and an
instruction to cite them by number joins the system message. On ``/v1/completions`` (one prompt per
request) the prompt is the query, and the instruction and the passages come before it. The
response gains two fields the openai client keeps as extras: ``passages`` (every passage shown: number, id, source, heading,
text, score, meta) and ``citations`` (the passages the answers cite); each choice carries the
numbers it cites in ``citations``. A stream carries both on each choice's final chunk.

``index`` must be a plain name: it is looked up under the server's ``rag_home`` (default
``$ACCULTURATE_RAG_HOME`` or ``~/.cache/acculturate/rag``), never as a path a client chooses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from acculturate.serve.errors import invalid

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_K = 20


@dataclass
class Retrieval:
    """A checked retrieval option and, once run, the passages shown."""

    index: str
    config: object                  # acculturate.rag.RetrieveConfig
    hits: list | None = None
    query: str = ""
    max_chars: int = 1000           # a longer passage is cut in the prompt


def parse_retrieval(body: dict) -> Retrieval | None:
    """The request's ``retrieval`` option, checked; None when absent. Raises a 400 naming the field."""
    option = body.get("retrieval")
    if option is None:
        return None
    if not isinstance(option, dict):
        raise invalid("retrieval must be an object like {\"index\": NAME, \"k\": 4}", param="retrieval")
    known = {"index", "k", "mode", "filters", "rerank"}
    unknown = sorted(set(option) - known)
    if unknown:
        raise invalid(f"retrieval: unknown field(s) {unknown}; expected some of {sorted(known)}", param="retrieval")
    name = option.get("index")
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid("retrieval.index must be an index name (letters, digits, '.', '_', '-')", param="retrieval.index")
    k = option.get("k", 4)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise invalid(f"retrieval.k must be an integer between 1 and {MAX_K}, got {k!r}", param="retrieval.k")
    filters = option.get("filters") or {}
    if not isinstance(filters, dict) or not all(
            isinstance(v, (str, int, float)) or (isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v))
            for v in filters.values()):
        raise invalid("retrieval.filters must map metadata fields to a value or a list of values",
                      param="retrieval.filters")
    rerank = option.get("rerank", "none")
    if rerank not in ("none", "dense"):  # a client does not pick models for the server to load
        raise invalid(f"retrieval.rerank must be 'none' or 'dense', got {rerank!r}", param="retrieval.rerank")
    try:
        from acculturate.rag import RetrieveConfig

        config = RetrieveConfig(k=k, mode=option.get("mode", "hybrid"), candidates=max(50, k), filters=filters,
                                rerank=rerank)
    except ImportError:
        raise invalid("retrieval needs the rag extra on the server: pip install 'acculturate[rag]'",
                      param="retrieval") from None
    except ValueError as e:
        raise invalid(f"retrieval: {e}", param="retrieval") from None
    return Retrieval(name, config)


def augment(messages: list[dict], retrieval: Retrieval, home: str | None) -> list[dict]:
    """Retrieve for the last user message and return the messages with the passages in it
    (blocking: run it in a worker thread). Sets ``retrieval.hits``."""
    from acculturate.rag.pipeline import SYSTEM, passages_turn

    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    _retrieve(retrieval, home, messages[last]["content"])
    out = [dict(m) for m in messages]
    out[last]["content"] = passages_turn(messages[last]["content"], retrieval.hits, retrieval.max_chars)
    if out[0]["role"] == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{SYSTEM}"
    else:
        out.insert(0, {"role": "system", "content": SYSTEM})
    return out


def augment_prompt(prompt: str, retrieval: Retrieval, home: str | None) -> str:
    """``/v1/completions``: retrieve for the (one) prompt and return the text the model continues:
    the instruction to cite, the numbered passages, then the prompt as the question (blocking).
    Sets ``retrieval.hits``."""
    from acculturate.rag.pipeline import SYSTEM, passages_turn

    _retrieve(retrieval, home, prompt)
    return f"{SYSTEM}\n\n{passages_turn(prompt, retrieval.hits, retrieval.max_chars)}" if retrieval.hits else prompt


def _retrieve(retrieval: Retrieval, home: str | None, query: str) -> None:
    from acculturate.rag import RagIndexError, open_cached, retrieve

    try:
        index = open_cached(retrieval.index, home)
    except RagIndexError:
        raise invalid(f"retrieval.index: no index named {retrieval.index!r} on this server",
                      param="retrieval.index", code="index_not_found") from None
    retrieval.query = query
    retrieval.hits = retrieve(index, query, retrieval.config)


def response_fields(retrieval: Retrieval, texts: list[str], question: str = "") -> tuple[dict, list[list[int]]]:
    """The response's extra fields (``passages``, ``citations``) and each choice's cited numbers
    (named in the answer, else inferred from the words it copies: each citation says ``how``)."""
    from acculturate.rag.pipeline import cited

    per_choice, by_number, shown = [], {}, []
    for text in texts:
        cites, shown = cited(text, retrieval.hits or [], question)
        per_choice.append([c["number"] for c in cites])
        for c in cites:
            by_number.setdefault(c["number"], c)
    union = list(dict.fromkeys(n for numbers in per_choice for n in numbers))
    if not texts:
        shown = cited("", retrieval.hits or [])[1]
    return {"passages": shown, "citations": [by_number[n] for n in union]}, per_choice


def load_run(config) -> dict | None:
    """``ServeConfig.run``: put the adapt run's model, adapter and index into ``config`` and return the
    request defaults (``model``, ``persona``, ``retrieval``) that :func:`run_defaults` applies."""
    from pathlib import Path

    from acculturate.rag.assistant import AssistantSpec

    if not config.run:
        return None
    run = Path(config.run)
    spec = AssistantSpec.read(run)
    name = run.resolve().name
    config.model = spec.model
    if config.dtype is None:   # the dtype the run was evaluated in: the same answers as its report
        config.dtype = spec.dtype
    if spec.adapter:
        config.adapters[name] = str(run / spec.adapter)
    config.rag_home = str(run)
    return {"model": name if spec.adapter else "base", "persona": spec.persona,
            "retrieval": {"index": spec.index, "k": int(spec.retrieve.get("k", 3)),
                          "mode": spec.retrieve.get("mode", "hybrid")},
            "max_passage_chars": spec.max_passage_chars}


def run_defaults(body, defaults: dict | None):
    """A chat request to the run's model gets the run's persona (when it has no system message) and
    retrieval (unless it sends its own option, or ``"retrieval": null`` to turn it off)."""
    if not defaults or not isinstance(body, dict) or body.get("model") != defaults["model"]:
        return body
    body = dict(body)
    if "retrieval" not in body:
        body["retrieval"] = dict(defaults["retrieval"])
    messages = body.get("messages")
    if isinstance(messages, list) and messages and not any(
            isinstance(m, dict) and m.get("role") == "system" for m in messages):
        body["messages"] = [{"role": "system", "content": defaults["persona"]}] + messages
    return body
