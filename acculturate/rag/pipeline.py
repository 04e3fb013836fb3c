"""Ask a question over an index: retrieve passages, number them in the prompt, generate, and return
the answer with the passages it cites.

The prompt lists the passages as ``[1] title > heading`` + a line of text before the question and asks for
citations in brackets; :func:`parse_citations` reads ``[2]``, ``[1, 3]``, ``[1][2]`` and ``[1-3]``
back from the answer, keeping only numbers of passages that were shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from acculturate.rag.retrieve import Hit, RetrieveConfig, retrieve

# Short on purpose: with a longer instruction (adding "if the passages do not contain the answer, say
# so") the 135M default model answered with a bare "[2]" or repeated the question instead (measured
# on hand-written passages, see docs/rag.md).
SYSTEM = "Answer the question from the passages. Cite the passage you used, like [1]."
_WORD = re.compile(r"\w+")
_STOP = frozenset("""a an the and or of in on at to for from by with is are was were be been it its this that these
those as into than then there their they them he she his her we our you your i my me what which who whom when where
why how do does did not no yes so such can could would should will may might most more many much some any all each
other answer question passage passages people""".split())
CITATION = re.compile(r"\[(\s*\d+\s*(?:(?:[,;]|-|–|and)\s*\d+\s*)*)\]")


@dataclass
class AskConfig:
    """Retrieval plus the generation around it."""

    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    system: str = SYSTEM
    """The instruction to answer from the passages and cite them."""
    max_passage_chars: int = 1000
    """A passage longer than this is cut in the prompt."""
    max_new_tokens: int = 128
    template: str = "chat"
    """'chat' (the model's template) or 'alpaca'."""

    def __post_init__(self):
        if self.max_passage_chars < 20:
            raise ValueError(f"max_passage_chars: expected >= 20, got {self.max_passage_chars}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")


@dataclass
class RagAnswer:
    """An answer and its evidence."""

    answer: str
    """The generated text."""
    citations: list[dict]
    """The passages the answer cites, as :func:`citation` dicts, in citation order (``how``: ``"cited"`` by
    number, or ``"inferred"`` from the words it copies)."""
    passages: list[dict]
    """Every passage shown to the model, as :func:`citation` dicts, numbered from 1."""
    prompt: str
    """The rendered prompt."""

    def as_dict(self) -> dict:
        return {"answer": self.answer, "citations": self.citations, "passages": self.passages}


def format_passages(hits: list[Hit], max_chars: int = 1000) -> str:
    """The numbered passage block of the prompt."""
    lines = []
    for n, hit in enumerate(hits, 1):
        p = hit.passage
        text = p["text"] if len(p["text"]) <= max_chars else p["text"][:max_chars].rsplit(" ", 1)[0] + " ..."
        context = " > ".join(dict.fromkeys(x for x in (p.get("title"), p.get("heading")) if x))
        # The context on its own line: a small model copies an inline "(title > heading)" into its answer.
        lines.append(f"[{n}] {context}\n{text}" if context else f"[{n}] {text}")
    return "\n\n".join(lines)


def passages_turn(question: str, hits: list[Hit], max_chars: int = 1000) -> str:
    """The user turn: the passages, then the question (or the question alone when nothing was found)."""
    if not hits:
        return question
    return f"Passages:\n\n{format_passages(hits, max_chars)}\n\nQuestion: {question}"


def parse_citations(text: str, n_passages: int) -> list[int]:
    """Passage numbers cited in ``text`` (1-based, first citation first, each once); numbers outside
    1..n_passages are ignored (the model may invent them)."""
    cited: list[int] = []
    for group in CITATION.findall(text):
        for part in re.split(r"[,;]|\band\b", group):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*[-–]\s*(\d+)", part)
            numbers = range(int(m.group(1)), int(m.group(2)) + 1) if m else ([int(part)] if part.isdigit() else [])
            if m and len(numbers) > n_passages:  # "[1-999]" is not a citation of 999 passages
                continue
            for x in numbers:
                if 1 <= x <= n_passages and x not in cited:
                    cited.append(x)
    return cited


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` that carry content (no stop words, no bare numbers)."""
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and not w.isdigit()}


def infer_citations(answer: str, hits: list[Hit], question: str = "", threshold: float = 0.5) -> list[int]:
    """Passages an answer that cites nothing draws on: those holding at least ``threshold`` of the
    answer's content words that are not in the question, best first (small models rarely write
    "[1]" but do copy from the passage). Empty when the answer adds no content word."""
    words = content_words(answer) - content_words(question)
    if not words:
        return []
    shares = [(len(words & content_words(h.passage["text"])) / len(words), n) for n, h in enumerate(hits, 1)]
    return [n for share, n in sorted(shares, key=lambda x: (-x[0], x[1])) if share >= threshold]


def citation(number: int, hit: Hit) -> dict:
    """A JSON-able description of passage ``number``: what a client needs to show the source."""
    p = hit.passage
    return {"number": number, "id": p["id"], "source": p["source"], "title": p.get("title", ""),
            "heading": p.get("heading", ""), "text": p["text"], "score": round(hit.score, 6),
            "meta": {k: v for k, v in p.get("meta", {}).items() if k not in ("source",)}}


def cited(answer: str, hits: list[Hit], question: str = "") -> tuple[list[dict], list[dict]]:
    """(the cited passages, every passage shown), as citation dicts. Each cited one says ``how``:
    ``"cited"`` (the answer names its number) or, when the answer names none, ``"inferred"``
    (:func:`infer_citations`)."""
    shown = [citation(n, h) for n, h in enumerate(hits, 1)]
    numbers, how = parse_citations(answer, len(hits)), "cited"
    if not numbers:
        numbers, how = infer_citations(answer, hits, question), "inferred"
    return [{**shown[n - 1], "how": how} for n in numbers], shown


def ask(question: str, index, model, tokenizer, config: AskConfig | None = None, embedder=None,
        history: list[dict] | None = None) -> RagAnswer:
    """Answer ``question`` from the passages of ``index``.

    Args:
        question: the question (also the retrieval query).
        index: an opened :class:`~acculturate.rag.index.Index`.
        model, tokenizer: the generator (e.g. ``acculturate.models.load()``).
        config: retrieval and generation settings (default ``AskConfig()``).
        embedder: the index's embedding model (default: loaded from the index's manifest).
        history: earlier chat turns to keep before the question.

    Returns:
        RagAnswer with the answer, the cited passages and every passage shown.
    """
    from acculturate.data import render_prompt
    from acculturate.decode import GenerationConfig, generate

    config = config or AskConfig()
    hits = retrieve(index, question, config.retrieve, embedder)
    messages = list(history or []) + [{"role": "user", "content": passages_turn(question, hits, config.max_passage_chars)}]
    prompt = render_prompt(messages, tokenizer, config.template, system=config.system)
    out = generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=config.max_new_tokens))[0]
    cites, shown = cited(out.text, hits, question)
    return RagAnswer(out.text.strip(), cites, shown, prompt)
