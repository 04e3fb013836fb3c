"""Output post-processing at generation time: blocklist/regex filters, a classifier or judge hook,
and best-of-n re-ranking by a reward function.

A *reward function* is any callable ``(prompts, completions) -> scores`` (lists of equal length,
higher is better), e.g. a reward model's scorer; a *judge* is a callable of the same shape whose
scores are kept when ``>= judge_threshold`` (a bool counts as 1/0). Built-in rewards live in
``REWARDS`` (name -> factory taking ``(model, tokenizer)``), so a YAML config (the server's
``output_filters``) can name one.

For each prompt, :func:`generate_filtered` samples ``best_of`` candidates, drops those the
blocklist, the language classifier or the judge rejects, and returns the one the reward ranks
first (the first surviving one without a reward). When every candidate is rejected the answer is
``fallback`` with ``finish_reason == "content_filter"``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from acculturate.config_loading import is_int
from acculturate.decode.generate import Completion, GenerationConfig, encode_prompts, generate

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
FILTERED = "content_filter"


@dataclass
class OutputFilterConfig:
    """What is done to a model's answers before they are returned (per region in the server)."""

    blocklist: tuple[str, ...] = ()
    """Blocklists (shipped region names such as 'indonesia', or YAML files); empty: none."""
    patterns: tuple[str, ...] = ()
    """Extra regular expressions an answer must not match."""
    languages: tuple[str, ...] = ()
    """The built-in classifier: answers must be detected (py3langid) as one of these ISO codes; empty: off."""
    best_of: int = 1
    """Candidates generated per answer; > 1 re-ranks them by ``reward``."""
    reward: str | None = None
    """A name in ``REWARDS`` (e.g. 'mean_logprob') for best-of-n; the Python API also takes any callable."""
    temperature: float = 0.8
    """Sampling temperature of the candidates when ``best_of`` > 1 and the request itself is greedy
    (greedy candidates would all be the same)."""
    judge_threshold: float = 0.5
    """A judge's score must be at least this for the answer to be kept."""
    fallback: str = "I'm sorry, I can't answer that."
    """What is returned when every candidate is rejected."""
    stream_holdback: int | None = 64
    """Streaming in the server: characters of an answer held back while it is written, so a blocked
    phrase up to this long is caught before any of it is sent (blocklist/patterns only, with
    ``best_of`` 1 and no ``languages``: those decide on the whole answer, which then arrives as one
    piece). None: always send a filtered answer as one piece at the end."""

    def __post_init__(self):
        self.blocklist, self.patterns, self.languages = tuple(self.blocklist), tuple(self.patterns), tuple(self.languages)
        if isinstance(self.best_of, bool) or not isinstance(self.best_of, int) or self.best_of < 1:
            raise ValueError(f"best_of: expected an integer >= 1, got {self.best_of!r}")
        if self.reward is not None and self.reward not in REWARDS:
            raise ValueError(f"reward: expected one of {sorted(REWARDS)}, got {self.reward!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature!r}")
        if self.stream_holdback is not None and (not is_int(self.stream_holdback) or self.stream_holdback < 0):
            raise ValueError(f"stream_holdback: expected None or an integer >= 0, got {self.stream_holdback!r}")
        if self.languages:
            from acculturate.data.langid import LangIdConfig

            LangIdConfig(languages=self.languages)  # unknown codes fail here, with the known ones listed
        self._blocklist = None

    @property
    def streams_incrementally(self) -> bool:
        """Whether a streamed answer can be sent while it is written (see ``stream_holdback``)."""
        return self.stream_holdback is not None and self.best_of == 1 and not self.languages

    @property
    def active(self) -> bool:
        return bool(self.blocklist or self.patterns or self.languages or self.best_of > 1)

    def compiled_blocklist(self):
        if self._blocklist is None:
            from acculturate.data.filters import Blocklist, load_blocklist

            self._blocklist = (load_blocklist(list(self.blocklist), extra_patterns=list(self.patterns))
                               if self.blocklist else Blocklist(patterns=list(self.patterns)))
        return self._blocklist


def mean_logprob_reward(model, tokenizer) -> RewardFn:
    """The model's mean log-probability per completion token: sample-and-rank by the model's own
    likelihood (Adiwardana et al., 2020, "Towards a Human-like Open-Domain Chatbot")."""

    def reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        scores = []
        device = next(model.parameters()).device
        for prompt, completion in zip(prompts, completions):
            p_ids = encode_prompts(tokenizer, [prompt])[0]
            c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
            if not c_ids:
                scores.append(float("-inf"))
                continue
            ids = torch.tensor([p_ids + c_ids], device=device)                    # (1, P + C)
            with torch.inference_mode():
                logits = model(input_ids=ids).logits[0, len(p_ids) - 1:-1].float()  # (C, V)
            logp = torch.log_softmax(logits, -1).gather(-1, ids[0, len(p_ids):, None])  # (C, 1)
            scores.append(float(logp.mean()))
        return scores

    return reward


# Reward functions a config can name: name -> factory(model, tokenizer) -> RewardFn.
REWARDS: dict[str, Callable[..., RewardFn]] = {"mean_logprob": mean_logprob_reward}


