"""The on-disk passage index: FAISS for the vectors, bm25s for the words, JSON for the rest.

An index is one directory::

    NAME/
      manifest.json      embedder, chunking, and every indexed file with its content hash
      passages.jsonl     one passage per line, in vector order (id, text, heading, title, source, meta)
      vectors.faiss      exact inner-product index (faiss IndexFlatIP) of unit embeddings
      bm25/              bm25s index of the same passages

Why FAISS: measured against LanceDB and plain numpy + safetensors on this machine
(``bench/rag_store.py``, 100k x 384, see docs/rag.md): exact top-10 p50 23 ms (numpy 32 ms,
LanceDB 680 ms), open 0.7 s (numpy 1.4 s); sqlite-vec cannot load here (Python's sqlite3 has no
extension loading).

Incremental: a file whose content hash (with the metadata given for it) is unchanged keeps its
passages and vectors; only changed and new files are read and embedded; files gone from a
directory that is indexed again are removed. Crash-safe: each commit writes a complete new
directory and swaps it in (:func:`acculturate.io.atomic_dir`), so a reader sees the old index or the
new one, never a mix; a long run commits every ``commit_every`` new passages, so a killed run keeps
what it had embedded and the next run continues from there.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from acculturate.io import atomic_dir, write_json
from acculturate.rag.chunking import ChunkConfig, chunk_document
from acculturate.rag.ingest import find_files, read_document

log = logging.getLogger(__name__)

FORMAT = 1
HOME_ENV = "ACCULTURATE_RAG_HOME"


class RagIndexError(ValueError):
    """An index that cannot be opened or updated as asked (missing, built differently, locked)."""


@dataclass
class IndexConfig:
    """How passages are made and embedded; fixed for the life of an index (change it with rebuild)."""

    embedder: str | None = None
    """A sentence-transformers model directory; None: bundled all-MiniLM-L6-v2."""
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    text_field: str = "text"
    """JSONL files: the field holding the text."""
    batch_size: int = 64
    """Passages embedded together."""
    device: str = "cpu"
    """Where the embedder runs."""
    commit_every: int = 5000
    """New passages between commits (a killed run keeps what it committed)."""

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.commit_every < 1:
            raise ValueError(f"commit_every: expected >= 1, got {self.commit_every}")


def rag_home() -> Path:
    """Where named indexes live: ``$ACCULTURATE_RAG_HOME`` or ``~/.cache/acculturate/rag``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "acculturate" / "rag")


def resolve_index(name: str | os.PathLike, home: str | os.PathLike | None = None) -> Path:
    """The directory of index ``name``: a path when it looks like one (has a ``/`` or starts with
    ``.`` or ``~``), else ``home/name`` (default :func:`rag_home`)."""
    text = str(name)
    if not text or text in (".", ".."):
        raise RagIndexError(f"index: expected a name or a directory, got {text!r}")
    if os.sep in text or "/" in text or text.startswith((".", "~")):
        return Path(text).expanduser()
    return Path(home or rag_home()) / text


@dataclass
class Index:
    """An opened index. ``passages[i]`` is the passage of vector ``i``."""

    path: Path
    manifest: dict
    passages: list[dict]
    vectors: object
    """Faiss.IndexFlatIP."""
    bm25: object | None
    """Bm25s.BM25, None for an empty index."""
    cache: dict = field(default_factory=dict, repr=False)
    """Derived columns (metadata filters)."""

    def __len__(self) -> int:
        return len(self.passages)

    @property
    def files(self) -> dict[str, dict]:
        return self.manifest["files"]

    def all_vectors(self) -> np.ndarray:
        """Every stored vector, (N, D) float32 (the flat index holds them exactly)."""
        n = self.vectors.ntotal
        return self.vectors.reconstruct_n(0, n) if n else np.zeros((0, self.manifest["dim"]), np.float32)


# --- reading -----------------------------------------------------------------------------------------

def _recover(path: Path) -> None:
    """Finish a swap that a crash interrupted between its two renames (the old copy is complete)."""
    backup = path.with_name(f".{path.name}.old")
    if not path.exists() and backup.exists():
        os.replace(backup, path)
        log.warning("index %s: restored the previous version after an interrupted update", path)


