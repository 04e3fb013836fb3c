"""`acculturate adapt`: build a regional assistant from a region's documents and questions, and
measure what it changed.

Inputs: a ``region`` (any name; the 12 shipped BLEnD countries are ready-made presets whose
questions and documents ship with acculturate), the region's ``documents`` (the knowledge base), its
``questions`` with accepted answers, optional raw ``text`` for continued pre-training, and general
instruction data that keeps the model's general skills.

Steps (each one skipped when a resumed run already has its output):
1. read the questions and split them (stratified by topic where they carry one) into train and held-apart;
2. index the documents (``index/``; the presets' documents are written into ``documents/`` first);
3. answer the held-apart questions with the base model, closed-book and with retrieval, and score
   its general skills on held-out general instructions;
4. fine-tune a LoRA adapter on retrieval-aware examples (:mod:`acculturate.rag.raft`: the passages
   retrieval finds, distractors among them, and the answer citing the right one), the same questions
   closed-book, the raw text, and general instructions;
5. answer again with the adapted model, both ways, and score general skills again;
6. write ``assistant.json`` (what ``acculturate ask --run`` and ``serve --run`` load), ``metrics.json``,
   ``report.md`` and ``report.html``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.adapters.lora import LoRAConfig
from acculturate.config_loading import ConfigError, to_dict
from acculturate.data import Example, blend_countries, load_blend
from acculturate.data.questions import read_questions
from acculturate.data.sources import DataConfig, DataSource, read_source, resolve_path
from acculturate.evaluate.qa import QAEvalConfig
from acculturate.io import append_jsonl, read_jsonl_by_key, write_json, write_text
from acculturate.jobs.common import JobConfig, ModelConfig, check_run_dir, run_dir
from acculturate.jobs.finetune import Datasets, MethodConfig, prepare_and_train, save_trained, split_examples, tokenize
from acculturate.models import load
from acculturate.rag.chunking import ChunkConfig
from acculturate.rag.raft import RaftConfig
from acculturate.train import TrainConfig
from acculturate.train.tracking import log_report

log = logging.getLogger(__name__)

SYSTEMS = ("base_closed_book", "base_retrieval", "adapted_closed_book", "adapted_retrieval")


@dataclass
class RetrievalConfig:
    """The knowledge base: how documents become passages and how many the model reads."""

    k: int = 3
    """Passages shown with each question."""
    mode: str = "hybrid"
    """'hybrid' (dense + BM25, fused), 'dense' or 'bm25'."""
    chunk: ChunkConfig = field(default_factory=lambda: ChunkConfig(max_chars=300, overlap_chars=0))
    """How documents are cut into passages."""
    max_passage_chars: int = 400
    """A longer passage is cut in the prompt."""
    raft: RaftConfig = field(default_factory=RaftConfig)
    """Retrieval-aware training examples: the gold passage among distractors (rag/raft.py)."""

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k: expected >= 1, got {self.k}")
        if self.mode not in ("hybrid", "dense", "bm25"):
            raise ValueError(f"mode: expected 'hybrid', 'dense' or 'bm25', got {self.mode!r}")


@dataclass
class BaseShots:
    """Solved training questions shown to the *base* systems before each question (rag/shots.py)."""

    closed_book: int = 8
    """Before each closed-book question. Gemma 3 270M base on 48 UK questions: 3 shots 0% (it copied the
    last shot's answer), 8 shots 29.2%."""
    retrieval: int = 5
    """Before each question with passages (each shot: one passage cut to 200 characters). Gemma 3 270M
    base on 48 UK questions: 3 shots 29.2%, 5 shots 58.3%."""

    def __post_init__(self):
        for name in ("closed_book", "retrieval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")


@dataclass
class AdaptEvalConfig(QAEvalConfig):
    """How held-apart questions are answered, and what the base model is shown first."""

    base_shots: BaseShots | None = None
    """Solved training questions before each question, for the base systems only, so a pre-trained
    model answers instead of continuing the prompt (Gemma 3 270M base, shown none, repeated the persona:
    0% both ways). None: BaseShots() for an embedded pre-trained model (gemma3-270m), none for an
    instruction-tuned one; set it for your own pre-trained model."""


def base_shot_counts(config: "AdaptConfig") -> BaseShots:
    """``eval.base_shots``, or its default for the model: :class:`BaseShots` for an embedded pre-trained
    model (one whose chat template is attached on load because its GGUF has none), else none."""
    from acculturate.models.loading import EMBEDDED, embedded_name

    if config.eval.base_shots is not None:
        return config.eval.base_shots
    entry = EMBEDDED.get(embedded_name(config.model.name) or "")
    return BaseShots() if entry is not None and entry.chat_template is not None else BaseShots(0, 0)


@dataclass
class AdaptConfig(JobConfig):
    """`acculturate adapt [CONFIG]`: build a regional assistant and compare it with the base model."""

    name: str = "adapt-uk"
    region: str = "UK"
    """The region: any name; a shipped BLEnD country needs no questions or documents."""
    documents: list[str] = field(default_factory=list)
    """The knowledge base: files or folders (txt, md, html, pdf, jsonl); default: the preset's."""
    questions: str | None = None
    """The region's questions: JSONL {"question", "answers": [...]} (or Alpaca/chat/CSV); default: the preset's."""
    text: list[DataSource] = field(default_factory=list)
    """Raw regional text for continued pre-training."""
    persona: str | None = None
    """The system message (default: an assistant who knows everyday life in the region)."""
    data: DataConfig = field(default_factory=lambda: DataConfig(
        sources=[DataSource(path="shipped:instructions/instruction-data.json", limit=100)],
        test_fraction=0.5, stratify="topic", max_length=384))
    """General instruction data mixed into training so the model keeps following instructions; its
    ``test_fraction``, ``stratify`` and ``seed`` split the region's questions into train and held-apart."""
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    """The knowledge-base index and retrieval-aware training."""
    closed_book: bool = True
    """Also train each question without passages (the model learns the facts)."""
    # The defaults below are the shipped YAML's (configs/adapt/gemma3-270m_lora.yaml, which says why each
    # was chosen), so a user's own YAML of three lines runs the measured job (tests/jobs/test_adapt_config.py).
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="gemma3-270m", dtype="bf16"))
    """The model to adapt (default: the embedded Gemma 3 270M); bf16 weights (set dtype null on a CPU
    without bf16 units)."""
    method: MethodConfig = field(default_factory=lambda: MethodConfig(
        lora=LoRAConfig(r=16, alpha=32, dropout=0.0)))
    """The fine-tuning method: LoRA on every layer by default."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, min_steps=48, batch_size=8, lr=1e-3,
                                                                  group_by_length=True, max_length=384))
    """The training loop's settings."""
    eval: AdaptEvalConfig = field(default_factory=lambda: AdaptEvalConfig(batch_size=32))
    """How held-apart questions and the general-skill check are answered."""

    def __post_init__(self):
        if not isinstance(self.region, str) or not self.region.strip():
            raise ValueError("region: expected a name (any text, e.g. 'Bavaria'), got nothing")
        preset = self.region in blend_countries()
        if not preset and self.questions is None:
            raise ValueError(f"questions: region {self.region!r} is not a shipped preset ({', '.join(blend_countries())}), "
                             "so it needs its own questions: a JSONL file of {\"question\": ..., \"answers\": [...]}")
        if not preset and not self.documents:
            raise ValueError(f"documents: region {self.region!r} is not a shipped preset, so it needs its "
                             "knowledge base: files or folders of txt, md, html, pdf or jsonl documents")
        if not 0 < self.data.test_fraction < 1:
            raise ValueError(f"data.test_fraction: expected a number in (0, 1), got {self.data.test_fraction}")

    @property
    def preset(self) -> bool:
        return self.questions is None and self.region in blend_countries()


