"""The continued-pre-training side of ``acculturate train``: raw-text data (``data.kind: text``),
the general data behind the forgetting controls, and the before/after report.

``run_finetune`` calls these; a run with ``data.kind: text`` (or with a forgetting control on)
measures, before and after training:

- per group (language) of held-apart text: next-token loss, perplexity per token, and bits per
  character (``total nats / ln 2 / characters``), which stays comparable when a vocabulary
  extension changes the tokenizer (per-token perplexity does not: fewer, longer tokens each carry
  more information, so their perplexity is higher for the same model quality);
- fertility (tokens per word) of the run's tokenizer on the training and held-apart text;
- on held-apart general instructions: loss and perplexity on the responses, the KL from the
  untrained model's next-token distribution there (how far training moved it: the direct measure
  of drift, which the loss against the references can hide when some tokens get better and others
  worse), and a task score (greedy answers vs the references, corpus chrF);

and writes them to ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.data import Example, tokenize_examples, train_test_split
from acculturate.data.sources import DataSource, read_source
from acculturate.data.templates import check_template
from acculturate.data.text import Document


@dataclass
class GeneralConfig:
    """General-ability data (the shipped instructions by default): mixed into batches and used for
    the KL term (``forgetting``), and measured before and after adaptation (the forgetting report)."""

    sources: list[DataSource] = field(default_factory=lambda: [
        DataSource(path="shipped:instructions/instruction-data.json", format="alpaca", limit=300)])
    """The general instructions (default: 300 of the shipped ones)."""
    template: str = "alpaca"
    """How general examples become text: 'alpaca' or 'chat'."""
    max_length: int = 256
    """Tokens per general example."""
    test_fraction: float = 0.2
    """Held apart for the report; the rest feeds mixing and KL."""
    task_examples: int = 16
    """Held-apart instructions answered for the task score (0: skip)."""
    max_new_tokens: int = 48
    """Per task answer."""
    report: bool | None = None
    """Measure and report general ability (default: for text data or when a forgetting control is on)."""

    def __post_init__(self):
        check_template(self.template)
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction: expected a number in (0, 1), got {self.test_fraction}")
        if self.task_examples < 0:
            raise ValueError(f"task_examples: expected an integer >= 0, got {self.task_examples}")


@dataclass
class GeneralData:
    train_examples: list[Example]
    test_examples: list[Example]
    train_features: list[dict]
    test_features: list[dict]


def attach_groups(examples: list[Example], features: list[dict], group_by: str, dropped: list[int]) -> None:
    """Copy ``example.meta[group_by]`` into each feature as ``"group"`` (for group DRO)."""
    kept = [ex for i, ex in enumerate(examples) if i not in set(dropped)]
    for ex, feature in zip(kept, features):
        if group_by not in ex.meta:
            raise ValueError(f"data.group_by: an example has no meta field {group_by!r} (meta={ex.meta!r:.200})")
        feature["group"] = str(ex.meta[group_by])


def general_data(config: GeneralConfig, tokenizer, *, seed: int = 0, base_dir: Path | None = None) -> GeneralData:
    """Read, split and tokenize the general data."""
    examples = [ex for src in config.sources for ex in read_source(src, seed=seed, base_dir=base_dir)]
    if len(examples) < 2:
        raise ValueError("general.sources: need at least 2 general examples (a train and a held-apart one)")
    train, test = train_test_split(examples, test_fraction=config.test_fraction, seed=seed)
    tok = lambda exs: tokenize_examples(exs, tokenizer, config.template, config.max_length, progress=False)
    return GeneralData(train, test, tok(train), tok(test))


def measure(loaded, train_cfg, text_test: list[dict], test_docs: list[Document],
            train_docs: list[Document], general: GeneralData | None, general_cfg: GeneralConfig,
            reference: dict | None = None) -> dict:
    """The report's numbers for the model as it is now (see the module docstring).

    ``reference``: one dict shared by the before and the after call. The first call keeps the
    general log-probabilities in it; the second reports ``kl_to_before``, the mean
    KL(before || now) per response token of the held-apart general data: how far training moved
    the model's general distribution (0 before training, by definition).
    """
    from acculturate.evaluate.perplexity import (group_perplexity, kl_from, loss_and_perplexity, target_log_probs,
                                                 task_score)
    from acculturate.models.vocab import fertility

    model, tokenizer = loaded.model, loaded.tokenizer
    eval_cfg = _eval_config(train_cfg)
    pad = tokenizer.pad_token_id
    out: dict = {}
    if text_test:
        groups = group_perplexity(model, text_test, eval_cfg, pad)
        for name, row in groups.items():
            n_chars = sum(len(d.text) for d in test_docs if d.group == name)
            row["characters"] = n_chars
            row["bits_per_char"] = (round(row["loss"] * row["tokens"] / math.log(2) / n_chars, 4)
                                    if row["loss"] is not None and n_chars else None)
            row["fertility"] = fertility(tokenizer, [d.text for d in test_docs if d.group == name])["fertility"]
        out["regional"] = groups
        out["fertility"] = {"train": fertility(tokenizer, [d.text for d in train_docs])["fertility"],
                            "test": fertility(tokenizer, [d.text for d in test_docs])["fertility"]}
    if general is not None:
        g = loss_and_perplexity(model, general.test_features, eval_cfg, pad)
        if reference is not None:
            if "general" not in reference:
                reference["general"] = target_log_probs(model, general.test_features, pad)
                g["kl_to_before"] = 0.0
            else:
                g["kl_to_before"] = kl_from(reference["general"], model, general.test_features, pad)
        if general_cfg.task_examples:
            score = task_score(model, tokenizer, general.test_examples[:general_cfg.task_examples],
                               general_cfg.template, general_cfg.max_new_tokens)
            g["task_chrf"], g["task_n"], g["task_answers"] = score["chrf"], score["n"], score["answers"]
        out["general"] = g
    return out


def _eval_config(train_cfg):
    """The training config without packing (held-apart rows are already whole stream rows)."""
    from dataclasses import replace

    return replace(train_cfg, packing=False, group_by_length=False)


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def render_report(name: str, method: str, before: dict, after: dict, train: dict) -> str:
    """Markdown: regional perplexity per group, fertility, general loss/perplexity and task score,
    before and after."""
    lines = [f"# {name}: continued pre-training ({method})", ""]
    if "regional" in after:
        lines += ["## Held-apart regional text", "",
                  "| group | tokens | loss before | loss after | perplexity/token before | after | "
                  "bits/char before | after | fertility |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for group, a in after["regional"].items():
            b = before.get("regional", {}).get(group, {})
            lines.append(f"| {group} | {a['tokens']} | {_f(b.get('loss'))} | {_f(a['loss'])} | "
                         f"{_f(b.get('perplexity'), 2)} | {_f(a['perplexity'], 2)} | "
                         f"{_f(b.get('bits_per_char'))} | {_f(a['bits_per_char'])} | {_f(a['fertility'], 3)} |")
        lines += ["", "Perplexity per token is not comparable across tokenizers (a vocabulary extension makes "
                      "tokens longer); bits per character is."]
        fert = after["fertility"]
        lines += ["", f"Fertility (tokens per word) of this run's tokenizer: {_f(fert['train'])} on the "
                      f"training text, {_f(fert['test'])} on the held-apart text.", ""]
    if "general" in after:
        b, a = before.get("general", {}), after["general"]
        lines += ["## General ability (held-apart instructions): what the adaptation cost", "",
                  "| | loss | perplexity | KL to before | task chrF |", "|---|---|---|---|---|",
                  f"| before | {_f(b.get('loss'))} | {_f(b.get('perplexity'), 2)} | 0 | {_f(b.get('task_chrf'), 1)} |",
                  f"| after | {_f(a.get('loss'))} | {_f(a.get('perplexity'), 2)} | {_f(a.get('kl_to_before'), 4)} | "
                  f"{_f(a.get('task_chrf'), 1)} |",
                  "", "KL to before: mean KL(untrained || trained) per response token of the held-apart "
                      "instructions, in nats (how far the general distribution moved).",
                  f"Task score: greedy answers to {a.get('task_n', 0)} held-apart instructions, corpus "
                  "chrF against the references.", ""]
    lines += [f"Training: {train['steps']} steps, final train loss {_f(train.get('train_loss'))}, "
              f"{train['wall_time_s']:.0f} s.", ""]
    return "\n".join(lines)
