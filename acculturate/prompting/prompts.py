"""Pieces every strategy builds its prompts from: the system persona, the exemplars, rendering.

Personas are data (``acculturate/resources/personas.yaml``), not code: add a region's persona there.
"""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import yaml

from acculturate.data import Example, render_prompt
from acculturate.prompting.tasks import Task
from acculturate.resources import resource_path

PERSONAS_FILE = "personas.yaml"
SELECTIONS = ("static", "similar")


@functools.lru_cache(maxsize=4)
def load_personas(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Persona templates by name from a YAML mapping (default: the shipped ``personas.yaml``).

    Raises:
        ValueError: the file is not a mapping of names to non-empty strings (the message names the entry).
    """
    path = Path(path) if path is not None else resource_path(PERSONAS_FILE)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping of persona names to templates, got {type(data).__name__}")
    for name, template in data.items():
        if not isinstance(template, str) or not template.strip():
            raise ValueError(f"{path}: persona {name!r}: expected a non-empty string, got {template!r}")
    return dict(data)


def system_prompt(persona: str | None, region: str | None = None) -> str | None:
    """The system message for ``persona`` about ``region``; None when no persona is asked for.

    Args:
        persona: a persona name from ``personas.yaml``, or free text with an optional ``{region}``
            (anything containing a space is taken as the text itself).
        region: fills ``{region}``.

    Raises:
        ValueError: an unknown persona name, or a template needing a region when there is none.
    """
    if persona is None:
        return None
    personas = load_personas()
    if persona in personas:
        template = personas[persona]
    elif " " in persona:
        template = persona
    else:
        raise ValueError(f"persona: unknown {persona!r}; shipped personas: {sorted(personas)} "
                         "(or give the persona's text itself)")
    if "{region}" in template:
        if not region:
            raise ValueError(f"persona {persona!r} needs a region: the question has none, give one "
                             "(config 'region', CLI --region)")
        return template.replace("{region}", region)
    return template


def region_of(example: Example, override: str | None = None) -> str | None:
    """The region a question is about: ``override`` when given, else the example's own."""
    return override or example.meta.get("region")


def select_exemplars(task: Task, example: Example, k: int, selection: str = "static",
                     seed: int = 0) -> list[Example]:
    """``k`` worked examples for ``example`` from ``task.pool``, never the question itself.

    Args:
        task: the task (its ``pool`` holds the candidates).
        example: the question being answered.
        k: how many (0: none).
        selection: ``"static"``: the same seeded random choice for every question;
            ``"similar"``: the pool questions nearest in meaning (all-MiniLM-L6-v2 embeddings).
        seed: seed of the static choice.

    Returns:
        Exemplars, most relevant last for ``similar`` (closest to the question it precedes).
        With a region, candidates from the same region are preferred (BLEnD: same country).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection: expected one of {SELECTIONS}, got {selection!r}")
    if k <= 0:
        return []
    question = example.meta["question"]
    pool = list(task.pool)
    if selection == "static":
        # Shuffle the whole pool once per seed, then skip the question: every question gets the
        # same exemplars, except that one replaces the question itself where it was chosen.
        random.Random(seed).shuffle(pool)
    candidates = [c for c in pool if c.meta["id"] != example.meta["id"] and c.meta["question"] != question]
    region = example.meta.get("region")
    same_region = [c for c in candidates if region and c.meta.get("region") == region]
    if len(same_region) >= k:
        candidates = same_region
    if not candidates:
        raise ValueError(f"task {task.name}: no exemplars to choose from (the pool holds only the question)")
    if selection == "static":
        return candidates[:k]
    from acculturate.prompting.similarity import nearest

    picked = nearest(question, [c.meta["question"] for c in candidates], k, cache=task.cache)
    return [candidates[i] for i in reversed(picked)]


def exemplar_turns(exemplars: list[Example], user_key: str, assistant_key: str,
                   user_format: str = "{}") -> list[dict]:
    """Exemplars as earlier chat turns: ``user_format`` of ``meta[user_key]``, then ``meta[assistant_key]``."""
    turns = []
    for ex in exemplars:
        turns.append({"role": "user", "content": user_format.format(ex.meta[user_key])})
        turns.append({"role": "assistant", "content": ex.meta[assistant_key]})
    return turns


def render(tokenizer, messages: list[dict], system: str | None, template: str = "chat", prefill: str = "") -> str:
    """The prompt text: the conversation rendered for a reply, plus ``prefill`` as the reply's start
    (e.g. "Let's think step by step." written as the model's own first words)."""
    return render_prompt(messages, tokenizer, template, system=system) + prefill
