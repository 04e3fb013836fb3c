"""GGUF export of the default model with an adapter: size, export time, load time and answers per
quantization type.

For each of f16, q8_0, q4_0, q4_1: `acculturate export --format gguf --quant Q` (timed), the file's
size, the time transformers takes to load it (`from_pretrained(dir, gguf_file=...)`, dequantizing to
fp32), and the greedy answers to the first N held-apart UK BLEnD questions compared token by token
with the merged model's (fp32 merge of the same adapter): the share of identical tokens and of
identical answers.

    python bench/gguf_export.py --adapter runs/adapt-uk/adapter --out bench/results/gguf_export_smollm2.json
    python bench/gguf_export.py --model gemma3-270m --quants f16,q8_0 --adapter runs/adapt-uk-gemma/adapter \
        --out bench/results/gguf_export_gemma3.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch


def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, eos) -> list[list[int]]:
    answers = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos)
        answers.append(out[0, ids.shape[1]:].tolist())
    return answers


def main() -> None:
    from transformers import AutoModelForCausalLM

    from acculturate.adapters import load_adapter, merge_lora
    from acculturate.data import load_blend
    from acculturate.jobs.export import export_gguf
    from acculturate.models import load
    from acculturate.models.loading import contiguous_head_input

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m", help="the adapter's base model")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--quants", default="f16,q8_0,q4_0,q4_1")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.set_num_threads(2)
    merged, tok = load(args.model, device="cpu", dtype="fp32")
    load_adapter(merged, args.adapter)
    merge_lora(merged)
    questions = [ex.messages[0]["content"] for ex in load_blend(countries=["UK"])[-args.questions:]]
    # The merged model's EOS ids (Gemma: <eos> and <end_of_turn>); a GGUF file read back names only one.
    eos = merged.generation_config.eos_token_id
    expected = greedy(merged, tok, questions, args.max_new_tokens, eos)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for quant in args.quants.split(","):
            out = Path(tmp) / quant
            t0 = time.perf_counter()
            result = export_gguf(args.model, [f"uk={args.adapter}"], out, quant=quant)
            export_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=Path(result["path"]).name,
                                                         dtype=torch.float32)
            load_s = time.perf_counter() - t0
            contiguous_head_input(model)
            got = greedy(model, tok, questions, args.max_new_tokens, eos)
            same = sum(a == b for x, y in zip(got, expected) for a, b in zip(x, y))
            total = sum(max(len(x), len(y)) for x, y in zip(got, expected))
            rows.append({"quant": quant, "bytes": result["bytes"], "mib": round(result["bytes"] / 2**20, 1),
                         "export_s": round(export_s, 1), "transformers_load_s": round(load_s, 1),
                         "token_agreement": round(same / total, 4),
                         "identical_answers": sum(x == y for x, y in zip(got, expected)),
                         "questions": len(questions)})
            print(json.dumps(rows[-1]), flush=True)
            del model
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
              "cpu_threads": torch.get_num_threads(), "adapter": args.adapter,
              "command": "python bench/gguf_export.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "max_new_tokens": args.max_new_tokens, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
