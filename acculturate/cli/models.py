"""`acculturate export | merge | tokenizer`: write models in other formats, extend a vocabulary."""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="write a folder vLLM serves directly (merged model, or base + LoRA "
                                      "adapters), or a GGUF file for llama.cpp / Ollama (--format gguf)")
    p.add_argument("--format", required=True, choices=["vllm", "gguf"])
    p.add_argument("--quant", default=None, choices=["f16", "q8_0", "q4_0", "q4_1"],
                   help="--format gguf: weights type (default f16)")
    p.add_argument("--output", required=True, help="the folder to write (replaced whole)")
    p.add_argument("--model", default=None, help="base model, or a fine-tuned full/head model directory (default: "
                                                  "the base the --adapter adapters record, else smollm2-135m)")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                   help="a LoRA adapter (repeatable): served by name with vLLM's --enable-lora")
    p.add_argument("--merge", action="store_true", help="fuse the one adapter into the weights instead "
                                                        "(--format gguf always merges)")
    p.add_argument("--qlora", action="store_true", help="with --merge or gguf: the adapter was trained with QLoRA")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="exported weights dtype")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("merge", help="fuse a LoRA adapter into the base and export a plain HF model")
    p.add_argument("--model", default=None, help="the base model (default: the one the adapter records, "
                                                 "else smollm2-135m)")
    p.add_argument("--adapter", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--qlora", action="store_true",
                   help="the adapter was trained with QLoRA: merge into the NF4-rounded weights it was trained against")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("tokenizer", help="vocabulary tools: extend a model's tokenizer for a new language")
    actions = p.add_subparsers(dest="tokenizer_verb", required=True, metavar="ACTION")
    q = actions.add_parser("extend", help="learn tokens from a corpus, add them, init embeddings, report fertility")
    q.add_argument("--corpus", action="append", required=True, metavar="PATH",
                   help=".txt, .jsonl or .csv (or shipped:nusax/valid.csv); repeatable")
    q.add_argument("--column", help="CSV column / JSONL key holding the text (e.g. javanese)")
    q.add_argument("--output", required=True, help="where the extended HF model directory goes")
    q.add_argument("--model", default="smollm2-135m")
    q.add_argument("--new-tokens", type=int, default=200, help="learned tokens to add (default 200)")
    q.add_argument("--bpe-vocab-size", type=int, default=2000, help="size of the BPE trained on the corpus")
    q.add_argument("--min-frequency", type=int, default=2)
    q.add_argument("--rank", default="split", choices=["split", "saved"],
                   help="split: most-split tokens first; saved: most tokens saved on the corpus first")
    q.add_argument("--test-fraction", type=float, default=0.2,
                   help="documents held apart (same split as acculturate train with this seed)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_tokenizer_extend)


def cmd_export(args) -> int:
    from acculturate.config_loading import ConfigError
    from acculturate.jobs.export import export_gguf, export_vllm

    if args.format == "gguf":
        try:
            result = export_gguf(args.model, args.adapter, args.output, quant=args.quant or "f16",
                                 quantized_base=args.qlora)
        except ValueError as e:   # an adapter or model the export cannot take (the message says why)
            raise SystemExit(f"acculturate export: error: {e}") from None
        print(f"exported {result['path']} ({result['bytes'] / 2**20:.1f} MiB, {result['quant']}); "
              f"run it with Ollama:\n  {result['command']}")
        return 0
    if args.quant is not None:
        raise ConfigError("--quant: only with --format gguf")
    try:
        result = export_vllm(args.model, args.adapter, args.output, merge=args.merge, quantized_base=args.qlora,
                             dtype=args.dtype)
    except ValueError as e:
        raise SystemExit(f"acculturate export: error: {e}") from None
    print(f"exported ({result['layout']}) to {args.output}; serve it with:\n  {result['command']}")
    return 0


def cmd_merge(args) -> int:
    from acculturate.adapters import merge_adapter_dir

    merge_adapter_dir(args.model, args.adapter, args.output, quantized_base=args.qlora)
    print(f"merged model written to {args.output} (a plain HF model directory)")
    return 0


def cmd_tokenizer_extend(args) -> int:
    from acculturate.data.sources import DataSource
    from acculturate.jobs.vocab import run_extend
    from acculturate.models.vocab import ExtendConfig

    try:
        config = ExtendConfig(new_tokens=args.new_tokens, bpe_vocab_size=args.bpe_vocab_size,
                              min_frequency=args.min_frequency, rank=args.rank)
        sources = [DataSource(path=c, columns={"text": args.column} if args.column else None) for c in args.corpus]
        r = run_extend(sources, args.output, model=args.model, config=config,
                       test_fraction=args.test_fraction, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"acculturate tokenizer extend: error: {e}") from None
    f = r["fertility"]
    print(f"added {len(r['new_ids'])} tokens ({len(r['tokens'])} learned + {r['intermediate']} for their "
          f"merges): vocabulary {r['old_vocab_size']} -> {r['new_vocab_size']}")
    print(f"fertility (tokens/word): training text {f['train']['before']} -> {f['train']['after']}, "
          f"held-apart text {f['test']['before']} -> {f['test']['after']}")
    print(f"Saved: {r['output']} (an HF model directory; train on it with model.name: {r['output']})")
    return 0
