"""Online learning inside a running server: admin routes that run a learning round in a background
thread and hot-swap the accepted adapter version in, without a restart.

Routes (admin token, as the other ``/admin`` routes):
- ``POST /admin/learn``: start a round (202; 409 while one runs). The round reads the server's own
  feedback store, trains on a separate copy of the base model (serving goes on meanwhile; on a
  shared CPU it gets slower), and if the guard accepts the candidate, swaps it in as
  ``<learn.name>@<version>``: the next completion of model ``<learn.name>`` records that version.
- ``GET /admin/learn``: the running or last round's state (``idle``, ``running``, ``done``,
  ``failed``), its stage, and its result.
- ``GET /admin/versions``: every version with its lineage fields and which one is served.
- ``POST /admin/rollback`` ``{"version": "v1"}``: serve an earlier accepted version again.

The learner is configured by ``ServeConfig.learn``, a ``LearnConfig`` YAML (see
``acculturate/configs/learn/``); without it these routes answer 409 with how to turn them on.
"""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import anyio
from fastapi import Request

from acculturate.serve.errors import APIError, invalid, not_found

log = logging.getLogger(__name__)


def conflict(message: str) -> APIError:
    return APIError(409, message, "invalid_request_error", None, "conflict")


class OnlineLearner:
    """A server's learning rounds and version pointer.

    Args:
        config: a ``LearnConfig`` (None: online learning off).
        pool: the server's :class:`~acculturate.serve.models.ModelPool`.
        store: the server's feedback store (rounds read it, not ``config.db``).
    """

    def __init__(self, config, pool, store):
        self.config, self.pool, self.store = config, pool, store
        self.versions = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.status: dict = {"state": "idle", "stage": None, "result": None, "error": None,
                             "started_at": None, "finished_at": None}
        if config is not None:
            from acculturate.feedback.versions import VersionStore

            self.versions = VersionStore(config.versions_dir)

    def _require(self) -> None:
        if self.config is None:
            raise conflict("online learning is off: start the server with `learn: CONFIG` in its config "
                           "(a LearnConfig YAML, e.g. acculturate/configs/learn/smollm2-135m_sft.yaml)")

    def serve_current(self) -> None:
        """At start: write ``v0`` if the store is empty, then serve the current version."""
        if self.config is None:
            return
        from pathlib import Path

        from acculturate.jobs.learn import ensure_initial_version

        if Path(self.config.model).name != self.pool.base_name:
            raise ValueError(f"the learn config's model {self.config.model!r} is not the served base model "
                             f"{self.pool.base_name!r}: its adapters would not fit")
        info = ensure_initial_version(self.versions, self.config, loaded=SimpleNamespace(model=self.pool.base.model))
        self.pool.swap_adapter(self.config.name, info.adapter_dir, info.version)

    def start_round(self) -> dict:
        self._require()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise conflict("a learning round is already running; GET /admin/learn shows its progress")
            self.status = {"state": "running", "stage": "starting", "result": None, "error": None,
                           "started_at": time.time(), "finished_at": None}
            self._thread = threading.Thread(target=self._run, name="acculturate-learn", daemon=True)
            self._thread.start()
            return dict(self.status)

    def _run(self) -> None:
        from acculturate.jobs.learn import learn_round

        def stage(message: str) -> None:
            self.status["stage"] = message

        try:
            result = learn_round(self.config, self.store, self.versions, on_event=stage)
            if result.status == "accepted":
                stage(f"hot-swapping {result.version.version}")
                self.swap(result.version)
            self.status.update(state="done", stage=None, result=result.to_json())
        except Exception as e:  # reported through GET /admin/learn; the server keeps serving
            log.exception("learning round failed")
            self.status.update(state="failed", stage=None, error=f"{type(e).__name__}: {e}")
        finally:
            self.status["finished_at"] = time.time()

    def swap(self, info) -> dict:
        served = self.pool.swap_adapter(self.config.name, info.adapter_dir, info.version)
        return {"name": served.name, "version": served.version, "path": served.path}

    def rollback(self, version: str) -> dict:
        from acculturate.feedback.versions import VersionError

        self._require()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise conflict("a learning round is running; roll back after it finishes")
            try:
                info = self.versions.rollback(version)
            except VersionError as e:
                raise (not_found if "no version" in str(e) else invalid)(str(e), param="version") from None
            return {"rolled_back_to": info.version, **self.swap(info)}

    def listing(self) -> dict:
        self._require()
        state = self.versions.state()
        return {"object": "list", "name": self.config.name, "current": state["current"],
                "feedback_cursor": state["feedback_cursor"],
                "data": [v.to_json() for v in self.versions.list()]}


def load_learner(path_or_config, pool, store) -> OnlineLearner:
    """The learner for ``ServeConfig.learn`` (a LearnConfig YAML path), a ``LearnConfig``, or None (off)."""
    config = path_or_config
    if isinstance(config, str):
        from acculturate.config_loading import load_yaml
        from acculturate.jobs.learn import LearnConfig

        config = load_yaml(LearnConfig, config)
    learner = OnlineLearner(config, pool, store)
    learner.serve_current()
    return learner


def add_learning_routes(app, learner: OnlineLearner, check_admin, read_json) -> None:
    """Register the routes of the module docstring on ``app``."""

    @app.post("/admin/learn", status_code=202)
    async def admin_learn(request: Request):
        check_admin(request)
        return learner.start_round()

    @app.get("/admin/learn")
    async def admin_learn_status(request: Request):
        check_admin(request)
        learner._require()
        return dict(learner.status)

    @app.get("/admin/versions")
    async def admin_versions(request: Request):
        check_admin(request)
        return await anyio.to_thread.run_sync(learner.listing)

    @app.post("/admin/rollback")
    async def admin_rollback(request: Request):
        check_admin(request)
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("version"), str):
            raise invalid('expected {"version": "v1"}', param="version")
        return await anyio.to_thread.run_sync(learner.rollback, body["version"])
