"""Split documents into passages by their structure, bounded in characters, with overlap.

A passage never crosses a section (heading) boundary. Within a section, whole paragraphs are packed
into a passage while they fit in ``max_chars``; a longer paragraph is split between sentences, and a
sentence longer than a passage between words. Each passage after the first of a section starts with
the end of the one before it (up to ``overlap_chars``: whole sentences where they fit, else whole
words), so a fact split across two passages is still whole in one of them.

Characters, not tokens, bound a passage: counting needs no tokenizer and the bound holds for any
embedder. 800 characters of English are about 180 word pieces, inside all-MiniLM-L6-v2's 256-token
window (longer input would be cut off silently by the embedder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from acculturate.rag.ingest import Document

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass
class ChunkConfig:
    """How documents are split into passages."""

    max_chars: int = 800
    """A passage's length bound in characters (overlap included)."""
    overlap_chars: int = 120
    """Characters a passage repeats from the end of the one before it."""

    def __post_init__(self):
        if self.max_chars < 50:
            raise ValueError(f"max_chars: expected >= 50, got {self.max_chars}")
        if not 0 <= self.overlap_chars <= self.max_chars // 2:
            raise ValueError(f"overlap_chars: expected between 0 and max_chars/2 ({self.max_chars // 2}), "
                             f"got {self.overlap_chars}")


@dataclass
class Chunk:
    """One passage: its text, where it came from and the document's metadata."""

    text: str
    heading: str
    title: str
    source: str
    position: int
    """0-based index among its document's passages."""
    meta: dict = field(default_factory=dict)

    @property
    def context(self) -> str:
        """Title and section heading, e.g. ``"Everyday life in Spain > Food"`` (empty parts dropped)."""
        parts = [p for p in (self.title, self.heading) if p]
        if len(parts) == 2 and parts[0] == parts[1]:
            parts = parts[:1]
        return " > ".join(parts)

    @property
    def indexed_text(self) -> str:
        """What is embedded and searched: the context line, then the text (headings carry meaning
        that the paragraph often leaves out, e.g. the country a section is about)."""
        return f"{self.context}\n{self.text}" if self.context else self.text


def split_long(text: str, limit: int) -> list[str]:
    """``text`` as pieces of at most ``limit`` characters: between sentences where possible, else
    between words, a word longer than ``limit`` cut hard."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if len(sentence) <= limit:
            pieces.append(sentence)
            continue
        line = ""
        for word in sentence.split():
            while len(word) > limit:
                if line:
                    pieces.append(line)
                    line = ""
                pieces.append(word[:limit])
                word = word[limit:]
            if line and len(line) + 1 + len(word) > limit:
                pieces.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        if line:
            pieces.append(line)
    return [p for p in pieces if p]


def overlap_tail(text: str, overlap_chars: int) -> str:
    """The end of ``text``, at most ``overlap_chars`` long: its last whole sentences when they fit,
    else its last whole words ("" when not even one word fits). A tail that starts mid-sentence
    reads as noise to the model, so a sentence start is preferred."""
    if overlap_chars <= 0 or not text:
        return ""
    if len(text) <= overlap_chars:
        return text
    window = text[-overlap_chars - 1:]  # one more character: is the window's first one a boundary?
    for m in _SENTENCE_END.finditer(window):
        tail = window[m.end():].strip()
        if tail:
            return tail
    tail = text[-overlap_chars:]
    if text[-overlap_chars - 1].isspace():
        return tail.strip()
    cut = re.search(r"\s", tail)
    return tail[cut.end():].strip() if cut else ""


def chunk_section(paragraphs: list[str], config: ChunkConfig) -> list[str]:
    """Passage texts for one section's paragraphs (see the module docstring)."""
    limit, overlap = config.max_chars, config.overlap_chars
    # Units: (text, paragraph number); a unit never exceeds limit - overlap - 1, so that any unit
    # still fits after the overlap carried into a new passage.
    units = [(piece, i) for i, p in enumerate(paragraphs) for piece in split_long(p, limit - overlap - 1)]
    passages: list[str] = []
    text, last_par = "", None
    for piece, par in units:
        joiner = "" if not text else (" " if par == last_par else "\n\n")
        if text and len(text) + len(joiner) + len(piece) > limit:
            passages.append(text)
            carried = overlap_tail(text, overlap)
            joiner = " " if carried else ""
            text = carried
        text = f"{text}{joiner}{piece}"
        last_par = par
    if text:
        passages.append(text)
    return passages


def chunk_document(doc: Document, config: ChunkConfig | None = None) -> list[Chunk]:
    """The passages of one document, in order; sections are split apart, never joined."""
    config = config or ChunkConfig()
    sections: list[tuple[str, list[str]]] = []
    for block in doc.blocks:
        if not block.text.strip():
            continue
        if sections and sections[-1][0] == block.heading:
            sections[-1][1].append(block.text.strip())
        else:
            sections.append((block.heading, [block.text.strip()]))
    chunks = []
    for heading, paragraphs in sections:
        for text in chunk_section(paragraphs, config):
            chunks.append(Chunk(text, heading, doc.title, doc.source, len(chunks), dict(doc.meta)))
    return chunks
