"""What several verbs share: the config-verb parser built from the jobs table, model and sampling
arguments, and loading a model with its adapters."""

from __future__ import annotations

import argparse
from pathlib import Path

from acculturate.jobs.registry import JOBS, Job


class HelpParser(argparse.ArgumentParser):
    """A parser whose --help ends with text made only when help is asked for: a config verb's fields
    (type, default, meaning) or a catalogue, whose modules may load torch."""

    more_help = None
    """A function returning the text shown after the arguments, or None."""

    def format_help(self) -> str:
        text = super().format_help()
        return text if self.more_help is None else text + "\n" + self.more_help() + "\n"


def config_help(job: Job) -> str:
    """The fields of ``job``'s config, one a line, for its --help."""
    from acculturate.config_docs import describe_config

    lines = describe_config(job.config_class())
    return (f"config fields ({job.config.rsplit(':', 1)[1]}; YAML keys, or --set KEY=VALUE):\n"
            + "\n".join("  " + line for line in lines))


def add_job_parser(sub, verb: str, command, **kwargs) -> argparse.ArgumentParser:
    """The parser of a config-driven verb of the jobs table (``verb``'s last word under ``sub``):
    the config path, ``--set`` and (for jobs with a run folder) ``--restart``, declared here once.
    ``command(args)`` runs the verb; it reads its config with :func:`job_config`."""
    job = JOBS[verb]
    name = verb.split()[-1]
    p = sub.add_parser(name, help=job.summary, description=job.summary, **kwargs)
    p.more_help = lambda: config_help(job)
    example = job.example
    default = (f"the shipped {job.default_config.name}" if job.default_config
               else "the fields' defaults")
    shown = f", e.g. {example.relative_to(example.parents[3])}" if example and not job.default_config else ""
    p.add_argument("config", nargs="?", help=f"YAML of {job.config.rsplit(':', 1)[1]} fields{shown} "
                                             f"(default: {default})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set name=NAME (nested: --set train.lr=1e-4)")
    if job.run_folder:
        p.add_argument("--restart", action="store_true",
                       help="delete the run of this name and start over (default: continue it)")
    p.set_defaults(func=command, job=job)
    return p


def job_config(args, extra_overrides: list[str] | None = None):
    """The verb's config from its YAML (or the job's shipped default, or the fields' defaults) with
    ``--set`` applied; returns ``(config, path)``, ``path`` None without a YAML."""
    from acculturate.config_loading import load_config

    job: Job = args.job
    path = Path(args.config) if args.config else job.default_config
    config = load_config(job.config_class(), path, [*args.set, *(extra_overrides or [])])
    return config, path


def run_job(args, config, **kwargs):
    """Run the verb's job function on ``config``."""
    return args.job.run_function()(config, **kwargs)


MODEL_HELP = ("'smollm2-135m', 'gemma3-270m' (embedded), an HF model directory or a .gguf file (default: the "
              "base model the --adapter adapters record, else smollm2-135m)")


def base_model(args, adapter_specs) -> str:
    """``--model``, else the base the adapters record (:func:`acculturate.adapters.base_model.pick_base_model`);
    a clear exit when they record different ones."""
    from acculturate.adapters import AdapterError
    from acculturate.adapters.base_model import pick_base_model_for_specs

    try:
        return pick_base_model_for_specs(args.model, adapter_specs)
    except (AdapterError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"acculturate {args.verb}: error: {e}") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                   help="a LoRA adapter directory (ours or PEFT's), repeatable: several adapters share one "
                        "base model; NAME defaults to the folder name")
    p.add_argument("--use", default=None, metavar="NAME",
                   help="which --adapter answers (default: the first; 'none' = the base model)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)


def load_with_adapter(args, prompts: int | None = None):
    """The model of ``--model`` (default: the adapters' recorded base) with the ``--adapter`` adapters,
    ``--use`` answering. ``prompts``: how many prompts the command decodes next, where it knows."""
    from acculturate.adapters import AdapterError, UnknownAdapterError, load_adapters
    from acculturate.models import load

    if args.use is not None and not args.adapter and args.use.lower() != "none":
        raise SystemExit(f"acculturate {args.verb}: error: --use {args.use} needs --adapter {args.use}=DIR")
    loaded = load(base_model(args, args.adapter), device=args.device, dtype=args.dtype,
                  decoding=decoding_warm_up(args, prompts))
    if args.adapter:
        try:
            load_adapters(loaded.model, args.adapter, use=args.use)
        except (AdapterError, UnknownAdapterError, ValueError) as e:
            raise SystemExit(f"acculturate {args.verb}: error: {e}") from None
        loaded.model.eval()
    return loaded


def decoding_warm_up(args, prompts: int | None = None):
    """What a command with decoding settings (``add_sampling_args``) decodes next, for the GPU warm-up
    beside the load (``decode.warm_up``): the batch sizes of ``prompts`` prompts in batches of
    ``--batch-size`` (one prompt and a chat: batch 1; unknown: both), with its sampling settings."""
    from acculturate.decode.warm_up import DecodingWarmUp

    size = getattr(args, "batch_size", None) or (1 if prompts == 1 else None)
    if not size:
        return None
    rows = {min(size, prompts - start) for start in range(0, prompts, size)} if prompts else {1, size}
    return DecodingWarmUp(rows=tuple(sorted(rows)), temperature=getattr(args, "temperature", 0.0),
                          top_k=getattr(args, "top_k", 0), top_p=getattr(args, "top_p", 1.0))


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1.0 = off")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=8)


def generation_config(args):
    from acculturate.decode import GenerationConfig

    return GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=tuple(args.stop),
                            seed=args.seed, batch_size=args.batch_size)


def key_values(items: list[str], flag: str, verb: str) -> dict:
    """``["KEY=VALUE", ...]`` of a repeatable flag as a dict."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"acculturate {verb}: error: {flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out
