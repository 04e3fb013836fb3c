"""Synthetic instructions in the manner of Self-Instruct (Wang et al., 2023, arXiv:2212.10560):
show the model a few seed tasks, let it propose a new one, keep it when it is new enough (ROUGE-L
against every task so far below a threshold, 0.7 in the paper), of a sensible length and clean
(blocklist, no tasks a text model cannot do: images, files, ...), then let it answer it.

An optional region persona (``acculturate/resources/personas.yaml``) steers both the new tasks
("about everyday life in Indonesia") and the answers (as the persona's system prompt).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from acculturate.augment.progress import log_row, read_partial
from acculturate.data import DataError, Example, render_prompt, write_examples
from acculturate.data.dedupe import normalize_text
from acculturate.data.jsonl import read_jsonl_objects, text_field
from acculturate.data.filters import load_blocklist
from acculturate.decode import GenerationConfig, generate
from acculturate.resources import resource_path

SEED_TASKS = "data/instructions/seed_tasks.jsonl"
# Tasks a text-only model cannot do (the Self-Instruct paper's keyword filter).
UNDOABLE = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
            "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
_UNDOABLE = re.compile(r"(?<!\w)(" + "|".join(re.escape(w) for w in UNDOABLE) + r")(?!\w)", re.IGNORECASE)
_NUMBERING = re.compile(r"^\s*(?:task\s*)?\d+\s*[.):]\s*", re.IGNORECASE)


@dataclass
class SelfInstructConfig:
    """How many synthetic instructions, from which seeds, and what is kept."""

    num_instructions: int = 20
    """New instruction/answer pairs to keep."""
    seed_tasks: str | None = None
    """A Self-Instruct seed file (JSONL of ``instruction`` + ``instances``); default the shipped 175."""
    prompt_tasks: int = 6
    """Tasks shown to the model per proposal (the paper: 6 human-written + 2 generated)."""
    generated_in_prompt: int = 2
    """How many of those come from tasks generated so far (when there are some)."""
    rouge_threshold: float = 0.7
    """Drop a new instruction whose ROUGE-L F1 with any existing one is at or above this."""
    min_words: int = 3
    """Fewest words of a new instruction."""
    max_words: int = 60
    """Bounds on the instruction's words."""
    max_answer_words: int = 150
    """Most words of an answer kept."""
    language: str | None = "en"
    """ISO code new instructions must be detected as (py3langid); None skips the check."""
    blocklist: tuple[str, ...] = ("default",)
    """Blocklists (shipped region names or YAML files) that instructions and answers must not match."""
    region: str | None = None
    """A region the new tasks are about (also fills the persona's {region})."""
    persona: str | None = None
    """A persona name from personas.yaml (e.g. 'local') or its text: the system prompt for answers."""
    max_rounds: int = 50
    """Give up after this many proposal rounds (a round is one batch of proposals)."""
    batch_size: int = 8
    """Prompts per generate call."""
    temperature: float = 0.8
    """Sampling temperature of proposals and answers."""
    top_p: float = 0.95
    """Nucleus sampling threshold."""
    max_new_tokens: int = 48
    """For a proposal; answers get ``answer_max_new_tokens``."""
    answer_max_new_tokens: int = 160
    """Tokens per answer."""
    seed: int = 0
    """Sampling seed."""
    template: str = "chat"
    """How prompts are rendered: 'chat' or 'alpaca'."""

    def __post_init__(self):
        if self.num_instructions < 1:
            raise ValueError(f"num_instructions: expected >= 1, got {self.num_instructions}")
        if not 0 < self.rouge_threshold <= 1:
            raise ValueError(f"rouge_threshold: expected a number in (0, 1], got {self.rouge_threshold}")
        if self.prompt_tasks < 1 or not 0 <= self.generated_in_prompt <= self.prompt_tasks:
            raise ValueError(f"prompt_tasks, generated_in_prompt: expected 1 <= prompt_tasks and 0 <= "
                             f"generated_in_prompt <= prompt_tasks, got {self.prompt_tasks}, {self.generated_in_prompt}")
        if self.min_words < 1 or self.max_words < self.min_words:
            raise ValueError(f"min_words, max_words: expected 1 <= min_words <= max_words, got "
                             f"{self.min_words}, {self.max_words}")
        self.blocklist = tuple(self.blocklist)


