"""`acculturate rag eval CONFIG`: retrieval quality and answer accuracy with vs without retrieval, on a
document set built from BLEnD's annotator answers.

Construction (``blend_documents``): one Markdown document per country, a section per topic
(``## Food in Spain``), a paragraph per question holding the question with the country taken out
and every annotator answer with its vote count::

    What is the most popular fruit? Most common answer: orange (5 of 9 annotators). Other answers: dates, bananas, watermelon.

The country lives in the document's title and headings and in its ``region`` metadata (front
matter), as in a real regional knowledge base. Each evaluated question has exactly one target
paragraph, in its own country's document; a retrieved passage counts as relevant when it holds the
paragraph's question and its most-voted answer (a long paragraph may be split; with overlap, two
passages may hold them). The same question exists for every country, so
without the region filter the other 11 countries' paragraphs are near-identical distractors: the
retriever must use the country in the headings. Questions no annotator answered are left out of
both documents and evaluation. The documents hold the very answers the gold is made of, so "with
retrieval" measures how well the model reads and copies from retrieved evidence (an open-book upper
bound), not what it knows.

The run folder holds ``docs/`` (the documents), ``index/``, ``retrieval.json`` (recall@k and MRR per
retrieval mode, with and without the region filter), ``answers/`` (a prompt-eval run of
``zero_shot`` vs ``rag`` on a seeded question sample) and ``report.md``. Everything is resumable:
the index is incremental and the answer run continues where it stopped.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.config_loading import to_dict
from acculturate.data import load_blend
from acculturate.io import write_json, write_text
from acculturate.jobs.common import JobConfig, run_dir
from acculturate.rag.chunking import ChunkConfig
from acculturate.rag.index import IndexConfig

log = logging.getLogger(__name__)


@dataclass
class RagEvalConfig(JobConfig):
    """`acculturate rag eval CONFIG`: build the BLEnD document set, index it, measure retrieval and answers."""

    name: str = "rag-blend"
    countries: list[str] | None = None
    """BLEnD countries (default: all shipped)."""
    chunk: ChunkConfig = field(default_factory=lambda: ChunkConfig(max_chars=500, overlap_chars=100))
    embedder: str | None = None
    """Sentence-transformers model directory (default MiniLM)."""
    retrieval_sample: int | None = 600
    """Questions for recall/MRR (None: all)."""
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    """The k of recall@k."""
    modes: list[str] = field(default_factory=lambda: ["dense", "bm25", "hybrid"])
    """The retrieval modes measured: 'dense', 'bm25', 'hybrid'."""
    answer_sample: int | None = 40
    """Questions answered with and without retrieval (0: skip)."""
    answer_k: int = 3
    """Passages shown to the model."""
    seed: int = 0
    """Seed of the question samples."""

    def __post_init__(self):
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks: expected positive integers, got {self.ks}")
        for m in self.modes:
            if m not in ("dense", "bm25", "hybrid"):
                raise ValueError(f"modes: expected 'dense', 'bm25' or 'hybrid', got {m!r}")
        for name in ("retrieval_sample", "answer_sample"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: expected >= 0 or null, got {value}")
        if self.answer_k < 1:
            raise ValueError(f"answer_k: expected >= 1, got {self.answer_k}")


def question_without_country(question: str, country: str) -> str:
    """``"What is the most popular fruit in Algeria?"`` -> ``"What is the most popular fruit?"``;
    ``"Algeria's"`` becomes ``"the country's"``."""
    c = re.escape(country)
    text = re.sub(rf"\s*,?\s+\b(in|of|from|for|among|to)\s+(the\s+)?{c}\b", "", question)
    text = re.sub(rf"\b{c}'s\b", "the country's", text)
    return re.sub(r"\s+([?.,])", r"\1", text).strip()


def answer_paragraph(question: str, country: str, groups: list[dict]) -> tuple[str, str]:
    """The paragraph that answers one BLEnD question for one country, and its evidence: the question
    and the most-voted answer (what a passage must hold whole to count as relevant; a long paragraph
    may be split between passages, its tail of rarer answers is not needed).

    Plain prose without vote lists: the 135M default model copies bracketed counts into its answer.
    """
    ordered = sorted((g for g in groups if g["answers"]), key=lambda g: -g["count"])
    total = sum(g["count"] for g in ordered)
    top = ordered[0]
    evidence = (f"{question_without_country(question, country)} Most common answer: {' / '.join(top['answers'])} "
                f"({top['count']} of {total} annotators).")
    others = [a for g in ordered[1:] for a in g["answers"][:1]]
    return evidence + (f" Other answers: {', '.join(others)}." if others else ""), evidence


def blend_documents(out_dir: Path, countries: list[str] | None = None) -> list[dict]:
    """Write one Markdown document per country into ``out_dir``; returns the evaluation targets.

    Returns:
        One dict per answered question: ``id``, ``country``, ``region``, ``question``, ``answers``,
        ``paragraph`` (its text in the document), ``evidence`` (what a relevant passage holds).
    """
    import json

    from acculturate.data.blend import BLEND_FILE
    from acculturate.resources import resource_path

    raw = {}
    for line in resource_path(BLEND_FILE).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            raw[row["id"]] = row
    targets, by_country = [], {}
    for ex in load_blend(countries=countries):  # rows without any answer are skipped here
        country = ex.meta["country"].replace("_", " ")
        paragraph, evidence = answer_paragraph(ex.meta["question"], country, raw[ex.meta["id"]]["answers_en"])
        by_country.setdefault(country, {}).setdefault(ex.meta["topic"], []).append(paragraph)
        targets.append({"id": ex.meta["id"], "country": ex.meta["country"], "region": country,
                        "question": ex.meta["question"], "answers": ex.meta["answers"], "paragraph": paragraph,
                        "evidence": evidence})
    for country, topics in by_country.items():
        lines = ["---", f"region: {country}", "source: BLEnD annotator answers (CC BY-SA 4.0)", "---",
                 f"# Everyday culture in {country}", ""]
        for topic, paragraphs in topics.items():
            lines += [f"## {topic} in {country}", ""]
            for p in paragraphs:
                lines += [p, ""]
        write_text(out_dir / f"{country.replace(' ', '_')}.md", "\n".join(lines))
    return targets


def retrieval_metrics(index, targets: list[dict], modes: list[str], ks: list[int], embedder=None) -> dict:
    """recall@k and MRR for each mode, without and with the region filter."""
    from acculturate.models.embedding import embed, load_embedder
    from acculturate.rag.metrics import mean_reciprocal_rank, recall_at_k
    from acculturate.rag.retrieve import RetrieveConfig, retrieve

    model = embedder or load_embedder(index.manifest["settings"]["embedder"])
    vectors = embed([t["question"] for t in targets], model, progress=False).numpy()
    relevant = [{p["id"] for p in index.passages if t["evidence"] in p["text"]} for t in targets]
    missing = sum(1 for r in relevant if not r)
    depth = max(ks)
    results = {}
    for mode in modes:
        for filtered in (False, True):
            rankings = []
            for t, vector in zip(targets, vectors):
                config = RetrieveConfig(k=depth, mode=mode, candidates=max(50, depth),
                                        filters={"region": t["region"]} if filtered else {})
                rankings.append([h.passage["id"] for h in retrieve(index, t["question"], config, model,
                                                                   query_vector=vector)])
            label = f"{mode}{' + region filter' if filtered else ''}"
            results[label] = {**{f"recall@{k}": round(recall_at_k(rankings, relevant, k), 4) for k in ks},
                              "mrr": round(mean_reciprocal_rank(rankings, relevant), 4)}
    return {"questions": len(targets), "targets_missing": missing, "results": results}


def run_rag_eval(config: RagEvalConfig, *, overwrite: bool = False, progress: bool = True, loaded=None) -> dict:
    """Build the documents and index, measure retrieval, answer a sample with and without retrieval.

    Returns:
        ``{"retrieval": ..., "answers": {label: summary} | None, "index": ..., "wall_time_s"}``, also in
        ``<run>/metrics.json``; ``<run>/report.md`` holds the tables.
    """
    import shutil

    from acculturate.jobs.prompt_eval import PromptEvalConfig, StrategyRun, PromptTaskConfig, run_prompt_eval
    from acculturate.rag import open_index, update_index

    start = time.perf_counter()
    out = run_dir(config.output_dir, config.name)
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", to_dict(config))
    targets = blend_documents(out / "docs", config.countries)
    report = update_index([out / "docs"], out / "index",
                          IndexConfig(embedder=config.embedder, chunk=config.chunk), progress=progress)
    log.info("index: %d passages (%d embedded now)", report.passages, report.embedded)
    index = open_index(out / "index")
    sample = list(targets)
    random.Random(config.seed).shuffle(sample)
    if config.retrieval_sample is not None:
        sample = sample[:config.retrieval_sample]
    retrieval = retrieval_metrics(index, sample, config.modes, config.ks)
    write_json(out / "retrieval.json", retrieval)

    answers = None
    if config.answer_sample != 0:
        pe = PromptEvalConfig(
            name="answers", output_dir=str(out), model=config.model,
            task=PromptTaskConfig(name="blend", countries=config.countries, sample=config.answer_sample, seed=config.seed),
            strategies=[StrategyRun("zero_shot", "without-retrieval"),
                        StrategyRun("rag", "with-retrieval", {"index": str((out / "index").resolve()),
                                                              "k": config.answer_k})])
        answers = run_prompt_eval(pe, overwrite=False, progress=progress, loaded=loaded)["results"]

    summary = {"retrieval": retrieval, "answers": answers, "model": config.model.name,
               "index": {"passages": report.passages, "files": len(index.files),
                         "chunk": to_dict(config.chunk)},
               "wall_time_s": round(time.perf_counter() - start, 1)}
    write_json(out / "metrics.json", summary)
    write_text(out / "report.md", report_markdown(summary, config))
    return summary


def report_markdown(summary: dict, config: RagEvalConfig) -> str:
    """The tables of a run: retrieval per mode, then answer accuracy with and without retrieval."""
    from acculturate.jobs.prompt_eval import results_table

    r = summary["retrieval"]
    keys = [f"recall@{k}" for k in config.ks] + ["mrr"]
    lines = [f"# RAG on BLEnD annotator answers ({summary['index']['files']} country documents, "
             f"{summary['index']['passages']} passages)", "",
             f"## Retrieval ({r['questions']} questions; targets not found in any passage: {r['targets_missing']})", "",
             "| retriever | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for label, m in r["results"].items():
        lines.append(f"| {label} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |")
    lines.append("")
    if summary["answers"]:
        lines.append(results_table(summary["answers"], f"Answers ({summary['model']}, k={config.answer_k} passages)")
                     .replace("# Answers", "## Answers"))
    lines.append(f"Wall time: {summary['wall_time_s']:.0f} s.")
    return "\n".join(lines) + "\n"
