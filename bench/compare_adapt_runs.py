"""Two `acculturate adapt` runs on the same held-apart questions, compared system by system.

For each of the four systems (base / adapted, closed-book / with retrieval) the accuracy of both runs
and the paired bootstrap interval of B minus A over the same questions (the runs must share region,
split and seed, so entry i of both answer files is the same question); then the general-skill check
and the time by stage of each. Used to choose the embedded default model (SmolLM2-135M-Instruct vs
Gemma 3 270M) on the default UK run.

    python bench/compare_adapt_runs.py runs/adapt-uk runs/adapt-uk-gemma \
        --out bench/results/adapt_uk_smollm2_vs_gemma3.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from acculturate.evaluate.metrics import paired_bootstrap

SYSTEMS = ("base_closed_book", "base_retrieval", "adapted_closed_book", "adapted_retrieval")


def answers(run: Path, system: str) -> list[dict]:
    return [json.loads(line) for line in (run / "eval" / f"{system}.jsonl").read_text().splitlines() if line]


def compare(a: Path, b: Path) -> dict:
    metrics = {name: json.loads((run / "metrics.json").read_text()) for name, run in (("a", a), ("b", b))}
    systems = {}
    for system in SYSTEMS:
        rows_a, rows_b = answers(a, system), answers(b, system)
        if [r["question"] for r in rows_a] != [r["question"] for r in rows_b]:
            raise SystemExit(f"{system}: the two runs did not answer the same questions in the same order")
        d = paired_bootstrap([float(r["correct"]) for r in rows_a], [float(r["correct"]) for r in rows_b])
        systems[system] = {"a": metrics["a"]["systems"][system]["accuracy"],
                           "b": metrics["b"]["systems"][system]["accuracy"],
                           "b_minus_a": d.difference, "ci95": list(d.ci), "n": d.n}
    return {
        "a": {"run": str(a), "model": metrics["a"]["model"]}, "b": {"run": str(b), "model": metrics["b"]["model"]},
        "systems": systems,
        "general": {"a": metrics["a"]["general"], "b": metrics["b"]["general"]},
        "stage_seconds": {"a": metrics["a"].get("stage_seconds"), "b": metrics["b"].get("stage_seconds")},
        "parameters": {"a": metrics["a"]["parameters"], "b": metrics["b"]["parameters"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="run folder A (runs/<name>)")
    parser.add_argument("b", type=Path, help="run folder B, compared as B minus A")
    parser.add_argument("--out", type=Path, help="write the comparison as JSON here")
    args = parser.parse_args()
    result = compare(args.a, args.b)
    for system, row in result["systems"].items():
        print(f"{system:22s} A {row['a']:.1%}  B {row['b']:.1%}  B-A {row['b_minus_a'] * 100:+.1f} points "
              f"(95% {row['ci95'][0] * 100:+.1f} to {row['ci95'][1] * 100:+.1f}, n={row['n']})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
