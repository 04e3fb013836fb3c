"""CPU benchmark: k sampled chains of one prompt (self-consistency) four ways, in one run.

The prompt is the one ``acculturate.prompting.self_consistency`` sends for a SVAMP problem
(chain of thought with 2 worked exemplars, chat template), sampled at T=0.7, top-p 0.95:

- ``separate``: k calls of ``generate([prompt])``, one chain each (what a loop over samples costs);
- ``hf_generate``: HF ``model.generate(do_sample=True, num_return_sequences=k)`` (the baseline a
  user would otherwise run; it repeats the prompt k times before prefilling);
- ``batched``: ``generate([prompt] * k, share_prompts=False)``: one batch, k prefills (our old path);
- ``shared``: ``generate([prompt], n=k)``: one prefill, its KV cache copied to the k rows.

Cases run in rounds (each round runs every case once, in turn) so that load from other jobs on a
shared machine hits every case alike; the median over rounds is reported, with tokens generated.

    python bench/self_consistency.py [--k 8] [--new-tokens 24,96] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--new-tokens", default="24,96", help="comma-separated max_new_tokens values")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="separate,hf_generate,batched,shared")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from acculturate.decode import GenerationConfig, generate
    from acculturate.models import load
    from acculturate.prompting import load_svamp
    from acculturate.prompting.cot import CoTConfig
    from acculturate.prompting.cot import build_prompt as cot_prompt

    model, tokenizer = load("smollm2-135m", device="cpu")
    model.eval()
    task = load_svamp()
    prompt, _ = cot_prompt(tokenizer, task, task.examples[0], CoTConfig(mode="exemplar", k=2))
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    k = args.k

    def sampling(new_tokens: int, seed: int, **extra) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=new_tokens, temperature=0.7, top_p=0.95, seed=seed,
                                batch_size=k, **extra)

    def separate(new_tokens: int) -> int:
        return sum(generate(model, tokenizer, [prompt], sampling(new_tokens, seed))[0].completion_tokens
                   for seed in range(k))

    def hf_generate(new_tokens: int) -> int:
        torch.manual_seed(0)
        eos = model.generation_config.eos_token_id
        with torch.inference_mode():
            out = model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                 do_sample=True, temperature=0.7, top_p=0.95, top_k=0, num_return_sequences=k,
                                 max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
        eos = {eos} if isinstance(eos, int) else set(eos)
        gen = out[:, prompt_ids.shape[1]:].tolist()
        return sum(next((i + 1 for i, t in enumerate(row) if t in eos), len(row)) for row in gen)

    def batched(new_tokens: int) -> int:
        outs = generate(model, tokenizer, [prompt] * k, sampling(new_tokens, 0, share_prompts=False))
        return sum(o.completion_tokens for o in outs)

    def shared(new_tokens: int) -> int:
        return sum(o.completion_tokens for o in generate(model, tokenizer, [prompt], sampling(new_tokens, 0), n=k))

    cases = {"separate": separate, "hf_generate": hf_generate, "batched": batched, "shared": shared}
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "load_average_start": os.getloadavg(), "k": k, "prompt_tokens": prompt_ids.shape[1], "runs": {}}
    shared(4)  # warm-up: first-call allocations and kernels
    for new_tokens in [int(x) for x in args.new_tokens.split(",")]:
        times = {c: [] for c in chosen}
        tokens = {c: [] for c in chosen}
        for _ in range(args.rounds):
            for case in chosen:
                start = time.perf_counter()
                tokens[case].append(cases[case](new_tokens))
                times[case].append(time.perf_counter() - start)
        base = statistics.median(times["separate"]) if "separate" in times else None
        run = {}
        for case in chosen:
            median = statistics.median(times[case])
            run[case] = {"seconds_median": round(median, 3), "seconds": [round(t, 3) for t in times[case]],
                         "tokens": tokens[case], "speedup_vs_separate": round(base / median, 2) if base else None}
        results["runs"][str(new_tokens)] = run
        print(f"\nk={k}, prompt {results['prompt_tokens']} tokens, max_new_tokens={new_tokens} "
              f"(median of {args.rounds} rounds)")
        print(f"{'case':<12} {'seconds':>8} {'tokens':>14} {'vs separate':>12}")
        for case, r in run.items():
            print(f"{case:<12} {r['seconds_median']:>8.2f} {str(r['tokens']):>14} {r['speedup_vs_separate']:>11}x")
    results["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
