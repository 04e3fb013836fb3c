"""Which embedded vector store backs `acculturate rag`: measured, not guessed.

Stores the same N unit vectors (384-d, all-MiniLM-L6-v2's width) with a text and a region per row in
each candidate, on disk, then measures what the index does in use:

- build: write all N rows and persist them;
- open: make a just-written index queryable again (what `acculturate rag ask` pays each time);
- query: exact top-10 by inner product, p50/p95 over Q queries, without and with a region filter
  (1 of 12 regions);
- update: replace the rows of one file (1% of N: delete + add) and persist, as an incremental
  re-index does;
- disk: bytes on disk.

Vectors are random unit vectors: with exact (flat) search the cost does not depend on their values.
Candidates: plain numpy + safetensors, FAISS (faiss-cpu, IndexFlatIP), LanceDB (exact search, no
ANN index). sqlite-vec is tried and reported when this Python's sqlite3 cannot load extensions.

    OMP_NUM_THREADS=1 python bench/rag_store.py --n 100000 --queries 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

D = 384
REGIONS = [f"region{i}" for i in range(12)]


def percentiles(times: list[float]) -> dict:
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    idx = np.argpartition(-scores, k)[:k]
    return idx[np.argsort(-scores[idx])]


# --- numpy + safetensors -------------------------------------------------------------------------

def bench_numpy(vectors, rows, queries, d: Path, k: int) -> dict:
    from safetensors.numpy import load_file, save_file

    def save(vecs, rows_):
        tmp = d / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({"vectors": vecs}, str(tmp / "vectors.safetensors"))
        (tmp / "rows.json").write_text(json.dumps(rows_))
        final = d / "index"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)

    t = time.perf_counter()
    save(vectors, rows)
    build = time.perf_counter() - t
    t = time.perf_counter()
    vecs = load_file(str(d / "index" / "vectors.safetensors"))["vectors"]
    rows_ = json.loads((d / "index" / "rows.json").read_text())
    regions = np.array([r["region"] for r in rows_])
    open_s = time.perf_counter() - t
    plain, filtered = [], []
    for q in queries:
        t = time.perf_counter()
        top_k(vecs @ q, k)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        sel = np.flatnonzero(regions == "region3")
        sel[top_k(vecs[sel] @ q, k)]
        filtered.append(time.perf_counter() - t)
    t = time.perf_counter()
    files = np.array([r["file"] for r in rows_])
    keep = files != "file0"
    n_new = int((~keep).sum())
    new_vecs = np.concatenate([vecs[keep], vectors[:n_new]])
    new_rows = [r for r, kp in zip(rows_, keep) if kp] + rows[:n_new]
    save(new_vecs, new_rows)
    update = time.perf_counter() - t
    return {"build_s": build, "open_s": open_s, "query": percentiles(plain), "query_filtered": percentiles(filtered),
            "update_s": update, "disk_mb": disk_bytes(d) / 1e6}


# --- FAISS ---------------------------------------------------------------------------------------

def bench_faiss(vectors, rows, queries, d: Path, k: int) -> dict:
    import faiss

    d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(D))
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    faiss.write_index(index, str(d / "index.faiss"))
    (d / "rows.json").write_text(json.dumps(rows))
    build = time.perf_counter() - t
    t = time.perf_counter()
    index = faiss.read_index(str(d / "index.faiss"))
    rows_ = json.loads((d / "rows.json").read_text())
    regions = np.array([r["region"] for r in rows_])
    open_s = time.perf_counter() - t
    plain, filtered = [], []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], k)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        sel = faiss.IDSelectorBatch(np.flatnonzero(regions == "region3").astype(np.int64))
        index.search(q[None], k, params=faiss.SearchParameters(sel=sel))
        filtered.append(time.perf_counter() - t)
    t = time.perf_counter()
    files = np.array([r["file"] for r in rows_])
    gone = np.flatnonzero(files == "file0").astype(np.int64)
    index.remove_ids(gone)
    index.add_with_ids(vectors[:len(gone)], np.arange(len(vectors), len(vectors) + len(gone), dtype=np.int64))
    faiss.write_index(index, str(d / "index.faiss"))
    (d / "rows.json").write_text(json.dumps(rows_))
    update = time.perf_counter() - t
    return {"build_s": build, "open_s": open_s, "query": percentiles(plain), "query_filtered": percentiles(filtered),
            "update_s": update, "disk_mb": disk_bytes(d) / 1e6}


# --- LanceDB -------------------------------------------------------------------------------------

def bench_lancedb(vectors, rows, queries, d: Path, k: int) -> dict:
    import lancedb
    import pyarrow as pa

    def table(vecs, rows_):
        return pa.table({"id": [r["id"] for r in rows_], "file": [r["file"] for r in rows_],
                         "region": [r["region"] for r in rows_], "text": [r["text"] for r in rows_],
                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), D)})

    t = time.perf_counter()
    db = lancedb.connect(str(d))
    db.create_table("chunks", table(vectors, rows), mode="overwrite")
    build = time.perf_counter() - t
    t = time.perf_counter()
    tbl = lancedb.connect(str(d)).open_table("chunks")
    tbl.search(queries[0]).metric("dot").limit(k).to_list()  # first query opens the files
    open_s = time.perf_counter() - t
    plain, filtered = [], []
    for q in queries:
        t = time.perf_counter()
        tbl.search(q).metric("dot").limit(k).select(["id"]).to_arrow()
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        tbl.search(q).metric("dot").where("region = 'region3'", prefilter=True).limit(k).select(["id"]).to_arrow()
        filtered.append(time.perf_counter() - t)
    t = time.perf_counter()
    n_gone = sum(r["file"] == "file0" for r in rows)
    tbl.delete("file = 'file0'")
    tbl.add(table(vectors[:n_gone], rows[:n_gone]))
    update = time.perf_counter() - t
    return {"build_s": build, "open_s": open_s, "query": percentiles(plain), "query_filtered": percentiles(filtered),
            "update_s": update, "disk_mb": disk_bytes(d) / 1e6}


def bench_sqlite_vec(vectors, rows, queries, d: Path, k: int) -> dict:
    import sqlite3

    import sqlite_vec

    db = sqlite3.connect(str(d / "x.db") if d.mkdir(parents=True, exist_ok=True) is None else ":memory:")
    if not hasattr(db, "enable_load_extension"):
        return {"error": "this Python's sqlite3 is built without extension loading "
                         "(no Connection.enable_load_extension): sqlite-vec cannot be loaded"}
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    return {"error": "not measured"}


BACKENDS = {"numpy+safetensors": bench_numpy, "faiss": bench_faiss, "lancedb": bench_lancedb,
            "sqlite-vec": bench_sqlite_vec}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", default="bench/results/rag_store.json")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.n, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((args.queries, D)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    # 100 files of N/100 passages, 12 regions; ~300 characters of text per row like a real passage.
    rows = [{"id": f"c{i}", "file": f"file{i % 100}", "region": REGIONS[i % 12], "text": "x" * 300}
            for i in range(args.n)]
    results = {"n": args.n, "dim": D, "queries": args.queries, "k": args.k,
               "date": time.strftime("%Y-%m-%d"), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "load_average": os.getloadavg()[0], "backends": {}}
    for name, fn in BACKENDS.items():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                r = fn(vectors, rows, queries, Path(tmp) / name, args.k)
            except ImportError as e:
                r = {"error": f"not installed: {e}"}
        r = {key: (round(v, 3) if isinstance(v, float) else v) for key, v in r.items()}
        results["backends"][name] = r
        print(f"{name:18s} {json.dumps(r)}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
