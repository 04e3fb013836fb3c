"""`acculturate train` reads ShareGPT JSONL, Parquet and save_to_disk folders directly (no conversion)."""

import json

import pytest

from acculturate.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

# The real tokenizer (the session fixture loads the default model); ShareGPT trains the real SmolLM2,
# the other formats the tiny random Llama (the reading is what differs, ~3x faster).
pytestmark = pytest.mark.slow


def _conversations(n):
    return [{"conversations": [{"from": "human", "value": f"What is {i} plus {i}?"},
                               {"from": "gpt", "value": str(2 * i)},
                               {"from": "human", "value": "And doubled?"},
                               {"from": "gpt", "value": str(4 * i)}]} for i in range(n)]


def test_train_on_sharegpt_parquet_and_save_to_disk(tmp_path, capsys, tiny_model_dir):
    rows = _conversations(8)
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"q": [f"Capital number {i}?" for i in range(8)], "a": ["London"] * 8}),
                   tmp_path / "qa.parquet")
    datasets.Dataset.from_list([{"messages": [{"role": "user", "content": r["conversations"][0]["value"]},
                                              {"role": "assistant", "content": r["conversations"][1]["value"]}]}
                                for r in rows]).save_to_disk(str(tmp_path / "saved"))
    sources = {"sharegpt": ("{path: chat.jsonl}", "smollm2-135m"),
               "parquet": ("{path: qa.parquet, columns: {instruction: q, output: a}}", tiny_model_dir),
               "saved": ("{path: saved}", tiny_model_dir)}
    for name, (source, model) in sources.items():
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(f"""
name: {name}
output_dir: {tmp_path}/runs
model: {{name: {model}}}
data: {{sources: [{source}], test_fraction: 0.25, loss_turns: last}}
method: {{name: lora, lora: {{r: 2, alpha: 4}}}}
train: {{max_steps: 1, batch_size: 4, max_length: 64}}
""")
        assert main(["train", str(cfg)]) == 0, capsys.readouterr().err
        metrics = json.loads((tmp_path / f"runs/{name}/metrics.json").read_text())
        assert (metrics["train_examples"], metrics["test_examples"]) == (6, 2)
        assert metrics["train"]["train_loss"] > 0 and metrics["train"]["eval_loss"] > 0
        assert (tmp_path / f"runs/{name}/adapter/adapter_model.safetensors").is_file()
    # a bad row stops the run with the file, the row and the field
    pq.write_table(pa.table({"q": ["fine", "broken"], "a": ["yes", None]}), tmp_path / "qa.parquet")
    cfg = tmp_path / "parquet.yaml"
    cfg.write_text(cfg.read_text().replace("name: parquet", "name: bad"))
    assert main(["train", str(cfg)]) == 2
    assert "qa.parquet: row 2: field 'a'" in capsys.readouterr().err
