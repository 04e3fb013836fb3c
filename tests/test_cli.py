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
