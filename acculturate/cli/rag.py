"""`acculturate rag index | search | ask | list | eval`: index documents, search them, answer with
citations, evaluate retrieval on BLEnD."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from acculturate.cli.common import add_job_parser, add_model_args, job_config, key_values, load_with_adapter, run_job


def add_parsers(sub) -> None:
    p = sub.add_parser("rag", help="retrieval-augmented generation: index documents, search, ask with citations")
    actions = p.add_subparsers(dest="rag_verb", required=True, metavar="ACTION")

    q = actions.add_parser("index", help="index (or re-index: only changed files) documents: .txt .md .html .pdf .jsonl")
    q.add_argument("paths", nargs="+", metavar="DIR_OR_FILE")
    q.add_argument("--index", required=True, help="index name (under $ACCULTURATE_RAG_HOME) or directory")
    q.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata for these files' passages, e.g. --meta region=UK (repeatable)")
    q.add_argument("--rebuild", action="store_true", help="start the index over (needed to change its settings)")
    q.add_argument("--embedder", default=None, help="sentence-transformers model directory (default all-MiniLM-L6-v2)")
    q.add_argument("--max-chars", type=int, default=800, help="passage length bound in characters")
    q.add_argument("--overlap", type=int, default=120, help="characters repeated between neighbouring passages")
    q.add_argument("--text-field", default="text", help="JSONL: the field holding the text")
    q.add_argument("--device", default=None, help="where the embedder runs (default cpu)")
    q.set_defaults(func=cmd_index)

    q = actions.add_parser("search", help="the passages an index returns for a query (no generation)")
    q.add_argument("query")
    _add_retrieval_args(q)
    q.set_defaults(func=cmd_search)

    q = actions.add_parser("ask", help="answer a question from an index's passages, with citations")
    q.add_argument("question")
    _add_retrieval_args(q)
    q.add_argument("--max-new-tokens", type=int, default=128)
    add_model_args(q)
    q.set_defaults(func=cmd_ask)

    q = actions.add_parser("list", help="the named indexes (under $ACCULTURATE_RAG_HOME): passages, files, last update")
    q.add_argument("--home", default=None, help="another folder of named indexes")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_list)

    add_job_parser(actions, "rag eval", cmd_eval)


def _add_retrieval_args(q) -> None:
    q.add_argument("--index", required=True, help="index name (under $ACCULTURATE_RAG_HOME) or directory")
    q.add_argument("-k", type=int, default=4, help="passages to retrieve (default 4)")
    q.add_argument("--mode", default="hybrid", choices=["hybrid", "dense", "bm25"])
    q.add_argument("--candidates", type=int, default=50, help="candidates per retriever before fusion")
    q.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="only passages whose metadata matches, e.g. --filter region=UK (repeatable)")
    q.add_argument("--rerank", default="none", choices=["none", "dense", "cross-encoder"])
    q.add_argument("--reranker", default=None, help="local CrossEncoder model directory (--rerank cross-encoder)")
    q.add_argument("--json", action="store_true", help="print JSON")


def _reported(command):
    """``acculturate rag ACTION: error: ...`` (exit 2) for a bad index, a bad retrieval setting or a
    missing extra; config and data errors are left to main(), which reports them."""
    @functools.wraps(command)
    def run(args) -> int:
        from acculturate.config_loading import ConfigError
        from acculturate.data import DataError

        try:
            return command(args)
        except (ConfigError, DataError):
            raise
        except (ValueError, ImportError) as e:  # RagIndexError, a bad retrieval setting, a missing extra
            print(f"acculturate rag {args.rag_verb}: error: {e}", file=sys.stderr)
            return 2
    return run


def _retrieve_config(args):
    from acculturate.rag import RetrieveConfig

    return RetrieveConfig(k=args.k, mode=args.mode, candidates=max(args.candidates, args.k), rerank=args.rerank,
                          reranker=args.reranker, filters=key_values(args.filter, "--filter", "rag"))


@_reported
def cmd_index(args) -> int:
    from acculturate.rag import ChunkConfig, IndexConfig, update_index

    config = IndexConfig(embedder=args.embedder, chunk=ChunkConfig(args.max_chars, args.overlap),
                         text_field=args.text_field, device=args.device or "cpu")
    r = update_index(args.paths, args.index, config, meta=key_values(args.meta, "--meta", "rag") or None,
                     rebuild=args.rebuild)
    print(f"{r.path}: {r.passages} passages; files added {len(r.added)}, updated {len(r.updated)}, "
          f"removed {len(r.removed)}, unchanged {r.unchanged}; embedded {r.embedded} passages in {r.seconds:.1f} s")
    return 0


@_reported
def cmd_search(args) -> int:
    from acculturate.rag import open_index, retrieve

    hits = retrieve(open_index(args.index), args.query, _retrieve_config(args))
    if args.json:
        print(json.dumps([{"rank": h.rank, "score": h.score, "dense_rank": h.dense_rank, "bm25_rank": h.bm25_rank,
                           **{k: h.passage[k] for k in ("id", "source", "title", "heading", "text", "meta")}}
                          for h in hits], ensure_ascii=False))
        return 0
    for h in hits:
        print(f"[{h.rank}] {h.score:.4f} {h.passage['source']} > {h.passage['heading']}\n    {h.passage['text'][:300]}")
    return 0


@_reported
def cmd_ask(args) -> int:
    from acculturate.rag import AskConfig, ask, open_index

    index = open_index(args.index)
    loaded = load_with_adapter(args, 1)
    result = ask(args.question, index, loaded.model, loaded.tokenizer,
                 AskConfig(retrieve=_retrieve_config(args), max_new_tokens=args.max_new_tokens))
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
        return 0
    print(result.answer)
    shown = result.citations or result.passages
    print("\ncited passages:" if result.citations else "\n(the answer cites no passage; retrieved passages:)")
    for c in shown:
        print(f"  [{c['number']}] {c['source']}" + (f" > {c['heading']}" if c["heading"] else "")
              + (" (inferred: the answer copies its words)" if c.get("how") == "inferred" else ""))
    return 0


@_reported
def cmd_eval(args) -> int:
    config, _ = job_config(args)
    run_job(args, config, overwrite=args.restart)
    out = Path(config.output_dir) / config.name
    print((out / "report.md").read_text())
    print(f"Results: {out}/report.md, {out}/metrics.json")
    return 0


@_reported
def cmd_list(args) -> int:
    from acculturate.rag import list_indexes, rag_home

    found = list_indexes(args.home)
    if args.json:
        print(json.dumps(found, ensure_ascii=False))
        return 0
    if not found:
        print(f"no index under {args.home or rag_home()}: build one with `acculturate rag index DOCS --index NAME`")
    for i in found:
        print(f"{i['name']}: {i['passages']} passages from {i['files']} files, updated {i['updated']}")
    return 0
