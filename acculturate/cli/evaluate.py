"""`acculturate eval | prompt | prompt-eval | rate`: evaluation and prompting strategies."""

from __future__ import annotations

import json
from pathlib import Path

from acculturate.cli import common
from acculturate.cli.common import add_job_parser, job_config, run_job


def add_parsers(sub) -> None:
    p = add_job_parser(sub, "eval", cmd_eval)
    p.add_argument("--name", help="run name (the folder under output_dir)")
    p.add_argument("--full", action="store_true", help="every example of every task (drop the sample limits)")
    p.add_argument("--resume", action="store_true", help="continue a run: answer only the examples not saved yet")
    p.add_argument("--rescore", action="store_true",
                   help="recompute metrics.json and report.html from the saved outputs, without generating "
                        "(CONFIG may then be the run folder)")

    p = sub.add_parser("prompt", help="answer one question with a prompting strategy (cot, self_consistency...)")
    p.more_help = strategies_help
    p.add_argument("question")
    p.add_argument("--strategy", default="zero_shot", help="a strategy of the list below")
    p.add_argument("--task", default="blend", choices=["svamp", "blend"],
                   help="answer format and exemplar source: svamp (a number) or blend (a few words)")
    p.add_argument("--region", default=None, help="region the question is about (personas, exemplars)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of the strategy's config, e.g. --set persona=local --set samples=8")
    p.add_argument("--show-trace", action="store_true", help="print every completion")
    p.add_argument("--json", action="store_true", help="print answer, extra and the full trace as JSON")
    common.add_model_args(p)
    p.set_defaults(func=cmd_prompt)

    add_job_parser(sub, "prompt-eval", cmd_prompt_eval)

    p = sub.add_parser("rate", help="serve a page for rating an eval run's answers 1-5, blind to the system")
    p.add_argument("run_dir", help="the folder `acculturate eval` wrote (e.g. runs/eval-all-tasks)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.set_defaults(func=cmd_rate)


def strategies_help() -> str:
    """The strategies of ``prompting.STRATEGIES``, each with its module's one-line summary."""
    import sys

    from acculturate.prompting import STRATEGIES

    lines = []
    for name, strategy in STRATEGIES.items():
        doc = (sys.modules[strategy.run.__module__].__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<18} {doc[0] if doc else ''}")
    return "strategies (--strategy NAME; --set FIELD=VALUE sets a field of its config):\n" + "\n".join(lines)


def cmd_eval(args) -> int:
    from acculturate.jobs.system_eval import rescore

    target = Path(args.config) if args.config else args.job.default_config
    if args.rescore:
        # A run folder (or a config naming one): recompute metrics and report from its saved outputs.
        if not target.is_dir():
            config, _ = job_config(args)
            target = Path(config.output_dir) / (args.name or config.name)
        metrics = rescore(target)
        out = target
    else:
        config, path = job_config(args)
        if args.name:
            config.name = args.name
        if args.full:
            for task in config.tasks:
                task.limit = None
        metrics = run_job(args, config, resume=args.resume, overwrite=args.restart, base_dir=path.parent)
        out = Path(config.output_dir) / config.name
    for name, entry in metrics["tasks"].items():
        for system, m in entry["systems"].items():
            shown = {k: v for k, v in m.items() if k in ("accuracy", "bleu", "chrf", "judge_mean", "consistency_mean")}
            print(f"{name:24s} {system:16s} " + "  ".join(f"{k} {v:.3f}" for k, v in shown.items() if v is not None))
    print(f"Results: {out}/report.html, {out}/metrics.json")
    return 0


def cmd_prompt(args) -> int:
    from acculturate.jobs.prompt_eval import answer_question

    task, result = answer_question(args.strategy, args.task, args.question, overrides=args.set,
                                   region=args.region, loaded=common.load_with_adapter(args))
    if args.json:
        print(json.dumps({"answer": task.display(result.answer), "extra": result.extra,
                          "trace": result.trace.to_dict()}, ensure_ascii=False, default=str))
        return 0
    if args.show_trace:
        for call in result.trace.calls:
            print(f"--- {call.step} ({call.completion_tokens} tokens)\n{call.completion}")
    t = result.trace
    print(f"answer: {task.display(result.answer)}\n({len(t.calls)} calls, {t.completion_tokens} tokens generated, "
          f"{t.seconds:.1f} s)")
    return 0


def cmd_prompt_eval(args) -> int:
    from acculturate.jobs.prompt_eval import results_table

    config, _ = job_config(args)
    summary = run_job(args, config, overwrite=args.restart)
    print(results_table(summary["results"], f"{summary['task']}, {summary['sample']} questions"))
    print(f"Results: {Path(config.output_dir) / config.name}/results.md")
    return 0


def cmd_rate(args) -> int:
    from acculturate.evaluate.rating_app import serve_ratings

    serve_ratings(args.run_dir, host=args.host, port=args.port)
    return 0
