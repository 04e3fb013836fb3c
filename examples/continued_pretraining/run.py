"""Continued pre-training of a LoRA on one NusaX language, with and without vocabulary extension
and with and without the KL regulariser; writes a table of regional and general numbers.

    python examples/continued_pretraining/run.py            # Javanese, 11m48s on a quiet 2-core CPU
    python examples/continued_pretraining/run.py --language sundanese --set train.epochs=2
    python examples/continued_pretraining/run.py --table    # re-render results.md from results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from acculturate.config_loading import load_yaml
from acculturate.io import write_json, write_text
from acculturate.jobs.finetune import FinetuneConfig, run_finetune
from acculturate.data.sources import DataSource
from acculturate.jobs.vocab import run_extend
from acculturate.models.vocab import ExtendConfig

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--language", default="javanese", help="a NusaX column (default javanese)")
    parser.add_argument("--output-dir", default="runs/continued_pretraining")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of config.yaml for every run, e.g. --set train.max_steps=8")
    parser.add_argument("--table", action="store_true", help="only re-render results.md from results.json")
    args = parser.parse_args()
    start = time.perf_counter()
    out = Path(args.output_dir)
    if args.table:
        table = render_table(json.loads((out / "results.json").read_text(encoding="utf-8")))
        write_text(out / "results.md", table)
        print(table)
        return
    base = load_yaml(FinetuneConfig, HERE / "config.yaml", [f"output_dir={out}", *args.set])
    source = DataSource(path="shipped:nusax/valid.csv", columns={"text": args.language})
    ext_dir = out / f"vocab-{args.language}"
    extension = run_extend([source], ext_dir, model=base.model.name,
                           config=ExtendConfig(new_tokens=args.new_tokens),
                           test_fraction=base.data.test_fraction, seed=base.data.seed)
    print(f"vocabulary: +{len(extension['new_ids'])} tokens, fertility {extension['fertility']}")
    rows = []
    for vocab in ("base", "extended"):
        for kl in (0.0, args.kl_weight):
            name = f"cpt-{args.language}-{vocab}-{'kl' if kl else 'nokl'}"
            overrides = [f"output_dir={out}", f"name={name}", f"forgetting.kl_weight={kl}",
                         f"data.sources=[{{path: 'shipped:nusax/valid.csv', columns: {{text: {args.language}}}}}]"]
            if vocab == "extended":
                overrides.append(f"model.name={ext_dir}")
            config = load_yaml(FinetuneConfig, HERE / "config.yaml", [*args.set, *overrides])
            t0 = time.perf_counter()
            m = run_finetune(config, overwrite=True, base_dir=HERE)
            rows.append({"variant": name, "vocab": vocab, "kl_weight": kl, "before": m["before"],
                         "after": m["after"], "steps": m["train"]["steps"],
                         "trainable": m["parameters"]["trainable"], "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{name}: done in {rows[-1]['seconds']:.0f} s")
    results = {"language": args.language, "overrides": args.set, "extension": {k: extension[k] for k in
                                                        ("new_ids", "old_vocab_size", "new_vocab_size", "fertility")},
               "runs": rows, "wall_time_s": round(time.perf_counter() - start, 1)}
    results["extension"]["new_tokens"] = len(extension["new_ids"])
    del results["extension"]["new_ids"]
    write_json(out / "results.json", results)
    table = render_table(results)
    write_text(out / "results.md", table)
    print("\n" + table)


def render_table(r: dict) -> str:
    lang = r["language"]

    def f(x, d=3):
        return "–" if x is None else f"{x:.{d}f}"

    lines = [f"# Continued pre-training on {lang} (NusaX, 80 sentences; 20 held apart)", "",
             "| variant | fertility (held-apart) | trainable | regional loss/token | regional ppl/token | "
             "regional bits/char | general ppl | KL to the base on general (nats/token) | general task chrF | time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["runs"]:
        b, a = row["before"], row["after"]
        rb, ra = b["regional"][lang], a["regional"][lang]
        lines.append(
            f"| {row['vocab']} vocab, {'KL ' + str(row['kl_weight']) if row['kl_weight'] else 'no KL'} | "
            f"{f(ra['fertility'])} | {row['trainable']:,} | {f(rb['loss'])} → {f(ra['loss'])} | "
            f"{f(rb['perplexity'], 1)} → {f(ra['perplexity'], 1)} | "
            f"{f(rb['bits_per_char'])} → {f(ra['bits_per_char'])} | "
            f"{f(b['general']['perplexity'], 2)} → {f(a['general']['perplexity'], 2)} | "
            f"{f(a['general'].get('kl_to_before'))} | "
            f"{f(b['general'].get('task_chrf'), 1)} → {f(a['general'].get('task_chrf'), 1)} | {row['seconds']:.0f} s |")
    e = r["extension"]
    lines += ["", f"Vocabulary extension: +{e['new_tokens']} tokens ({e['old_vocab_size']} → {e['new_vocab_size']}); "
                  f"fertility on the training text {e['fertility']['train']['before']} → {e['fertility']['train']['after']}, "
                  f"on the held-apart text {e['fertility']['test']['before']} → {e['fertility']['test']['after']}.",
              "Before → after: the untrained model (for the extended vocabulary: with its new rows mean-initialised) "
              "→ after continued pre-training. Per-token perplexity is not comparable across tokenizers; bits per "
              "character is.", f"Whole example: {r['wall_time_s']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
