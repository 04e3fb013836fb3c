"""`acculturate data STEP ...`: one data step on a file, or `data pipeline CONFIG` (docs/data.md)."""

from __future__ import annotations


from acculturate.cli.common import add_job_parser, job_config


def add_parsers(sub) -> None:
    from acculturate.data.steps import step_help, step_names

    p = sub.add_parser("data", help="data steps: " + ", ".join(step_names())
                                    + ", or a pipeline of them (docs/data.md)")
    steps = p.add_subparsers(dest="step", required=True, metavar="STEP")
    for step in step_names():
        q = steps.add_parser(step, help=step_help(step))
        q.more_help = lambda step=step: _settings(step)
        q.add_argument("paths", nargs="*", metavar="PATH", help="[INPUT] OUTPUT (input: Alpaca, chat JSONL or CSV, "
                                                                "or shipped:<file>; output: chat JSONL)")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a setting, e.g. --set threshold=0.7 (--settings lists them)")
        q.add_argument("--settings", action="store_true", help="list this step's settings and defaults, then exit")
        q.add_argument("--config", help="the settings as a YAML file")
        q.add_argument("--group", help="report the balance of this field (a meta key or 'gender')")
        q.add_argument("--model", default="smollm2-135m", help="the model of a generator step")
        q.add_argument("--skip-invalid", action="store_true", help="skip malformed input rows instead of stopping")
        q.add_argument("--columns", default=None, metavar="FIELD=COLUMN,...",
                       help="CSV/JSON column names, e.g. instruction=indonesian,output=english")
        q.set_defaults(func=cmd_step)
    add_job_parser(steps, "data pipeline", cmd_pipeline)


def _settings(step: str) -> str:
    from acculturate.config_docs import describe_config
    from acculturate.data.steps import step_config_class, step_help

    lines = describe_config(step_config_class(step))
    return (f"{step}: {step_help(step)}\nsettings (--set NAME=VALUE, or a YAML file with --config):\n"
            + "\n".join("  " + line for line in lines))


def cmd_pipeline(args) -> int:
    config, path = job_config(args)
    args.job.run_function()(config, base_dir=path and path.parent, restart=args.restart)
    return 0


def cmd_step(args) -> int:
    from acculturate.config_loading import load_config
    from acculturate.data.steps import STEPS, run_step, step_config_class

    if args.settings:
        print(_settings(args.step))
        return 0
    wants_input = args.step != "self-instruct"
    if len(args.paths) not in ((2,) if wants_input else (1, 2)):
        raise SystemExit(f"acculturate data {args.step}: give " + ("INPUT OUTPUT" if wants_input else "[INPUT] OUTPUT"))
    *inputs, output = args.paths
    config = load_config(step_config_class(args.step), args.config, args.set)
    from acculturate.data.sources import resolve_path

    source = resolve_path(inputs[0]) if inputs else None
    columns = dict(item.split("=", 1) for item in args.columns.split(",")) if args.columns else None
    if args.step in STEPS:
        run_step(args.step, config, source, output, group=args.group, skip_invalid=args.skip_invalid, columns=columns)
    else:
        from acculturate.jobs.data import run_generator

        run_generator(args.step, config, source, output, args.model, skip_invalid=args.skip_invalid, columns=columns)
    return 0
