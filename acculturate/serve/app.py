"""The HTTP application: OpenAI-compatible endpoints, feedback, admin and the web chat page.

Routes:
- ``GET /`` the web chat; ``GET /health`` liveness and batching counters; ``GET /openapi.json`` the
  routes and their request bodies (:mod:`acculturate.serve.openapi`).
- ``GET /v1/models``, ``GET /v1/models/{id}``: the base model and the loaded adapters.
- ``POST /v1/chat/completions``, ``POST /v1/completions``: as OpenAI's, streaming over SSE.
- ``POST /v1/feedback``: a judgement on a served completion (see :mod:`acculturate.feedback.store`).
- ``GET/POST /admin/adapters``, ``DELETE /admin/adapters/{name}``: list, load, unload adapters.
- ``POST/GET /admin/learn``, ``GET /admin/versions``, ``POST /admin/rollback``: online learning
  rounds and adapter versions, hot-swapped in (:mod:`acculturate.serve.learning`).

Every ``/v1/*`` route asks for an API key when any is configured and counts against the client's rate
limit (:mod:`acculturate.serve.auth`). Every completion is stored before its answer is sent (for a
stream: before its final chunk), so a client that sees the answer can give feedback on its id.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from acculturate.data import render_prompt
from acculturate.decode.generate import encode_prompts
from acculturate.feedback.store import FEEDBACK_KINDS, CompletionRecord, FeedbackError, FeedbackStore
from acculturate.serve import auth, openapi, protocol
from acculturate.serve import retrieval as rag
from acculturate.serve.batching import Batcher, Cancelled, Job, Overloaded
from acculturate.serve.config import ServeConfig
from acculturate.serve.errors import (
    STATUS_TYPES, APIError, invalid, model_not_found, not_found, overloaded, rate_limited, server_error,
    too_large, unauthorized,
)
from acculturate.serve.learning import add_learning_routes, load_learner
from acculturate.serve.models import ModelPool, ServedModel
from acculturate.serve.output_filters import filters_for, submit_filtered

log = logging.getLogger(__name__)

# While a non-streaming request waits, how often to check that its client is still there.
DISCONNECT_POLL_S = 0.25


def create_app(config: ServeConfig | None = None, pool: ModelPool | None = None,
               store: FeedbackStore | None = None, learn=None) -> FastAPI:
    """Build the application.

    Args:
        config: server settings (default ``ServeConfig()``).
        pool: the models to serve; default: load ``config.model`` and ``config.adapters``.
        store: the completion/feedback store; default: open ``config.db``.
        learn: a ``LearnConfig`` for online learning (default: ``config.learn``'s YAML, if set).
    Returns:
        A FastAPI app; its batching worker starts and stops with the app's lifespan.
    """
    config = config or ServeConfig()
    run_defaults = rag.load_run(config)   # ServeConfig.run: the adapt run's model, adapter and index
    api_keys = config.resolved_api_keys()
    limiter = auth.RateLimiter(config.rate_limit_per_minute, config.rate_limit_burst)
    if pool is None:
        pool = ModelPool(config.model, device=config.device, dtype=config.dtype)
        for name, path in config.adapters.items():
            pool.add_adapter(name, path)
    store = store or FeedbackStore(config.db)
    batcher = Batcher(config.max_batch_size, config.batch_window_ms / 1000, config.max_pending, config.cuda_graphs)
    limits = protocol.Limits(config.max_tokens_cap, config.default_max_tokens, config.max_n, config.max_prompts,
                             max_rows=config.max_batch_size, max_chars=config.max_message_chars,
                             max_messages=config.max_messages, max_stop_chars=config.max_stop_chars)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        pool.before_change.append(batcher.drain)
        try:
            yield
        finally:
            pool.before_change.remove(batcher.drain)
            batcher.stop()

    # /openapi.json describes the routes, their request bodies included (serve/openapi.py).
    app = FastAPI(title="acculturate", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.config, app.state.pool, app.state.store, app.state.batcher = config, pool, store, batcher

    # --- errors -----------------------------------------------------------------------------------

    @app.exception_handler(APIError)
    async def on_api_error(request, exc: APIError):
        headers = {**({"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}), **(exc.headers or {})}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request, exc: StarletteHTTPException):
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(APIError(exc.status_code, message, STATUS_TYPES.get(exc.status_code, "server_error"),
                                     None, None).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def on_error(request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(server_error(f"internal error: {type(exc).__name__}").body(), status_code=500)

    # --- helpers ----------------------------------------------------------------------------------

    def check_token(request: Request, expected: str | None, what: str) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise unauthorized(f"{what} needs a valid 'Authorization: Bearer <token>' header")

    def check_api(request: Request) -> str:
        """Authenticate and rate-limit a /v1/* call; returns the client's id (:func:`auth.client_id`)."""
        key = None
        if api_keys:
            key = auth.match_key(request.headers.get("authorization", ""), api_keys)
            if key is None:
                raise unauthorized("Incorrect API key provided: this API needs 'Authorization: Bearer <key>' "
                                   "with a key the server was started with")
        client = auth.client_id(key)
        counted = client if key is not None else f"address:{request.client.host if request.client else '-'}"
        wait = limiter.take(counted)
        if wait:
            raise rate_limited(f"Rate limit reached for this client: {config.rate_limit_per_minute:g} requests "
                               f"a minute (bursts of {config.rate_limit_burst}); retry after {wait:.1f} s",
                               auth.RateLimiter.retry_after(wait))
        return client

    def check_admin(request: Request) -> None:
        token = config.resolved_admin_token()
        if token is None:
            raise unauthorized("admin endpoints are closed: set admin_token in the config or "
                               "$ACCULTURATE_ADMIN_TOKEN when starting the server")
        check_token(request, token, "admin endpoints")

    async def read_json(request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            raise too_large(config.max_body_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise too_large(config.max_body_bytes)
        try:
            parsed = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise invalid(f"We could not parse the JSON body of your request: {e}", code="invalid_json") from None
        except RecursionError:
            raise invalid(f"the JSON body is nested more than {protocol.MAX_DEPTH} levels deep",
                          code="invalid_json") from None
        protocol.check_json(parsed)
        return parsed

    def prepare(parsed: protocol.ParsedRequest) -> tuple[ServedModel, list[str], int]:
        """The model, the rendered prompts and their total token count; checks the context length.
        Blocking (tokenizing a long prompt takes a while): the routes run it in a worker thread."""
        served = pool.get(parsed.model)
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

    def submit(served: ServedModel, prompts: list[str], parsed: protocol.ParsedRequest, on_text=None) -> Job:
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
                batcher.submit(job)
            else:
                submit_filtered(batcher, job, filters)
        except Overloaded as e:
            raise overloaded(str(e)) from None
        return job

    def records(cid: str, endpoint: str, served: ServedModel, prompts: list[str],
                parsed: protocol.ParsedRequest, completions) -> list[CompletionRecord]:
        n = parsed.sampling.n
        return [CompletionRecord(
            id=cid, choice_index=i, endpoint=endpoint, model=parsed.model, adapter=served.adapter,
            adapter_version=served.version, messages=parsed.messages, prompt=prompts[i // n],
            completion=c.text, finish_reason=c.finish_reason, prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens, sampling=parsed.sampling.as_dict(), region=parsed.region,
        ) for i, c in enumerate(completions)]

    async def wait(job: Job, request: Request):
        """The job's completions; cancels the job if the client disconnects meanwhile."""
        future = asyncio.wrap_future(job.future)
        while True:
            done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
            if done:
                break
            if await request.is_disconnected():
                job.cancelled.set()
        try:
            return future.result()
        except Cancelled:
            raise APIError(499, "the client closed the request", "invalid_request_error") from None
        except ValueError as e:  # a config generate() refuses
            raise invalid(str(e)) from None

    async def complete(request: Request, endpoint: str, parsed: protocol.ParsedRequest, retrieval=None):
        if retrieval is not None and parsed.messages is not None and all(m["role"] != "user" for m in parsed.messages):
            raise invalid("retrieval needs a user message: the last one is the query", param="messages")
        if retrieval is not None and parsed.messages is not None:   # passages into the last user turn
            parsed.messages = await anyio.to_thread.run_sync(rag.augment, parsed.messages, retrieval, config.rag_home)
        elif retrieval is not None:   # /v1/completions: passages before the one prompt
            parsed.prompts = [await anyio.to_thread.run_sync(rag.augment_prompt, parsed.prompts[0], retrieval,
                                                             config.rag_home)]
        served, prompts, prompt_tokens = await anyio.to_thread.run_sync(prepare, parsed)
        chat = endpoint == "chat.completions"
        cid = protocol.new_id("chatcmpl" if chat else "cmpl")
        if parsed.stream:
            return stream(request, endpoint, cid, served, prompts, prompt_tokens, parsed, retrieval)
        job = submit(served, prompts, parsed)
        completions = await wait(job, request)
        await anyio.to_thread.run_sync(store.record_completions,
                                       records(cid, endpoint, served, prompts, parsed, completions))
        build = protocol.chat_response if chat else protocol.text_response
        body = build(cid, parsed.model, served.version, completions, prompt_tokens)
        if retrieval is not None:
            extra, per_choice = rag.response_fields(retrieval, [c.text for c in completions], retrieval.query)
            body.update(extra)
            for choice, numbers in zip(body["choices"], per_choice):
                choice["citations"] = numbers
        return JSONResponse(body)

    def stream(request, endpoint, cid, served, prompts, prompt_tokens, parsed, retrieval=None) -> StreamingResponse:
        chat = endpoint == "chat.completions"
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue = asyncio.Queue()

        def on_text(i: int, delta: str) -> None:  # in the worker thread
            loop.call_soon_threadsafe(deltas.put_nowait, (i, delta))

        job = submit(served, prompts, parsed, on_text)
        # Queued after every delta (call_soon_threadsafe keeps order), so it marks the end.
        job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(deltas.put_nowait, None))
        total = len(job.prompts)

        def event(obj) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def chunk(i, text="", finish=None, role=False):
            if chat:
                delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
                return protocol.chat_chunk(cid, parsed.model, served.version, i, delta, finish)
            return protocol.text_chunk(cid, parsed.model, served.version, i, text, finish)

        async def events():
            try:
                if chat:
                    for i in range(total):
                        yield event(chunk(i, role=True))
                while (item := await deltas.get()) is not None:
                    yield event(chunk(item[0], item[1]))
                try:
                    completions = job.future.result()
                    await anyio.to_thread.run_sync(store.record_completions,
                                                   records(cid, endpoint, served, prompts, parsed, completions))
                except Exception as e:
                    # The stream has started (200 sent): the client learns of the failure from an error
                    # event, then the usual end, instead of a stream that just stops.
                    if not isinstance(e, (APIError, Cancelled)):
                        log.exception("stream %s failed after it started", cid)
                    error = e if isinstance(e, APIError) else server_error(
                        f"the answer could not be finished ({type(e).__name__}); nothing was stored")
                    yield event(error.body())
                    yield "data: [DONE]\n\n"
                    return
                extra, per_choice = (rag.response_fields(retrieval, [c.text for c in completions], retrieval.query)
                                     if retrieval is not None else ({}, None))
                for i, c in enumerate(completions):
                    final = chunk(i, finish=protocol.finish_reason(c))
                    if retrieval is not None:
                        final.update(extra)
                        final["choices"][0]["citations"] = per_choice[i]
                    yield event(final)
                if parsed.include_usage:
                    use = protocol.usage(completions, prompt_tokens)
                    final = (protocol.chat_chunk(cid, parsed.model, served.version, None, usage_=use) if chat
                             else protocol.text_chunk(cid, parsed.model, served.version, None, usage_=use))
                    yield event(final)
                yield "data: [DONE]\n\n"
            finally:
                if not job.future.done():  # the client went away (or the server is stopping)
                    job.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- routes -----------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def web_chat():
        return HTMLResponse(resources.files("acculturate.serve").joinpath("static/chat.html").read_text("utf-8"))

    @app.get("/health")
    async def health():
        s = batcher.stats
        return {"status": "ok", "models": pool.names(), "batches": s.batches, "prompts": s.prompts,
                "largest_batch": s.largest, "joined": s.joined, "steps": s.steps, "cancelled": s.cancelled}

    def model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "acculturate",
                "version": pool.get(name).version}

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_api(request)
        return {"object": "list", "data": [model_card(n) for n in pool.names()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request):
        check_api(request)
        if name not in pool.names():
            raise model_not_found(name, pool.names())
        return model_card(name)

    @app.post("/v1/chat/completions", openapi_extra=openapi.chat_body())
    async def chat_completions(request: Request):
        check_api(request)
        body = rag.run_defaults(await read_json(request), run_defaults)
        parsed = protocol.parse_chat(body, limits)
        retrieval = rag.parse_retrieval(body)
        if retrieval is not None and run_defaults and body.get("model") == run_defaults["model"]:
            retrieval.max_chars = run_defaults["max_passage_chars"]
        return await complete(request, "chat.completions", parsed, retrieval)

    @app.post("/v1/completions", openapi_extra=openapi.completion_body())
    async def completions(request: Request):
        check_api(request)
        body = await read_json(request)
        parsed = protocol.parse_completion(body, limits)
        retrieval = rag.parse_retrieval(body)
        if retrieval is not None and len(parsed.prompts) != 1:
            raise invalid(f"retrieval works with one prompt per request, got {len(parsed.prompts)}", param="prompt")
        return await complete(request, "completions", parsed, retrieval)

    @app.get("/v1/retrieval/indexes")
    async def retrieval_indexes(request: Request):
        """The indexes a request's ``retrieval.index`` may name (the server's rag_home)."""
        check_api(request)
        try:
            from acculturate.rag import list_indexes
        except ImportError:   # the rag extra is not installed: no retrieval, so no index either
            return {"object": "list", "data": []}
        found = await anyio.to_thread.run_sync(list_indexes, config.rag_home)
        return {"object": "list", "data": [{"id": i["name"], "object": "retrieval.index", **i} for i in found]}

    @app.post("/v1/feedback", openapi_extra=openapi.feedback_body(sorted(FEEDBACK_KINDS)))
    async def feedback(request: Request):
        client = check_api(request)
        fb = protocol.parse_feedback(await read_json(request), limits)
        try:
            row = await anyio.to_thread.run_sync(lambda: store.add_feedback(
                fb.completion_id, fb.kind, fb.choice_index, fb.corrected_text, fb.region, fb.comment,
                client=client))
        except FeedbackError as e:
            raise (not_found if e.not_found else invalid)(str(e), param=e.field) from None
        return {"object": "feedback", "id": row["id"], "completion_id": row["completion_id"],
                "choice_index": row["choice_index"], "kind": row["kind"], "reward": row["reward"],
                "corrected_reward": row["corrected_reward"], "created": int(row["created_at"]),
                "replaced": bool(row["replaced"])}

    @app.get("/admin/adapters")
    async def admin_list(request: Request):
        check_admin(request)
        return {"object": "list", "base": pool.base_name, "data": pool.adapters()}

    @app.post("/admin/adapters")
    async def admin_load(request: Request):
        check_admin(request)
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise invalid("expected {\"name\": ..., \"path\": \"adapter directory\"}", param="path")
        started = time.perf_counter()
        served = await anyio.to_thread.run_sync(pool.add_adapter, body.get("name"), body["path"])
        return {"name": served.name, "version": served.version, "path": served.path,
                "load_seconds": round(time.perf_counter() - started, 3)}

    @app.delete("/admin/adapters/{name}")
    async def admin_unload(name: str, request: Request):
        check_admin(request)
        await anyio.to_thread.run_sync(pool.remove_adapter, name)
        return {"name": name, "deleted": True}

    build_openapi = app.openapi

    def current_openapi() -> dict:   # not cached: the served model names change
        app.openapi_schema = None
        return openapi.with_models(build_openapi(), [*pool.names(), "none"])

    app.openapi = current_openapi
    app.state.learner = load_learner(learn if learn is not None else config.learn, pool, store)
    add_learning_routes(app, app.state.learner, check_admin, read_json)

    return app
