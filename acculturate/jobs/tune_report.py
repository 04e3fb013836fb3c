"""What `acculturate tune` leaves behind: the trials table (markdown + JSON), the best config as an
`acculturate train` YAML, the best-vs-default check on held-apart data, and a self-contained HTML
report with Optuna's plots (optimisation history, parameter importances, slices, intermediate values)
embedded as PNGs.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import warnings
from pathlib import Path

import yaml

from acculturate.io import write_json, write_text
from acculturate.jobs.tune_study import (accuracy, best_config_dict, question_examples, storage_url, trial_dir,
                                         tune_data)

log = logging.getLogger(__name__)


def trial_rows(study) -> list[dict]:
    """One plain row per trial, in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        retried = t.system_attrs.get("failed_trial")
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "default": bool(t.user_attrs.get("default")),
            "retry_of": retried if retried is not None and retried != t.number else None,
            "duration_s": round(duration, 1) if duration is not None else None,
            "pruned_at_examples": max(t.intermediate_values) if t.state.name == "PRUNED" and t.intermediate_values else None,
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "validation": t.user_attrs.get("validation"), "test": t.user_attrs.get("test"),
            "train": t.user_attrs.get("train"),
        })
    return rows


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-2 else f"{x:.{digits}f}"
    return str(x)


def render_table(rows: list[dict], metric: str, param_names: list[str]) -> str:
    lines = ["| trial | state | " + " | ".join(param_names) + f" | validation {metric} | test eval loss | "
             "train s | note |", "|" + "---|" * (len(param_names) + 6)]
    for r in rows:
        note = []
        if r["default"]:
            note.append("default config")
        if r["retry_of"] is not None:
            note.append(f"re-run of #{r['retry_of']}")
        if r["pruned_at_examples"] is not None:
            note.append(f"pruned after {r['pruned_at_examples']} examples")
        if r["state"] == "FAIL":
            note.append("interrupted or failed")
        test = (r["test"] or {}).get("eval_loss")
        train_s = (r["train"] or {}).get("wall_time_s")
        lines.append(f"| {r['number']} | {r['state'].lower()} | "
                     + " | ".join(_fmt(r["params"].get(p)) for p in param_names)
                     + f" | {_fmt(r['value'])} | {_fmt(test)} | {_fmt(train_s, 3)} | {'; '.join(note)} |")
    return "\n".join(lines) + "\n"


