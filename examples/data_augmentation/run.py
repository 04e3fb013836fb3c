"""Augment the shipped instruction data for one region, train base vs augmented with the same
budget, and score both (plus the untrained model) on the same held-out data.

    python examples/data_augmentation/run.py          # from the repository root

1. split the shipped instructions (seeded, 10% held out) -> runs/data_augmentation/split/
2. `acculturate data pipeline pipeline.yaml`: dedupe, length, blocklist, langid, counterfactual,
   back-translation through Indonesian, Self-Instruct with an Indonesian persona
3. `acculturate train train_base.yaml` and `acculturate train train_augmented.yaml` (20 steps each)
4. score: eval loss and ROUGE-L of greedy answers on the held-out split, and BLEnD Indonesia accuracy
   -> runs/data_augmentation/results.md (a table) and results.json

Every stage resumes: a rerun skips finished training runs and generator rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN = Path("runs/data_augmentation")
ROUGE_PROMPTS = 16      # held-out prompts answered greedily per system
BLEND_QUESTIONS = 20    # BLEnD Indonesia questions per system


def acculturate(*args: str) -> None:
    print("\n$ acculturate " + " ".join(args), flush=True)
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(HERE.parents[1]))}
    subprocess.run([sys.executable, "-m", "acculturate", *args], check=True, env=env)


def split() -> None:
    from acculturate.data import read_examples, train_test_split, write_examples
    from acculturate.resources import resource_path

    if (RUN / "split" / "test.jsonl").exists():
        return
    examples = read_examples(resource_path("data/instructions/instruction-data.json"))
    train, test = train_test_split(examples, test_fraction=0.1, seed=0)
    write_examples(RUN / "split" / "train.jsonl", train)
    write_examples(RUN / "split" / "test.jsonl", test)
    print(f"split: {len(train)} train, {len(test)} held out")


def score(system: str, adapter: str | None) -> dict:
    import torch
    from rouge_score import rouge_scorer

    from acculturate.adapters import load_adapter
    from acculturate.data import read_examples, render_prompt, tokenize_examples
    from acculturate.data.blend import is_correct, load_blend
    from acculturate.decode import GenerationConfig, generate
    from acculturate.models import load
    from acculturate.train import TrainConfig, evaluate_loss

    loaded = load("smollm2-135m", device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    if adapter:
        load_adapter(model, adapter)
    model.eval()
    test = read_examples(RUN / "split" / "test.jsonl")
    features = tokenize_examples(test, tokenizer, "alpaca", 128)
    loss = evaluate_loss(model, features, TrainConfig(batch_size=8), tokenizer.pad_token_id, torch.device("cpu"))
    sample = test[:ROUGE_PROMPTS]
    prompts = [render_prompt(ex, tokenizer, "alpaca") for ex in sample]
    answers = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=40, stop=("\n\n###",)))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = sum(scorer.score(ex.response, a.text.strip())["rougeL"].fmeasure for ex, a in zip(sample, answers)) / len(sample)
    blend = load_blend(countries=["Indonesia"])[:BLEND_QUESTIONS]
    blend_prompts = [render_prompt(ex, tokenizer, "chat") for ex in blend]
    blend_out = generate(model, tokenizer, blend_prompts, GenerationConfig(max_new_tokens=16, stop=("\n",)))
    correct = sum(is_correct(o.text, ex.meta["answers"]) for ex, o in zip(blend, blend_out))
    return {"system": system, "eval_loss": round(loss, 4), "rougeL": round(rouge, 4),
            "blend_indonesia": round(correct / len(blend), 4), "blend_n": len(blend),
            "examples": [{"prompt": ex.messages[0]["content"], "reference": ex.response, "answer": a.text.strip()}
                         for ex, a in zip(sample[:3], answers[:3])]}


def main() -> int:
    started = time.perf_counter()
    timings = {}
    split()
    t = time.perf_counter()
    acculturate("data", "pipeline", str(HERE / "pipeline.yaml"))
    timings["pipeline_s"] = round(time.perf_counter() - t, 1)
    for name in ("base", "augmented"):
        t = time.perf_counter()
        if not (RUN / "train" / name / "metrics.json").exists():
            acculturate("train", str(HERE / f"train_{name}.yaml"))
        timings[f"train_{name}_s"] = round(time.perf_counter() - t, 1)
    rows = []
    for system, adapter in (("untrained", None), ("base", RUN / "train/base/adapter"),
                            ("augmented", RUN / "train/augmented/adapter")):
        t = time.perf_counter()
        rows.append(score(system, str(adapter) if adapter else None))
        timings[f"score_{system}_s"] = round(time.perf_counter() - t, 1)
        print(f"{system}: {rows[-1]['eval_loss']} loss, ROUGE-L {rows[-1]['rougeL']}, "
              f"BLEnD Indonesia {rows[-1]['blend_indonesia']}", flush=True)
    summary = (RUN / "data" / "summary.md").read_text()
    train_rows = {name: json.loads((RUN / "train" / name / "metrics.json").read_text()) for name in ("base", "augmented")}
    lines = [f"| system | training rows | steps | held-out eval loss | ROUGE-L ({ROUGE_PROMPTS} prompts) | BLEnD Indonesia ({BLEND_QUESTIONS} q.) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        tr = train_rows.get(r["system"])
        n = tr["train_examples"] if tr else 0
        steps = tr["train"]["steps"] if tr else 0
        lines.append(f"| {r['system']} | {n} | {steps} | {r['eval_loss']:.4f} | {r['rougeL']:.3f} | "
                     f"{100 * r['blend_indonesia']:.1f}% |")
    timings["total_s"] = round(time.perf_counter() - started, 1)
    table = "\n".join(lines)
    from acculturate.io import write_json, write_text

    write_json(RUN / "results.json", {"rows": rows, "timings": timings})
    write_text(RUN / "results.md", f"# data augmentation: base vs augmented\n\n{table}\n\n## data pipeline\n\n"
               f"{summary}\n\ntimings (s): {json.dumps(timings)}\n")
    print("\n" + table + f"\n\ntimings (s): {timings}\nResults: {RUN / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