def rejection(prompt: str, text: str, config: OutputFilterConfig) -> str | None:
    """Why an answer is rejected by the blocklist or the language classifier, or None."""
    matches = config.compiled_blocklist().find(text)
    if matches:
        return f"blocklist ({', '.join(sorted(set(matches)))})"
    if config.languages and text.strip():
        from acculturate.data.langid import detect_language

        code, _ = detect_language(text)
        if code not in config.languages:
            return f"language {code} not in {list(config.languages)}"
    return None


def select(prompts: Sequence[str], candidates: Sequence[Sequence[Completion]], config: OutputFilterConfig,
           reward_fn: RewardFn | None = None, judge: RewardFn | None = None,
           details: list[dict] | None = None) -> list[Completion]:
    """One answer per prompt from its candidates: filter, judge, then rank by ``reward_fn``.

    Args:
        prompts: the rendered prompts.
        candidates: for each prompt, its candidate completions.
        config: the filters.
        reward_fn, judge: callables ``(prompts, texts) -> scores`` (see the module docstring).
        details: when given, gets one dict per prompt: each candidate's rejection reason (None:
            kept), the reward and judge scores, and the index of the chosen candidate.

    Returns:
        The chosen Completion per prompt; a prompt whose candidates were all rejected gets
        ``config.fallback`` with ``finish_reason "content_filter"``.
    """
    out = []
    for prompt, options in zip(prompts, candidates):
        reasons = [rejection(prompt, c.text, config) for c in options]
        alive = [i for i, r in enumerate(reasons) if r is None]
        judged = None
        if judge is not None and alive:
            judged = [float(s) for s in judge([prompt] * len(alive), [options[i].text for i in alive])]
            for i, score in zip(list(alive), judged):
                if score < config.judge_threshold:
                    reasons[i] = f"judge ({score:.2f} < {config.judge_threshold})"
            alive = [i for i in alive if reasons[i] is None]
        scores = None
        if reward_fn is not None and len(alive) > 1:
            scores = [float(s) for s in reward_fn([prompt] * len(alive), [options[i].text for i in alive])]
            best = alive[max(range(len(alive)), key=lambda k: (scores[k], -k))]
        else:
            best = alive[0] if alive else None
        if details is not None:
            details.append({"rejected": reasons, "scores": scores, "judge": judged, "chosen": best})
        if best is None:
            chosen = Completion(text=config.fallback, token_ids=[], finish_reason=FILTERED,
                                prompt_tokens=options[0].prompt_tokens if options else 0,
                                completion_tokens=sum(c.completion_tokens for c in options))
        else:
            chosen = replace(options[best], completion_tokens=sum(c.completion_tokens for c in options))
        out.append(chosen)
    return out


def candidate_config(config: GenerationConfig, filters: OutputFilterConfig) -> GenerationConfig:
    """The decoding of candidates: sampled at ``filters.temperature`` when best-of-n meets a greedy request."""
    if filters.best_of > 1 and config.greedy:
        return replace(config, temperature=filters.temperature)
    return config


def generate_filtered(model, tokenizer, prompts: Sequence[str], config: GenerationConfig | None = None,
                      filters: OutputFilterConfig | None = None, reward_fn: RewardFn | None = None,
                      judge: RewardFn | None = None, progress: bool = False,
                      details: list[dict] | None = None) -> list[Completion]:
    """:func:`generate` with output filters and best-of-n (see the module docstring).

    Args:
        reward_fn: ranks the ``best_of`` candidates; default the one ``filters.reward`` names
            (none: the first surviving candidate is returned).
        judge: an optional classifier/judge hook.
        details: as for :func:`select`.

    Returns:
        One Completion per prompt (``completion_tokens`` counts every candidate generated).
    """
    config = config or GenerationConfig()
    filters = filters or OutputFilterConfig()
    if reward_fn is None and filters.reward is not None:
        reward_fn = REWARDS[filters.reward](model, tokenizer)
    n = filters.best_of
    expanded = [p for p in prompts for _ in range(n)]
    completions = generate(model, tokenizer, expanded, candidate_config(config, filters), progress=progress)
    grouped = [completions[i * n:(i + 1) * n] for i in range(len(prompts))]
    return select(prompts, grouped, filters, reward_fn, judge, details)


def output_filter_config(filters: str | None = None, blocklist: Sequence[str] = (), best_of: int = 1,
                         reward: str | None = None) -> OutputFilterConfig | None:
    """An :class:`OutputFilterConfig` from a YAML of its fields and/or the `acculturate generate`
    flags (``--blocklist`` lists are added to the YAML's; ``--best-of`` > 1 ranks by ``reward``, else
    the YAML's, else 'mean_logprob'). None when nothing asks for filtering."""
    from acculturate.config_loading import from_dict, load_yaml, to_dict

    if not (filters or blocklist or best_of > 1):
        return None
    data = to_dict(load_yaml(OutputFilterConfig, filters)) if filters else {}
    if blocklist:
        data["blocklist"] = list(data.get("blocklist", [])) + list(blocklist)
    if best_of > 1:
        data.update(best_of=best_of, reward=reward or data.get("reward") or "mean_logprob")
    return from_dict(OutputFilterConfig, data, "output filters")