# --- inputs ------------------------------------------------------------------------------------------

def region_questions(config: AdaptConfig, base_dir: Path | None) -> list[Example]:
    if config.questions is None:
        return load_blend(countries=[config.region])
    path = resolve_path(config.questions, base_dir)
    try:
        return read_questions(path)
    except FileNotFoundError as e:
        raise ConfigError(f"questions: {e}") from None


def region_documents(config: AdaptConfig, out: Path, base_dir: Path | None) -> list[Path]:
    """The documents to index: the user's, or for a preset its BLEnD document written into ``out``."""
    if config.documents:
        paths = [resolve_path(p, base_dir) for p in config.documents]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ConfigError(f"documents: no such file or folder: {', '.join(missing)}")
        return paths
    from acculturate.jobs.rag_eval import blend_documents

    blend_documents(out / "documents", [config.region])
    return [out / "documents"]


def general_split(config: AdaptConfig, base_dir: Path | None) -> tuple[list[Example], list[Example]]:
    """(general training examples, held-out general instructions for the skill check): the check's
    rows come from the same files, never one that is trained on. Each file is read once; a source's
    ``limit`` picks its training rows with the same seeded sample ``read_source`` takes."""
    import random

    train, held = [], []
    for src in config.data.sources:
        rows = read_source(DataSource(path=src.path, format=src.format, columns=src.columns),
                           seed=config.data.seed, skip_invalid=config.data.skip_invalid, base_dir=base_dir)
        chosen = (random.Random(config.data.seed).sample(rows, src.limit)
                  if src.limit is not None and src.limit < len(rows) else rows)
        picked = {id(ex) for ex in chosen}
        train += chosen
        held += [ex for ex in rows if id(ex) not in picked]
    if config.eval.general == 0:
        return train, []
    seen = {repr(ex.messages) for ex in train}
    held = [ex for ex in held if repr(ex.messages) not in seen]
    random.Random(config.data.seed).shuffle(held)
    return train, held[:config.eval.general]


