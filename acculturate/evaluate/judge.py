"""Cultural appropriateness judged by a model: a rubric per region (``resources/rubrics.yaml``), a
1-5 score with a short reason, parsed robustly from whatever the judge writes.

The judge's reply is pre-filled with ``"Score:"`` (the prompt ends inside the assistant turn), which
makes even a small judge start with a number; the parser still accepts "4/5", "Rating: 4", "**4**"
or a bare leading digit, and returns None when no score 1-5 can be found (counted, never guessed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from acculturate.config_loading import ConfigError
from acculturate.resources import resource_path

RUBRICS_FILE = "rubrics.yaml"
REPLY_PREFIX = "Score:"

_SCORE_PATTERNS = [
    re.compile(r"\b(?:score|rating|grade)\s*(?:is|of|[:=])?\s*\**\s*([1-5])(?:\.\d+)?\s*\**\s*(?:/\s*5|out of 5)?\b",
               re.IGNORECASE),
    re.compile(r"\b([1-5])\s*(?:/|out of)\s*5\b", re.IGNORECASE),
    re.compile(r"^\W*([1-5])\b"),
]
_REASON = re.compile(r"\b(?:reason|because|explanation|justification)\s*[:\-]?\s*(.+)", re.IGNORECASE | re.DOTALL)


@dataclass
class Rubrics:
    """The judge's scale anchors (score -> description) and each region's criteria."""

    scale: dict[int, str]
    rubrics: dict[str, list[str]]

    def criteria(self, region: str) -> list[str]:
        """The region's criteria (the ``default`` rubric if it has none), ``{region}`` filled in."""
        items = self.rubrics.get(region) or self.rubrics["default"]
        return [c.replace("{region}", region.replace("_", " ")) for c in items]

    def anchors(self, region: str) -> dict[int, str]:
        return {k: v.replace("{region}", region.replace("_", " ")) for k, v in sorted(self.scale.items())}


def load_rubrics(path: str | Path | None = None) -> Rubrics:
    """Read a rubrics YAML (default the shipped one).

    Raises:
        ConfigError: naming the file and the field when the file is not of the expected shape.
    """
    path = Path(path) if path else resource_path(RUBRICS_FILE)
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'scale' and 'rubrics'")
    scale, rubrics = data.get("scale"), data.get("rubrics")
    if not isinstance(scale, dict) or sorted(scale) != [1, 2, 3, 4, 5] or not all(isinstance(v, str) for v in scale.values()):
        raise ConfigError(f"{path}: scale: expected descriptions for each score 1..5")
    if not isinstance(rubrics, dict) or "default" not in rubrics:
        raise ConfigError(f"{path}: rubrics: expected a mapping of region -> criteria with a 'default' entry")
    for region, items in rubrics.items():
        if not isinstance(items, list) or not items or not all(isinstance(c, str) for c in items):
            raise ConfigError(f"{path}: rubrics.{region}: expected a non-empty list of criteria strings")
    return Rubrics(scale, rubrics)


def judge_messages(question: str, answer: str, region: str, rubrics: Rubrics) -> list[dict]:
    """The chat messages that ask the judge to rate one answer for one region."""
    criteria = "\n".join(f"- {c}" for c in rubrics.criteria(region))
    anchors = "\n".join(f"{k}: {v}" for k, v in rubrics.anchors(region).items())
    region_name = region.replace("_", " ")
    return [
        {"role": "system", "content": f"You are a strict evaluator of cultural appropriateness for {region_name}."},
        {"role": "user", "content": (
            f"Rate how culturally appropriate the answer is for someone in {region_name}.\n\n"
            f"Criteria:\n{criteria}\n\nScale:\n{anchors}\n\n"
            f"Question: {question}\nAnswer: {answer}\n\n"
            "Reply exactly as:\nScore: <1-5>\nReason: <one short sentence>")},
    ]


def parse_judgement(text: str) -> tuple[int | None, str]:
    """Score (1-5, or None when none is found) and a short reason from a judge's reply.

    Args:
        text: the reply, including the ``"Score:"`` pre-fill.
    Returns:
        (score, reason); the reason is the text after "Reason:" (else what follows the score), one
        line, at most 200 characters.
    """
    score = None
    for pattern in _SCORE_PATTERNS:
        m = pattern.search(text)
        if m:
            score = int(m.group(1))
            rest = text[m.end():]
            break
    else:
        rest = text
    m = _REASON.search(text)
    reason = m.group(1) if m else rest
    reason = " ".join(reason.split()).strip(" .-:*")
    return score, reason[:200]
