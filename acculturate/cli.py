"""`acculturate <verb>`: a thin layer over the Python API; each verb calls one function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from acculturate.resources import ROOT as RESOURCES

DEFAULT_ADAPT_CONFIG = RESOURCES.parent / "configs" / "adapt" / "smollm2-135m_lora.yaml"
DEFAULT_EVAL_CONFIG = RESOURCES.parent / "configs" / "eval" / "smollm2-135m_base-vs-adapt-uk.yaml"


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1.0 = off")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=8)


def _generation_config(args):
    from acculturate.decode import GenerationConfig

    return GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=tuple(args.stop),
                            seed=args.seed, batch_size=args.batch_size)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="'smollm2-135m' (embedded), an HF model directory or a .gguf file")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                   help="a LoRA adapter directory (ours or PEFT's), repeatable: several adapters share one "
                        "base model; NAME defaults to the folder name")
    p.add_argument("--use", default=None, metavar="NAME",
                   help="which --adapter answers (default: the first; 'none' = the base model)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)


def _load_with_adapter(args):
    from acculturate.adapters import AdapterError, UnknownAdapterError, load_adapters
    from acculturate.models import load

    if args.use is not None and not args.adapter and args.use.lower() != "none":
        raise SystemExit(f"acculturate {args.verb}: error: --use {args.use} needs --adapter {args.use}=DIR")
    loaded = load(args.model, device=args.device, dtype=args.dtype)
    if args.adapter:
        try:
            load_adapters(loaded.model, args.adapter, use=args.use)
        except (AdapterError, UnknownAdapterError, ValueError) as e:
            raise SystemExit(f"acculturate {args.verb}: error: {e}") from None
        loaded.model.eval()
    return loaded


def cmd_adapt(args) -> int:
    from acculturate.config_loading import load_yaml
    from acculturate.jobs.adapt import AdaptConfig, run_adapt

    path = Path(args.config) if args.config else DEFAULT_ADAPT_CONFIG
    config = load_yaml(AdaptConfig, path, args.set)
    if args.name:
        config.name = args.name
    if args.skip_invalid:
        config.data.skip_invalid = True
    metrics = run_adapt(config, overwrite=args.restart, base_dir=path.parent)
    out = Path(config.output_dir) / config.name
    systems, n = metrics["systems"], metrics["questions"]["test"]
    print(f"\n{config.region}: accuracy on {n} held-apart questions")
    for name, label in (("base_closed_book", "base, closed-book"), ("base_retrieval", "base + retrieval"),
                        ("adapted_closed_book", "adapted, closed-book"), ("adapted_retrieval", "adapted + retrieval")):
        s = systems[name]
        print(f"  {label:<22} {100 * s['accuracy']:5.1f}%  (95% {100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f})")
    d = metrics["comparisons"]["adapted_retrieval - base_retrieval"]
    print(f"  adapted + retrieval vs base + retrieval: {100 * d['difference']:+.1f} points "
          f"(paired 95% {100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f})")
    print(f"Results: {out}/report.md, {out}/report.html, {out}/metrics.json")
    print(f"Use it: acculturate ask --run {out} \"QUESTION\"  |  acculturate serve --run {out}")
    return 0


def cmd_ask(args) -> int:
    from acculturate.jobs.ask import run_ask

    return run_ask(args.run, question=args.question, file=args.file, output=args.output,
                   retrieval=not args.closed_book, batch_size=args.batch_size, seed=args.seed,
                   temperature=args.temperature)


def cmd_train(args) -> int:
    from acculturate.config_loading import load_config
    from acculturate.jobs.finetune import FinetuneConfig, run_finetune

    if args.gpus:
        return _launch_torchrun(args.gpus)
    path = Path(args.config) if args.config else None
    config = load_config(FinetuneConfig, path, args.set)
    if args.skip_invalid:
        config.data.skip_invalid = True
    metrics = run_finetune(config, resume=args.resume, overwrite=args.restart, base_dir=path and path.parent)
    if "rank" in metrics:   # a non-zero rank under torchrun: rank 0 reports
        return 0
    t = metrics["train"]
    print(f"\ntrained {config.method.name}: {t['steps']} steps, train loss {t['train_loss']:.4f}"
          + (f", eval loss {t['eval_loss']:.4f}" if t.get("eval_loss") is not None else ""))
    print(_speed_line(t))
    print(f"Saved: {metrics['saved']}")
    return 0


def _speed_line(t: dict) -> str:
    """Tokens/s and peak memory of a training run (TrainResult as a dict)."""
    peak = t.get("peak_memory_bytes") or 0
    where = "GPU max allocated, weights included" if t.get("peak_memory_kind") == "cuda_max_allocated" \
        else "CPU RSS growth"
    return (f"{t.get('tokens_per_s', 0):,.0f} tokens/s, peak memory {peak / 2 ** 30:.2f} GiB ({where}), "
            f"activation checkpointing {t.get('activation_checkpointing', 'off')}")


def _launch_torchrun(gpus: int) -> int:
    """`acculturate train --gpus N`: run this same command under torchrun, one process per GPU."""
    import subprocess

    import torch

    if gpus > torch.cuda.device_count():
        raise SystemExit(f"acculturate train: error: --gpus {gpus}, but {torch.cuda.device_count()} CUDA GPU(s) "
                         f"are visible (on CPU run `torchrun --nproc-per-node {gpus} -m acculturate train ...`, gloo)")
    argv = sys.argv[1:]
    rest = [a for i, a in enumerate(argv) if a != "--gpus" and not a.startswith("--gpus=")
            and (i == 0 or argv[i - 1] != "--gpus")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
           "-m", "acculturate", *rest]
    print("launching: " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)


def _render(tokenizer, text: str, template: str, system: str | None) -> str:
    if template == "raw":
        return text
    from acculturate.data import render_prompt

    return render_prompt([{"role": "user", "content": text}], tokenizer, template, system=system)


def cmd_generate(args) -> int:
    from acculturate.decode import generate
    from acculturate.io import write_jsonl

    if bool(args.prompt) == bool(args.file):
        raise SystemExit("acculturate generate: give either a prompt or --file PROMPTS.jsonl")
    loaded = _load_with_adapter(args)
    if args.file:
        rows = []
        for i, line in enumerate(Path(args.file).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append(row["prompt"] if isinstance(row, dict) else str(row))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SystemExit(f"{args.file}:{i}: expected a JSON object with a 'prompt' string") from None
        prompts = rows
    else:
        prompts = [args.prompt]
    rendered = [_render(loaded.tokenizer, p, args.template, args.system) for p in prompts]
    config = _generation_config(args)
    filters = _output_filters(args)
    if filters is not None:
        from acculturate.decode.postprocess import generate_filtered

        outs = generate_filtered(loaded.model, loaded.tokenizer, rendered, config, filters, progress=len(prompts) > 1)
        if len(prompts) == 1 and not args.output:
            print(outs[0].text)
            return 0
    elif len(prompts) == 1 and not args.output:
        outs = generate(loaded.model, loaded.tokenizer, rendered, config,
                        on_text=lambda i, delta: print(delta, end="", flush=True))
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


def _output_filters(args):
    """`acculturate generate`'s output filters: a YAML of OutputFilterConfig fields and/or flags."""
    from acculturate.config_loading import from_dict, load_yaml
    from acculturate.decode.postprocess import OutputFilterConfig

    if not (args.filters or args.blocklist or args.best_of > 1):
        return None
    data = {}
    if args.filters:
        from acculturate.config_loading import to_dict

        data = to_dict(load_yaml(OutputFilterConfig, args.filters))
    if args.blocklist:
        data["blocklist"] = list(data.get("blocklist", [])) + args.blocklist
    if args.best_of > 1:
        data.update(best_of=args.best_of, reward=args.reward or data.get("reward") or "mean_logprob")
    return from_dict(OutputFilterConfig, data, "output filters")