# --- answering ---------------------------------------------------------------------------------------

def answer_and_score(model, tok, spec, questions: list[Example], hits, path: Path, batch_size: int,
                     progress: bool, desc: str, shots: list[dict] | None = None) -> list[dict]:
    """Answer (resuming from ``path``) and score each held-apart question; rows in question order."""
    from tqdm.auto import tqdm

    from acculturate.data import is_correct
    from acculturate.rag.assistant import answer_questions

    done = read_jsonl_by_key(path, "id") if path.exists() else {}
    todo = [i for i, q in enumerate(questions) if q.meta["id"] not in done]
    if hits is not None:
        # Longest prompts first, so each chunk holds prompts of similar length (little padding).
        todo.sort(key=lambda i: -sum(min(len(h.passage["text"]), spec.max_passage_chars) for h in hits[i]))
    bar = tqdm(total=len(todo), desc=desc, unit="q", disable=not progress or not todo)
    chunk = batch_size * 4   # each chunk's rows are saved before the next starts (resumable)
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        rows = answer_questions(model, tok, spec, [questions[i].meta["question"] for i in part],
                                [hits[i] for i in part] if hits is not None else None, batch_size=batch_size,
                                shots=shots)
        for i, row in zip(part, rows):
            q = questions[i]
            row = {"id": q.meta["id"], **row, "answers": q.meta["answers"], "topic": q.meta.get("topic"),
                   "correct": is_correct(row["answer"], q.meta["answers"])}
            done[row["id"]] = row
            append_jsonl(path, row)
        bar.update(len(part))
    bar.close()
    return [done[q.meta["id"]] for q in questions]


def general_skill(model, tok, examples: list[Example], config: AdaptConfig, path: Path) -> dict | None:
    """Eval loss on the held-out general instructions' responses and ROUGE-L F1 of greedy answers."""
    from acculturate.data import render_prompt
    from acculturate.decode import GenerationConfig, generate
    from acculturate.train.sft import evaluate_loss, prepare_rows

    if not examples:
        return None
    if path.exists():
        import json

        return json.loads(path.read_text())
    from rouge_score import rouge_scorer

    features = tokenize(examples, tok, config.data)
    rows, _ = prepare_rows(features, config.train)
    device = next(model.parameters()).device
    loss = evaluate_loss(model, rows, config.train, tok.pad_token_id, device)
    prompts = [render_prompt(ex.prompt_messages, tok, config.data.template) for ex in examples]
    outs = generate(model, tok, prompts, GenerationConfig(max_new_tokens=config.eval.general_max_new_tokens,
                                                           batch_size=config.eval.batch_size))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(ex.messages[-1]["content"], o.text)["rougeL"].fmeasure for ex, o in zip(examples, outs)]
    result = {"n": len(examples), "eval_loss": round(float(loss), 4), "rouge_l": round(sum(scores) / len(scores), 4)}
    write_json(path, result)
    return result


# --- the job -----------------------------------------------------------------------------------------

