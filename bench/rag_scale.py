"""Scale test of `acculturate rag`: index N passages (default 100,000) with the real pipeline and
measure the indexing rate, query latency (p50/p95) and an incremental re-index.

Passages are synthetic but made of real text: sentences from the shipped data sets (BLEnD annotator
answers, the Alpaca-format instructions and outputs, SVAMP problems, NusaX English sentences) are
recombined, 1-3 per passage, with a seeded random generator, and written as JSONL files of
``--per-file`` passages each with a ``region`` field (one of the 12 BLEnD countries). Queries are
BLEnD questions.

Measured, each in one run:
- build: `update_index` from nothing, 10 files (10,000 passages) per call, each call adding to the
  index (read, chunk, embed with all-MiniLM-L6-v2 on the CPU, FAISS, BM25, commit); passages per
  second, and the embedding's own rate on a sample. ``--max-minutes`` stops adding after that long
  (a shared machine may not get through 100k in the time there is): the queries then run on what
  was indexed, and the result says how many passages that was;
- query: `retrieve` latency per query, hybrid / dense / bm25 / hybrid with a region filter, k=4,
  the query's embedding included (p50, p95 over ``--queries``);
- incremental: one file changed, re-indexed (only its passages are embedded again);
- open: `open_index` of the finished index.

    python bench/rag_scale.py --passages 100000 --workdir /tmp/rag-scale    # 17 min on a quiet 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def real_sentences() -> list[str]:
    """Sentences from the shipped data sets (deduplicated, 20-200 characters)."""
    from acculturate.data import load_blend
    from acculturate.jobs.rag_eval import answer_paragraph
    from acculturate.resources import resource_path

    texts = []
    raw = {}
    for line in resource_path("data/blend/blend_saq_en.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        raw[row["id"]] = row
    for ex in load_blend():
        country = ex.meta["country"].replace("_", " ")
        texts.append(f"In {country}: " + answer_paragraph(ex.meta["question"], country, raw[ex.meta["id"]]["answers_en"])[0])
    for row in json.loads(resource_path("data/instructions/instruction-data.json").read_text(encoding="utf-8")):
        texts += [row["instruction"], row.get("input") or "", row["output"]]
    for row in json.loads(resource_path("data/svamp/SVAMP.json").read_text(encoding="utf-8")):
        texts += [row["Body"], row["Question"]]
    import csv

    with open(resource_path("data/nusax/valid.csv"), encoding="utf-8") as f:
        texts += [r["english"] for r in csv.DictReader(f)]
    sentences = set()
    for t in texts:
        for s in re.split(r"(?<=[.!?])\s+", " ".join(t.split())):
            if 20 <= len(s) <= 200:
                sentences.add(s)
    return sorted(sentences)


def write_corpus(workdir: Path, n: int, per_file: int, seed: int) -> tuple[Path, float]:
    """``n`` passages in JSONL files under ``workdir/docs``; returns the folder and the mean length."""
    from acculturate.data import blend_countries

    docs = workdir / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sentences = real_sentences()
    regions = [c.replace("_", " ") for c in blend_countries()]
    total_chars = 0
    for start in range(0, n, per_file):
        lines = []
        for i in range(start, min(n, start + per_file)):
            text = " ".join(rng.sample(sentences, rng.randint(1, 3)))
            total_chars += len(text)
            lines.append(json.dumps({"text": text, "region": rng.choice(regions), "id": i}))
        (docs / f"part-{start // per_file:05d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return docs, total_chars / n


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "mean_ms": round(float(ms.mean()), 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passages", type=int, default=100_000)
    p.add_argument("--per-file", type=int, default=1000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--workdir", default="/tmp/rag-scale")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default="bench/results/rag_scale.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None, help="stop adding files after this long")
    p.add_argument("--files-per-call", type=int, default=10)
    args = p.parse_args(argv)

    import torch

    from acculturate.data import load_blend
    from acculturate.models.embedding import embed, load_embedder
    from acculturate.rag import IndexConfig, RetrieveConfig, open_index, retrieve, update_index
    from acculturate.rag.chunking import ChunkConfig

    workdir = Path(args.workdir)
    docs, mean_chars = write_corpus(workdir, args.passages, args.per_file, args.seed)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "passages": args.passages, "files": len(list(docs.iterdir())),
              "mean_passage_chars": round(mean_chars, 1), "device": args.device,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "load_average_start": round(os.getloadavg()[0], 1)}
    print(json.dumps(result), flush=True)

    t = time.perf_counter()
    embedder = load_embedder(None, args.device)
    result["embedder_load_s"] = round(time.perf_counter() - t, 2)
    # The embedding's own rate on a sample, to split the build time into embedding and the rest.
    sample = [json.loads(line)["text"] for line in (docs / "part-00000.jsonl").read_text().splitlines()[:512]]
    t = time.perf_counter()
    embed(sample, embedder, args.batch_size)
    result["embed_only_passages_per_s"] = round(len(sample) / (time.perf_counter() - t), 1)

    index_dir = workdir / "index"
    config = IndexConfig(chunk=ChunkConfig(max_chars=800, overlap_chars=120), batch_size=args.batch_size,
                         device=args.device, commit_every=20_000)
    files = sorted(docs.iterdir())
    t = time.perf_counter()
    calls, indexed = [], 0
    for i in range(0, len(files), args.files_per_call):
        c = time.perf_counter()
        report = update_index(files[i:i + args.files_per_call], index_dir, config, rebuild=(i == 0), progress=False,
                              embedder=embedder)
        calls.append({"files": i + args.files_per_call, "passages": report.passages, "embedded": report.embedded,
                      "seconds": round(time.perf_counter() - c, 1)})
        indexed = report.passages
        print(json.dumps(calls[-1]), flush=True)
        if args.max_minutes is not None and time.perf_counter() - t > 60 * args.max_minutes:
            break
    build = time.perf_counter() - t
    result["build"] = {"seconds": round(build, 1), "passages": indexed, "passages_per_s": round(indexed / build, 1),
                       "complete": indexed == args.passages, "calls": calls}
    print(json.dumps({k: v for k, v in result["build"].items() if k != "calls"}), flush=True)

    t = time.perf_counter()
    index = open_index(index_dir)
    result["open_s"] = round(time.perf_counter() - t, 2)
    result["disk_mb"] = round(sum(f.stat().st_size for f in index_dir.rglob("*") if f.is_file()) / 1e6, 1)

    questions = [ex.meta["question"] for ex in load_blend()]
    random.Random(args.seed).shuffle(questions)
    questions = questions[:args.queries]
    modes = {"hybrid": RetrieveConfig(k=4), "dense": RetrieveConfig(k=4, mode="dense"),
             "bm25": RetrieveConfig(k=4, mode="bm25"),
             "hybrid + region filter": RetrieveConfig(k=4, filters={"region": "Spain"})}
    retrieve(index, "warm-up query", modes["hybrid"], embedder)
    result["query"] = {}
    for name, rc in modes.items():
        times = []
        for q in questions:
            t = time.perf_counter()
            retrieve(index, q, rc, embedder)
            times.append(time.perf_counter() - t)
        result["query"][name] = percentiles(times)
        print(name, json.dumps(result["query"][name]), flush=True)

    changed = files[0]
    rows = changed.read_text().splitlines()
    changed.write_text("\n".join(rows[::-1]) + "\n")  # same passages, new order: a changed file
    t = time.perf_counter()
    report = update_index(files[:len(calls) * args.files_per_call], index_dir, config, progress=False,
                          embedder=embedder)
    result["incremental"] = {"seconds": round(time.perf_counter() - t, 1), "updated_files": len(report.updated),
                             "embedded": report.embedded, "unchanged_files": report.unchanged}
    result["load_average_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result["incremental"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
