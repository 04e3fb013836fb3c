"""Evaluation tasks: what is asked (items) and how each answer is scored.

A task kind is one entry of ``TASKS``: it turns a :class:`TaskConfig` into items (an id, the chat
messages to send, and what the scorer needs), and scores the saved per-example rows. Scoring reads
only the saved rows, so ``--rescore`` recomputes every number without the model.

Kinds: ``blend`` (cultural short-answer QA), ``nusax`` (translation, BLEU/chrF), ``appropriateness``
(open answers judged 1-5 by a model and by humans), ``cot`` (SVAMP maths with sampled chains of
thought and interpretability proxies).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from acculturate.config_loading import ConfigError
from acculturate.data import blend_countries, is_correct, load_blend
from acculturate.evaluate import cot, metrics
from acculturate.resources import resource_path

NUSAX_FILE = "data/nusax/valid.csv"
NUSAX_LANGUAGES = ("english", "indonesian", "acehnese", "balinese", "banjarese", "buginese", "javanese",
                   "madurese", "minangkabau", "ngaju", "sundanese", "toba_batak")
SVAMP_FILE = "data/svamp/SVAMP.json"
COT_INSTRUCTION = ("Solve the problem step by step. Write each calculation as 'a op b = c' on its own line, "
                   "then end with 'The answer is N.'")
TRANSLATE_INSTRUCTION = "Translate this {source} text into {target}. Reply with the translation only.\n\n{text}"


@dataclass
class TaskConfig:
    """One task of an evaluation. Fields not used by a kind are ignored by it."""

    name: str
    kind: str
    """Blend | nusax | appropriateness | cot."""
    limit: int | None = 20
    """A seeded sample of N items (None: all; `acculturate eval --full`)."""
    seed: int = 0
    """The sample's seed (and the sampling seed of `cot` chains)."""
    max_new_tokens: int | None = None
    """Default per kind: blend 24, nusax 96, appropriateness 64, cot 160."""
    countries: list[str] | None = None
    """Blend: which countries (default all); appropriateness: see region."""
    ids_from: str | None = None
    """Blend/appropriateness: keep only the ids of this JSONL (e.g. a run's held-apart questions:
    runs/adapt-uk/eval/base.jsonl)."""
    source: str = "javanese"
    """Nusax: source language (a column of valid.csv)."""
    target: str = "english"
    """Nusax: target language."""
    region: str = "UK"
    """Appropriateness: whose questions, and which rubric judges them."""
    samples: int = 3
    """Cot: chains sampled per problem (consistency needs >= 2)."""
    temperature: float = 0.7
    """Cot: sampling temperature of the chains."""

    def __post_init__(self):
        if self.kind not in TASKS:
            raise ValueError(f"kind: expected one of {sorted(TASKS)}, got {self.kind!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"name: expected a non-empty name without '/', got {self.name!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: expected a positive integer or null, got {self.limit}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected a positive integer, got {self.max_new_tokens}")
        for lang_field in ("source", "target"):
            if self.kind == "nusax" and getattr(self, lang_field) not in NUSAX_LANGUAGES:
                raise ValueError(f"{lang_field}: expected one of {list(NUSAX_LANGUAGES)}, got {getattr(self, lang_field)!r}")
        if self.kind == "nusax" and self.source == self.target:
            raise ValueError(f"target: expected a language other than the source ({self.source!r})")
        if self.kind == "nusax" and not ({self.source, self.target} & {"english", "indonesian"}):
            raise ValueError("source/target: one side must be english or indonesian (NusaX pairs them with a local language)")
        if self.kind == "appropriateness" and self.region not in blend_countries():
            raise ValueError(f"region: expected one of the BLEnD countries {blend_countries()}, got {self.region!r}")
        if self.kind == "cot" and self.samples < 1:
            raise ValueError(f"samples: expected a positive integer, got {self.samples}")
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {self.temperature}")


@dataclass
class Item:
    """One thing to ask: ``messages`` to render, ``meta`` copied into the saved row for scoring."""

    id: str
    messages: list[dict]
    meta: dict = field(default_factory=dict)


@dataclass
class TaskKind:
    load: Callable[[TaskConfig, Path | None], list[Item]]
    score: Callable[[list[dict]], dict]
    max_new_tokens: int
    stop: tuple[str, ...]
    sampled: bool = False
    """True: `samples` chains per item at `temperature`."""


def _sample(items: list[Item], task: TaskConfig) -> list[Item]:
    """A seeded sample of ``limit`` items, kept in file order (so a sample of 20 is a prefix of nothing
    in particular and spans every country/topic)."""
    if task.limit is None or task.limit >= len(items):
        return items
    keep = set(random.Random(task.seed).sample(range(len(items)), task.limit))
    return [it for i, it in enumerate(items) if i in keep]


def _ids_from(path: str, base_dir: Path | None) -> set[str]:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    if not p.exists():
        raise FileNotFoundError(f"ids_from: {p} does not exist (a JSONL whose rows carry an 'id'; "
                                "e.g. runs/adapt-uk/eval/base.jsonl, written by `acculturate adapt`)")
    ids = set()
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                ids.add(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"ids_from: {p}:{lineno}: expected a JSON object with an 'id'") from None
    return ids


# --- blend -------------------------------------------------------------------------------------

def load_blend_items(task: TaskConfig, base_dir: Path | None) -> list[Item]:
    examples = load_blend(countries=task.countries)
    if task.ids_from:
        wanted = _ids_from(task.ids_from, base_dir)
        examples = [ex for ex in examples if ex.meta["id"] in wanted]
    items = [Item(ex.meta["id"], ex.prompt_messages,
                  {"country": ex.meta["country"], "topic": ex.meta["topic"], "answers": ex.meta["answers"]})
             for ex in examples]
    return _sample(items, task)


def score_blend(rows: list[dict]) -> dict:
    """Accuracy (is_correct against every annotator answer) with a bootstrap interval, per country and topic."""
    correct = [is_correct(r["output"], r["answers"]) for r in rows]
    return {
        "n": len(rows), "correct": sum(correct), "accuracy": metrics.accuracy(correct),
        "ci95": list(metrics.bootstrap_ci([float(c) for c in correct])),
        "by_country": metrics.group_accuracy(correct, [r["country"] for r in rows]),
        "by_topic": metrics.group_accuracy(correct, [r["topic"] for r in rows]),
        "per_example": [float(c) for c in correct],
    }


# --- nusax -------------------------------------------------------------------------------------

def _language_name(column: str) -> str:
    return column.replace("_", " ").title()


def load_nusax_items(task: TaskConfig, base_dir: Path | None) -> list[Item]:
    path = resource_path(NUSAX_FILE)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {task.source, task.target} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f"{path}: no column {sorted(missing)}; columns are {reader.fieldnames}")
        rows = list(reader)
    items = []
    for i, row in enumerate(rows):
        text, reference = row[task.source].strip(), row[task.target].strip()
        if not text or not reference:
            continue
        prompt = TRANSLATE_INSTRUCTION.format(source=_language_name(task.source), target=_language_name(task.target),
                                              text=text)
        items.append(Item(f"nusax-{row.get('') or i}", [{"role": "user", "content": prompt}],
                          {"source_text": text, "reference": reference}))
    return _sample(items, task)


def translation_text(output: str) -> str:
    """The translation in a model's reply: the first non-empty line, after dropping a preface line
    that ends with a colon ("The translation of this text into English is:") and wrapping quotes.
    Small chat models preface often; cutting generation at the first newline kept only the preface."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    while len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    text = lines[0] if lines else ""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def score_nusax(rows: list[dict]) -> dict:
    """Corpus BLEU and chrF (with signatures) of :func:`translation_text` of each reply, and sentence
    chrF per example for intervals and pairing."""
    from sacrebleu.metrics import CHRF

    hyps = [translation_text(r["output"]) for r in rows]
    refs = [r["reference"] for r in rows]
    bleu, chrf = metrics.corpus_bleu(hyps, refs), metrics.corpus_chrf(hyps, refs)
    sentence = CHRF()
    per = [float(sentence.sentence_score(h, [ref]).score) for h, ref in zip(hyps, refs)]
    return {"n": len(rows), "bleu": bleu.score, "bleu_signature": bleu.signature, "chrf": chrf.score,
            "chrf_signature": chrf.signature, "sentence_chrf_mean": metrics.mean(per),
            "sentence_chrf_ci95": list(metrics.bootstrap_ci(per)), "per_example": per}


# --- appropriateness ------------------------------------------------------------------------------

def load_appropriateness_items(task: TaskConfig, base_dir: Path | None) -> list[Item]:
    """The region's BLEnD questions asked openly (no "answer in a few words"), for a judge to rate."""
    examples = load_blend(countries=[task.region])
    if task.ids_from:
        wanted = _ids_from(task.ids_from, base_dir)
        examples = [ex for ex in examples if ex.meta["id"] in wanted]
    items = [Item(ex.meta["id"], [{"role": "user", "content": ex.meta["question"]}],
                  {"region": task.region, "question": ex.meta["question"], "topic": ex.meta["topic"]})
             for ex in examples]
    return _sample(items, task)


def score_appropriateness(rows: list[dict]) -> dict:
    """Judge scores (1-5) saved on each row under ``judge_score``; unparsed replies are counted."""
    scores = [r.get("judge_score") for r in rows]
    kept = [float(s) for s in scores if s is not None]
    return {"n": len(rows), "judged": len(kept), "unparsed": sum(1 for s in scores if s is None),
            "judge_mean": metrics.mean(kept), "judge_ci95": list(metrics.bootstrap_ci(kept)),
            "judge_distribution": {str(k): sum(1 for s in kept if s == k) for k in range(1, 6)},
            "per_example": [None if s is None else float(s) for s in scores]}


# --- cot ----------------------------------------------------------------------------------------

def load_cot_items(task: TaskConfig, base_dir: Path | None) -> list[Item]:
    path = resource_path(SVAMP_FILE)
    data = json.loads(path.read_text(encoding="utf-8"))
    items = []
    for i, row in enumerate(data):
        for key in ("ID", "Body", "Question", "Answer"):
            if key not in row:
                raise ValueError(f"{path}: item {i}: missing field {key!r}")
        problem = f"{row['Body'].strip()} {row['Question'].strip()}"
        items.append(Item(row["ID"], [{"role": "user", "content": f"{problem}\n{COT_INSTRUCTION}"}],
                          {"gold": float(row["Answer"])}))
    return _sample(items, task)


def score_cot(rows: list[dict]) -> dict:
    """Accuracy of the majority answer over the sampled chains, and the interpretability proxies
    (docs/evaluation.md): steps per chain, share of arithmetic claims that re-compute correctly,
    share of chains whose answer follows from their last step, agreement across chains."""
    correct, steps, claims, claims_ok, follows, consistencies = [], [], 0, 0, [], []
    for r in rows:
        proxies = [cot.chain_proxies(text) for text in r["chains"]]
        answers = [cot.final_answer(text) for text in r["chains"]]
        # A prompting strategy's row (evaluate.strategies) carries its own final answer.
        majority = _number(r["answer"]) if "strategy" in r else cot.majority_answer(answers)
        correct.append(majority is not None and abs(float(majority) - r["gold"]) < 1e-6)
        steps += [p["steps"] for p in proxies]
        claims += sum(p["arithmetic_claims"] for p in proxies)
        claims_ok += sum(p["arithmetic_correct"] for p in proxies)
        follows += [p["follows_from_last_step"] for p in proxies if p["follows_from_last_step"] is not None]
        consistencies.append(cot.consistency(answers))
    return {"n": len(rows), "accuracy": metrics.accuracy(correct),
            "ci95": list(metrics.bootstrap_ci([float(c) for c in correct])),
            "steps_mean": metrics.mean(steps), "arithmetic_claims": claims,
            "arithmetic_correct_rate": claims_ok / claims if claims else None,
            "follows_from_last_step_rate": metrics.mean([float(f) for f in follows]),
            "consistency_mean": metrics.mean(consistencies),
            "per_example": [float(c) for c in correct]}


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


TASKS: dict[str, TaskKind] = {
    "blend": TaskKind(load_blend_items, score_blend, max_new_tokens=24, stop=("\n",)),
    # No stop string: a reply may start with a preface line; translation_text picks the translation.
    "nusax": TaskKind(load_nusax_items, score_nusax, max_new_tokens=96, stop=()),
    "appropriateness": TaskKind(load_appropriateness_items, score_appropriateness, max_new_tokens=64, stop=()),
    "cot": TaskKind(load_cot_items, score_cot, max_new_tokens=160, stop=(), sampled=True),
}
