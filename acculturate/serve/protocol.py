"""The OpenAI wire format: parse and check request bodies, build responses and stream chunks.

Checked by hand rather than with a schema library so every error names the parameter (``param``)
exactly as the OpenAI API does. Every field is checked before any generation against what the
decoder and both feedback stores (SQLite, PostgreSQL) accept: types, ranges, counts, lengths, valid
Unicode (no lone surrogate), no NUL character, nesting depth (:func:`check_json`), and the rows a
request would decode (prompts x n) against the batch size. Fields a client may send that do not change what we generate
(``user``, ``stream_options``, ``store``, ``service_tier`` ...) are accepted and ignored; fields
that would change it and that we do not implement (logprobs, tools, logit_bias, penalties, image
content ...) are refused with a 400 naming them, rather than silently ignored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from acculturate.decode import Completion, GenerationConfig
from acculturate.feedback.store import MAX_CHARS, MAX_INDEX, FEEDBACK_KINDS
from acculturate.serve.errors import invalid

# OpenAI's defaults: temperature 1, top_p 1, n 1; /v1/completions answers 16 tokens unless asked.
LEGACY_DEFAULT_MAX_TOKENS = 16
MAX_STOP_STRINGS = 4
MAX_DEPTH = 32                      # JSON nesting; a chat body needs 4 (body, messages, message, part)
MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512   # OpenAI's metadata bounds
MAX_SEED = 2 ** 63 - 1
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Parameters that would change the output and that we do not implement: name -> the value(s) meaning "off".
_UNSUPPORTED = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "tools": (None, []),
    "tool_choice": (None, "none", "auto"), "functions": (None, []), "function_call": (None, "none", "auto"),
    "echo": (None, False), "suffix": (None, ""), "best_of": (None, 1), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,),
}


@dataclass
class Sampling:
    """The sampling settings of one request (stored with every completion)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_tokens, temperature=self.temperature,
                                top_p=self.top_p, stop=self.stop, seed=self.seed)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class ParsedRequest:
    """A checked chat or text completion request."""

    model: str
    sampling: Sampling
    stream: bool
    include_usage: bool
    messages: list[dict] | None = None  # chat: [{"role", "content": str}]
    prompts: list[str] | None = None    # completions: raw prompt strings
    region: str | None = None           # metadata.region, stored with the completion


@dataclass
class Limits:
    """Server-side bounds a request is checked against."""

    max_tokens_cap: int = 1024
    default_max_tokens: int = 256
    max_n: int = 8
    max_prompts: int = 16
    max_rows: int = 16
    """Most rows (prompts x n) one request may decode: the server's max_batch_size."""
    max_chars: int = 200_000
    """Longest message content or prompt (characters)."""
    max_messages: int = 256
    max_stop_chars: int = 256


