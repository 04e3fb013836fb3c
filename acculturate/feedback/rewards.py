"""Rewards as plain callables: ``reward_fn(prompts, completions) -> one float per completion``.

Any Python function of that shape is a reward. This module builds the common ones:

- :func:`feedback_rewards` / :func:`lookup_reward`: what users said in the feedback store
  (+1 correct_cultural, -1 inappropriate, adjustment: -0.5 the original and +0.5 the user's rewrite;
  the values live in :data:`acculturate.feedback.store.FEEDBACK_KINDS`);
- :func:`rules_reward`: regex, keyword and length rules from a config;
- :func:`http_reward`: a remote scorer, ``POST {"prompts", "completions"} -> {"rewards"}``;
- :func:`import_reward`: ``"package.module:function"`` or ``"path/to/file.py:function"``;
- a trained reward model (:mod:`acculturate.feedback.reward_model`).

:func:`reward_function` builds any of them from a config spec (:data:`REWARD_KINDS`). A judge
model's rubric score is a reward too, but the judge lives in ``evaluate``, to the right of
``feedback`` in the pipeline, so its adapter is ``acculturate.jobs.rewards.judge_reward`` (and
``jobs.rewards.build_reward`` is this factory plus the ``judge`` kind).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from acculturate.config_loading import ConfigError, from_dict
from acculturate.feedback.store import FeedbackStore, reward_rows

RewardFn = Callable[[list[str], list[str]], list[float]]


class RewardError(ValueError):
    """A reward function could not give one finite number per completion (the message says why)."""


def check_rewards(rewards: Any, n: int, source: str) -> list[float]:
    """``rewards`` as a list of ``n`` floats, or :class:`RewardError` naming ``source``."""
    if hasattr(rewards, "tolist"):
        rewards = rewards.tolist()
    if not isinstance(rewards, (list, tuple)):
        raise RewardError(f"{source}: expected a list of {n} numbers, got {type(rewards).__name__}")
    if len(rewards) != n:
        raise RewardError(f"{source}: returned {len(rewards)} rewards for {n} completions")
    out = []
    for i, r in enumerate(rewards):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r != r or r in (float("inf"), float("-inf")):
            raise RewardError(f"{source}: reward {i} is {r!r}; expected a finite number")
        out.append(float(r))
    return out


_CHATML_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.DOTALL)
_ALPACA_INSTRUCTION = re.compile(r"### Instruction:\n(.*?)\n\n### (?:Input:\n(.*?)\n\n### )?Response:", re.DOTALL)


def last_user_turn(prompt: str) -> str:
    """The last user message of a rendered prompt (ChatML as SmolLM2's template writes it, or the
    Alpaca template's instruction and input); the prompt itself when neither is found."""
    turns = _CHATML_USER.findall(prompt)
    if turns:
        return turns[-1].strip()
    m = _ALPACA_INSTRUCTION.search(prompt)
    if m:
        return (m.group(1) + ("\n\n" + m.group(2) if m.group(2) else "")).strip()
    return prompt.strip()


# --- the feedback table -----------------------------------------------------------------------------


def feedback_rewards(db: str | os.PathLike, since_id: int = 0) -> list[dict]:
    """Reward-labelled rows from a feedback store: ``{"prompt", "completion", "reward", "kind",
    "source", ...}``, one per judgement plus one for each adjustment's rewrite (the store's export,
    :func:`acculturate.feedback.store.reward_rows`), for feedback with id > ``since_id``."""
    store = FeedbackStore(db)
    try:
        return list(reward_rows(store.feedback(since_id)))
    finally:
        store.close()


def lookup_reward(rows: Sequence[dict], default: float | None = None) -> RewardFn:
    """A reward that looks (prompt, completion) up in reward-labelled rows (several judgements of
    one pair are averaged); a pair nobody judged gets ``default``, or :class:`RewardError` if None.

    This replays what users said; to score new completions, train a reward model on the same rows.
    """
    sums: dict[tuple[str, str], list[float]] = {}
    for i, row in enumerate(rows):
        try:
            key, value = (row["prompt"], row["completion"]), float(row["reward"])
        except (KeyError, TypeError, ValueError):
            raise RewardError(f"reward row {i}: expected 'prompt', 'completion' and a numeric 'reward'") from None
        sums.setdefault(key, []).append(value)
    table = {k: sum(v) / len(v) for k, v in sums.items()}

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        out = []
        for i, key in enumerate(zip(prompts, completions)):
            if key in table:
                out.append(table[key])
            elif default is not None:
                out.append(float(default))
            else:
                raise RewardError(f"completion {i} was never judged by a user (no feedback row for its "
                                  f"prompt and text); pass default= to score unseen completions")
        return out

    return reward


# --- rules --------------------------------------------------------------------------------------------


@dataclass
class RewardRule:
    """One rule on a completion's text; exactly one of ``regex``, ``keywords`` or a word range."""

    regex: str | None = None
    """Matches when ``re.search(regex, completion)`` finds something."""
    keywords: list[str] | None = None
    """Matches when any keyword occurs as a whole word or phrase."""
    min_words: int | None = None
    """With ``max_words``: matches when the completion's word count is within [min_words, max_words]."""
    max_words: int | None = None
    """See ``min_words``; either bound may be left out."""
    reward: float = 1.0
    """Added when the rule matches."""
    otherwise: float = 0.0
    """Added when it does not."""
    per_match: bool = False
    """regex/keywords: add ``reward`` once per match instead of once (``otherwise`` when none)."""
    ignore_case: bool = True
    """regex/keywords: match regardless of case."""

    def __post_init__(self):
        kinds = [self.regex is not None, self.keywords is not None,
                 self.min_words is not None or self.max_words is not None]
        if sum(kinds) != 1:
            raise ValueError("a rule needs exactly one of regex, keywords or min_words/max_words, got "
                             f"{sum(kinds)}")
        flags = re.IGNORECASE if self.ignore_case else 0
        if self.regex is not None:
            try:
                self._pattern = re.compile(self.regex, flags)
            except re.error as e:
                raise ValueError(f"regex: {self.regex!r} is not a valid regular expression ({e})") from None
        elif self.keywords is not None:
            if not self.keywords or not all(isinstance(k, str) and k.strip() for k in self.keywords):
                raise ValueError(f"keywords: expected a non-empty list of non-empty strings, got {self.keywords!r}")
            words = "|".join(re.escape(k.strip()) for k in sorted(self.keywords, key=len, reverse=True))
            self._pattern = re.compile(rf"(?<!\w)(?:{words})(?!\w)", flags)
        else:
            for name in ("min_words", "max_words"):
                value = getattr(self, name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                    raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
            if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
                raise ValueError(f"min_words ({self.min_words}) is above max_words ({self.max_words})")
            self._pattern = None
            if self.per_match:
                raise ValueError("per_match applies to regex and keywords rules only")

    def score(self, completion: str) -> float:
        if self._pattern is None:
            words = len(completion.split())
            ok = (self.min_words is None or words >= self.min_words) and \
                 (self.max_words is None or words <= self.max_words)
            return self.reward if ok else self.otherwise
        if self.per_match:
            count = len(self._pattern.findall(completion))
            return count * self.reward if count else self.otherwise
        return self.reward if self._pattern.search(completion) else self.otherwise


@dataclass
class RulesConfig:
    """``{kind: rules, rules: [...], base: 0}``: the reward is ``base`` plus each rule's part."""

    rules: list[RewardRule] = field(default_factory=list)
    """The rules, applied to every completion (see :class:`RewardRule`)."""
    base: float = 0.0
    """Added to every completion's reward."""

    def __post_init__(self):
        if not self.rules:
            raise ValueError("rules: expected at least one rule")


def rules_reward(config: RulesConfig | dict) -> RewardFn:
    """A reward that sums rule scores on each completion's text (the prompt is not read)."""
    if isinstance(config, dict):
        config = from_dict(RulesConfig, config, "reward")

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        return [config.base + sum(rule.score(c) for rule in config.rules) for c in completions]

    return reward


# --- a remote scorer ---------------------------------------------------------------------------------


@dataclass
class HttpRewardConfig:
    """``{kind: http, url: ...}``: a server that scores ``{"prompts", "completions"}``."""

    url: str
    """Where to POST ``{"prompts": [...], "completions": [...]}``; it answers ``{"rewards": [...]}``."""
    timeout: float = 60.0
    """Seconds to wait for one answer."""
    headers: dict | None = None
    """Extra HTTP headers (e.g. an Authorization token)."""
    batch_size: int | None = None
    """Send at most this many completions per request (None: all in one)."""
    retries: int = 2
    """Retries after a connection error or a 5xx answer (with 0.5 s, 1 s, ... back-off)."""

    def __post_init__(self):
        if not isinstance(self.url, str) or not re.match(r"^https?://", self.url):
            raise ValueError(f"url: expected an http:// or https:// URL, got {self.url!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size: expected None or an integer >= 1, got {self.batch_size!r}")
        if self.retries < 0 or self.timeout <= 0:
            raise ValueError(f"retries must be >= 0 and timeout > 0, got {self.retries!r}, {self.timeout!r}")


def http_reward(url: str | HttpRewardConfig, **options) -> RewardFn:
    """A reward computed by a remote scorer (see :class:`HttpRewardConfig` for ``options``).

    Raises (when called):
        RewardError: the server could not be reached, answered an HTTP error, or its JSON is not
            ``{"rewards": [one number per completion]}``; the message names the URL.
    """
    import httpx

    config = url if isinstance(url, HttpRewardConfig) else HttpRewardConfig(url=url, **options)

    def post(prompts: list[str], completions: list[str]) -> list[float]:
        payload = {"prompts": list(prompts), "completions": list(completions)}
        for attempt in range(config.retries + 1):
            try:
                answer = httpx.post(config.url, json=payload, timeout=config.timeout, headers=config.headers)
            except httpx.TransportError as e:
                if attempt == config.retries:
                    raise RewardError(f"reward server {config.url}: {type(e).__name__}: {e}") from e
            else:
                if answer.status_code < 500 or attempt == config.retries:
                    break
            time.sleep(0.5 * 2 ** attempt)
        if answer.status_code != 200:
            raise RewardError(f"reward server {config.url}: HTTP {answer.status_code}: {answer.text[:200]}")
        try:
            body = answer.json()
        except ValueError:
            raise RewardError(f"reward server {config.url}: the answer is not JSON: {answer.text[:200]!r}") from None
        if not isinstance(body, dict) or "rewards" not in body:
            raise RewardError(f"reward server {config.url}: expected a JSON object with 'rewards', got {str(body)[:200]}")
        return check_rewards(body["rewards"], len(completions), f"reward server {config.url}")

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise RewardError(f"got {len(prompts)} prompts for {len(completions)} completions")
        size = config.batch_size or max(len(completions), 1)
        out: list[float] = []
        for start in range(0, len(completions), size):
            out += post(prompts[start:start + size], completions[start:start + size])
        return out

    return reward


# --- Python functions -----------------------------------------------------------------------------------


def import_reward(target: str, base_dir: Path | None = None) -> Callable:
    """The function named by ``"package.module:function"`` or ``"path/to/file.py:function"`` (a
    relative file is looked up beside the config, ``base_dir``, then in the working directory)."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"reward {target!r}: expected 'package.module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
            path = base_dir / path
        if not path.is_file():
            raise ConfigError(f"reward {target!r}: file {path} not found")
        spec = importlib.util.spec_from_file_location(f"acculturate_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(f"reward {target!r}: cannot import {module_name}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward {target!r}: {module_name} has no function {attr!r}")
    return fn


@dataclass
class PythonRewardConfig:
    """``{kind: python, function: "pkg.mod:fn", args: {...}}``: ``fn`` is the reward, or, with
    ``args``, a factory called as ``fn(**args)`` that returns it."""

    function: str
    """``"package.module:function"`` or ``"path/to/file.py:function"``."""
    args: dict | None = None
    """Keyword arguments of a factory (None: ``function`` is the reward itself)."""


@dataclass
class RewardModelSpec:
    """``{kind: reward_model, path: runs/<name>/reward_model}``: a trained reward model."""

    path: str
    """The directory ``acculturate reward-model train`` wrote (``reward_model.json`` inside)."""
    batch_size: int = 8
    """Completions scored per forward pass."""


def _build_rules(spec: dict, **_) -> RewardFn:
    return rules_reward(from_dict(RulesConfig, spec, "reward"))


def _build_http(spec: dict, **_) -> RewardFn:
    return http_reward(from_dict(HttpRewardConfig, spec, "reward"))


def _build_python(spec: dict, base_dir: Path | None = None, **_) -> RewardFn:
    config = from_dict(PythonRewardConfig, spec, "reward")
    fn = import_reward(config.function, base_dir)
    return fn(**config.args) if config.args is not None else fn


def _build_reward_model(spec: dict, model=None, tokenizer=None, base_dir: Path | None = None, **_) -> RewardFn:
    from acculturate.feedback.reward_model import load_reward_model

    config = from_dict(RewardModelSpec, spec, "reward")
    path = Path(config.path).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    return load_reward_model(path, model=model, tokenizer=tokenizer, batch_size=config.batch_size)


def _model_reward(name: str) -> Callable[..., RewardFn]:
    """The builder of ``{kind: NAME}`` for a reward of ``decode.postprocess.REWARDS`` (scored by the
    loaded model itself, e.g. ``mean_logprob``)."""
    def build(spec: dict, model=None, tokenizer=None, **_) -> RewardFn:
        from acculturate.decode.postprocess import REWARDS

        if spec:
            raise ConfigError(f"reward.{next(iter(spec))}: unknown field (kind {name} takes none)")
        if model is None or tokenizer is None:
            raise ConfigError(f"reward.kind {name}: needs a loaded model to score with")
        return REWARDS[name](model, tokenizer)
    return build


# kind -> builder(spec without "kind", model=, tokenizer=, base_dir=) -> RewardFn. The rewards a
# config can name; jobs.rewards.REWARD_KINDS adds ``judge`` (a stage to the right of feedback).
REWARD_KINDS: dict[str, Callable[..., RewardFn]] = {
    "rules": _build_rules,
    "http": _build_http,
    "python": _build_python,
    "reward_model": _build_reward_model,
    "mean_logprob": _model_reward("mean_logprob"),
}


def reward_function(spec: RewardFn | str | dict, *, model=None, tokenizer=None,
                    base_dir: Path | None = None, kinds: dict[str, Callable[..., RewardFn]] | None = None) -> RewardFn:
    """Build a reward from a config spec.

    Args:
        spec: a callable (returned as is); ``"module:function"`` / ``"file.py:function"``; or a
            mapping with ``kind`` (one of :data:`REWARD_KINDS`) and that kind's fields, e.g.
            ``{kind: rules, rules: [{keywords: [please, thank you], reward: 1}]}``,
            ``{kind: http, url: "http://127.0.0.1:9000/score"}``,
            ``{kind: reward_model, path: runs/rm/reward_model}``.
        model, tokenizer: a loaded base model a reward model may share (its LoRA is added to the
            model's adapter registry; no second copy of the base weights).
        base_dir: where relative paths in the spec are looked up first (the config's folder).
        kinds: the catalogue of kinds (default :data:`REWARD_KINDS`).
    Returns:
        The reward function; its results are checked (one finite float per completion).
    Raises:
        ConfigError: an unknown kind or a bad field, naming it (``reward.url: ...``).
    """
    if callable(spec):
        fn, name = spec, getattr(spec, "__name__", "reward")
    elif isinstance(spec, str):
        fn, name = import_reward(spec, base_dir), spec
    elif isinstance(spec, dict):
        kinds = REWARD_KINDS if kinds is None else kinds
        kind = spec.get("kind")
        if kind not in kinds:
            raise ConfigError(f"reward.kind: expected one of {sorted(kinds)}, got {kind!r}")
        rest = {k: v for k, v in spec.items() if k != "kind"}
        fn = kinds[kind](rest, model=model, tokenizer=tokenizer, base_dir=base_dir)
        name = f"reward {kind}"
    else:
        raise ConfigError(f"reward: expected a mapping with 'kind', 'module:function' or a callable, "
                          f"got {type(spec).__name__}")
    return checked(fn, name)


def checked(fn: RewardFn, name: str = "reward") -> RewardFn:
    """``fn`` with its output checked by :func:`check_rewards`."""
    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        return check_rewards(fn(list(prompts), list(completions)), len(completions), name)

    reward.__name__ = getattr(fn, "__name__", "reward")
    reward.__wrapped__ = fn
    return reward
