"""Read documents into sections of paragraphs: text, Markdown, HTML, PDF and JSONL.

Every reader returns :class:`Document` objects whose ``blocks`` keep the structure the chunker
splits by: each block is one paragraph with the heading of the section it sits in (Markdown ``#``
lines, HTML ``<h1>``-``<h6>``, a PDF's page). Metadata comes from the file itself where the format
has a place for it (YAML front matter in text and Markdown, ``<meta name=... content=...>`` in HTML,
the other fields of a JSONL line) and from the caller (``meta=``, e.g. ``{"region": "UK"}``).

Bad input raises :class:`acculturate.data.DataError` naming the file, the line and the field.
"""

from __future__ import annotations

import html.parser
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from acculturate.data import DataError
from acculturate.data.errors import describe
from acculturate.data.jsonl import read_jsonl_objects, text_field

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
            ".html": "html", ".htm": "html", ".pdf": "pdf", ".jsonl": "jsonl"}


@dataclass
class Block:
    """One paragraph and the heading of its section ("" before the first heading)."""

    text: str
    heading: str = ""


@dataclass
class Document:
    """A document as read: where it came from, its metadata and its paragraphs in order."""

    source: str
    """The file (``path``; ``path:LINE`` for a JSONL line)."""
    title: str
    """The document's title (first heading, HTML ``<title>``, or the file name)."""
    blocks: list[Block]
    """Paragraphs with their section headings."""
    meta: dict = field(default_factory=dict)
    """Scalar metadata (``region``, ``lang``, ...), filterable at retrieval."""


def read_document(path: str | os.PathLike, meta: dict | None = None, text_field: str = "text") -> list[Document]:
    """The documents in one file (one for most formats, one per line for JSONL).

    Args:
        path: a ``.txt``, ``.md``, ``.html``, ``.pdf`` or ``.jsonl`` file.
        meta: metadata added to every document of the file (the file's own metadata wins).
        text_field: JSONL: the field holding the text.

    Raises:
        DataError: an unsupported suffix or unreadable content (file, line, field named).
    """
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(path, None, None, f"a file ending in one of {sorted(SUFFIXES)}", f"{path.suffix or 'no suffix'!r}")
    if kind == "pdf":
        docs = [_read_pdf(path)]
    elif kind == "jsonl":
        docs = _read_jsonl(path, text_field)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, _line_of(path.read_bytes(), e.start), None, "UTF-8 text",
                            f"undecodable bytes ({e.reason})") from None
        docs = [{"text": _read_text, "markdown": _read_markdown, "html": _read_html}[kind](path, text)]
    for doc in docs:
        doc.meta = {**(meta or {}), **doc.meta, "source": doc.source, "format": kind}
    return docs


