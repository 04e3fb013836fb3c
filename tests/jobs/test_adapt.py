"""End to end on the real default model: the adapt job and the train job, small but real."""

import contextlib
import dataclasses
import io
import json

import pytest

from acculturate.cli import main
from acculturate.config_loading import ConfigError, apply_overrides, from_dict
from acculturate.jobs.adapt import AdaptConfig, run_adapt

pytestmark = pytest.mark.slow

SMALL = ["model.name=smollm2-135m", "eval.limit=6", "eval.max_new_tokens=8", "eval.general=4", "train.max_steps=2", "train.batch_size=4",
         "data.sources=[{path: 'shipped:instructions/instruction-data.json', limit: 8}]"]


def small_config(tmp_path, *extra) -> AdaptConfig:
    return from_dict(AdaptConfig, apply_overrides({"output_dir": str(tmp_path), "name": "t"}, SMALL + list(extra)))


# One small run through the command (the shipped YAML + --set), saving a checkpoint every 2 steps:
# the report, ask/serve and CLI tests read it, and the kill test must end where it ended.
WHOLE = SMALL[:-2] + ["train.max_steps=4", "train.save_every=2", "train.batch_size=4",
                      "eval.base_shots={closed_book: 2, retrieval: 1}",
                      "data.sources=[{path: 'shipped:instructions/instruction-data.json', limit: 8}]"]


def adapt_args(root) -> list[str]:
    return ["adapt", "--name", "k"] + [x for kv in WHOLE + [f"output_dir={root}"] for x in ("--set", kv)]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run: (its folder, what the command printed, its metrics as first written)."""
    root = tmp_path_factory.mktemp("whole")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(adapt_args(root)) == 0
    return root / "k", printed.getvalue(), json.loads((root / "k" / "metrics.json").read_text())


def test_adapt_writes_the_assistant_report_and_continues_a_finished_run(whole, tmp_path):
    out, _, metrics = whole
    for name in ("report.md", "report.html", "metrics.json", "config.json", "assistant.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "index/manifest.json",
                 "documents/UK.md", "eval/base_closed_book.jsonl", "eval/base_retrieval.jsonl",
                 "eval/adapted_closed_book.jsonl", "eval/adapted_retrieval.jsonl", "train/metrics.jsonl"):
        assert (out / name).is_file(), name
    assert metrics["questions"]["test"] == 6
    assert set(metrics["systems"]) == {"base_closed_book", "base_retrieval", "adapted_closed_book", "adapted_retrieval"}
    assert all(s["total"] == 6 for s in metrics["systems"].values())
    assert metrics["train_examples"]["retrieval_aware"] == metrics["questions"]["train"]
    assert metrics["train_examples"]["retrieval_aware_kinds"]["gold"] > 0
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"] / 10
    assert metrics["train"]["steps"] == 4 and metrics["general"]["base"]["n"] == 4
    assert metrics["base_shots"] == {"closed_book": 2, "retrieval": 1}   # base systems only (ask/serve below)
    assert set(metrics["stage_seconds"]) == {"setup", "base_eval", "training", "adapted_eval"}
    report = (out / "report.md").read_text()
    assert "| adapted + retrieval |" in report and "Paired bootstrap" in report and "General skills" in report
    assert "shown 2 (closed-book) and 1 (retrieval) solved training questions" in report
    rows = [json.loads(l) for l in (out / "eval/base_retrieval.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["passages"]) == 3 and {"answer", "answers", "correct"} <= set(r) for r in rows)

    # Running the same config again continues: answers already saved are not generated again.
    config = from_dict(AdaptConfig, json.loads((out / "config.json").read_text()))
    before = (out / "eval/base_retrieval.jsonl").read_text()
    again = run_adapt(config, progress=False)
    assert (out / "eval/base_retrieval.jsonl").read_text() == before
    assert again["systems"] == metrics["systems"]

    # ask --run answers with the same adapter, index and persona: the same answer as the evaluation.
    from acculturate.rag.assistant import load_assistant

    assistant = load_assistant(out)
    adapted = [json.loads(l) for l in (out / "eval/adapted_retrieval.jsonl").read_text().splitlines()]
    asked = assistant.ask([r["question"] for r in adapted])   # the same questions in one batch, as evaluated
    assert [a["answer"] for a in asked] == [r["answer"] for r in adapted]
    assert [[p["id"] for p in a["passages"]] for a in asked] == [[p["id"] for p in r["passages"]] for r in adapted]

    # serve --run: the run's adapter, index and persona by default, the same answer again.
    from fastapi.testclient import TestClient

    from acculturate.serve import ServeConfig
    from acculturate.serve.app import create_app

    with TestClient(create_app(ServeConfig(run=str(out), db=str(tmp_path / "feedback.db")))) as client:
        reply = client.post("/v1/chat/completions", json={
            "model": "k", "messages": [{"role": "user", "content": adapted[0]["question"]}],
            "max_tokens": 8, "stop": ["\n"], "temperature": 0}).json()
    assert reply["choices"][0]["message"]["content"].strip() == adapted[0]["answer"]
    assert [p["id"] for p in reply["passages"]] == [p["id"] for p in adapted[0]["passages"]]

    # A different config under the same name is refused, naming what differs.
    with pytest.raises(ConfigError, match="differs in: region"):
        run_adapt(dataclasses.replace(config, region="Mexico"), progress=False)


def test_adapt_killed_during_training_resumes_to_the_same_result(whole, tmp_path):
    """SIGKILL once the first training checkpoint is saved; the same command then finishes the run
    with the metrics of the run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    whole_out, _, uninterrupted = whole
    command = [sys.executable, "-m", "acculturate"] + adapt_args(tmp_path)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = tmp_path / "k" / "train" / "checkpoint"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (tmp_path / "k" / "metrics.json").exists(), "not killed during training"
    assert not (tmp_path / "k" / "eval" / "adapted_retrieval.jsonl").exists()

    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((tmp_path / "k" / "metrics.json").read_text())
    assert resumed["systems"] == uninterrupted["systems"] and resumed["general"] == uninterrupted["general"]
    assert resumed["train"]["steps"] == uninterrupted["train"]["steps"] == 4
    assert resumed["train"]["train_loss"] == uninterrupted["train"]["train_loss"]
    assert resumed["train"]["resumed_from_step"] == 2
    for name in ("adapted_closed_book", "adapted_retrieval"):
        answers = [json.loads(l)["answer"] for l in (tmp_path / "k" / "eval" / f"{name}.jsonl").read_text().splitlines()]
        assert answers == [json.loads(l)["answer"] for l in (whole_out / "eval" / f"{name}.jsonl").read_text().splitlines()]