def run_adapt(config: AdaptConfig, *, overwrite: bool = False,
              base_dir: Path | None = None, progress: bool = True) -> dict:
    """Run the whole adapt job; returns the metrics also written to ``<run>/metrics.json``."""
    from acculturate.data import train_test_split
    from acculturate.models.embedding import load_embedder
    from acculturate.rag import open_index, update_index
    from acculturate.rag.assistant import AssistantSpec, default_persona, retrieve_many
    from acculturate.rag.index import IndexConfig
    from acculturate.rag.raft import raft_examples
    from acculturate.rag.shots import closed_book_shots, retrieval_shots
    from acculturate.rag.retrieve import RetrieveConfig

    start = time.perf_counter()
    out = run_dir(config.output_dir, config.name)
    check_run_dir(out, config, overwrite)
    write_json(out / "config.json", to_dict(config))

    questions = region_questions(config, base_dir)
    stratify = config.data.stratify if all(q.meta.get(config.data.stratify or "") for q in questions) else None
    region_train, region_test = train_test_split(questions, config.data.test_fraction, config.data.seed, stratify)
    if config.eval.limit:
        region_test = region_test[:config.eval.limit]
    general_train, general_check = general_split(config, base_dir)

    documents = region_documents(config, out, base_dir)
    report = update_index(documents, out / "index", IndexConfig(chunk=config.retrieval.chunk), progress=progress)
    index = open_index(out / "index")
    if not len(index):
        raise ConfigError(f"documents: no text was found in {', '.join(map(str, documents))}")
    embedder = load_embedder(index.manifest["settings"]["embedder"])
    k = config.retrieval.k
    shown = RetrieveConfig(k=k, mode=config.retrieval.mode, candidates=max(50, k))
    deep = RetrieveConfig(k=max(k, config.retrieval.raft.depth), mode=config.retrieval.mode,
                          candidates=max(50, k, config.retrieval.raft.depth))
    test_hits = retrieve_many(index, [q.meta["question"] for q in region_test], shown, embedder)

    loaded = load(config.model.name, device=config.model.device, dtype=config.model.dtype)
    model, tok = loaded.model, loaded.tokenizer
    spec = AssistantSpec(region=config.region, model=config.model.name,
                         persona=config.persona or default_persona(config.region), dtype=config.model.dtype,
                         template=config.data.template,
                         retrieve={"k": k, "mode": config.retrieval.mode},
                         max_passage_chars=config.retrieval.max_passage_chars,
                         max_new_tokens=config.eval.max_new_tokens)

    train_hits = retrieve_many(index, [q.meta["question"] for q in region_train], deep, embedder)
    counts = base_shot_counts(config)
    base_shots = {"closed_book": closed_book_shots(region_train, counts.closed_book, config.data.seed),
                  "retrieval": retrieval_shots(region_train, train_hits, counts.retrieval, config.data.seed)}

    def evaluate(tag: str) -> dict[str, list[dict]]:
        rows = {}
        for mode, hits in (("closed_book", None), ("retrieval", test_hits)):
            rows[mode] = answer_and_score(model, tok, spec, region_test, hits, out / "eval" / f"{tag}_{mode}.jsonl",
                                          config.eval.batch_size, progress,
                                          f"{tag}: {len(region_test)} questions, {mode.replace('_', '-')}",
                                          shots=base_shots[mode] if tag == "base" else None)
        return rows

    stages: dict[str, float] = {}   # seconds per stage, this call (saved answers are not redone)
    lap = [start]

    def stage_done(name: str) -> None:
        now = time.perf_counter()
        stages[name], lap[0] = now - lap[0], now

    stage_done("setup")
    base_rows = evaluate("base")
    general_before = general_skill(model, tok, general_check, config, out / "eval" / "general_base.json")
    stage_done("base_eval")

    # Training data: retrieval-aware examples, the same questions closed-book, raw text, general data.
    raft = raft_examples(region_train, train_hits, k, spec.retrieval_system, config.retrieval.raft,
                         seed=config.data.seed, max_passage_chars=config.retrieval.max_passage_chars)
    closed = ([Example([{"role": "system", "content": spec.persona}] + q.messages, q.meta) for q in region_train]
              if config.closed_book else [])
    train_examples = raft + closed + general_train
    features = tokenize(train_examples, tok, config.data)
    text_rows = _text_features(config, tok, base_dir)
    datasets = Datasets(train_examples, [], features + text_rows, [])
    summary, result = prepare_and_train(loaded, config.method, config.train, datasets, out, resume=True)
    saved = save_trained(loaded, config.method, out, config.model.name)
    spec.adapter = saved.name if config.method.name in ("lora", "qlora", "prompt_tuning") else None
    if spec.adapter is None:
        spec.model = str(saved.resolve())
    spec.save(out)
    stage_done("training")

    adapted_rows = evaluate("adapted")
    general_after = general_skill(model, tok, general_check, config, out / "eval" / "general_adapted.json")
    stage_done("adapted_eval")

    systems = {"base_closed_book": base_rows["closed_book"], "base_retrieval": base_rows["retrieval"],
               "adapted_closed_book": adapted_rows["closed_book"], "adapted_retrieval": adapted_rows["retrieval"]}
    raft_kinds = {kind: sum(1 for ex in raft if ex.meta["raft"] == kind)
                  for kind in ("gold", "distractors_only", "no_gold_found")}
    metrics = {
        "region": config.region, "preset": config.preset, "model": config.model.name, "method": config.method.name,
        "questions": {"total": len(questions), "train": len(region_train), "test": len(region_test)},
        "train_examples": {"retrieval_aware": len(raft), "retrieval_aware_kinds": raft_kinds,
                           "closed_book": len(closed), "general": len(general_train), "text_rows": len(text_rows)},
        "index": {"documents": len(index.files), "passages": len(index), "k": k, "mode": config.retrieval.mode},
        "retrieval_recall": _recall(test_hits, region_test),
        "base_shots": {mode: len(turns) // 2 for mode, turns in base_shots.items()},
        "systems": {name: _summary(rows) for name, rows in systems.items()},
        "comparisons": _comparisons(systems),
        "general": {"base": general_before, "adapted": general_after, "relative_change": _relative(general_before, general_after)},
        "parameters": summary, "train": to_dict(result), "saved": str(saved), "assistant": str(out / "assistant.json"),
        "indexing_s": round(report.seconds, 1),
        "stage_seconds": {name: round(seconds, 1) for name, seconds in stages.items()},
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    write_json(out / "metrics.json", metrics)
    from acculturate.jobs.adapt_report import render_html, render_report

    write_text(out / "report.md", render_report(metrics))
    write_text(out / "report.html", render_html(metrics))
    log_report(out / "train", config.train.report_to, [out / "report.md", out / "metrics.json"], metrics)
    return metrics


def _text_features(config: AdaptConfig, tok, base_dir: Path | None) -> list[dict]:
    """Packed raw-text rows (loss on every token) for continued pre-training beside the questions."""
    if not config.text:
        return []
    from acculturate.data.text import text_features
    from acculturate.data.sources import read_text_sources

    docs = read_text_sources(config.text, seed=config.data.seed, base_dir=base_dir)
    if not docs:
        raise ConfigError("text: no text was read")
    return text_features(docs, tok, config.train.max_length, "stream")


def _summary(rows: list[dict]) -> dict:
    from acculturate.evaluate.qa import wilson_interval

    correct = sum(r["correct"] for r in rows)
    topics: dict[str, list[bool]] = {}
    for r in rows:
        topics.setdefault(str(r.get("topic")), []).append(r["correct"])
    return {"accuracy": correct / len(rows) if rows else 0.0, "correct": correct, "total": len(rows),
            "ci95": list(wilson_interval(correct, len(rows))),
            "by_topic": {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in sorted(topics.items())}}


def _comparisons(systems: dict[str, list[dict]]) -> dict:
    """Paired bootstrap intervals (same questions) of the differences the report states."""
    from acculturate.evaluate.metrics import paired_bootstrap

    pairs = {"adapted_retrieval - base_retrieval": ("base_retrieval", "adapted_retrieval"),
             "adapted_closed_book - base_closed_book": ("base_closed_book", "adapted_closed_book"),
             "base_retrieval - base_closed_book": ("base_closed_book", "base_retrieval"),
             "adapted_retrieval - base_closed_book": ("base_closed_book", "adapted_retrieval")}
    out = {}
    for label, (a, b) in pairs.items():
        d = paired_bootstrap([float(r["correct"]) for r in systems[a]], [float(r["correct"]) for r in systems[b]])
        out[label] = {"difference": d.difference, "ci95": list(d.ci), "p": d.p_value, "n": d.n}
    return out


def _relative(before: dict | None, after: dict | None) -> dict | None:
    if not before or not after:
        return None
    return {"eval_loss": round((after["eval_loss"] - before["eval_loss"]) / before["eval_loss"], 4),
            "rouge_l": round((after["rouge_l"] - before["rouge_l"]) / before["rouge_l"], 4) if before["rouge_l"] else None}


def _recall(hits, questions: list[Example]) -> float:
    """Share of held-apart questions with an accepted answer in some shown passage."""
    from acculturate.data import is_correct

    if not questions:
        return 0.0
    found = sum(any(is_correct(h.passage["text"], q.meta["answers"]) for h in hs) for hs, q in zip(hits, questions))
    return round(found / len(questions), 4)
