"""What the routes share: the server's settings, models, store and batcher (``app.state.server``),
and the checks and steps every completion route goes through (auth, body size, rendering, submitting)."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from fastapi import Request

from acculturate.data import render_prompt
from acculturate.decode.generate import encode_prompts
from acculturate.feedback.store import CompletionRecord, FeedbackStore
from acculturate.serve import auth, protocol
from acculturate.serve.batching import Batcher, Job, Overloaded
from acculturate.serve.config import ServeConfig
from acculturate.serve.errors import invalid, overloaded, rate_limited, too_large, unauthorized
from acculturate.serve.models import ModelPool, ServedModel
from acculturate.serve.output_filters import filters_for, submit_filtered


@dataclass
class Server:
    """The state of one running app, shared by its routers."""

    config: ServeConfig
    pool: ModelPool
    store: FeedbackStore
    batcher: Batcher
    limiter: auth.RateLimiter
    api_keys: list[str]
    limits: protocol.Limits
    run_defaults: dict | None
    """``ServeConfig.run``: the adapt run's model, adapter, index and passage length (or None)."""

    def check_api(self, request: Request) -> str:
        """Authenticate and rate-limit a /v1/* call; returns the client's id (:func:`auth.client_id`)."""
        config = self.config
        key = None
        if self.api_keys:
            key = auth.match_key(request.headers.get("authorization", ""), self.api_keys)
            if key is None:
                raise unauthorized("Incorrect API key provided: this API needs 'Authorization: Bearer <key>' "
                                   "with a key the server was started with")
        client = auth.client_id(key)
        counted = client if key is not None else f"address:{request.client.host if request.client else '-'}"
        wait = self.limiter.take(counted)
        if wait:
            raise rate_limited(f"Rate limit reached for this client: {config.rate_limit_per_minute:g} requests "
                               f"a minute (bursts of {config.rate_limit_burst}); retry after {wait:.1f} s",
                               auth.RateLimiter.retry_after(wait))
        return client

    def check_admin(self, request: Request) -> None:
        token = self.config.resolved_admin_token()
        if token is None:
            raise unauthorized("admin endpoints are closed: set admin_token in the config or "
                               "$ACCULTURATE_ADMIN_TOKEN when starting the server")
        check_token(request, token, "admin endpoints")

    async def read_json(self, request: Request):
        max_bytes = self.config.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise too_large(max_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise too_large(max_bytes)
        try:
            parsed = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise invalid(f"We could not parse the JSON body of your request: {e}", code="invalid_json") from None
        except RecursionError:
            raise invalid(f"the JSON body is nested more than {protocol.MAX_DEPTH} levels deep",
                          code="invalid_json") from None
        protocol.check_json(parsed)
        return parsed

    def prepare(self, parsed: protocol.ParsedRequest) -> tuple[ServedModel, list[str], int]:
        """The model, the rendered prompts and their total token count; checks the context length.
        Blocking (tokenizing a long prompt takes a while): the routes run it in a worker thread."""
        served = self.pool.get(parsed.model)
        if parsed.messages is not None:
            try:
                prompts = [render_prompt(parsed.messages, served.tokenizer, "chat")]
            except Exception as e:  # a template that refuses the roles' order, e.g.
                raise invalid(f"messages could not be rendered with the chat template: {e}", param="messages")
        else:
            prompts = parsed.prompts
        lengths = [len(ids) for ids in encode_prompts(served.tokenizer, prompts)]
        limit = served.max_positions
        if limit and max(lengths) + parsed.sampling.max_tokens > limit:
            raise invalid(f"This model's maximum context length is {limit} tokens; the prompt has "
                          f"{max(lengths)} and max_tokens is {parsed.sampling.max_tokens}",
                          param="messages" if parsed.messages is not None else "prompt",
                          code="context_length_exceeded")
        return served, prompts, sum(lengths)

    def submit(self, served: ServedModel, prompts: list[str], parsed: protocol.ParsedRequest, on_text=None) -> Job:
        config = self.config
        n = parsed.sampling.n
        # OpenAI's order for several prompts and n: prompt 0's n choices, then prompt 1's...
        job = Job(served, [p for p in prompts for _ in range(n)], parsed.sampling.generation_config(), on_text)
        filters = filters_for(config.output_filters, parsed.region)
        rows = len(job.prompts) * (filters.best_of if filters is not None else 1)
        if rows > config.max_batch_size:
            raise invalid(f"this request decodes {rows} rows ({len(prompts)} prompts x n={n}"
                          + (f" x best_of={filters.best_of} of the output filters" if filters is not None else "")
                          + f"); this server decodes at most {config.max_batch_size} per request", param="n")
        try:
            if filters is None:
                self.batcher.submit(job)
            else:
                submit_filtered(self.batcher, job, filters)
        except Overloaded as e:
            raise overloaded(str(e)) from None
        return job

    def model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "acculturate",
                "version": self.pool.get(name).version}


def server(request: Request) -> Server:
    """The :class:`Server` of the app serving ``request``."""
    return request.app.state.server


def check_token(request: Request, expected: str | None, what: str) -> None:
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise unauthorized(f"{what} needs a valid 'Authorization: Bearer <token>' header")


def records(cid: str, endpoint: str, served: ServedModel, prompts: list[str],
            parsed: protocol.ParsedRequest, completions) -> list[CompletionRecord]:
    """The store's rows of a request's completions."""
    n = parsed.sampling.n
    return [CompletionRecord(
        id=cid, choice_index=i, endpoint=endpoint, model=parsed.model, adapter=served.adapter,
        adapter_version=served.version, messages=parsed.messages, prompt=prompts[i // n],
        completion=c.text, finish_reason=c.finish_reason, prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens, sampling=parsed.sampling.as_dict(), region=parsed.region,
    ) for i, c in enumerate(completions)]
