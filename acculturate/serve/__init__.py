"""Serving: an OpenAI-compatible HTTP API with dynamic batching, feedback and a web chat.

Needs the ``serve`` extra (fastapi, uvicorn, sqlalchemy). The public API:
``create_app(ServeConfig, pool=None, store=None) -> FastAPI`` and ``run_server(ServeConfig)``.
"""

from acculturate.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "run_server"]


def __getattr__(name):
    # Lazy, so that ``from acculturate.serve import ServeConfig`` works without fastapi installed.
    if name == "create_app":
        from acculturate.serve.app import create_app

        return create_app
    if name == "run_server":
        from acculturate.serve.server import run_server

        return run_server
    raise AttributeError(name)
