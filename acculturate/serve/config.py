"""The server's configuration: one dataclass behind ``acculturate serve``, YAML and the Python API."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from acculturate.feedback.store import DEFAULT_DB
from acculturate.serve.auth import resolve_api_keys

ADMIN_TOKEN_ENV = "ACCULTURATE_ADMIN_TOKEN"


@dataclass
class ServeConfig:
    """How to serve. Defaults: the embedded model on 127.0.0.1:8000, admin closed; the chat API is open
    only while the server listens on a loopback address (see ``api_keys`` and ``insecure``)."""

    model: str | None = None
    """The base model: an embedded name ('smollm2-135m', 'gemma3-270m'), an HF model directory or a GGUF
    file; default (null): the one the ``adapters`` record (they must agree), else smollm2-135m."""
    adapters: dict[str, str] = field(default_factory=dict)
    """Adapters to load at start, name -> adapter directory; a request's ``model`` picks one."""
    host: str = "127.0.0.1"
    """The address to listen on (a non-loopback one needs API keys, or insecure)."""
    port: int = 8000
    """The port to listen on."""
    db: str = DEFAULT_DB
    """Where completions and feedback are stored: a SQLite path or a SQLAlchemy URL (postgresql://...)."""
    device: str | None = None
    """Where the model runs (default: a GPU if present, else the CPU)."""
    dtype: str | None = None
    """Weights dtype (default: bf16 on a GPU that has it, else fp32)."""
    admin_token: str | None = None
    """Bearer token for /admin/*; falls back to $ACCULTURATE_ADMIN_TOKEN. With neither, admin is closed (401)."""
    api_token: str | None = None
    """One more API key (also $ACCULTURATE_API_TOKEN); see ``api_keys``."""
    api_keys: list[str] = field(default_factory=list)
    """Keys every /v1/* route (feedback included) asks for as ``Authorization: Bearer KEY``
    (``acculturate serve --api-key KEY``, repeatable); added to those of ``api_keys_file``,
    $ACCULTURATE_API_KEYS (comma or space separated) and ``api_token``. None at all: the API is open."""
    api_keys_file: str | None = None
    """A file of API keys, one a line (``#`` starts a comment)."""
    insecure: bool = False
    """Allow an open API (no key) on a non-loopback ``host``; without it such a server refuses to start."""
    rate_limit_per_minute: float = 240.0
    """Requests a minute each client (API key, or address when the API is open) may make to /v1/*;
    429 with Retry-After beyond it. 0: no limit."""
    rate_limit_burst: int = 60
    """Requests a client may make at once after a quiet spell (the token bucket's size)."""
    max_message_chars: int = 200_000
    """Longest message content, prompt, corrected text or comment in characters (400 above it)."""
    max_messages: int = 256
    """Most messages in one chat request."""
    max_stop_chars: int = 256
    """Longest stop string in characters."""
    max_tokens_cap: int = 1024
    """Largest max_tokens a request may ask for (400 above it)."""
    default_max_tokens: int = 256
    """max_tokens of a chat request that gives none (/v1/completions defaults to 16, as OpenAI's)."""
    max_n: int = 8
    """Largest n (choices per request)."""
    max_prompts: int = 16
    """Most prompts in one /v1/completions request."""
    max_body_bytes: int = 1_000_000
    """Largest request body (413 above it)."""
    max_batch_size: int = 16
    """Most prompts generated together in one batch."""
    batch_window_ms: float = 10.0
    """How long an idle worker waits for more requests to batch with the first."""
    max_pending: int = 256
    """Most prompts waiting for the worker (429 above it)."""
    cuda_graphs: bool = True
    """On a CUDA GPU, decode Llama-style models on ``max_batch_size`` fixed slots of a static KV cache,
    each step one CUDA-graph replay (acculturate/decode/slots.py); False: the eager batch everywhere."""
    warmup_prompt_tokens: int = 512
    """With ``cuda_graphs`` on a CUDA GPU: before taking requests, run the base model's prefill at every
    padded shape for prompts of up to this many tokens (1, 2, 4... ``max_batch_size`` rows) and capture
    its decoding graphs for a cache of this plus ``default_max_tokens`` columns, so first tokens wait on no
    kernel compilation (the time is in the log and /health ``warmup_s``). Longer prompts still run, and
    compile on first use. 0: no warm-up. Nothing runs on the CPU."""
    switch_interval_ms: float | None = None
    """Python's thread switch interval in the server process (``sys.setswitchinterval``), or None for
    Python's default (5 ms): after each GPU step the decoding worker can wait up to this long for the
    GIL while the event loop streams, longer than a decoding step. Not yet timed on a GPU: set it
    (e.g. 0.5) to try."""
    learn: str | None = None
    """A LearnConfig YAML (acculturate/configs/learn/): serve its current adapter version as its
    ``name`` and open /admin/learn, /admin/versions, /admin/rollback (acculturate/serve/learning.py)."""
    rag_home: str | None = None
    """Where the indexes a request's ``retrieval.index`` names live (default $ACCULTURATE_RAG_HOME or
    ~/.cache/acculturate/rag); clients give names only, never paths."""
    run: str | None = None
    """An ``acculturate adapt`` run folder: serve its regional assistant as model ``<folder name>``
    (base + adapter, the run's index as retrieval index ``index``, its persona as the system message
    of a conversation that has none, retrieval on unless a request sends ``"retrieval": null``)."""
    output_filters: dict = field(default_factory=dict)
    """Region -> OutputFilterConfig (blocklist, languages, best_of, reward...; see
    acculturate/serve/output_filters.py); "*" applies to requests of any other region. Empty: off."""

    def __post_init__(self):
        for name in ("port", "max_tokens_cap", "default_max_tokens", "max_n", "max_prompts", "max_body_bytes",
                     "max_batch_size", "max_pending", "rate_limit_burst", "max_message_chars", "max_messages",
                     "max_stop_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "port" else 1):
                raise ValueError(f"ServeConfig.{name} must be a positive integer, got {value!r}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(f"ServeConfig.default_max_tokens ({self.default_max_tokens}) must not exceed "
                             f"max_tokens_cap ({self.max_tokens_cap})")
        self.output_filters = _output_filters(self.output_filters)
        if isinstance(self.rate_limit_per_minute, bool) or not self.rate_limit_per_minute >= 0:
            raise ValueError(f"ServeConfig.rate_limit_per_minute must be >= 0, got {self.rate_limit_per_minute!r}")
        if isinstance(self.warmup_prompt_tokens, bool) or not isinstance(self.warmup_prompt_tokens, int) \
                or self.warmup_prompt_tokens < 0:
            raise ValueError("ServeConfig.warmup_prompt_tokens must be an integer >= 0, "
                             f"got {self.warmup_prompt_tokens!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"ServeConfig.cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        if self.switch_interval_ms is not None and (isinstance(self.switch_interval_ms, bool)
                                                    or not self.switch_interval_ms > 0):
            raise ValueError(f"ServeConfig.switch_interval_ms must be > 0, got {self.switch_interval_ms!r}")
        if not self.batch_window_ms >= 0:
            raise ValueError(f"ServeConfig.batch_window_ms must be >= 0, got {self.batch_window_ms!r}")

    def resolved_admin_token(self) -> str | None:
        return self.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None

    def resolved_api_keys(self) -> list[str]:
        """Every accepted API key (:func:`acculturate.serve.auth.resolve_api_keys`)."""
        return resolve_api_keys(self.api_keys, self.api_keys_file, self.api_token)


def _output_filters(value) -> dict:
    from acculturate.config_loading import ConfigError, from_dict
    from acculturate.decode.postprocess import OutputFilterConfig

    if not isinstance(value, dict):
        raise ValueError(f"ServeConfig.output_filters must map regions to filter settings, got {value!r}")
    out = {}
    for region, filters in value.items():
        if isinstance(filters, OutputFilterConfig):
            out[str(region)] = filters
            continue
        if not isinstance(filters, dict):
            raise ValueError(f"ServeConfig.output_filters[{region!r}] must be a mapping of filter settings, got {filters!r}")
        try:
            out[str(region)] = from_dict(OutputFilterConfig, filters, f"output_filters.{region}")
        except ConfigError as e:
            raise ValueError(f"ServeConfig.{e}") from None
    from acculturate.serve.output_filters import DEFAULT_REGION, combine

    if DEFAULT_REGION in out:   # a region's filters add to "*": a conflict fails at start, not per request
        for region, filters in out.items():
            if region != DEFAULT_REGION:
                try:
                    combine(out[DEFAULT_REGION], filters)
                except ValueError as e:
                    raise ValueError(f"ServeConfig.output_filters[{region!r}]: {e}") from None
    return out
