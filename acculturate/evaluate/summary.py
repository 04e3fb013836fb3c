"""Score a whole evaluation run from its saved files: per task and system, the comparison of each
system with the first (paired bootstrap), human ratings and their agreement with the judge, and
efficiency. Reads only ``outputs/``, ``judgements/``, ``timing/`` and ``ratings.sqlite``: this is
what ``--rescore`` runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from acculturate.evaluate import metrics
from acculturate.evaluate.agreement import spearman, weighted_kappa
from acculturate.evaluate.ratings import item_key, ratings_by_item
from acculturate.evaluate.runner import read_rows
from acculturate.evaluate.tasks import TASKS

# The per-example score each kind's paired comparison uses, and what it is called in the report.
PAIRED_SCORE = {"blend": "accuracy", "nusax": "sentence chrF", "appropriateness": "judge score",
                "cot": "accuracy"}


def load_task_rows(run_dir: Path, task: dict, system: str) -> list[dict]:
    """A system's saved rows of a task (judge scores merged in), in file order.

    Raises:
        FileNotFoundError: no outputs saved for this task and system.
    """
    path = run_dir / "outputs" / task["name"] / f"{system}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no saved outputs; run `acculturate eval` (without --rescore) first")
    rows = list(read_rows(path).values())
    if task["kind"] == "appropriateness":
        judged = read_rows(run_dir / "judgements" / task["name"] / f"{system}.jsonl")
        for r in rows:
            j = judged.get(r["id"], {})
            r["judge_score"], r["judge_reason"] = j.get("judge_score"), j.get("judge_reason")
    return rows


def efficiency(run_dir: Path, task: str, system: str) -> dict:
    """Sum of the saved chunk timings: seconds, tokens, tokens/s (generated tokens per second of
    generation), and the largest peak memory of any chunk."""
    path = run_dir / "timing" / task / f"{system}.jsonl"
    chunks = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.exists() else []
    seconds = sum(c["seconds"] for c in chunks)
    tokens = sum(c["completion_tokens"] for c in chunks)
    return {"seconds": seconds, "completion_tokens": tokens,
            "prompt_tokens": sum(c["prompt_tokens"] for c in chunks),
            "tokens_per_s": tokens / seconds if seconds else None,
            "peak_memory_bytes": max((c["peak_memory_bytes"] for c in chunks), default=None),
            "memory_kind": chunks[0]["memory_kind"] if chunks else None}


def trainable_parameters(adapter: str | None) -> dict | None:
    """``{"trainable", "total", "percent"}`` from the ``metrics.json`` of the run that trained the
    adapter (``acculturate adapt``/``train`` write it beside ``adapter/``); None when unknown."""
    if not adapter:
        return None
    path = Path(adapter).parent / "metrics.json"
    if not path.exists():
        return None
    params = json.loads(path.read_text(encoding="utf-8")).get("parameters")
    return params if isinstance(params, dict) else None


def _human(rows: list[dict], task: str, system: str, ratings: dict[str, list[int]]) -> list[tuple[dict, list[int]]]:
    return [(r, ratings[item_key(task, system, r["id"])]) for r in rows if item_key(task, system, r["id"]) in ratings]


def score_run(run_dir: str | Path, config: dict) -> dict:
    """Every number of the report, from the run's saved files.

    Args:
        run_dir: the run folder.
        config: the run's config as saved in ``config.json`` (systems, tasks).
    Returns:
        The metrics dict written to ``metrics.json``.
    """
    run_dir = Path(run_dir)
    systems = [s["name"] for s in config["systems"]]
    ratings = ratings_by_item(run_dir)
    out = {"name": config.get("name"), "systems": config["systems"], "tasks": {}, "efficiency": {}}
    per_system_cost = {s: [] for s in systems}
    for task in config["tasks"]:
        kind = TASKS[task["kind"]]
        entry = {"kind": task["kind"], "paired_score": PAIRED_SCORE[task["kind"]], "systems": {},
                 "comparisons": {}, "outputs": {}}
        per_example: dict[str, dict[str, float | None]] = {}
        pooled: list[tuple[dict, list[int]]] = []
        for system in systems:
            rows = load_task_rows(run_dir, task, system)
            scores = kind.score(rows)
            per_example[system] = {r["id"]: v for r, v in zip(rows, scores.pop("per_example"))}
            scores["efficiency"] = efficiency(run_dir, task["name"], system)
            per_system_cost[system].append(scores["efficiency"])
            entry["systems"][system] = scores
            entry["outputs"][system] = str(Path("outputs") / task["name"] / f"{system}.jsonl")
            if task["kind"] == "appropriateness":
                pairs = _human(rows, task["name"], system, ratings)
                pooled += pairs
                entry.setdefault("human", {})[system] = human_summary(pairs)
        if task["kind"] == "appropriateness":
            entry["human_all_systems"] = human_summary(pooled)   # agreement over every rated answer
        baseline = systems[0]
        for system in systems[1:]:
            ids = [i for i in per_example[baseline]
                   if per_example[baseline][i] is not None and per_example[system].get(i) is not None]
            diff = metrics.paired_bootstrap([per_example[baseline][i] for i in ids],
                                            [per_example[system][i] for i in ids])
            entry["comparisons"][system] = {"versus": baseline, **asdict(diff)}
        out["tasks"][task["name"]] = entry
    for s in config["systems"]:
        cost = per_system_cost[s["name"]]
        seconds = sum(c["seconds"] for c in cost)
        tokens = sum(c["completion_tokens"] for c in cost)
        peaks = [c["peak_memory_bytes"] for c in cost if c["peak_memory_bytes"] is not None]
        out["efficiency"][s["name"]] = {
            "seconds": seconds, "completion_tokens": tokens, "tokens_per_s": tokens / seconds if seconds else None,
            "peak_memory_bytes": max(peaks) if peaks else None,
            "memory_kind": next((c["memory_kind"] for c in cost if c["memory_kind"]), None),
            "trainable_parameters": trainable_parameters(s.get("adapter"))}
    return out


def human_summary(pairs: list[tuple[dict, list[int]]]) -> dict:
    """Human ratings of one system's answers and their agreement with the judge.

    Args:
        pairs: (row with ``judge_score``, that item's human scores) for each rated item.
    Returns:
        ``items``/``ratings`` counts, ``mean`` (of per-item means) with a bootstrap interval, and
        ``agreement``: Spearman's rho between the judge's score and the mean human score per item,
        and quadratic-weighted kappa over every (judge, human) score pair; None where undefined.
    """
    item_means = [sum(s) / len(s) for _, s in pairs]
    both = [(r["judge_score"], s) for r, s in pairs if r.get("judge_score") is not None]
    judge_item = [float(j) for j, _ in both]
    human_item = [sum(s) / len(s) for _, s in both]
    judge_flat = [j for j, s in both for _ in s]
    human_flat = [h for _, s in both for h in s]
    return {"items": len(pairs), "ratings": sum(len(s) for _, s in pairs),
            "mean": metrics.mean(item_means), "ci95": list(metrics.bootstrap_ci(item_means)),
            "agreement": {"n_items": len(both),
                          "spearman": spearman(judge_item, human_item) if len(both) >= 2 else None,
                          "weighted_kappa": weighted_kappa(judge_flat, human_flat) if both else None}}
