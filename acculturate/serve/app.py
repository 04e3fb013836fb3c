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

The routes live in routers (:mod:`~acculturate.serve.openai_routes`,
:mod:`~acculturate.serve.feedback_routes`, :mod:`~acculturate.serve.admin_routes`, and the learning
routes of :mod:`~acculturate.serve.learning`); what they share is ``app.state.server``
(:class:`acculturate.serve.state.Server`).

Every ``/v1/*`` route asks for an API key when any is configured and counts against the client's rate
limit (:mod:`acculturate.serve.auth`). Every completion is stored before its answer is sent (for a
stream: before its final chunk), so a client that sees the answer can give feedback on its id.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from acculturate.feedback.store import FeedbackStore
from acculturate.serve import admin_routes, auth, feedback_routes, openai_routes, openapi, protocol
from acculturate.serve import rag_requests as rag
from acculturate.serve.batching import Batcher
from acculturate.serve.config import ServeConfig
from acculturate.serve.errors import STATUS_TYPES, APIError, server_error
from acculturate.serve.learning import add_learning_routes, load_learner
from acculturate.serve.models import ModelPool
from acculturate.serve.state import Server, server

log = logging.getLogger(__name__)


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
    state = _server(config, pool, store)
    batcher, pool = state.batcher, state.pool

    @asynccontextmanager
    async def lifespan(app):
        # The base model's slot batch is warmed up before the first job (ServeConfig.warmup_prompt_tokens).
        batcher.start(warm=getattr(pool, "base", None))
        pool.before_change.append(batcher.drain)
        try:
            yield
        finally:
            pool.before_change.remove(batcher.drain)
            batcher.stop()

    # /openapi.json describes the routes, their request bodies included (serve/openapi.py).
    app = FastAPI(title="acculturate", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.server = state
    app.state.config, app.state.pool, app.state.store, app.state.batcher = config, pool, state.store, batcher
    _add_error_handlers(app)
    app.get("/", response_class=HTMLResponse)(web_chat)
    app.get("/health")(health)
    for module in (openai_routes, feedback_routes, admin_routes):
        app.include_router(module.router)

    build_openapi = app.openapi

    def current_openapi() -> dict:   # not cached: the served model names change
        app.openapi_schema = None
        return openapi.with_models(build_openapi(), [*pool.names(), "none"])

    app.openapi = current_openapi
    app.state.learner = load_learner(learn if learn is not None else config.learn, pool, state.store)
    add_learning_routes(app, app.state.learner, state.check_admin, state.read_json)
    return app


def _server(config: ServeConfig, pool: ModelPool | None, store: FeedbackStore | None) -> Server:
    """The shared state: the models (loaded unless given), the store, the batcher, the API limits."""
    run_defaults = rag.load_run(config)   # ServeConfig.run: the adapt run's model, adapter and index
    api_keys = config.resolved_api_keys()
    limiter = auth.RateLimiter(config.rate_limit_per_minute, config.rate_limit_burst)
    if pool is None:
        from acculturate.adapters.base_model import pick_base_model

        config.model = pick_base_model(config.model, config.adapters.values())   # unset: the adapters' base
        pool = ModelPool(config.model, device=config.device, dtype=config.dtype)
        for name, path in config.adapters.items():
            pool.add_adapter(name, path)
    limits = protocol.Limits(config.max_tokens_cap, config.default_max_tokens, config.max_n, config.max_prompts,
                             max_rows=config.max_batch_size, max_chars=config.max_message_chars,
                             max_messages=config.max_messages, max_stop_chars=config.max_stop_chars)
    return Server(config=config, pool=pool, store=store or FeedbackStore(config.db),
                  batcher=Batcher(config.max_batch_size, config.batch_window_ms / 1000, config.max_pending,
                                  config.cuda_graphs, config.warmup_prompt_tokens, config.default_max_tokens),
                  limiter=limiter, api_keys=api_keys, limits=limits, run_defaults=run_defaults)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI-style JSON body: ours, Starlette's (404, 405) and unexpected ones (500)."""

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


async def web_chat():
    return HTMLResponse(resources.files("acculturate.serve").joinpath("static/chat.html").read_text("utf-8"))


async def health(request: Request):
    s = server(request).batcher.stats
    return {"status": "ok", "models": server(request).pool.names(), "batches": s.batches, "prompts": s.prompts,
            "largest_batch": s.largest, "joined": s.joined, "steps": s.steps, "cancelled": s.cancelled,
            "prefills": s.prefills, "prefill_s": round(s.prefill_s, 4), "step_s": round(s.step_s, 4),
            "warming": s.warming, "warmup_s": round(s.warmup_s, 3)}