def open_index(name: str | os.PathLike, home: str | os.PathLike | None = None) -> Index:
    """Open index ``name`` (see :func:`resolve_index`) for retrieval.

    Raises:
        RagIndexError: there is no index there, or it was written by an incompatible version.
    """
    import faiss

    path = resolve_index(name, home)
    _recover(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise RagIndexError(f"no index at {path}: build it with `acculturate rag index DOCS --index {name}`")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise RagIndexError(f"{path}: index format {manifest.get('format')!r}, this version reads {FORMAT}; rebuild it")
    with open(path / "passages.jsonl", encoding="utf-8") as f:
        passages = [json.loads(line) for line in f if line.strip()]
    vectors = faiss.read_index(str(path / "vectors.faiss"))
    bm25 = None
    if passages:
        import bm25s

        bm25 = bm25s.BM25.load(str(path / "bm25"), show_progress=False)
    if vectors.ntotal != len(passages):
        raise RagIndexError(f"{path}: {vectors.ntotal} vectors but {len(passages)} passages; rebuild the index")
    return Index(path, manifest, passages, vectors, bm25)


def list_indexes(home: str | os.PathLike | None = None) -> list[dict]:
    """The named indexes under ``home`` (default :func:`rag_home`), by name: ``name``, ``passages``,
    ``files``, ``embedder``, ``updated``, from each manifest (nothing else is opened). A directory
    without a readable manifest of this format is skipped."""
    root = Path(home or rag_home())
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith(".") or not path.is_dir():
            continue
        _recover(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            continue
        found.append({"name": path.name, "passages": manifest.get("passages", 0),
                      "files": len(manifest.get("files", {})),
                      "embedder": str(manifest.get("settings", {}).get("embedder", "")),
                      "updated": manifest.get("updated", "")})
    return found


@functools.lru_cache(maxsize=8)
def _open_cached(path: str, stamp: int) -> Index:
    return open_index(path)


def open_cached(name: str | os.PathLike, home: str | os.PathLike | None = None) -> Index:
    """:func:`open_index`, kept open between calls and reopened when an update has replaced the index
    (its manifest changed): for strategies and the server, which retrieve from one index many times."""
    path = resolve_index(name, home)
    _recover(path)
    manifest = path / "manifest.json"
    if not manifest.exists():
        raise RagIndexError(f"no index at {path}: build it with `acculturate rag index DOCS --index {name}`")
    return _open_cached(str(path), os.stat(manifest).st_mtime_ns)


# --- writing -----------------------------------------------------------------------------------------

@contextmanager
def _locked(path: Path):
    """One writer at a time per index (a second one fails at once instead of interleaving)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(f".{path.name}.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RagIndexError(f"index {path} is being updated by another process") from None
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def file_hash(path: Path, meta: dict | None) -> str:
    """SHA-256 of the file's bytes and the metadata given for it (new metadata re-indexes the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps(meta or {}, sort_keys=True).encode())
    return h.hexdigest()


def passage_id(source: str, position: int, text: str) -> str:
    return hashlib.sha1(f"{source}\0{position}\0{text}".encode()).hexdigest()[:16]


def _write(path: Path, manifest: dict, passages: list[dict], vectors: np.ndarray) -> None:
    import faiss

    with atomic_dir(path) as tmp:
        flat = faiss.IndexFlatIP(manifest["dim"])
        if len(vectors):
            flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
        faiss.write_index(flat, str(tmp / "vectors.faiss"))
        with open(tmp / "passages.jsonl", "w", encoding="utf-8") as f:
            for p in passages:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
        if passages:
            import bm25s

            bm25 = bm25s.BM25()
            bm25.index(bm25_tokens([p["indexed_text"] for p in passages]), show_progress=False)
            bm25.save(str(tmp / "bm25"), show_progress=False)
        manifest = {**manifest, "passages": len(passages), "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(tmp / "manifest.json", manifest)
        for f in tmp.rglob("*"):  # atomic_dir renames the directory; its files must be on disk first
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())


def embedding_dim(model) -> int:
    """The width of a sentence-transformers model's embeddings (the method's name changed in v5)."""
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


def bm25_tokens(texts: list[str]):
    """Lower-cased word tokens without English stop words (bm25s' tokenizer), as lists of strings."""
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


@dataclass
class IndexReport:
    """What an update did."""

    path: str
    added: list[str] = field(default_factory=list)
    """New files."""
    updated: list[str] = field(default_factory=list)
    """Files whose content (or metadata) changed."""
    removed: list[str] = field(default_factory=list)
    """Files gone from an indexed directory."""
    unchanged: int = 0
    embedded: int = 0
    """Passages embedded in this run."""
    passages: int = 0
    """Passages in the index afterwards."""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _in_scope(file: str, dirs: list[Path], files: set[str]) -> bool:
    return file in files or any(Path(file).is_relative_to(d) for d in dirs)


def update_index(paths: list[str | os.PathLike], index: str | os.PathLike, config: IndexConfig | None = None, *,
                 meta: dict | None = None, rebuild: bool = False, home: str | os.PathLike | None = None,
                 progress: bool = True, embedder=None) -> IndexReport:
    """Index the documents under ``paths`` into ``index``, re-embedding only what changed.

    Args:
        paths: files and directories (searched recursively for .txt, .md, .html, .pdf, .jsonl).
        index: the index name or directory (see :func:`resolve_index`); created when missing.
        config: chunking and embedding settings (default ``IndexConfig()``); an existing index keeps
            its own and refuses different ones unless ``rebuild``.
        meta: metadata for every passage of these files (e.g. ``{"region": "UK"}``); the files' own wins.
        rebuild: start the index over.
        home: where named indexes live (default :func:`rag_home`).
        progress: show a progress bar while embedding.
        embedder: an already loaded sentence-transformers model to use instead of loading ``config.embedder``.

    Returns:
        IndexReport (files added / updated / removed, passages embedded and in the index).

    Raises:
        RagIndexError: the index was built with another embedder or chunking (pass ``rebuild``),
            or another process is updating it. DataError: a file that cannot be read (file, line named).
    """
    from acculturate.models.embedding import DEFAULT_EMBEDDER, embed, load_embedder

    start = time.perf_counter()
    config = config or IndexConfig()
    path = resolve_index(index, home)
    report = IndexReport(str(path))
    with _locked(path):
        _recover(path)
        settings = {"embedder": config.embedder or DEFAULT_EMBEDDER, "chunk": asdict(config.chunk),
                    "text_field": config.text_field}
        old = None if rebuild or not (path / "manifest.json").exists() else open_index(path)
        if old is not None:
            differ = [k for k, v in settings.items() if old.manifest["settings"].get(k) != v]
            if differ:
                raise RagIndexError(f"index {path} was built with other {', '.join(differ)} "
                                    f"({ {k: old.manifest['settings'].get(k) for k in differ} }); "
                                    "rebuild it (--rebuild) to change them")
        files = find_files(paths)
        dirs = [Path(p).resolve() for p in paths if Path(p).is_dir()]
        named = {str(Path(p).resolve()) for p in paths if not Path(p).is_dir()}
        known = dict(old.files) if old is not None else {}
        hashes = {str(f): file_hash(f, meta) for f in files}
        report.removed = sorted(f for f in known if _in_scope(f, dirs, named) and f not in hashes)
        todo = [f for f in files if known.get(str(f), {}).get("sha256") != hashes[str(f)]]
        report.unchanged = len(files) - len(todo)

        stale = set(report.removed) | {str(f) for f in todo}
        if old is not None:
            keep = [i for i, p in enumerate(old.passages) if p["file"] not in stale]
            passages = [old.passages[i] for i in keep]
            vectors = [old.all_vectors()[keep]] if keep else []
        else:
            passages, vectors = [], []
        files_meta = {f: v for f, v in known.items() if f not in stale}
        # The embedder loads only when something is to be embedded (or a new index needs its width):
        # re-indexing unchanged files costs no model load.
        model = embedder if embedder is not None else (
            load_embedder(config.embedder, config.device) if todo or old is None else None)
        manifest = {"format": FORMAT, "settings": settings,
                    "dim": embedding_dim(model) if model is not None else old.manifest["dim"],
                    "created": old.manifest["created"] if old is not None else time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "files": files_meta}
        if old is not None and manifest["dim"] != old.manifest["dim"]:
            raise RagIndexError(f"index {path}: the embedder gives {manifest['dim']}-d vectors, the index holds "
                                f"{old.manifest['dim']}-d; rebuild it")

        pending_rows, pending_files = [], {}
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="reading", unit="file", disable=not progress or not todo)

        def commit():
            nonlocal vectors
            if pending_rows:
                # A bar of its own: embedding is most of the time, and a file bar stands still during it.
                new = embed([r["indexed_text"] for r in pending_rows], model, config.batch_size,
                            progress=progress and len(pending_rows) > 10 * config.batch_size).numpy()
                report.embedded += len(pending_rows)
                passages.extend(pending_rows)
                vectors.append(new)
            files_meta.update(pending_files)
            pending_rows.clear()
            pending_files.clear()
            allv = np.concatenate(vectors) if vectors else np.zeros((0, manifest["dim"]), np.float32)
            vectors = [allv]
            _write(path, manifest, passages, allv)

        for f in todo:
            rows = []
            for doc in read_document(f, meta, config.text_field):
                for chunk in chunk_document(doc, config.chunk):
                    rows.append({"id": passage_id(chunk.source, chunk.position, chunk.text), "file": str(f),
                                 "source": chunk.source, "title": chunk.title, "heading": chunk.heading,
                                 "position": chunk.position, "text": chunk.text,
                                 "indexed_text": chunk.indexed_text, "meta": chunk.meta})
            pending_rows.extend(rows)
            pending_files[str(f)] = {"sha256": hashes[str(f)], "passages": len(rows),
                                     "indexed": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (report.added if str(f) not in known else report.updated).append(str(f))
            bar.update(1)
            if len(pending_rows) >= config.commit_every:
                commit()
        bar.close()
        if todo or report.removed or old is None:
            commit()
        report.passages = len(passages)
    report.seconds = round(time.perf_counter() - start, 3)
    return report
