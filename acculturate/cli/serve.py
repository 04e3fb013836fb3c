"""`acculturate serve | ask`: use a model or an adapted assistant."""

from __future__ import annotations

from acculturate.cli.common import add_job_parser, job_config, run_job


def add_parsers(sub) -> None:
    p = add_job_parser(sub, "serve", cmd_serve)
    p.add_argument("--model", default=None, help="base model (default: the one the --adapter adapters record, "
                                                 "else smollm2-135m)")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                   help="a LoRA adapter to serve as model NAME (repeatable)")
    p.add_argument("--host", default=None, help="default 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default 8000")
    p.add_argument("--db", default=None, help="feedback store: SQLite path or SQLAlchemy URL")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--run", default=None, metavar="RUN_DIR",
                   help="serve the regional assistant `acculturate adapt` built there (adapter, index, persona, "
                        "retrieval on by default), as model NAME = the run's folder name")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="a key /v1/* requires as 'Authorization: Bearer KEY' (repeatable; also "
                        "$ACCULTURATE_API_KEYS, comma separated)")
    p.add_argument("--api-keys-file", default=None, metavar="FILE", help="API keys, one a line")
    p.add_argument("--insecure", action="store_true",
                   help="serve an open API (no key) on a non-loopback --host (refused otherwise)")

    p = sub.add_parser("ask", help="answer questions with the regional assistant `acculturate adapt` built")
    p.add_argument("question", nargs="?", help="one question (or --file)")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the adapt run folder, e.g. runs/adapt-uk")
    p.add_argument("--file", help="JSONL with one {\"question\": ...} per line (extra fields are kept)")
    p.add_argument("--output", help="write one JSONL line per question: question, answer, citations, passages")
    p.add_argument("--closed-book", action="store_true", help="answer without retrieval")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.set_defaults(func=cmd_ask)


def cmd_serve(args) -> int:
    from acculturate.adapters.registry import parse_adapter_spec

    config, _ = job_config(args)
    for flag in ("model", "host", "port", "db", "device", "dtype"):
        if getattr(args, flag) is not None:
            setattr(config, flag, getattr(args, flag))
    for spec in args.adapter:
        name, directory = parse_adapter_spec(spec)
        config.adapters[name] = str(directory)
    if args.run:
        config.run = args.run
    config.api_keys = [*config.api_keys, *args.api_key]
    if args.api_keys_file is not None:
        config.api_keys_file = args.api_keys_file
    if args.insecure:
        config.insecure = True
    run_job(args, config)
    return 0


def cmd_ask(args) -> int:
    from acculturate.jobs.ask import run_ask

    return run_ask(args.run, question=args.question, file=args.file, output=args.output,
                   retrieval=not args.closed_book, batch_size=args.batch_size, seed=args.seed,
                   temperature=args.temperature)
