"""End to end on the real default model: the adapt job and the train job, small but real."""

import json

import pytest

from acculturate.cli import main
from acculturate.config_loading import ConfigError, apply_overrides, from_dict
from acculturate.jobs.adapt import AdaptConfig, run_adapt

pytestmark = pytest.mark.slow

SMALL = ["eval.limit=6", "eval.max_new_tokens=8", "train.max_steps=2", "train.batch_size=4",
         "data.sources=[{path: 'shipped:instructions/instruction-data.json', limit: 8}]"]


def small_config(tmp_path, *extra) -> AdaptConfig:
    return from_dict(AdaptConfig, apply_overrides({"output_dir": str(tmp_path), "name": "t"}, SMALL + list(extra)))


def test_adapt_writes_report_and_continues_a_finished_run(tmp_path):
    config = small_config(tmp_path)
    metrics = run_adapt(config, progress=False)
    out = tmp_path / "t"
    for name in ("report.md", "metrics.json", "config.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "eval/base.jsonl", "eval/adapted.jsonl",
                 "train/metrics.jsonl"):
        assert (out / name).is_file(), name
    assert metrics["test_questions"] == 6 and metrics["base"]["total"] == 6
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"] / 10
    assert metrics["train"]["steps"] == 2 and metrics["train"]["peak_memory_bytes"] > 0
    report = (out / "report.md").read_text()
    assert "| base |" in report and "| adapted |" in report and "trainable parameters" in report
    rows = [json.loads(l) for l in (out / "eval/base.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all({"prediction", "answers", "correct"} <= set(r) for r in rows)

    # Running the same config again continues: answers already saved are not generated again.
    before = (out / "eval/base.jsonl").read_text()
    again = run_adapt(config, progress=False)
    assert (out / "eval/base.jsonl").read_text() == before
    assert again["base"] == {**metrics["base"], "seconds": again["base"]["seconds"]}

    # A different config under the same name is refused, naming what differs.
    with pytest.raises(ConfigError, match="differs in: region"):
        run_adapt(small_config(tmp_path, "region=Mexico"), progress=False)


def test_cli_adapt_and_generate_with_the_adapter(tmp_path, capsys):
    args = ["adapt", "--name", "cli"] + [x for kv in SMALL + [f"output_dir={tmp_path}"] for x in ("--set", kv)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and f"{tmp_path}/cli/report.md" in out
    assert main(["generate", "What is the capital of the UK?", "--adapter", str(tmp_path / "cli/adapter"),
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()


def test_cli_bad_config_is_a_named_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    assert main(["adapt", str(bad)]) == 2
    assert "train.lr: expected a number, got str ('fast')" in capsys.readouterr().err


def test_cli_train_on_a_user_csv(tmp_path, capsys):
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\n" + "".join(f"What is {i} plus {i}?,{2 * i}\n" for i in range(12)))
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"""
name: csv
output_dir: {tmp_path}
data:
  sources: [{{path: qa.csv, columns: {{instruction: question, output: answer}}}}]
  test_fraction: 0.25
method: {{name: lora, lora: {{r: 4, alpha: 8}}}}
train: {{max_steps: 2, batch_size: 4}}
""")
    assert main(["train", str(cfg)]) == 0
    metrics = json.loads((tmp_path / "csv/metrics.json").read_text())
    assert metrics["train_examples"] == 9 and metrics["test_examples"] == 3
    assert (tmp_path / "csv/adapter/adapter_model.safetensors").is_file()
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nonly one field\n")
    cfg.write_text(cfg.read_text().replace("qa.csv", "bad.csv").replace("name: csv", "name: bad"))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and ":2" in err


def test_cli_train_skip_invalid_reports_the_count(tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    good = '{"instruction": "Say hi", "output": "hi"}\n'
    data.write_text(good * 6 + '{"instruction": 3, "output": "x"}\n' + "not json\n" + good * 2)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"""
name: mixed
output_dir: {tmp_path}
data: {{sources: [{{path: mixed.jsonl}}], test_fraction: 0.0}}
method: {{name: lora, lora: {{r: 2, alpha: 4}}}}
train: {{max_steps: 1, batch_size: 4}}
""")
    assert main(["train", str(cfg)]) == 2
    assert "mixed.jsonl:7" in capsys.readouterr().err
    assert main(["train", str(cfg), "--skip-invalid", "--restart"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 invalid rows, kept 8" in out


def test_cli_chat_streams_answers_and_resets(monkeypatch, capsys):
    lines = iter(["What is the capital of France?", "/reset", "Say hello.", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert out.count("model> ") == 2 and "Paris" in out