def check_json(body: Any) -> None:
    """Refuse a parsed body nested deeper than :data:`MAX_DEPTH` or holding a string (or key) that
    is not valid Unicode or contains NUL; raises a 400 naming where. Iterative: a 50k-deep body
    cannot exhaust the stack here."""
    stack = [(body, "body", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise invalid(f"{where}: the JSON body is nested more than {MAX_DEPTH} levels deep",
                              code="invalid_json")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, f"{where} key {key[:40]!r}")
                stack.append((item, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]", depth + 1))


def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise invalid(f"{where}: contains a NUL character (\\u0000), which is not accepted", param=_param(where))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"{where}: is not valid Unicode (a lone surrogate such as \\ud800)",
                      param=_param(where)) from None


def _param(where: str) -> str | None:
    name = where.removeprefix("body").lstrip(".")
    return name.split(" ", 1)[0] or None


def _string(value: Any, name: str, max_chars: int, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise invalid(f"{name} must be a {'non-empty ' if required else ''}string, got {value!r:.80}", param=name)
    if len(value) > max_chars:
        raise invalid(f"{name} is {len(value)} characters long; at most {max_chars}", param=name,
                      code="string_above_max_length")
    return value


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise invalid(f"{name} must be a number between {lo} and {hi}, got {value!r}", param=name)
    return float(value)


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise invalid(f"{name} must be an integer {bound}, got {value!r:.60}", param=name)
    return value


def _sampling(body: dict, limits: Limits, default_max_tokens: int, chat: bool) -> Sampling:
    for name, off in _UNSUPPORTED.items():
        if name in body and body[name] not in off:
            raise invalid(f"{name} is not supported by this server", param=name, code="unsupported_parameter")
    max_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, max_name, default_max_tokens, 1)
    if max_tokens > limits.max_tokens_cap:
        raise invalid(f"{max_name} is {max_tokens}, above this server's cap of {limits.max_tokens_cap}",
                      param=max_name, code="max_tokens_exceeded")
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise invalid(f"stop must be a string or a list of strings, got {stop!r:.100}", param="stop")
    if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
        raise invalid(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings", param="stop")
    if any(len(s) > limits.max_stop_chars for s in stop):
        raise invalid(f"each stop string may be at most {limits.max_stop_chars} characters", param="stop")
    return Sampling(max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                    top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1e-6,  # top_p 0 = most likely token
                    n=_integer(body, "n", 1, 1, limits.max_n), stop=stop,
                    seed=_integer(body, "seed", None, -(2 ** 63), MAX_SEED))


def _common(body: Any, limits: Limits, default_max_tokens: int, chat: bool) -> dict:
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("you must provide a model parameter (a string)", param="model")
    _string(model, "model", MAX_CHARS["model"])
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise invalid(f"stream must be a boolean, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid("stream_options must be an object", param="stream_options")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise invalid("metadata must be an object of strings", param="metadata")
    if len(metadata) > MAX_METADATA_KEYS or any(len(k) > MAX_METADATA_KEY_CHARS or len(v) > MAX_METADATA_VALUE_CHARS
                                                for k, v in metadata.items()):
        raise invalid(f"metadata takes at most {MAX_METADATA_KEYS} keys of up to {MAX_METADATA_KEY_CHARS} "
                      f"characters, values of up to {MAX_METADATA_VALUE_CHARS}", param="metadata")
    _string(metadata.get("region"), "metadata.region", MAX_CHARS["region"])
    return {"model": model, "stream": stream, "include_usage": bool(options.get("include_usage")),
            "sampling": _sampling(body, limits, default_max_tokens, chat),
            "region": metadata.get("region") or None}


def _content(message: dict, i: int, limits: Limits) -> str:
    text = _raw_content(message, i)
    if len(text) > limits.max_chars:
        raise invalid(f"messages[{i}].content is {len(text)} characters long; at most {limits.max_chars}",
                      param=f"messages[{i}].content", code="string_above_max_length")
    return text


def _raw_content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"messages[{i}].content[{j}]: only text parts are supported",
                              param=f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise invalid(f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content")


def parse_chat(body: Any, limits: Limits) -> ParsedRequest:
    """Check a ``POST /v1/chat/completions`` body. Raises :class:`APIError` (400) naming the param."""
    common = _common(body, limits, limits.default_max_tokens, chat=True)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list of {role, content} objects", param="messages")
    if len(messages) > limits.max_messages:
        raise invalid(f"at most {limits.max_messages} messages per request, got {len(messages)}", param="messages")
    if common["sampling"].n > limits.max_rows:
        raise invalid(f"n is {common['sampling'].n}; this server decodes at most {limits.max_rows} rows per request",
                      param="n")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise invalid(f"messages[{i}].role must be one of {sorted(ROLES)}, got "
                          f"{m.get('role') if isinstance(m, dict) else m!r}", param=f"messages[{i}].role")
        checked.append({"role": ROLES[m["role"]], "content": _content(m, i, limits)})
    if checked[-1]["role"] == "assistant":
        raise invalid("the last message must not be the assistant's: there is nothing to answer",
                      param="messages")
    return ParsedRequest(messages=checked, **common)


def parse_completion(body: Any, limits: Limits) -> ParsedRequest:
    """Check a ``POST /v1/completions`` body. Raises :class:`APIError` (400) naming the param."""
    common = _common(body, limits, LEGACY_DEFAULT_MAX_TOKENS, chat=False)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise invalid("prompt must be a non-empty string or a list of them (token arrays are not supported)",
                      param="prompt")
    if len(prompts) > limits.max_prompts:
        raise invalid(f"at most {limits.max_prompts} prompts per request, got {len(prompts)}", param="prompt")
    for i, p in enumerate(prompts):
        if len(p) > limits.max_chars:
            raise invalid(f"prompt[{i}] is {len(p)} characters long; at most {limits.max_chars}", param="prompt",
                          code="string_above_max_length")
    rows = len(prompts) * common["sampling"].n
    if rows > limits.max_rows:
        raise invalid(f"{len(prompts)} prompts x n={common['sampling'].n} is {rows} rows; this server decodes at "
                      f"most {limits.max_rows} per request: send fewer prompts or a smaller n", param="n")
    return ParsedRequest(prompts=prompts, **common)


@dataclass
class FeedbackRequest:
    """A checked ``POST /v1/feedback`` body."""

    completion_id: str
    kind: str
    choice_index: int = 0
    corrected_text: str | None = None
    region: str | None = None
    comment: str | None = None


def parse_feedback(body: Any, limits: Limits) -> FeedbackRequest:
    """Check a ``POST /v1/feedback`` body against what both stores hold. Raises a 400 naming the param."""
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {type(body).__name__}")
    completion_id = _string(body.get("completion_id"), "completion_id", MAX_CHARS["completion_id"], required=True)
    kind = body.get("kind")
    if kind is None:
        raise invalid("kind is required", param="kind")
    if not isinstance(kind, str) or kind not in FEEDBACK_KINDS:
        raise invalid(f"kind must be one of {sorted(FEEDBACK_KINDS)}, got {kind!r:.60}", param="kind")
    # A completion has at most max_prompts x max_n choices; and an index must fit both stores' INTEGER.
    choice_index = _integer(body, "choice_index", 0, 0, min(MAX_INDEX, limits.max_prompts * limits.max_n - 1))
    return FeedbackRequest(
        completion_id=completion_id, kind=kind, choice_index=choice_index,
        corrected_text=_string(body.get("corrected_text"), "corrected_text", limits.max_chars),
        region=_string(body.get("region"), "region", MAX_CHARS["region"]),
        comment=_string(body.get("comment"), "comment", limits.max_chars))


# --- responses -------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def finish_reason(completion: Completion) -> str:
    """OpenAI has "stop" for both the model's end token and a stop string, "length" for the cap,
    "content_filter" for an answer the output filters replaced."""
    if completion.finish_reason in ("length", "content_filter"):
        return completion.finish_reason
    return "stop"


def usage(completions: list[Completion], prompt_tokens: int) -> dict:
    generated = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated,
            "total_tokens": prompt_tokens + generated}


def chat_response(cid: str, model: str, fingerprint: str, completions: list[Completion],
                  prompt_tokens: int) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": finish_reason(c), "logprobs": None}
                        for i, c in enumerate(completions)],
            "usage": usage(completions, prompt_tokens)}


def chat_chunk(cid: str, model: str, fingerprint: str, index: int | None, delta: dict | None = None,
               finish: str | None = None, usage_: dict | None = None) -> dict:
    """One ``chat.completion.chunk``; ``index=None`` gives the final usage-only chunk (no choices)."""
    choices = [] if index is None else [{"index": index, "delta": delta or {}, "finish_reason": finish,
                                         "logprobs": None}]
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "system_fingerprint": fingerprint, "choices": choices}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def text_response(cid: str, model: str, fingerprint: str, completions: list[Completion],
                  prompt_tokens: int) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": i, "text": c.text, "finish_reason": finish_reason(c), "logprobs": None}
                        for i, c in enumerate(completions)],
            "usage": usage(completions, prompt_tokens)}


def text_chunk(cid: str, model: str, fingerprint: str, index: int | None, text: str = "",
               finish: str | None = None, usage_: dict | None = None) -> dict:
    choices = [] if index is None else [{"index": index, "text": text, "finish_reason": finish,
                                         "logprobs": None}]
    chunk = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
             "system_fingerprint": fingerprint, "choices": choices}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk
