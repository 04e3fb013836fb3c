"""Who may call the API, and how often: API keys, per-client rate limits, the bind check.

- **Keys** (:func:`resolve_api_keys`): ``ServeConfig.api_keys`` (``acculturate serve --api-key KEY``,
  repeatable), ``api_keys_file`` (one key a line, ``#`` comments), ``$ACCULTURATE_API_KEYS``
  (separated by commas or whitespace), and the single ``api_token`` / ``$ACCULTURATE_API_TOKEN``.
  With any key, every ``/v1/*`` route needs ``Authorization: Bearer <one of them>`` (401 otherwise,
  as OpenAI answers). A client is known by :func:`client_id`, a hash of its key: that is what the
  feedback store records (one judgement per completion per client) and what rate limits count.
- **Bind check** (:func:`check_bind`): a server without keys listens on a loopback address only,
  unless ``insecure`` says an open API is meant (fail closed).
- **Rate limits** (:class:`RateLimiter`): a token bucket per client, ``rate_limit_per_minute``
  requests refilled evenly with bursts of ``rate_limit_burst``; beyond it 429 with ``Retry-After``.
  Without keys, clients are told apart by their address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import os
import re
import threading
import time
from pathlib import Path

from acculturate.config_loading import ConfigError

API_KEYS_ENV = "ACCULTURATE_API_KEYS"
API_TOKEN_ENV = "ACCULTURATE_API_TOKEN"
ANONYMOUS = "anonymous"
_KEY = re.compile(r"[\x21-\x7e]{8,256}")   # printable ASCII, no spaces: what fits a Bearer header


class AuthConfigError(ConfigError):
    """A key, key file or bind address the server refuses to start with."""


def resolve_api_keys(keys: list[str] | tuple[str, ...] = (), keys_file: str | None = None,
                     token: str | None = None, environ: dict | None = None) -> list[str]:
    """Every accepted API key from the config, the keys file and the environment (deduplicated).

    Raises:
        AuthConfigError: a missing keys file, or a key shorter than 8 characters or not printable ASCII.
    """
    environ = os.environ if environ is None else environ
    found: list[tuple[str, str]] = [(k, "api_keys") for k in keys]
    if token:
        found.append((token, "api_token"))
    if keys_file:
        path = Path(keys_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise AuthConfigError(f"api_keys_file {path} not found") from None
        found += [(line.strip(), f"{path}:{i}") for i, line in enumerate(lines, 1)
                  if line.strip() and not line.strip().startswith("#")]
    found += [(k, f"${API_KEYS_ENV}") for k in re.split(r"[\s,]+", environ.get(API_KEYS_ENV, "")) if k]
    if environ.get(API_TOKEN_ENV):
        found.append((environ[API_TOKEN_ENV], f"${API_TOKEN_ENV}"))
    for key, where in found:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise AuthConfigError(f"{where}: an API key must be 8-256 printable ASCII characters without spaces")
    return list(dict.fromkeys(k for k, _ in found))


def match_key(header: str, keys: list[str]) -> str | None:
    """The key an ``Authorization: Bearer <key>`` header carries, if it is one of ``keys``.
    Compares against every key in constant time, so timing tells nothing about which matched."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    given_bytes = given.strip().encode("utf-8", "surrogatepass")
    found = None
    for key in keys:
        if hmac.compare_digest(given_bytes, key.encode()):
            found = key
    return found


def client_id(key: str | None) -> str:
    """How a client is recorded: ``key:<first 16 hex of sha256(key)>``, never the key itself."""
    if key is None:
        return ANONYMOUS
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: list[str], insecure: bool) -> None:
    """Refuse to serve an open API beyond this machine.

    Raises:
        AuthConfigError: ``host`` is not a loopback address, no API key is set and ``insecure`` is off.
    """
    if keys or insecure or is_loopback(host):
        return
    raise AuthConfigError(
        f"refusing to listen on {host} without API keys: anyone who can reach it could generate, give "
        f"feedback and steer online learning. Give --api-key KEY (or --api-keys-file, ${API_KEYS_ENV}), "
        f"or --insecure if an open API is what you want")


class RateLimiter:
    """A token bucket per client: ``per_minute`` requests a minute, bursts up to ``burst``.

    Args:
        per_minute: refill rate; 0 turns limiting off.
        burst: bucket size (requests allowed at once after a quiet spell).
        max_clients: buckets kept; the least recently used is forgotten beyond it (bounded memory
            when many addresses call an open server).
    """

    def __init__(self, per_minute: float, burst: int, max_clients: int = 100_000):
        self.rate = per_minute / 60.0
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}   # client -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> float:
        """Spend one request of ``client``; returns 0 if allowed, else the seconds until it would be."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate
            self._buckets[client] = (tokens, now)   # re-inserted: the dict's order is recency
            while len(self._buckets) > self.max_clients:
                self._buckets.pop(next(iter(self._buckets)))
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(wait)))