def cmd_chat(args) -> int:
    from acculturate.decode import generate

    loaded = _load_with_adapter(args)
    config = _generation_config(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("Chat with the model. Empty line or Ctrl-D to quit; /reset starts over"
          + ("; /use NAME switches adapter ('none' = base)." if args.adapter else "."))
    from acculturate.data import render_prompt

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
        out = generate(loaded.model, loaded.tokenizer, [prompt], config,
                       on_text=lambda i, delta: print(delta, end="", flush=True))[0]
        print()
        messages.append({"role": "assistant", "content": out.text})


def cmd_prompt(args) -> int:
    from acculturate.jobs.prompt_eval import answer_question

    task, result = answer_question(args.strategy, args.task, args.question, overrides=args.set,
                                   region=args.region, loaded=_load_with_adapter(args))
    if args.json:
        print(json.dumps({"answer": task.display(result.answer), "extra": result.extra,
                          "trace": result.trace.to_dict()}, ensure_ascii=False, default=str))
        return 0
    if args.show_trace:
        for call in result.trace.calls:
            print(f"--- {call.step} ({call.completion_tokens} tokens)\n{call.completion}")
    t = result.trace
    print(f"answer: {task.display(result.answer)}\n({len(t.calls)} calls, {t.completion_tokens} tokens generated, "
          f"{t.seconds:.1f} s)")
    return 0


def cmd_prompt_eval(args) -> int:
    from acculturate.config_loading import load_config
    from acculturate.jobs.prompt_eval import PromptEvalConfig, results_table, run_prompt_eval

    config = load_config(PromptEvalConfig, args.config, args.set)
    summary = run_prompt_eval(config, overwrite=args.restart)
    print(results_table(summary["results"], f"{summary['task']}, {summary['sample']} questions"))
    print(f"Results: {Path(config.output_dir) / config.name}/results.md")
    return 0


def cmd_compare(args) -> int:
    from acculturate.config_loading import load_config
    from acculturate.jobs.compare import CompareConfig, run_compare

    path = Path(args.config) if args.config else None
    config = load_config(CompareConfig, path, args.set)
    summary = run_compare(config, overwrite=args.restart, base_dir=path and path.parent)
    print(Path(summary["files"]["table"]).read_text())
    print(f"Results: {summary['files']['table']}, {summary['files']['plot']}")
    return 0


def cmd_tune(args) -> int:
    from acculturate.config_loading import load_config
    from acculturate.jobs.tune import TuneConfig, run_tune

    path = Path(args.config) if args.config else None
    config = load_config(TuneConfig, path, args.set + ([f"study.n_trials={args.n_trials}"] if args.n_trials else []))
    summary = run_tune(config, workers=args.workers, overwrite=args.restart, base_dir=path and path.parent)
    print(Path(summary["files"]["trials"]).read_text())
    final = summary["final"]
    if "default" in final:
        d, b = final["default"]["test"], final["best"]["test"]
        print("held-apart test split: " + ", ".join(
            f"{k} {d[k]:.4f} (default) -> {b[k]:.4f} (best)" for k in ("eval_loss", "accuracy") if k in d and k in b))
    print("Results: " + ", ".join(f"{k} {v}" for k, v in summary["files"].items()))
    return 0


def cmd_export(args) -> int:
    from acculturate.config_loading import ConfigError
    from acculturate.jobs.export import export_gguf, export_vllm

    if args.format == "gguf":
        if args.quant is None:
            args.quant = "f16"
        result = export_gguf(args.model, args.adapter, args.output, quant=args.quant, quantized_base=args.qlora)
        print(f"exported {result['path']} ({result['bytes'] / 2**20:.1f} MiB, {result['quant']}); "
              f"run it with Ollama:\n  {result['command']}")
        return 0
    if args.quant is not None:
        raise ConfigError("--quant: only with --format gguf")
    result = export_vllm(args.model, args.adapter, args.output, merge=args.merge, quantized_base=args.qlora,
                         dtype=args.dtype)
    print(f"exported ({result['layout']}) to {args.output}; serve it with:\n  {result['command']}")
    return 0


def cmd_eval(args) -> int:
    from acculturate.config_loading import load_yaml
    from acculturate.jobs.evaluate import EvalConfig, rescore, run_eval

    target = Path(args.config) if args.config else DEFAULT_EVAL_CONFIG
    if args.rescore:
        # A run folder (or a config naming one): recompute metrics and report from its saved outputs.
        if not target.is_dir():
            config = load_yaml(EvalConfig, target, args.set)
            target = Path(config.output_dir) / (args.name or config.name)
        metrics = rescore(target)
        out = target
    else:
        config = load_yaml(EvalConfig, target, args.set)
        if args.name:
            config.name = args.name
        if args.full:
            for task in config.tasks:
                task.limit = None
        metrics = run_eval(config, resume=args.resume, overwrite=args.restart, base_dir=target.parent)
        out = Path(config.output_dir) / config.name
    for name, entry in metrics["tasks"].items():
        for system, m in entry["systems"].items():
            shown = {k: v for k, v in m.items() if k in ("accuracy", "bleu", "chrf", "judge_mean", "consistency_mean")}
            print(f"{name:24s} {system:16s} " + "  ".join(f"{k} {v:.3f}" for k, v in shown.items() if v is not None))
    print(f"Results: {out}/report.html, {out}/metrics.json")
    return 0


def cmd_rate(args) -> int:
    from acculturate.evaluate.rating_app import serve_ratings

    serve_ratings(args.run_dir, host=args.host, port=args.port)
    return 0


def cmd_merge(args) -> int:
    from acculturate.adapters import merge_adapter_dir

    merge_adapter_dir(args.model, args.adapter, args.output, quantized_base=args.qlora)
    print(f"merged model written to {args.output} (a plain HF model directory)")
    return 0


def cmd_serve(args) -> int:
    from acculturate.adapters.registry import parse_adapter_spec
    from acculturate.config_loading import load_config
    from acculturate.serve import ServeConfig, run_server

    config = load_config(ServeConfig, args.config, args.set)
    for flag in ("model", "host", "port", "db", "device", "dtype"):
        if getattr(args, flag) is not None:
            setattr(config, flag, getattr(args, flag))
    for spec in args.adapter:
        name, directory = parse_adapter_spec(spec)
        config.adapters[name] = str(directory)
    if args.run:
        config.run = args.run
    config.api_keys = [*config.api_keys, *args.api_key]
    if args.api_keys_file is not None:
        config.api_keys_file = args.api_keys_file
    if args.insecure:
        config.insecure = True
    run_server(config)
    return 0


def cmd_feedback_export(args) -> int:
    from acculturate.feedback import export_feedback

    counts = export_feedback(args.db, args.out)
    print(f"wrote {counts['rewards']} reward rows to {counts['rewards_path']} and "
          f"{counts['preferences']} preference pairs to {counts['preferences_path']}")
    return 0


def cmd_learn(args) -> int:
    from acculturate.config_loading import load_config
    from acculturate.feedback.versions import VersionError, VersionStore
    from acculturate.jobs.learn import LearnConfig, run_learn

    config = load_config(LearnConfig, args.config, args.set)
    if args.db:
        config.db = args.db
    versions = VersionStore(config.versions_dir)
    try:
        if args.rollback:
            info = versions.rollback(args.rollback)
            print(f"{config.name}: serving {info.version} again (a running server picks it up with "
                  f"POST /admin/rollback)")
            return 0
        if args.list:
            current = versions.state()["current"]
            for v in versions.list():
                mark = "*" if v.version == current else " "
                print(f"{mark} {v.version:<5} parent={v.parent or '-':<5} {v.method:<8} "
                      f"{'accepted' if v.accepted else 'rejected'}  feedback={len(v.feedback_ids):<4} {v.reason[:90]}")
            return 0
    except VersionError as e:
        raise SystemExit(f"acculturate learn: error: {e}") from None
    result = run_learn(config)
    print(f"\n{result.status}: {result.reason}")
    if result.version is not None:
        print(f"{result.version.version} (parent {result.parent}) written to {result.version.path}")
    return 0 if result.status != "failed" else 1


# --- learning from feedback: reward models and PPO (jobs/reward_model.py, jobs/ppo.py) ---------------

DEFAULT_PPO_CONFIG = RESOURCES.parent / "configs" / "ppo" / "smollm2-135m_lora.yaml"
DEFAULT_REWARD_MODEL_CONFIG = RESOURCES.parent / "configs" / "reward_model" / "smollm2-135m_lora.yaml"


def cmd_reward_model_train(args) -> int:
    from acculturate.config_loading import load_yaml
    from acculturate.jobs.reward_model import RewardModelJobConfig, run_reward_model

    path = Path(args.config) if args.config else DEFAULT_REWARD_MODEL_CONFIG
    config = load_yaml(RewardModelJobConfig, path, args.set)
    s = run_reward_model(config, overwrite=args.restart, base_dir=path.parent)
    acc, before = s["eval_pair_accuracy"], s["eval_pair_accuracy_before"]
    if acc is not None:
        print(f"\nheld-out pair accuracy on {s['eval_pairs']} pairs: {100 * before:.1f}% (untrained) -> "
              f"{100 * acc:.1f}% after {s['steps']} steps ({s['train_wall_time_s']:.0f} s)")
    print(f"Reward model: {Path(config.output_dir) / config.name / 'reward_model'}")
    return 0


def cmd_ppo(args) -> int:
    from acculturate.config_loading import load_yaml
    from acculturate.jobs.ppo import PPOJobConfig, run_ppo

    path = Path(args.config) if args.config else DEFAULT_PPO_CONFIG
    config = load_yaml(PPOJobConfig, path, args.set)
    s = run_ppo(config, overwrite=args.restart, base_dir=path.parent)
    out = Path(config.output_dir) / config.name
    print(f"\nPPO {s['steps']} steps: rollout reward {s['reward_first_steps']:.3f} (first 3 steps) -> "
          f"{s['reward_last_steps']:.3f} (last 3)")
    if s["eval_before"] and s["eval_after"]:
        print(f"held-apart greedy reward on {s['eval_prompts']} prompts: {s['eval_before']['reward_mean']:.3f} -> "
              f"{s['eval_after']['reward_mean']:.3f}")
    print(f"Adapter: {out / 'adapter'}; metrics: {out / 'metrics.jsonl'}; plot: {out / 'reward.png'}")
    return 0


# --- rag: index documents, search them, ask with citations, evaluate on BLEnD -------------------------

def _key_values(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"acculturate rag: error: {flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _retrieve_config(args):
    from acculturate.rag import RetrieveConfig

    return RetrieveConfig(k=args.k, mode=args.mode, candidates=max(args.candidates, args.k), rerank=args.rerank,
                          reranker=args.reranker, filters=_key_values(args.filter, "--filter"))


def cmd_rag(args) -> int:
    from acculturate.config_loading import ConfigError
    from acculturate.data import DataError

    try:
        return _RAG_ACTIONS[args.rag_verb](args)
    except (ConfigError, DataError):
        raise  # main() reports these
    except (ValueError, ImportError) as e:  # RagIndexError, a bad retrieval setting, a missing extra
        print(f"acculturate rag {args.rag_verb}: error: {e}", file=sys.stderr)
        return 2


def _rag_index(args) -> int:
    from acculturate.rag import ChunkConfig, IndexConfig, update_index

    config = IndexConfig(embedder=args.embedder, chunk=ChunkConfig(args.max_chars, args.overlap),
                         text_field=args.text_field, device=args.device or "cpu")
    r = update_index(args.paths, args.index, config, meta=_key_values(args.meta, "--meta") or None,
                     rebuild=args.rebuild)
    print(f"{r.path}: {r.passages} passages; files added {len(r.added)}, updated {len(r.updated)}, "
          f"removed {len(r.removed)}, unchanged {r.unchanged}; embedded {r.embedded} passages in {r.seconds:.1f} s")
    return 0


def _rag_search(args) -> int:
    from acculturate.rag import open_index, retrieve

    hits = retrieve(open_index(args.index), args.query, _retrieve_config(args))
    if args.json:
        print(json.dumps([{"rank": h.rank, "score": h.score, "dense_rank": h.dense_rank, "bm25_rank": h.bm25_rank,
                           **{k: h.passage[k] for k in ("id", "source", "title", "heading", "text", "meta")}}
                          for h in hits], ensure_ascii=False))
        return 0
    for h in hits:
        print(f"[{h.rank}] {h.score:.4f} {h.passage['source']} > {h.passage['heading']}\n    {h.passage['text'][:300]}")
    return 0


def _rag_ask(args) -> int:
    from acculturate.rag import AskConfig, ask, open_index

    index = open_index(args.index)
    loaded = _load_with_adapter(args)
    result = ask(args.question, index, loaded.model, loaded.tokenizer,
                 AskConfig(retrieve=_retrieve_config(args), max_new_tokens=args.max_new_tokens))
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
        return 0
    print(result.answer)
    shown = result.citations or result.passages
    print("\ncited passages:" if result.citations else "\n(the answer cites no passage; retrieved passages:)")
    for c in shown:
        print(f"  [{c['number']}] {c['source']}" + (f" > {c['heading']}" if c["heading"] else "")
              + (" (inferred: the answer copies its words)" if c.get("how") == "inferred" else ""))
    return 0


def _rag_eval(args) -> int:
    from acculturate.config_loading import load_config
    from acculturate.jobs.rag_eval import RagEvalConfig, run_rag_eval

    config = load_config(RagEvalConfig, args.config, args.set)
    run_rag_eval(config, overwrite=args.restart)
    out = Path(config.output_dir) / config.name
    print((out / "report.md").read_text())
    print(f"Results: {out}/report.md, {out}/metrics.json")
    return 0


def _rag_list(args) -> int:
    from acculturate.rag import list_indexes, rag_home

    found = list_indexes(args.home)
    if args.json:
        print(json.dumps(found, ensure_ascii=False))
        return 0
    if not found:
        print(f"no index under {args.home or rag_home()}: build one with `acculturate rag index DOCS --index NAME`")
    for i in found:
        print(f"{i['name']}: {i['passages']} passages from {i['files']} files, updated {i['updated']}")
    return 0


_RAG_ACTIONS = {"index": _rag_index, "search": _rag_search, "ask": _rag_ask, "eval": _rag_eval, "list": _rag_list}


def _add_rag_parser(sub) -> None:
    p = sub.add_parser("rag", help="retrieval-augmented generation: index documents, search, ask with citations")
    rsub = p.add_subparsers(dest="rag_verb", required=True, metavar="ACTION")

    def retrieval_args(q):
        q.add_argument("--index", required=True, help="index name (under $ACCULTURATE_RAG_HOME) or directory")
        q.add_argument("-k", type=int, default=4, help="passages to retrieve (default 4)")
        q.add_argument("--mode", default="hybrid", choices=["hybrid", "dense", "bm25"])
        q.add_argument("--candidates", type=int, default=50, help="candidates per retriever before fusion")
        q.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                       help="only passages whose metadata matches, e.g. --filter region=UK (repeatable)")
        q.add_argument("--rerank", default="none", choices=["none", "dense", "cross-encoder"])
        q.add_argument("--reranker", default=None, help="local CrossEncoder model directory (--rerank cross-encoder)")
        q.add_argument("--json", action="store_true", help="print JSON")

    q = rsub.add_parser("index", help="index (or re-index: only changed files) documents: .txt .md .html .pdf .jsonl")
    q.add_argument("paths", nargs="+", metavar="DIR_OR_FILE")
    q.add_argument("--index", required=True, help="index name (under $ACCULTURATE_RAG_HOME) or directory")
    q.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata for these files' passages, e.g. --meta region=UK (repeatable)")
    q.add_argument("--rebuild", action="store_true", help="start the index over (needed to change its settings)")
    q.add_argument("--embedder", default=None, help="sentence-transformers model directory (default all-MiniLM-L6-v2)")
    q.add_argument("--max-chars", type=int, default=800, help="passage length bound in characters")
    q.add_argument("--overlap", type=int, default=120, help="characters repeated between neighbouring passages")
    q.add_argument("--text-field", default="text", help="JSONL: the field holding the text")
    q.add_argument("--device", default=None, help="where the embedder runs (default cpu)")
    q.set_defaults(func=cmd_rag)

    q = rsub.add_parser("search", help="the passages an index returns for a query (no generation)")
    q.add_argument("query")
    retrieval_args(q)
    q.set_defaults(func=cmd_rag)

    q = rsub.add_parser("ask", help="answer a question from an index's passages, with citations")
    q.add_argument("question")
    retrieval_args(q)
    q.add_argument("--max-new-tokens", type=int, default=128)
    _add_model_args(q)
    q.set_defaults(func=cmd_rag)

    q = rsub.add_parser("list", help="the named indexes (under $ACCULTURATE_RAG_HOME): passages, files, last update")
    q.add_argument("--home", default=None, help="another folder of named indexes")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_rag)

    q = rsub.add_parser("eval", help="recall@k, MRR and accuracy with vs without retrieval on BLEnD documents")
    q.add_argument("config", nargs="?", help="YAML of RagEvalConfig fields, e.g. examples/rag_blend/config.yaml "
                                          "(default: the fields' defaults)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--restart", action="store_true", help="delete the run of this name and start over")
    q.set_defaults(func=cmd_rag)


