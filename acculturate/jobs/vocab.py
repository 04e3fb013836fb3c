"""`acculturate tokenizer extend`: learn a region's tokens from its text, add them to the model,
report fertility before and after, save an ordinary HF model directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from acculturate.data.sources import DataSource, read_text_sources, split_documents
from acculturate.models import DEFAULT_MODEL, load
from acculturate.models.vocab import ExtendConfig, extend_vocabulary, fertility, save_extended


def run_extend(sources: Sequence[DataSource], output: str | Path, *, model: str = DEFAULT_MODEL,
               config: ExtendConfig | None = None, test_fraction: float = 0.2, seed: int = 0,
               base_dir: Path | None = None) -> dict:
    """Extend ``model``'s vocabulary from the training part of ``sources`` and save it to ``output``.

    The corpus is split as ``acculturate train`` with ``data.kind: text`` splits it (same
    ``test_fraction`` and ``seed`` -> same held-apart documents), so the BPE never sees the text a
    later run evaluates on; fertility is reported on both parts.

    Returns:
        The record written to ``output/vocab_extension.json``: added tokens and ids, sizes, and
        ``fertility`` ``{"train"|"test": {"before", "after"}}`` (tokens per word).
    """
    start = time.perf_counter()
    docs = read_text_sources(sources, seed=seed, base_dir=base_dir)
    if not docs:
        raise ValueError("tokenizer extend: the corpus has no text")
    train_docs, test_docs = split_documents(docs, test_fraction, seed)
    loaded = load(model, device="cpu", dtype="fp32")
    train_texts, test_texts = [d.text for d in train_docs], [d.text for d in test_docs]
    before = {"train": fertility(loaded.tokenizer, train_texts), "test": fertility(loaded.tokenizer, test_texts)}
    tokenizer, extension = extend_vocabulary(loaded.model, loaded.tokenizer, train_texts, config)
    after = {"train": fertility(tokenizer, train_texts), "test": fertility(tokenizer, test_texts)}
    extension.fertility = {part: {"before": before[part]["fertility"], "after": after[part]["fertility"],
                                  "words": before[part]["words"]} for part in before}
    save_extended(loaded.model, tokenizer, extension, output)
    return {"output": str(output), "base_model": model, "tokens": extension.tokens,
            "intermediate": len(extension.intermediate), "new_ids": extension.new_ids,
            "old_vocab_size": extension.old_vocab_size, "new_vocab_size": extension.new_vocab_size,
            "fertility": extension.fertility, "documents": {"train": len(train_docs), "test": len(test_docs)},
            "seconds": round(time.perf_counter() - start, 1)}