def test_any_region_name_needs_its_own_questions_and_documents(tmp_path):
    with pytest.raises(ValueError, match="questions: region 'Bavaria' is not a shipped preset"):
        from_dict(AdaptConfig, {"region": "Bavaria"})
    with pytest.raises(ValueError, match="documents: region 'Bavaria'"):
        from_dict(AdaptConfig, {"region": "Bavaria", "questions": "q.jsonl"})
    config = from_dict(AdaptConfig, {"region": "Bavaria", "questions": "q.jsonl", "documents": ["docs/"]})
    assert config.region == "Bavaria" and not config.preset


def test_own_region_kit_runs_through_documents_and_questions(tmp_path):
    """A user's kit: documents in their own wording and a question file, not the preset."""
    from acculturate.data import load_blend

    docs = tmp_path / "kit" / "docs"
    docs.mkdir(parents=True)
    rows = load_blend(countries=["Mexico"])[:30]
    docs.joinpath("mexico.md").write_text("# Daily life in Mexico\n\n" + "\n\n".join(
        f"Asked '{r.meta['question']}', most locals would say {r.meta['answers'][0]}." for r in rows))
    questions = tmp_path / "kit" / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": r.meta["question"], "answers": r.meta["answers"],
                                             "topic": r.meta["topic"]}) + "\n" for r in rows))
    config = small_config(tmp_path, "region=Mexico (my kit)", f"questions={questions}", f"documents=[{docs}]")
    metrics = run_adapt(config, progress=False)
    assert metrics["region"] == "Mexico (my kit)" and not metrics["preset"]
    assert metrics["questions"]["total"] == 30 and metrics["index"]["documents"] == 1
    assert not (tmp_path / "t" / "documents").exists()


def test_cli_adapt_prints_the_table_and_ask_and_generate_use_its_adapter(whole, capsys):
    out, printed, _ = whole
    assert "adapted + retrieval" in printed and f"{out}/report.md" in printed
    assert main(["ask", "--run", str(out), "What is a common breakfast in the UK?"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["generate", "What is the capital of the UK?", "--adapter", str(out / "adapter"),
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
