"""A self-contained ``report.html`` from a run's metrics: tables, and matplotlib plots embedded as
base64 PNG (no file beside it needed). Every table names the JSONL its numbers come from."""

from __future__ import annotations

import base64
import html
import json
import io

_CSS = """body{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.6rem 0 1.2rem}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f2f2f2}code{font-size:.85em}
.note{color:#555;font-size:.9rem}img{max-width:100%}"""


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:   # nan
            return "–"
        return f"{x:.{digits}f}"
    return html.escape(str(x))


def _pct(x) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}%"


def _ci(ci, pct: bool = False, digits: int = 2) -> str:
    if not ci or ci[0] is None or ci[0] != ci[0]:
        return "–"
    f = _pct if pct else (lambda v: _fmt(v, digits))
    return f"{f(ci[0])} – {f(ci[1])}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _bar_plot(title: str, labels: list[str], values: list[float], errors: list[tuple[float, float]] | None,
              ylabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")   # no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(3.5, 1.2 * len(labels)), 2.8))
    yerr = None
    if errors:
        yerr = [[max(0.0, v - lo) for v, (lo, _) in zip(values, errors)],
                [max(0.0, hi - v) for v, (_, hi) in zip(values, errors)]]
    ax.bar(labels, values, yerr=yerr, capsize=4, color="#4c72b0")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _png(fig)


def _grouped_plot(title: str, groups: list[str], series: dict[str, list[float]], ylabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(groups) * max(1, len(series))), 3))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(groups))], values, width, label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _png(fig)


def _comparisons(entry: dict) -> str:
    if not entry["comparisons"]:
        return ""
    rows = [[html.escape(s), html.escape(c["versus"]), _fmt(c["difference"]), _ci(c["ci"]), _fmt(c["p_value"]),
             str(c["n"])] for s, c in entry["comparisons"].items()]
    return (f"<p class='note'>Paired bootstrap (1000 resamples, seed 0) of the per-example "
            f"{entry['paired_score']}, each system minus the first:</p>"
            + _table(["system", "versus", "difference", "95% interval", "p (two-sided)", "n"], rows))


def _blend(entry: dict) -> str:
    systems = entry["systems"]
    rows = [[html.escape(s), _pct(m["accuracy"]), _ci(m["ci95"], pct=True), f"{m['correct']}/{m['n']}"]
            for s, m in systems.items()]
    parts = [_table(["system", "accuracy", "95% bootstrap interval", "correct"], rows), _comparisons(entry),
             _bar_plot("accuracy", list(systems), [m["accuracy"] for m in systems.values()],
                       [tuple(m["ci95"]) for m in systems.values()], "accuracy")]
    for key, label in (("by_country", "country"), ("by_topic", "topic")):
        groups = sorted({g for m in systems.values() for g in m[key]})
        rows = [[html.escape(g)] + [f"{_pct(m[key][g]['accuracy'])} ({m[key][g]['n']})" if g in m[key] else "–"
                                    for m in systems.values()] for g in groups]
        parts.append(f"<h4>By {label}</h4>" + _table([label] + [html.escape(s) for s in systems], rows))
        if len(groups) > 1:
            parts.append(_grouped_plot(f"accuracy by {label}", groups,
                                       {s: [m[key].get(g, {}).get("accuracy", 0.0) for g in groups]
                                        for s, m in systems.items()}, "accuracy"))
    return "".join(parts)


def _nusax(entry: dict) -> str:
    systems = entry["systems"]
    rows = [[html.escape(s), _fmt(m["bleu"], 2), _fmt(m["chrf"], 2), _fmt(m["sentence_chrf_mean"], 2),
             _ci(m["sentence_chrf_ci95"]), str(m["n"])] for s, m in systems.items()]
    first = next(iter(systems.values()))
    return (_table(["system", "BLEU", "chrF", "mean sentence chrF", "95% interval", "n"], rows)
            + f"<p class='note'>sacrebleu signatures: <code>{html.escape(first['bleu_signature'])}</code>, "
            f"<code>{html.escape(first['chrf_signature'])}</code></p>" + _comparisons(entry)
            + _grouped_plot("corpus scores", ["BLEU", "chrF"],
                            {s: [m["bleu"], m["chrf"]] for s, m in systems.items()}, "score (0-100)"))