def find_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The supported files among ``paths`` (directories are searched recursively, hidden files skipped), sorted.

    Raises:
        FileNotFoundError: a path that does not exist.
        DataError: a file named explicitly whose suffix is not supported.
    """
    found = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        if p.is_dir():
            for f in p.rglob("*"):
                rel = f.relative_to(p).parts
                if f.is_file() and f.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in rel):
                    found.add(f.resolve())
        elif p.suffix.lower() in SUFFIXES:
            found.add(p.resolve())
        else:
            raise DataError(p, None, None, f"a file ending in one of {sorted(SUFFIXES)}", f"{p.suffix or 'no suffix'!r}")
    return sorted(found)


# --- formats ---------------------------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*\n", re.S)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _front_matter(path: Path, text: str) -> tuple[dict, str, int]:
    """YAML front matter (``---`` lines), the text after it, and how many lines it took."""
    m = _FRONT_MATTER.match(text)
    if not m:
        return {}, text, 0
    try:
        data = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise DataError(path, None if line is None else line + 2, "front matter", "valid YAML", str(e).split("\n")[0]) from None
    if not isinstance(data, dict):
        raise DataError(path, 2, "front matter", "a YAML mapping of metadata", describe(data))
    bad = [k for k, v in data.items() if not isinstance(v, (str, int, float, bool)) and v is not None]
    if bad:
        raise DataError(path, 2, f"front matter.{bad[0]}", "a string, number or boolean", describe(data[bad[0]]))
    return {str(k): v for k, v in data.items() if v is not None}, text[m.end():], m.group(0).count("\n")


def _paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, each with its lines joined."""
    return [" ".join(line.strip() for line in p.splitlines()).strip()
            for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _read_text(path: Path, text: str) -> Document:
    meta, body, _ = _front_matter(path, text)
    title = str(meta.pop("title", path.stem))
    return Document(str(path), title, [Block(p) for p in _paragraphs(body)], meta)


def _read_markdown(path: Path, text: str) -> Document:
    meta, body, _ = _front_matter(path, text)
    blocks, heading, title, buf, fence = [], "", meta.pop("title", None), [], False

    def flush():
        blocks.extend(Block(p, heading) for p in _paragraphs("\n".join(buf)))
        buf.clear()

    for line in body.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
            buf.append(line)
            continue
        m = None if fence else _HEADING.match(line)
        if m:
            flush()
            heading = m.group(2)
            title = title or heading
            continue
        buf.append(line)
    flush()
    return Document(str(path), str(title or path.stem), blocks, meta)


class _HTMLBlocks(html.parser.HTMLParser):
    """Paragraph-level text of an HTML page with its latest heading; scripts and styles dropped."""

    BLOCK = {"p", "div", "li", "td", "th", "br", "tr", "section", "article", "blockquote", "pre", "dd", "dt",
             "ul", "ol", "table", "main", "header", "footer", "nav", "aside", "figcaption"}
    HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
    SKIP = {"script", "style", "noscript", "template", "svg"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.meta: dict = {}
        self.title = ""
        self.heading = ""
        self._buf: list[str] = []
        self._skip = 0
        self._in_title = False
        self._in_heading = False

    def _flush(self):
        text = " ".join("".join(self._buf).split())
        self._buf = []
        if not text:
            return
        if self._in_heading:
            self.heading = text
        else:
            self.blocks.append(Block(text, self.heading))

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "meta":
            a = dict(attrs)
            if a.get("name") and a.get("content") is not None:
                self.meta[a["name"]] = a["content"]
        elif tag in self.HEADINGS:
            self._flush()
            self._in_heading = True
        elif tag in self.BLOCK:
            self._flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in self.HEADINGS:
            self._flush()
            self._in_heading = False
        elif tag in self.BLOCK:
            self._flush()

    def handle_data(self, data):
        if self._skip:
            return
        if self._in_title:
            self.title += data
        else:
            self._buf.append(data)


def _read_html(path: Path, text: str) -> Document:
    parser = _HTMLBlocks()
    parser.feed(text)
    parser.close()
    parser._flush()
    meta = {k: v for k, v in parser.meta.items() if k not in ("viewport", "generator")}
    title = " ".join(parser.title.split()) or next((b.heading for b in parser.blocks if b.heading), "") or path.stem
    return Document(str(path), title, parser.blocks, meta)


def _read_pdf(path: Path) -> Document:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as e:
        raise ImportError("reading PDF needs pypdf: pip install 'acculturate[rag]'") from e
    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
        info = reader.metadata or {}
    except (PdfReadError, OSError, ValueError, KeyError) as e:
        raise DataError(path, None, None, "a readable PDF", f"{type(e).__name__}: {e}") from None
    blocks = []
    for number, text in enumerate(pages, 1):
        # pypdf gives one line per text line; a blank line (or none at all) separates paragraphs.
        blocks.extend(Block(p, f"page {number}") for p in _paragraphs(text))
    title = str(info.get("/Title") or "").strip() or path.stem
    return Document(str(path), title, blocks, {"pages": len(pages)})


def _read_jsonl(path: Path, field: str) -> list[Document]:
    docs = []
    for lineno, row in read_jsonl_objects(path):
        body = text_field(path, lineno, row, field)
        meta = {k: v for k, v in row.items()
                if k != field and isinstance(v, (str, int, float, bool))}
        title = str(meta.pop("title", f"{path.stem}:{lineno}"))
        docs.append(Document(f"{path}:{lineno}", title, [Block(p, title) for p in _paragraphs(body)], meta))
    return docs


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1
