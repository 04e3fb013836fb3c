"""The admin routes (``/admin/adapters``: list, load, unload adapters), behind the admin token."""

from __future__ import annotations

import time

import anyio
from fastapi import APIRouter, Request

from acculturate.serve.errors import invalid
from acculturate.serve.state import server

router = APIRouter()


@router.get("/admin/adapters")
async def admin_list(request: Request):
    s = server(request)
    s.check_admin(request)
    return {"object": "list", "base": s.pool.base_name, "data": s.pool.adapters()}


@router.post("/admin/adapters")
async def admin_load(request: Request):
    s = server(request)
    s.check_admin(request)
    body = await s.read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        raise invalid("expected {\"name\": ..., \"path\": \"adapter directory\"}", param="path")
    started = time.perf_counter()
    served = await anyio.to_thread.run_sync(s.pool.add_adapter, body.get("name"), body["path"])
    return {"name": served.name, "version": served.version, "path": served.path,
            "load_seconds": round(time.perf_counter() - started, 3)}


@router.delete("/admin/adapters/{name}")
async def admin_unload(name: str, request: Request):
    s = server(request)
    s.check_admin(request)
    await anyio.to_thread.run_sync(s.pool.remove_adapter, name)
    return {"name": name, "deleted": True}
