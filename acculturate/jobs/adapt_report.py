"""The adapt job's report: the four systems side by side (Markdown and a self-contained HTML page)."""

from __future__ import annotations

import html

LABELS = {"base_closed_book": "base, closed-book", "base_retrieval": "base + retrieval",
          "adapted_closed_book": "adapted, closed-book", "adapted_retrieval": "adapted + retrieval"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def system_rows(m: dict) -> list[list[str]]:
    return [[LABELS[name], _pct(s["accuracy"]), f"{_pct(s['ci95'][0])}–{_pct(s['ci95'][1])}", f"{s['correct']}/{s['total']}"]
            for name, s in m["systems"].items()]


def comparison_rows(m: dict) -> list[list[str]]:
    rows = []
    for label, c in m["comparisons"].items():
        a, b = label.split(" - ")
        rows.append([f"{LABELS[a]} − {LABELS[b]}", _points(c["difference"]),
                     f"{_points(c['ci95'][0])} to {_points(c['ci95'][1])}",
                     "yes" if c["ci95"][0] > 0 or c["ci95"][1] < 0 else "no"])
    return rows


def topic_rows(m: dict) -> list[list[str]]:
    topics = sorted(m["systems"]["adapted_retrieval"]["by_topic"])
    if topics == ["None"]:
        return []
    return [[t] + [_pct(m["systems"][name]["by_topic"].get(t, {}).get("accuracy", 0)) for name in LABELS]
            + [str(m["systems"]["adapted_retrieval"]["by_topic"][t]["n"])] for t in topics]


def general_rows(m: dict) -> list[list[str]]:
    g = m["general"]
    if not g["base"]:
        return []
    rel = g["relative_change"] or {}
    return [["eval loss (lower is better)", f"{g['base']['eval_loss']:.3f}", f"{g['adapted']['eval_loss']:.3f}",
             f"{100 * rel.get('eval_loss', 0):+.1f}%"],
            ["ROUGE-L F1 of answers", f"{g['base']['rouge_l']:.3f}", f"{g['adapted']['rouge_l']:.3f}",
             f"{100 * rel['rouge_l']:+.1f}%" if rel.get("rouge_l") is not None else "—"]]


def cost_row(m: dict) -> list[str]:
    p, t = m["parameters"], m["train"]
    return [f"{p['trainable']:,} ({p['percent']:.2f}%)", f"{p['total']:,}", f"{t['wall_time_s']:.0f} s",
            f"{t['tokens_per_s']:.0f}", f"{t['peak_memory_bytes'] / 2**20:.0f} MiB", f"{m['wall_time_s']:.0f} s"]


def shots_note(m: dict) -> str:
    """What the base systems were shown first (rag/shots.py), or '' when nothing."""
    shots = m.get("base_shots") or {}
    if not any(shots.values()):
        return ""
    return (f"The base systems were shown {shots.get('closed_book', 0)} (closed-book) and {shots.get('retrieval', 0)} "
            "(retrieval) solved training questions before each question, so the pre-trained base answers instead of "
            "continuing the prompt; the adapted systems were shown none, as `ask` and `serve` run them.")


STAGES = {"setup": "set-up (documents, index, model)", "base_eval": "base evaluation", "training": "training",
          "adapted_eval": "adapted evaluation"}
COST_HEADER = ["trainable parameters", "total", "training time", "tokens/s", "peak memory", "whole job"]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def render_report(m: dict) -> str:
    """``report.md``."""
    q, te, ix = m["questions"], m["train_examples"], m["index"]
    lines = [f"# A regional assistant for {m['region']} ({m['model']}, {m['method']})", "",
             f"{q['total']} questions ({'shipped BLEnD preset' if m['preset'] else 'the user’s file'}): {q['train']} "
             f"for training, {q['test']} held apart. Knowledge base: {ix['documents']} document(s), "
             f"{ix['passages']} passages; {ix['k']} passages shown per question ({ix['mode']} retrieval; an accepted "
             f"answer is in them for {_pct(m['retrieval_recall'])} of the held-apart questions). A question counts "
             "as correct when an accepted answer appears in the model's answer.", "",
             "## Four systems on the held-apart questions", ""]
    lines += _md_table(["system", "accuracy", "95% interval", "correct"], system_rows(m))
    if shots_note(m):
        lines += ["", shots_note(m)]
    lines += ["", "Paired bootstrap (same questions, 1000 resamples) of the differences:", ""]
    lines += _md_table(["difference", "points", "95% interval", "clear (interval excludes 0)"], comparison_rows(m))
    topics = topic_rows(m)
    if topics:
        lines += ["", "## Accuracy by topic", ""]
        lines += _md_table(["topic"] + list(LABELS.values()) + ["n"], topics)
    general = general_rows(m)
    if general:
        lines += ["", f"## General skills ({m['general']['base']['n']} held-out general instructions)", ""]
        lines += _md_table(["measure", "base", "adapted", "relative change"], general)
    lines += ["", "## Training data and cost", "",
              f"{te['retrieval_aware']} retrieval-aware examples ({te['retrieval_aware_kinds']['gold']} with the passage "
              f"that answers, {te['retrieval_aware_kinds']['distractors_only']} with distractors only, "
              f"{te['retrieval_aware_kinds']['no_gold_found']} where no retrieved passage held an answer), "
              f"{te['closed_book']} closed-book, {te['general']} general instructions"
              + (f", {te['text_rows']} raw-text rows" if te["text_rows"] else "") + ".", ""]
    lines += _md_table(COST_HEADER, [cost_row(m)])
    if m.get("stage_seconds"):
        lines += ["", "Time by stage: " + ", ".join(f"{STAGES.get(k, k)} {v:.0f} s" for k, v in m["stage_seconds"].items())
                  + "."]
    lines += ["", f"Run it: `acculturate ask --run {m['assistant'].rsplit('/', 1)[0]} \"your question\"`, or "
              f"`acculturate serve --run {m['assistant'].rsplit('/', 1)[0]}`. Every answer: `eval/*.jsonl`.", ""]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(m: dict) -> str:
    """``report.html``: the same tables, self-contained, with a bar per system."""
    bars = "".join(
        f"<div class='bar'><span class='label'>{html.escape(LABELS[name])}</span>"
        f"<span class='fill' style='width:{100 * s['accuracy']:.1f}%'></span>"
        f"<span class='ci' style='left:calc(12em + {100 * s['ci95'][0]:.1f}% * 0.6);"
        f"width:calc({100 * (s['ci95'][1] - s['ci95'][0]):.1f}% * 0.6)'></span>"
        f"<span class='value'>{_pct(s['accuracy'])}</span></div>" for name, s in m["systems"].items())
    parts = [f"<h1>A regional assistant for {html.escape(m['region'])}</h1>",
             f"<p>{m['questions']['test']} held-apart questions; model {html.escape(m['model'])}, method "
             f"{html.escape(m['method'])}.</p>", f"<div class='bars'>{bars}</div>",
             _html_table(["system", "accuracy", "95% interval", "correct"], system_rows(m)),
             f"<p>{html.escape(shots_note(m))}</p>" if shots_note(m) else "",
             "<h2>Paired differences</h2>",
             _html_table(["difference", "points", "95% interval", "clear"], comparison_rows(m))]
    if topic_rows(m):
        parts += ["<h2>By topic</h2>", _html_table(["topic"] + list(LABELS.values()) + ["n"], topic_rows(m))]
    if general_rows(m):
        parts += ["<h2>General skills</h2>", _html_table(["measure", "base", "adapted", "relative change"], general_rows(m))]
    parts += ["<h2>Cost</h2>", _html_table(COST_HEADER, [cost_row(m)])]
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.3em .6em}.bar{position:relative;height:1.6em;margin:.3em 0}"
             ".label{display:inline-block;width:12em}.fill{position:absolute;left:12em;height:1.2em;background:#69c;"
             "max-width:60%;transform-origin:left;transform:scaleX(.6)}.ci{position:absolute;top:.55em;height:2px;"
             "background:#333}.value{position:absolute;left:calc(12em + 62%)}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>acculturate adapt: {html.escape(m['region'])}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