def final_check(study, config, run: Path, *, base_dir: Path | None, progress: bool) -> dict:
    """Score the best and the default trial on the test split, never seen while searching: the eval
    loss each trial recorded, and (when the test split has BLEnD questions and the trial saved an
    adapter) the accuracy of their answers."""

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return {"note": "no trial completed"}
    best = study.best_trial
    default = next((t for t in complete if t.user_attrs.get("default")), None)
    picked = {"best": best, **({"default": default} if default is not None else {})}
    result = {name: {"trial": t.number, "params": t.params, "validation": t.user_attrs.get("validation"),
                     "test": dict(t.user_attrs.get("test") or {})} for name, t in picked.items()}
    loaded = None
    data = None
    for name, t in picked.items():
        adapter = trial_dir(run, t) / "adapter"
        if not adapter.exists():
            result[name]["note"] = "no saved adapter (full/head trials keep none): test accuracy not computed"
            continue
        from acculturate.adapters import load_adapter
        from acculturate.models import load

        base = config.base.model
        loaded = load(base.name, device=base.device, dtype=base.dtype)
        if data is None:
            data = tune_data(config, loaded.tokenizer, base_dir)
        questions = question_examples(data.test_examples, config.objective.limit)
        if not questions:
            break
        load_adapter(loaded.model, adapter)
        loaded.model.eval()
        result[name]["test"].update(accuracy(loaded.model, loaded.tokenizer, config, questions,
                                              trial_dir(run, t) / "eval" / "test.jsonl", progress))
    if "default" in result:
        d, b = result["default"]["test"], result["best"]["test"]
        result["test_eval_loss_change"] = b["eval_loss"] - d["eval_loss"]
        if "accuracy" in d and "accuracy" in b:
            result["test_accuracy_change"] = b["accuracy"] - d["accuracy"]
    del loaded
    return result


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(study) -> list[tuple[str, str | None, str]]:
    """``(title, base64 PNG or None, note)`` for each of Optuna's matplotlib plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out = []
    for title, fn in [("Optimisation history", ovm.plot_optimization_history),
                      ("Parameter importances (fANOVA)", ovm.plot_param_importances),
                      ("Slice plots", ovm.plot_slice),
                      ("Intermediate validation values (pruning)", ovm.plot_intermediate_values)]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = fn(study)
            first = ax.flat[0] if hasattr(ax, "flat") else ax
            fig = first.figure
            out.append((title, _png(fig), ""))
            plt.close(fig)
        except Exception as e:   # e.g. importances need two completed trials that differ
            out.append((title, None, f"not available: {type(e).__name__}: {e}"))
    return out


def render_html(config, rows: list[dict], final: dict, table_md: str, images) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tune {esc(config.name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%}</style></head><body>",
             f"<h1>Hyperparameter search: {esc(config.name)}</h1>",
             f"<p>{len(rows)} trials; objective: validation {esc(config.objective.metric)} "
             f"({'lower' if config.objective.metric == 'eval_loss' else 'higher'} is better).</p>"]
    if "best" in final:
        parts.append("<h2>Best vs default on the held-apart test split</h2><table><tr><th></th><th>trial</th>"
                     "<th>parameters</th><th>validation</th><th>test</th></tr>")
        for name in ("default", "best"):
            if name in final:
                f = final[name]
                parts.append(f"<tr><td>{name}</td><td>{f['trial']}</td><td>{esc(str(f['params']))}</td>"
                             f"<td>{esc(_metrics(f['validation']))}</td><td>{esc(_metrics(f['test']))}</td></tr>")
        parts.append("</table>")
    for title, png, note in images:
        parts.append(f"<h2>{esc(title)}</h2>")
        parts.append(f"<img alt='{esc(title)}' src='data:image/png;base64,{png}'>" if png else f"<p>{esc(note)}</p>")
    parts.append("<h2>Trials</h2><table>")
    for i, line in enumerate(table_md.strip().splitlines()):
        if i == 1:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        tag = "th" if i == 0 else "td"
        parts.append("<tr>" + "".join(f"<{tag}>{esc(c)}</{tag}>" for c in cells) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def _metrics(m: dict | None) -> str:
    if not m:
        return "—"
    return ", ".join(f"{k} {_fmt(v)}" for k, v in m.items() if k in ("eval_loss", "accuracy"))


def write_results(study, config, run: Path, *, base_dir: Path | None = None, progress: bool = True) -> dict:
    """Write every result file of the study in ``run``; returns the summary (``results.json``)."""

    rows = trial_rows(study)
    names = list(config.search)
    table = render_table(rows, config.objective.metric, names)
    write_json(run / "trials.json", rows)
    write_text(run / "trials.md", f"# Trials of {config.name}\n\n" + table)
    final = final_check(study, config, run, base_dir=base_dir, progress=progress)
    write_json(run / "final.json", final)
    files = {"trials": str(run / "trials.md"), "report": str(run / "report.html"), "final": str(run / "final.json")}
    if "best" in final:
        best = best_config_dict(config, final["best"]["params"], base_dir)
        header = (f"# acculturate train config: the best of {len(rows)} trials of `acculturate tune` study "
                  f"{config.name!r}\n# (trial {final['best']['trial']}, validation {config.objective.metric} "
                  f"{_fmt(study.best_value)}). Run: acculturate train {run / 'best.yaml'}\n")
        write_text(run / "best.yaml", header + yaml.safe_dump(best, sort_keys=False))
        files["best_config"] = str(run / "best.yaml")
    write_text(run / "report.html", render_html(config, rows, final, table, plots(study)))
    counts = {}
    for r in rows:
        counts[r["state"].lower()] = counts.get(r["state"].lower(), 0) + 1
    summary = {"study": config.name, "storage": storage_url(config, run),
               "trials": counts, "final": final, "files": files}
    write_json(run / "results.json", summary)
    return summary
