"""What a data step did, in numbers: counts, a length histogram and the balance of a group field,
before and after, printed side by side so a user sees at a glance what was removed or added."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter

from acculturate.data.example import Example

PARTS = ("all", "prompt", "response")
# Word-count buckets: instruction data is mostly 5-100 words; the open last bucket catches documents.
BUCKETS = (8, 16, 32, 64, 128, 256)


def text_of(example: Example, part: str = "all") -> str:
    """The text a step looks at: every message (``all``), the prompt turns, or the final response."""
    if part not in PARTS:
        raise ValueError(f"part: expected one of {PARTS}, got {part!r}")
    if part == "response":
        return example.response or ""
    messages = example.prompt_messages if part == "prompt" else example.messages
    return "\n".join(m["content"] for m in messages)


def example_id(example: Example) -> str:
    """A stable id: ``meta["id"]`` when the data has one, else a hash of the messages (so a rerun of
    a resumable step recognises rows it has already done)."""
    if example.meta.get("id") is not None:
        return str(example.meta["id"])
    digest = hashlib.sha1(json.dumps(example.messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
    return "sha1:" + digest[:12]


def bucket_name(words: int) -> str:
    low = 0
    for high in BUCKETS:
        if words < high:
            return f"{low}-{high - 1}"
        low = high
    return f"{BUCKETS[-1]}+"


def summarize(examples: list[Example], group: str | None = None, group_of=None) -> dict:
    """Counts and lengths of ``examples``.

    Args:
        examples: the data.
        group: a field to report the balance of (a ``meta`` key, or a detected attribute such as
            ``gender``, see :func:`acculturate.data.balance.group_value`).
        group_of: ``example -> group value``; default reads ``meta[group]``.

    Returns:
        ``{"count", "words": {"mean", "median", "max"}, "histogram": {bucket: n}, "groups": {g: n} | None,
        "weight_sum"}`` (words of the whole example; ``weight_sum`` counts ``meta["weight"]``, default 1).
    """
    lengths = [len(text_of(ex).split()) for ex in examples]
    histogram = Counter(bucket_name(n) for n in lengths)
    ordered = {name: histogram[name] for name in _bucket_names() if histogram[name]}
    groups = None
    if group is not None:
        group_of = group_of or (lambda ex: ex.meta.get(group))
        groups = dict(sorted(Counter(str(group_of(ex)) for ex in examples).items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "count": len(examples),
        "words": {"mean": round(statistics.fmean(lengths), 1) if lengths else 0.0,
                  "median": float(statistics.median(lengths)) if lengths else 0.0, "max": max(lengths, default=0)},
        "histogram": ordered,
        "groups": groups,
        "weight_sum": round(sum(float(ex.meta.get("weight", 1.0)) for ex in examples), 3),
    }


def _bucket_names() -> list[str]:
    low, names = 0, []
    for high in BUCKETS:
        names.append(f"{low}-{high - 1}")
        low = high
    return names + [f"{BUCKETS[-1]}+"]


def format_comparison(step: str, before: dict, after: dict) -> str:
    """A plain-text before/after table of two :func:`summarize` results."""
    lines = [f"{step}: {before['count']} -> {after['count']} examples "
             f"({after['count'] - before['count']:+d})"]
    rows = [("examples", before["count"], after["count"]),
            ("words/example (mean)", before["words"]["mean"], after["words"]["mean"]),
            ("words/example (median)", before["words"]["median"], after["words"]["median"]),
            ("words/example (max)", before["words"]["max"], after["words"]["max"])]
    if before["weight_sum"] != before["count"] or after["weight_sum"] != after["count"]:
        rows.append(("sum of weights", before["weight_sum"], after["weight_sum"]))
    for name in _bucket_names():
        b, a = before["histogram"].get(name, 0), after["histogram"].get(name, 0)
        if b or a:
            rows.append((f"  {name} words", b, a))
    if before["groups"] is not None or after["groups"] is not None:
        bg, ag = before["groups"] or {}, after["groups"] or {}
        total_b, total_a = max(1, before["count"]), max(1, after["count"])
        for g in list(bg) + [g for g in ag if g not in bg]:
            rows.append((f"  group {g}", f"{bg.get(g, 0)} ({100 * bg.get(g, 0) / total_b:.0f}%)",
                         f"{ag.get(g, 0)} ({100 * ag.get(g, 0) / total_a:.0f}%)"))
    width = max(len(r[0]) for r in rows)
    lines.append(f"  {'':{width}}  {'before':>14}  {'after':>14}")
    lines += [f"  {name:{width}}  {str(b):>14}  {str(a):>14}" for name, b, a in rows]
    return "\n".join(lines)
