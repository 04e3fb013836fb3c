"""`acculturate generate | chat`: decode from the command line."""

from __future__ import annotations

import json
import sys
import time

from acculturate.cli.common import add_model_args, add_sampling_args, generation_config, load_with_adapter


def add_parsers(sub) -> None:
    p = sub.add_parser("generate", help="generate from one prompt or a JSONL file of prompts")
    p.add_argument("prompt", nargs="?")
    p.add_argument("--file", help="JSONL with one {\"prompt\": ...} per line")
    p.add_argument("--output", help="write completions as JSONL here")
    p.add_argument("--template", default="chat", choices=["chat", "alpaca", "raw"])
    p.add_argument("--system", default=None, help="system persona")
    g = p.add_argument_group("output filters (docs/data.md)")
    g.add_argument("--filters", metavar="YAML", help="OutputFilterConfig fields: blocklist, patterns, languages, best_of...")
    g.add_argument("--blocklist", action="append", default=[], metavar="LIST",
                   help="reject answers matching this blocklist (a region name or YAML file; repeatable)")
    g.add_argument("--best-of", type=int, default=1, metavar="N", help="sample N candidates, return the best by --reward")
    g.add_argument("--reward", default=None, help="reward for --best-of (default mean_logprob)")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat in the terminal")
    p.add_argument("--system", default=None)
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=cmd_chat)


def _render(tokenizer, text: str, template: str, system: str | None) -> str:
    if template == "raw":
        return text
    from acculturate.data import render_prompt

    return render_prompt([{"role": "user", "content": text}], tokenizer, template, system=system)


def cmd_generate(args) -> int:
    from acculturate.data.jsonl import read_prompts
    from acculturate.decode import generate, print_stream
    from acculturate.decode.postprocess import output_filter_config
    from acculturate.io import write_jsonl

    if bool(args.prompt) == bool(args.file):
        raise SystemExit("acculturate generate: give either a prompt or --file PROMPTS.jsonl")
    prompts = read_prompts(args.file) if args.file else [args.prompt]
    loaded = load_with_adapter(args, len(prompts))
    rendered = [_render(loaded.tokenizer, p, args.template, args.system) for p in prompts]
    config = generation_config(args)
    filters = output_filter_config(args.filters, args.blocklist, args.best_of, args.reward)
    if filters is not None:
        from acculturate.decode.postprocess import generate_filtered

        outs = generate_filtered(loaded.model, loaded.tokenizer, rendered, config, filters, progress=len(prompts) > 1)
        if len(prompts) == 1 and not args.output:
            print(outs[0].text)
            return 0
    elif len(prompts) == 1 and not args.output:
        generate(loaded.model, loaded.tokenizer, rendered, config, on_text=print_stream())
        print()
        return 0
    else:
        start = time.perf_counter()
        outs = generate(loaded.model, loaded.tokenizer, rendered, config, progress=True)
        seconds = time.perf_counter() - start
        made = sum(o.completion_tokens for o in outs)
        print(f"generated {made:,} tokens for {len(outs)} prompts in {seconds:.2f} s "
              f"({made / max(seconds, 1e-9):,.0f} tokens/s, model load excluded)", file=sys.stderr)
    results = [{"prompt": p, "completion": o.text, "finish_reason": o.finish_reason,
                "completion_tokens": o.completion_tokens} for p, o in zip(prompts, outs)]
    if args.output:
        write_jsonl(args.output, results)
        print(f"wrote {len(results)} completions to {args.output}")
    else:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    return 0


def cmd_chat(args) -> int:
    from acculturate.data import render_prompt
    from acculturate.decode import generate, print_stream

    loaded = load_with_adapter(args, 1)
    config = generation_config(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("Chat with the model. Empty line or Ctrl-D to quit; /reset starts over"
          + ("; /use NAME switches adapter ('none' = base)." if args.adapter else "."))
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not text:
            return 0
        if text == "/reset":
            messages = messages[:1] if args.system else []
            continue
        if text.startswith("/use ") and args.adapter:  # switch adapter mid-conversation
            from acculturate.adapters import UnknownAdapterError, adapter_registry

            try:
                adapter_registry(loaded.model).use(text[5:].strip())
            except UnknownAdapterError as e:
                print(e)
            continue
        messages.append({"role": "user", "content": text})
        prompt = render_prompt(messages, loaded.tokenizer, "chat")
        print("model> ", end="", flush=True)
        out = generate(loaded.model, loaded.tokenizer, [prompt], config, on_text=print_stream())[0]
        print()
        messages.append({"role": "assistant", "content": out.text})