def cmd_tokenizer_extend(args) -> int:
    from acculturate.jobs.sources import DataSource
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


DATA_STEPS = {
    "dedupe": "drop exact and near duplicates (MinHash LSH)",
    "length": "keep examples within word/character bounds",
    "blocklist": "drop examples matching per-region blocklists or regexes",
    "langid": "keep examples in the given languages (py3langid)",
    "balance": "down-sample, up-sample or weight to a target group distribution",
    "counterfactual": "add copies with gendered/group terms swapped",
    "backtranslate": "paraphrase prompts by round-trip translation through a pivot language (model)",
    "self-instruct": "generate new instruction/answer pairs from seed tasks (model)",
    "pipeline": "run the steps of a YAML config in order",
}


def cmd_data(args) -> int:
    from acculturate.config_loading import load_config
    from acculturate.jobs import data as jobs_data

    if args.step == "pipeline":
        if len(args.paths) > 1:
            raise SystemExit("acculturate data pipeline: give one CONFIG.yaml (or none, and the steps with --set)")
        path = Path(args.paths[0]) if args.paths else None
        config = load_config(jobs_data.DataPipelineConfig, path, args.set)
        jobs_data.run_pipeline(config, base_dir=path and path.parent, restart=args.restart)
        return 0
    if args.settings:
        print(jobs_data.describe_fields(args.step))
        return 0
    wants_input = args.step != "self-instruct"
    if len(args.paths) not in ((2,) if wants_input else (1, 2)):
        raise SystemExit(f"acculturate data {args.step}: give " + ("INPUT OUTPUT" if wants_input else "[INPUT] OUTPUT"))
    *inputs, output = args.paths
    cls = jobs_data.step_config_class(args.step)
    config = load_config(cls, args.config, args.set)
    from acculturate.data.steps import STEPS, run_step
    from acculturate.jobs.sources import resolve_path

    source = resolve_path(inputs[0]) if inputs else None
    columns = dict(item.split("=", 1) for item in args.columns.split(",")) if args.columns else None
    if args.step in STEPS:
        run_step(args.step, config, source, output, group=args.group, skip_invalid=args.skip_invalid, columns=columns)
    else:
        jobs_data.run_generator(args.step, config, source, output, args.model, skip_invalid=args.skip_invalid,
                                columns=columns)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acculturate", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("adapt", help="adapt a model to a region, evaluate before/after, write a report")
    p.add_argument("config", nargs="?", help=f"YAML config (default: the shipped {DEFAULT_ADAPT_CONFIG.name})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set region=Mexico --set train.epochs=1")
    p.add_argument("--name", help="run name (the folder under output_dir)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip malformed data rows (each reported, then counted) instead of stopping")
    p.add_argument("--restart", action="store_true",
                   help="delete the run of this name and start over (default: continue it)")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("ask", help="answer questions with the regional assistant `acculturate adapt` built")
    p.add_argument("question", nargs="?", help="one question (or --file)")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the adapt run folder, e.g. runs/adapt-uk")
    p.add_argument("--file", help="JSONL with one {\"question\": ...} per line (extra fields are kept)")
    p.add_argument("--output", help="write one JSONL line per question: question, answer, citations, passages")
    p.add_argument("--closed-book", action="store_true", help="answer without retrieval")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("train", help="fine-tune (full, head, lora) from a YAML config")
    p.add_argument("config", nargs="?", help="YAML of FinetuneConfig fields (default: the fields' defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip malformed data rows (each reported, then counted) instead of stopping")
    p.add_argument("--restart", action="store_true", help="delete the run of this name and start over")
    p.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="train on N GPUs of this machine (launches torchrun; DDP, or FSDP2 with "
                        "--set train.distributed=fsdp)")
    p.set_defaults(func=cmd_train)

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
    _add_model_args(p)
    _add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat in the terminal")
    p.add_argument("--system", default=None)
    _add_model_args(p)
    _add_sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("prompt", help="answer one question with a prompting strategy (cot, self_consistency...)")
    p.add_argument("question")
    p.add_argument("--strategy", default="zero_shot",
                   help="zero_shot, few_shot, cot, self_consistency, tree_of_thought, critique_refine, program, "
                        "rag (--set index=NAME)")
    p.add_argument("--task", default="blend", choices=["svamp", "blend"],
                   help="answer format and exemplar source: svamp (a number) or blend (a few words)")
    p.add_argument("--region", default=None, help="region the question is about (personas, exemplars)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of the strategy's config, e.g. --set persona=local --set samples=8")
    p.add_argument("--show-trace", action="store_true", help="print every completion")
    p.add_argument("--json", action="store_true", help="print answer, extra and the full trace as JSON")
    _add_model_args(p)
    p.set_defaults(func=cmd_prompt)

    p = sub.add_parser("prompt-eval", help="compare prompting strategies on a task sample (table + JSONL)")
    p.add_argument("config", nargs="?", help="YAML of PromptEvalConfig fields, e.g. the shipped "
                   "acculturate/configs/prompt_eval/smollm2-135m_svamp.yaml (default: the fields' defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--restart", action="store_true", help="delete the run of this name and start over")
    p.set_defaults(func=cmd_prompt_eval)

    p = sub.add_parser("compare", help="train full, head, lora, qlora, prompt tuning on the same data; table + plot")
    p.add_argument("config", nargs="?", help="YAML of CompareConfig fields, e.g. the shipped "
                   "acculturate/configs/compare/smollm2-135m_methods.yaml (default: the fields' defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.max_steps=5 --set 'methods=[{name: lora}]'")
    p.add_argument("--restart", action="store_true", help="delete the run of this name and start over")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tune", help="hyperparameter search (Optuna) around a train config: best.yaml + report")
    p.add_argument("config", nargs="?", help="YAML of TuneConfig fields, e.g. the shipped "
                   "acculturate/configs/tune/smollm2-135m_lora.yaml (default: the fields' defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set study.storage=postgresql://host/db")
    p.add_argument("--n-trials", type=int, default=None, help="trials to finish in all (study.n_trials)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes sharing the study (default: one per GPU, or 1 on CPU)")
    p.add_argument("--restart", action="store_true", help="delete the study of this name and start over")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("export", help="write a folder vLLM serves directly (merged model, or base + LoRA "
                                      "adapters), or a GGUF file for llama.cpp / Ollama (--format gguf)")
    p.add_argument("--format", required=True, choices=["vllm", "gguf"])
    p.add_argument("--quant", default=None, choices=["f16", "q8_0", "q4_0", "q4_1"],
                   help="--format gguf: weights type (default f16)")
    p.add_argument("--output", required=True, help="the folder to write (replaced whole)")
    p.add_argument("--model", default="smollm2-135m", help="base model, or a fine-tuned full/head model directory")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                   help="a LoRA adapter (repeatable): served by name with vLLM's --enable-lora")
    p.add_argument("--merge", action="store_true", help="fuse the one adapter into the weights instead "
                                                        "(--format gguf always merges)")
    p.add_argument("--qlora", action="store_true", help="with --merge or gguf: the adapter was trained with QLoRA")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="exported weights dtype")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("merge", help="fuse a LoRA adapter into the base and export a plain HF model")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--adapter", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--qlora", action="store_true",
                   help="the adapter was trained with QLoRA: merge into the NF4-rounded weights it was trained against")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("serve", help="serve models over an OpenAI-compatible API with a web chat and feedback")
    p.add_argument("config", nargs="?", help="YAML of ServeConfig fields (acculturate/serve/config.py)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--model", default=None, help="base model (default smollm2-135m)")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                   help="a LoRA adapter to serve as model NAME (repeatable)")
    p.add_argument("--host", default=None, help="default 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default 8000")
    p.add_argument("--db", default=None, help="feedback store: SQLite path or SQLAlchemy URL")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--run", default=None, metavar="RUN_DIR",
                   help="serve the regional assistant `acculturate adapt` built there (adapter, index, persona, "
                        "retrieval on by default), as model NAME = the run's folder name")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="a key /v1/* requires as 'Authorization: Bearer KEY' (repeatable; also "
                        "$ACCULTURATE_API_KEYS, comma separated)")
    p.add_argument("--api-keys-file", default=None, metavar="FILE", help="API keys, one a line")
    p.add_argument("--insecure", action="store_true",
                   help="serve an open API (no key) on a non-loopback --host (refused otherwise)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("feedback", help="work with the feedback store")
    fsub = p.add_subparsers(dest="feedback_verb", required=True, metavar="ACTION")
    q = fsub.add_parser("export", help="write rewards.jsonl and preferences.jsonl from the store")
    q.add_argument("--db", required=True, help="SQLite path or SQLAlchemy URL of the store")
    q.add_argument("--out", required=True, help="output directory")
    q.set_defaults(func=cmd_feedback_export)

    p = sub.add_parser("learn", help="one guarded learning round from the stored feedback -> a new adapter version")
    p.add_argument("config", nargs="?", help="YAML of LearnConfig fields, e.g. "
                   "acculturate/configs/learn/smollm2-135m_sft.yaml (default: the fields' defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--db", default=None, help="feedback store (default: the config's db)")
    p.add_argument("--list", action="store_true", help="list the adapter versions and exit")
    p.add_argument("--rollback", metavar="VERSION", help="make an earlier accepted version current and exit")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("eval", help="evaluate systems on tasks (BLEnD, NusaX, appropriateness, CoT): metrics.json + report.html")
    p.add_argument("config", nargs="?",
                   help=f"YAML config, or a run folder with --rescore (default: the shipped {DEFAULT_EVAL_CONFIG.name})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set judge.model=/path/to/bigger-model or --set tasks[0].limit=5")
    p.add_argument("--name", help="run name (the folder under output_dir)")
    p.add_argument("--full", action="store_true", help="every example of every task (drop the sample limits)")
    p.add_argument("--resume", action="store_true", help="continue a run: answer only the examples not saved yet")
    p.add_argument("--rescore", action="store_true",
                   help="recompute metrics.json and report.html from the saved outputs, without generating")
    p.add_argument("--restart", action="store_true", help="delete the run of this name and start over")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("tokenizer", help="vocabulary tools: extend a model's tokenizer for a new language")
    tsub = p.add_subparsers(dest="tokenizer_verb", required=True, metavar="ACTION")
    q = tsub.add_parser("extend", help="learn tokens from a corpus, add them, init embeddings, report fertility")
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

    p = sub.add_parser("rate", help="serve a page for rating an eval run's answers 1-5, blind to the system")
    p.add_argument("run_dir", help="the folder `acculturate eval` wrote (e.g. runs/eval-all-tasks)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.set_defaults(func=cmd_rate)
    p = sub.add_parser("reward-model", help="train a reward model on preference pairs and feedback rewards")
    rsub = p.add_subparsers(dest="reward_model_verb", required=True, metavar="ACTION")
    q = rsub.add_parser("train", help="train, report held-out pair accuracy, save loadable as a reward")
    q.add_argument("config", nargs="?", help=f"YAML config (default: the shipped {DEFAULT_REWARD_MODEL_CONFIG.name})")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.max_steps=20 --set data.limit=200")
    q.add_argument("--restart", action="store_true", help="delete the run of this name and start over")
    q.set_defaults(func=cmd_reward_model_train)

    p = sub.add_parser("ppo", help="PPO on a LoRA adapter over a prompt set, with a reward function or model")
    p.add_argument("config", nargs="?", help=f"YAML config (default: the shipped {DEFAULT_PPO_CONFIG.name})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set ppo.steps=5 --set 'reward={kind: http, url: http://...}'")
    p.add_argument("--restart", action="store_true", help="delete the run of this name and start over")
    p.set_defaults(func=cmd_ppo)

    _add_rag_parser(sub)
    p = sub.add_parser("data", help="data steps: dedupe, filters, langid, balance, counterfactual, "
                                    "backtranslate, self-instruct, or a pipeline of them (docs/data.md)")
    dsub = p.add_subparsers(dest="step", required=True, metavar="STEP")
    # Listed here rather than imported from acculturate.jobs.data: that import loads torch and
    # transformers, which every other verb would then wait for.
    for step, text in DATA_STEPS.items():
        q = dsub.add_parser(step, help=text)
        q.add_argument("paths", nargs="*", metavar="PATH",
                       help="CONFIG.yaml" if step == "pipeline" else "[INPUT] OUTPUT (input: Alpaca, chat JSONL or CSV, "
                            "or shipped:<file>; output: chat JSONL)")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a setting, e.g. --set threshold=0.7 (--settings lists them)")
        if step == "pipeline":
            q.add_argument("--restart", action="store_true", help="delete the output folder first (generators start over)")
        else:
            q.add_argument("--settings", action="store_true", help="list this step's settings and defaults, then exit")
            q.add_argument("--config", help="the settings as a YAML file")
            q.add_argument("--group", help="report the balance of this field (a meta key or 'gender')")
            q.add_argument("--model", default="smollm2-135m", help="the model of a generator step")
            q.add_argument("--skip-invalid", action="store_true", help="skip malformed input rows instead of stopping")
            q.add_argument("--columns", default=None, metavar="FIELD=COLUMN,...",
                           help="CSV/JSON column names, e.g. instruction=indonesian,output=english")
        q.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # transformers' own progress bars and warnings are noise next to ours.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from acculturate.config_loading import ConfigError
    from acculturate.data import DataError
    from acculturate.models import ModelLoadError
    from acculturate.prompting.sandbox import SandboxUnavailable

    try:
        return args.func(args)
    except (ConfigError, DataError, ModelLoadError, FileNotFoundError, SandboxUnavailable) as e:
        print(f"acculturate {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nacculturate {args.verb}: interrupted", file=sys.stderr)
        return 130