def load_seed_tasks(path: str | os.PathLike | None = None) -> list[dict]:
    """Seed tasks as ``{"id", "instruction", "input", "output"}`` (the first instance of each).

    Raises:
        DataError: a line that is not JSON or lacks ``instruction``/``instances`` (file, line, field).
    """
    path = Path(path) if path else resource_path(SEED_TASKS)
    tasks = []
    for lineno, row in read_jsonl_objects(path):
        text_field(path, lineno, row, "instruction")
        instances = row.get("instances") or [{}]
        if not isinstance(instances, list) or not isinstance(instances[0], dict):
            raise DataError(path, lineno, "instances", "a list of {input, output}", repr(instances)[:40])
        tasks.append({"id": str(row.get("id", f"seed-{lineno}")), "instruction": row["instruction"].strip(),
                      "input": instances[0].get("input", "") or "", "output": instances[0].get("output", "") or ""})
    if not tasks:
        raise DataError(path, None, None, "at least one seed task", "an empty file")
    return tasks


def proposal_prompt(tasks: list[str], region: str | None) -> str:
    about = f" It should be about everyday life, culture or customs in {region}." if region else ""
    listed = "\n".join(f"{i}. {t}" for i, t in enumerate(tasks, 1))
    return (f"Here are some tasks:\n{listed}\n\nWrite one new task that is different from all of them."
            f"{about} Reply with the task only, in one sentence.")


