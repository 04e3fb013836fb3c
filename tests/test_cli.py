import subprocess
import sys

import pytest

from acculturate.cli import build_parser

VERBS = ["adapt", "train", "generate", "chat", "merge"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([verb, "--help"])
    assert e.value.code == 0
    assert "usage: acculturate " + verb in capsys.readouterr().out


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "acculturate", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and all(v in proc.stdout for v in VERBS)


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    from acculturate.cli import main

    assert main(["generate", "hi", "--model", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


class Captured(Exception):
    """Raised by a verb's run function in place of the job: carries the config it was given."""

    def __init__(self, config):
        super().__init__("captured")
        self.config = config


def _capture(*args, **kwargs):
    config = next((a for a in args if hasattr(a, "__dataclass_fields__")), None)
    raise Captured(config)


# verb argv (without --set), the module and function that run the job, the --set, and how to read it back.
SET_CASES = {
    "adapt": (["adapt"], "acculturate.jobs.adapt", "run_adapt", "region=Mexico", lambda c: c.region, "Mexico"),
    "train": (["train"], "acculturate.jobs.finetune", "run_finetune", "train.lr=0.125", lambda c: c.train.lr, 0.125),
    "prompt-eval": (["prompt-eval"], "acculturate.jobs.prompt_eval", "run_prompt_eval", "name=pe-set",
                    lambda c: c.name, "pe-set"),
    "compare": (["compare"], "acculturate.jobs.compare", "run_compare", "name=cmp-set", lambda c: c.name, "cmp-set"),
    "tune": (["tune"], "acculturate.jobs.tune", "run_tune", "name=tune-set", lambda c: c.name, "tune-set"),
    "serve": (["serve"], "acculturate.serve", "run_server", "admin_token=SECRET", lambda c: c.admin_token, "SECRET"),
    "learn": (["learn"], "acculturate.jobs.learn", "run_learn", "min_feedback=7", lambda c: c.min_feedback, 7),
    "eval": (["eval"], "acculturate.jobs.system_eval", "run_eval", "name=eval-set", lambda c: c.name, "eval-set"),
    "reward-model": (["reward-model", "train"], "acculturate.jobs.reward_model", "run_reward_model", "name=rm-set",
                     lambda c: c.name, "rm-set"),
    "ppo": (["ppo"], "acculturate.jobs.rl_finetune", "run_ppo", "name=ppo-set", lambda c: c.name, "ppo-set"),
    "rag eval": (["rag", "eval"], "acculturate.jobs.rag_eval", "run_rag_eval", "name=rag-set",
                 lambda c: c.name, "rag-set"),
    "data dedupe": (["data", "dedupe", "IN", "OUT"], "acculturate.data.steps", "run_step", "threshold=0.7",
                    lambda c: c.threshold, 0.7),
    "data pipeline": (["data", "pipeline"], "acculturate.jobs.data", "run_pipeline", "steps=[{step: dedupe}]",
                      lambda c: c.steps[0].step, "dedupe"),
}


@pytest.mark.parametrize("with_yaml", [False, True], ids=["no-yaml", "yaml"])
@pytest.mark.parametrize("verb", sorted(SET_CASES))
def test_every_verb_applies_set_with_or_without_a_config_file(verb, with_yaml, tmp_path, monkeypatch):
    """`--set` reaches the config the job runs with, whether or not a YAML file is given (no
    verb may drop it: `serve --set admin_token=...` once left the server open)."""
    import importlib

    from acculturate.cli import main

    argv, module, function, setting, read, expected = SET_CASES[verb]
    monkeypatch.setattr(importlib.import_module(module), function, _capture)
    source = tmp_path / "in.jsonl"
    source.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    argv = [str(source) if a == "IN" else str(tmp_path / "out.jsonl") if a == "OUT" else a for a in argv]
    if with_yaml:
        config = tmp_path / "config.yaml"
        if verb in ("adapt", "eval", "reward-model", "ppo"):   # a shipped default: copy it
            from acculturate.jobs.registry import JOBS

            shipped = JOBS[" ".join(argv[:2]) if verb == "reward-model" else verb].default_config
            config.write_text(shipped.read_text())
        else:
            config.write_text("{}\n" if verb != "data pipeline" else "steps: [{step: length}]\n")
        if verb.startswith("data") and verb != "data pipeline":
            argv += ["--config", str(config)]
        else:
            argv.append(str(config))
    with pytest.raises(Captured) as caught:
        main([*argv, "--set", setting])
    assert read(caught.value.config) == expected


def test_prompt_set_reaches_the_strategy_config(monkeypatch):
    """`acculturate prompt` has no config file: its --set fills the strategy's config."""
    import acculturate.cli as cli
    import acculturate.cli.common as cli_common
    import acculturate.jobs.prompt_eval as prompt_eval

    monkeypatch.setattr(cli_common, "load_with_adapter", lambda args: (None, None))
    monkeypatch.setattr(prompt_eval, "run_strategy", lambda name, m, tok, task, example, config: _capture(config))
    with pytest.raises(Captured) as caught:
        cli.main(["prompt", "Why?", "--strategy", "self_consistency", "--set", "samples=3"])
    assert caught.value.config.samples == 3


def test_set_without_yaml_names_a_bad_field():
    from acculturate.cli import main

    assert main(["serve", "--set", "api_tokn=x"]) == 2


def test_every_job_of_the_registry_is_a_verb_whose_help_lists_its_config_fields(capsys):
    """The config verbs are built from jobs/registry.py; their --help ends with the config's fields
    and each field's documented meaning (here: the shared header and one job-specific field)."""
    from acculturate.jobs.registry import JOBS

    for verb, job in JOBS.items():
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*verb.split(), "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage: acculturate " + verb in out and "config fields (" in out, verb
        assert "--set KEY=VALUE" in out, verb
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "train.lr (float, default 0.0002): Peak learning rate" in capsys.readouterr().out


def test_prompt_help_lists_every_strategy(capsys):
    from acculturate.prompting import STRATEGIES

    with pytest.raises(SystemExit):
        build_parser().parse_args(["prompt", "--help"])
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in STRATEGIES)
