"""Exact and near-duplicate removal.

Exact: a hash of the text after normalization (Unicode NFKC, case-folded, punctuation dropped,
whitespace collapsed), so "Hello, world!" and "hello world" are one example.

Near: MinHash over word 3-gram shingles with locality-sensitive hashing (Broder, 1997; the
``datasketch`` library), the approach of the GPT-3 and The Pile / RefinedWeb dedupe pipelines.
An example is dropped when its estimated Jaccard similarity to one already kept is at least
``threshold``; the first occurrence (file order) is kept.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from acculturate.data.example import Example
from acculturate.data.summary import example_id, text_of

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


@dataclass
class DedupeConfig:
    """How duplicates are found."""

    near: bool = True
    """Also drop near-duplicates (MinHash LSH); False: exact duplicates only."""
    threshold: float = 0.8
    """Estimated Jaccard similarity of word shingles at or above which two examples are near-duplicates."""
    ngram: int = 3
    """Shingle size in words (texts shorter than this are one shingle)."""
    num_perm: int = 128
    """MinHash permutations: more is a finer similarity estimate (error about 1/sqrt(num_perm)) but slower."""
    part: str = "all"
    """What is compared: 'all' messages, the 'prompt' turns or the 'response'."""
    seed: int = 1
    """Seed of the MinHash permutations."""

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold: expected a number in (0, 1], got {self.threshold!r}")
        if self.ngram < 1:
            raise ValueError(f"ngram: expected >= 1, got {self.ngram!r}")
        if self.num_perm < 16:
            raise ValueError(f"num_perm: expected >= 16, got {self.num_perm!r}")
        from acculturate.data.summary import PARTS

        if self.part not in PARTS:
            raise ValueError(f"part: expected one of {PARTS}, got {self.part!r}")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def shingles(text: str, n: int) -> set[str]:
    words = normalize_text(text).split()
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def dedupe(examples: list[Example], config: DedupeConfig | None = None) -> tuple[list[Example], list[dict]]:
    """Drop exact (and, with ``config.near``, near) duplicates, keeping the first occurrence.

    Returns:
        ``(kept, removed)``; each removed entry is ``{"id", "duplicate_of", "kind": "exact"|"near",
        "similarity"}`` (the estimated Jaccard similarity for a near duplicate).
    """
    config = config or DedupeConfig()
    kept: list[Example] = []
    removed: list[dict] = []
    seen: dict[str, str] = {}   # normalized-text hash -> id of the kept example
    lsh = minhashes = None
    if config.near:
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        minhashes = {}
    for index, ex in enumerate(examples):
        text = text_of(ex, config.part)
        ident = example_id(ex)
        key = hashlib.sha1(normalize_text(text).encode()).hexdigest()
        if key in seen:
            removed.append({"id": ident, "duplicate_of": seen[key], "kind": "exact", "similarity": 1.0})
            continue
        if lsh is not None:
            mh = MinHash(num_perm=config.num_perm, seed=config.seed)
            mh.update_batch([s.encode() for s in shingles(text, config.ngram)])
            # LSH returns candidates; check the estimate so the threshold means what it says.
            best = max(((minhashes[c].jaccard(mh), c) for c in lsh.query(mh)), default=None)
            if best is not None and best[0] >= config.threshold:
                removed.append({"id": ident, "duplicate_of": best[1], "kind": "near",
                                "similarity": round(best[0], 3)})
                continue
            # LSH keys must be unique: the position guards against two rows sharing a meta id.
            lsh_key = f"{index}:{ident}"
            lsh.insert(lsh_key, mh)
            minhashes[lsh_key] = mh
        seen[key] = ident
        kept.append(ex)
    for row in removed:  # report plain ids, not the LSH keys
        row["duplicate_of"] = row["duplicate_of"].split(":", 1)[1] if row["kind"] == "near" else row["duplicate_of"]
    return kept, removed