def clean_instruction(text: str) -> str:
    """The proposal's first line without numbering or quotes."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = _NUMBERING.sub("", line).strip().strip('"').strip()
    return re.sub(r"^(?:new\s+)?task\s*:\s*", "", line, flags=re.IGNORECASE).strip()


class RougeL:
    """ROUGE-L F1 against a growing pool (``rouge-score``'s tokenizer and LCS, no stemming, as the paper)."""

    def __init__(self):
        from rouge_score import rouge_scorer, tokenizers

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self._tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
        self._pool: list[list[str]] = []

    def add(self, text: str) -> None:
        self._pool.append(self._tokenizer.tokenize(text))

    def max_score(self, text: str) -> float:
        from rouge_score.rouge_scorer import _score_lcs

        tokens = self._tokenizer.tokenize(text)
        return max((_score_lcs(ref, tokens).fmeasure for ref in self._pool), default=0.0)


def instruction_rejection(text: str, rouge: RougeL, seen: set[str], blocklist, config: SelfInstructConfig
                          ) -> tuple[str | None, float]:
    """Why a proposed instruction is not kept (or None), and its highest ROUGE-L to the pool."""
    words = len(text.split())
    if words < config.min_words:
        return f"too short ({words} words)", 0.0
    if words > config.max_words:
        return f"too long ({words} words)", 0.0
    if not text[0].isalpha():
        return "does not start with a letter", 0.0
    if normalize_text(text) in seen:
        return "duplicate", 1.0
    if _UNDOABLE.search(text):
        return "needs more than text", 0.0
    if blocklist.find(text):
        return "blocklist", 0.0
    if config.language:
        from acculturate.data.langid import detect_language

        code, _ = detect_language(text)
        if code != config.language:
            return f"not in {config.language} ({code})", 0.0
    score = rouge.max_score(text)
    if score >= config.rouge_threshold:
        return f"too similar (ROUGE-L {score:.2f})", score
    return None, score


def self_instruct(model, tokenizer, output: str | os.PathLike, config: SelfInstructConfig | None = None,
                  model_name: str = "smollm2-135m", progress: bool = True) -> dict:
    """Generate ``config.num_instructions`` new instruction/answer pairs and write them to ``output``.

    Args:
        model, tokenizer: the generating model.
        output: Alpaca-style chat JSONL (written atomically at the end); ``<output>.partial.jsonl``
            logs every proposal of every round, kept or not, so a rerun continues (rounds are
            seeded by ``(seed, round)``: the rerun makes what the first run would have made).
        config: settings; model_name: recorded in the provenance.

    Returns:
        ``{"kept", "proposed", "rounds", "rejected": {reason: n}, "output"}``. Each row's
        ``meta["provenance"]`` = ``{"method": "self_instruct", "model", "seed", "round",
        "prompt_task_ids", "rouge_l_max", "persona", "region"}``.
    """
    from tqdm.auto import tqdm

    from acculturate.prompting.prompts import system_prompt

    config = config or SelfInstructConfig()
    seeds = load_seed_tasks(config.seed_tasks)
    blocklist = load_blocklist(list(config.blocklist))
    system = system_prompt(config.persona, config.region) if config.persona else None
    settings = {"method": "self_instruct", "model": model_name, **asdict(config)}
    logged = read_partial(output, settings)
    rouge = RougeL()
    seen: set[str] = set()
    for task in seeds:
        rouge.add(task["instruction"])
        seen.add(normalize_text(task["instruction"]))
    kept: list[dict] = []
    rejected: dict[str, int] = {}
    proposed = 0
    rounds_done = -1
    for row in logged:   # replay the log: the pool grows exactly as it did
        proposed += 1
        rounds_done = max(rounds_done, row["round"])
        if row["rejected"]:
            key = row["rejected"].split(" (")[0]
            rejected[key] = rejected.get(key, 0) + 1
            continue
        kept.append(row)
        rouge.add(row["instruction"])
        seen.add(normalize_text(row["instruction"]))
    rounds = rounds_done + 1
    with tqdm(total=config.num_instructions, initial=min(len(kept), config.num_instructions),
              desc="self-instruct", unit="instruction", disable=not progress) as bar:
        while len(kept) < config.num_instructions and rounds < config.max_rounds:
            rng = random.Random(f"{config.seed}:{rounds}")
            prompts, shown = [], []
            for _ in range(config.batch_size):
                n_gen = min(config.generated_in_prompt, len(kept))
                picked = rng.sample(seeds, config.prompt_tasks - n_gen) + rng.sample(kept, n_gen)
                rng.shuffle(picked)
                shown.append([t.get("id") or t.get("row_id") for t in picked])
                prompts.append(render_prompt(proposal_prompt([t["instruction"] for t in picked], config.region),
                                             tokenizer, config.template))
            gen = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                   top_p=config.top_p, seed=config.seed * 100_003 + rounds,
                                   batch_size=config.batch_size, stop=("\n",))
            candidates = [clean_instruction(c.text) for c in generate(model, tokenizer, prompts, gen)]
            fresh = []
            for text, ids in zip(candidates, shown):
                reason, score = instruction_rejection(text, rouge, seen, blocklist, config)
                if reason is None:
                    seen.add(normalize_text(text))
                    rouge.add(text)
                fresh.append({"instruction": text, "prompt_task_ids": ids, "rouge_l_max": round(score, 4),
                              "rejected": reason})
            answer_rows = [r for r in fresh if r["rejected"] is None]
            if answer_rows:
                answer_prompts = [render_prompt([{"role": "user", "content": r["instruction"]}], tokenizer,
                                                config.template, system=system) for r in answer_rows]
                answer_gen = GenerationConfig(max_new_tokens=config.answer_max_new_tokens, temperature=0.0,
                                              batch_size=config.batch_size)
                for r, c in zip(answer_rows, generate(model, tokenizer, answer_prompts, answer_gen)):
                    r["output"] = c.text.strip()
                    r["rejected"] = _answer_rejection(r["output"], c.finish_reason, blocklist, config)
            for k, r in enumerate(fresh):
                r["round"] = rounds
                r["row_id"] = f"self-instruct-{rounds}-{k}"
                log_row(output, r)
                proposed += 1
                if r["rejected"]:
                    key = r["rejected"].split(" (")[0]
                    rejected[key] = rejected.get(key, 0) + 1
                elif len(kept) < config.num_instructions:
                    kept.append(r)
                    bar.update(1)
            rounds += 1
    examples = [_example(r, config, model_name) for r in kept[: config.num_instructions]]
    if examples:
        write_examples(output, examples)
    return {"kept": len(examples), "proposed": proposed, "rounds": rounds, "rejected": rejected,
            "output": str(output)}


def _answer_rejection(answer: str, finish_reason: str, blocklist, config: SelfInstructConfig) -> str | None:
    words = len(answer.split())
    if not words:
        return "empty answer"
    if words > config.max_answer_words:
        return f"answer too long ({words} words)"
    if finish_reason == "length":
        return "answer cut off at answer_max_new_tokens"
    if blocklist.find(answer):
        return "answer blocklist"
    return None


def _example(row: dict, config: SelfInstructConfig, model_name: str) -> Example:
    provenance = {"method": "self_instruct", "model": model_name, "seed": config.seed, "round": row["round"],
                  "prompt_task_ids": row["prompt_task_ids"], "rouge_l_max": row["rouge_l_max"],
                  "persona": config.persona, "region": config.region}
    meta = {"id": row["row_id"], "provenance": provenance}
    if config.region:
        meta["region"] = config.region
    return Example.from_alpaca(row["instruction"], "", row["output"], **meta)