def _appropriateness(entry: dict) -> str:
    systems = entry["systems"]
    human = entry.get("human", {})
    rows = []
    for s, m in systems.items():
        h = human.get(s, {})
        a = h.get("agreement", {})
        rows.append([html.escape(s), _fmt(m["judge_mean"], 2), _ci(m["judge_ci95"]), f"{m['judged']}/{m['n']}",
                     _fmt(h.get("mean"), 2), _ci(h.get("ci95")), f"{h.get('items', 0)} ({h.get('ratings', 0)})",
                     _fmt(a.get("spearman"), 2), _fmt(a.get("weighted_kappa"), 2)])
    pooled = entry.get("human_all_systems", {}).get("agreement", {})
    dist = entry["systems"]
    return (_table(["system", "judge mean (1-5)", "95% interval", "judged/answers", "human mean", "95% interval",
                    "rated items (ratings)", "Spearman ρ", "weighted κ"], rows)
            + f"<p class='note'>Judge–human agreement over all systems: Spearman ρ {_fmt(pooled.get('spearman'), 2)}, "
            f"quadratic-weighted κ {_fmt(pooled.get('weighted_kappa'), 2)} on {pooled.get('n_items', 0)} items "
            "with both a judge score and a human rating. Human ratings come from <code>acculturate rate</code> "
            "(<code>ratings.sqlite</code>); judge replies that held no score 1-5 are counted, not guessed.</p>"
            + _comparisons(entry)
            + _grouped_plot("judge score distribution", [str(k) for k in range(1, 6)],
                            {s: [m["judge_distribution"][str(k)] for k in range(1, 6)] for s, m in dist.items()},
                            "answers"))


def _cot(entry: dict) -> str:
    systems = entry["systems"]
    rows = [[html.escape(s), _pct(m["accuracy"]), _ci(m["ci95"], pct=True), _fmt(m["steps_mean"], 1),
             _pct(m["arithmetic_correct_rate"]), str(m["arithmetic_claims"]), _pct(m["follows_from_last_step_rate"]),
             _pct(m["consistency_mean"]), str(m["n"])] for s, m in systems.items()]
    return (_table(["system", "accuracy (majority)", "95% interval", "steps/chain", "arithmetic correct",
                    "claims", "answer follows last step", "consistency", "n"], rows)
            + "<p class='note'>Proxies defined in docs/evaluation.md.</p>" + _comparisons(entry))


RENDERERS = {"blend": _blend, "nusax": _nusax, "appropriateness": _appropriateness, "cot": _cot}


def _efficiency(m: dict) -> str:
    rows = []
    for s, e in m["efficiency"].items():
        p = e.get("trainable_parameters")
        params = f"{p['trainable']:,} ({p['percent']:.2f}%)" if p else "–"
        mem = "–" if e["peak_memory_bytes"] is None else f"{e['peak_memory_bytes'] / 2**20:.0f} MiB"
        rows.append([html.escape(s), _fmt(e["seconds"], 1), str(e["completion_tokens"]), _fmt(e["tokens_per_s"], 1),
                     mem, params])
    kinds = {e.get("memory_kind") for e in m["efficiency"].values()} - {None}
    systems = list(m["efficiency"])
    return (_table(["system", "generation time (s)", "generated tokens", "tokens/s", "peak memory", "trainable parameters"],
                   rows)
            + f"<p class='note'>Summed over tasks from <code>timing/&lt;task&gt;/&lt;system&gt;.jsonl</code>. "
            f"Peak memory: {html.escape(', '.join(sorted(kinds)) or '–')} (cpu_rss_growth = growth of the "
            "process's resident memory during generation, weights loaded before excluded). Trainable parameters "
            "from the metrics.json of the run that trained the adapter.</p>"
            + _bar_plot("tokens/s", systems, [e["tokens_per_s"] or 0.0 for e in m["efficiency"].values()], None,
                        "generated tokens/s"))


def render_html(m: dict) -> str:
    """The report for metrics ``m`` (as returned by :func:`acculturate.evaluate.summary.score_run`)."""
    systems = "".join(f"<li><b>{html.escape(s['name'])}</b>: model <code>{html.escape(str(s.get('model')))}</code>, "
                      f"adapter <code>{html.escape(str(s.get('adapter') or '–'))}</code>, strategy "
                      f"<code>{html.escape(str(s.get('strategy', 'zero_shot')))}</code>"
                      + (f" <code>{html.escape(json.dumps(s['strategy_config']))}</code>" if s.get("strategy_config") else "")
                      + "</li>" for s in m["systems"])
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(str(m.get('name')))}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>Evaluation: {html.escape(str(m.get('name')))}</h1><ul>{systems}</ul>",
             "<p class='note'>Every number below is recomputed from the per-example outputs in this run's "
             "folder (<code>acculturate eval RUN_DIR --rescore</code>).</p>"]
    for name, entry in m["tasks"].items():
        n = next(iter(entry["systems"].values()))["n"]
        sources = ", ".join(f"<code>{html.escape(p)}</code>" for p in entry["outputs"].values())
        parts.append(f"<h2>{html.escape(name)} <small>({entry['kind']}, {n} examples)</small></h2>"
                     f"<p class='note'>Per-example outputs: {sources}</p>")
        parts.append(RENDERERS[entry["kind"]](entry))
    parts += ["<h2>Efficiency</h2>", _efficiency(m), "</body></html>"]
    return "\n".join(parts)
