"""`acculturate <verb>`: a thin layer over the Python API; each verb calls one function.

The config-driven verbs come from the jobs table (``acculturate/jobs/registry.py``); each module
here adds its verbs' parsers and says what they print.
"""

from __future__ import annotations

import argparse
import logging
import sys

from acculturate.cli import data, evaluate, feedback, generate, models, rag, serve, train
from acculturate.cli.common import HelpParser

MODULES = (train, serve, generate, evaluate, models, feedback, rag, data)
"""The modules whose ``add_parsers(sub)`` add the verbs, in the order --help lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = HelpParser(prog="acculturate", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in MODULES:
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # transformers' own progress bars and warnings are noise next to ours.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from acculturate.adapters.peft_format import AdapterError
    from acculturate.config_loading import ConfigError
    from acculturate.data import DataError
    from acculturate.models import ModelLoadError
    from acculturate.prompting.sandbox import SandboxUnavailable

    try:
        return args.func(args)
    except (AdapterError, ConfigError, DataError, ModelLoadError, FileNotFoundError, SandboxUnavailable) as e:
        print(f"acculturate {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nacculturate {args.verb}: interrupted", file=sys.stderr)
        return 130
