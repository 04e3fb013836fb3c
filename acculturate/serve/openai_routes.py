"""The OpenAI-compatible routes: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` (SSE
streaming included) and ``/v1/retrieval/indexes``."""

from __future__ import annotations

import asyncio
import json
import logging

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from acculturate.serve import openapi, protocol
from acculturate.serve import rag_requests as rag
from acculturate.serve.batching import Cancelled, Job
from acculturate.serve.errors import APIError, invalid, model_not_found, server_error
from acculturate.serve.state import Server, records, server

log = logging.getLogger(__name__)

# While a non-streaming request waits, how often to check that its client is still there.
DISCONNECT_POLL_S = 0.25

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request):
    s = server(request)
    s.check_api(request)
    return {"object": "list", "data": [s.model_card(n) for n in s.pool.names()]}


@router.get("/v1/models/{name:path}")
async def get_model(name: str, request: Request):
    s = server(request)
    s.check_api(request)
    if name not in s.pool.names():
        raise model_not_found(name, s.pool.names())
    return s.model_card(name)


@router.post("/v1/chat/completions", openapi_extra=openapi.chat_body())
async def chat_completions(request: Request):
    s = server(request)
    s.check_api(request)
    body = rag.run_defaults(await s.read_json(request), s.run_defaults)
    parsed = protocol.parse_chat(body, s.limits)
    retrieval = rag.parse_retrieval(body)
    if retrieval is not None and s.run_defaults and body.get("model") == s.run_defaults["model"]:
        retrieval.max_chars = s.run_defaults["max_passage_chars"]
    return await complete(s, request, "chat.completions", parsed, retrieval)


@router.post("/v1/completions", openapi_extra=openapi.completion_body())
async def completions(request: Request):
    s = server(request)
    s.check_api(request)
    body = await s.read_json(request)
    parsed = protocol.parse_completion(body, s.limits)
    retrieval = rag.parse_retrieval(body)
    if retrieval is not None and len(parsed.prompts) != 1:
        raise invalid(f"retrieval works with one prompt per request, got {len(parsed.prompts)}", param="prompt")
    return await complete(s, request, "completions", parsed, retrieval)


@router.get("/v1/retrieval/indexes")
async def retrieval_indexes(request: Request):
    """The indexes a request's ``retrieval.index`` may name (the server's rag_home)."""
    s = server(request)
    s.check_api(request)
    try:
        from acculturate.rag import list_indexes
    except ImportError:   # the rag extra is not installed: no retrieval, so no index either
        return {"object": "list", "data": []}
    found = await anyio.to_thread.run_sync(list_indexes, s.config.rag_home)
    return {"object": "list", "data": [{"id": i["name"], "object": "retrieval.index", **i} for i in found]}


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


async def complete(s: Server, request: Request, endpoint: str, parsed: protocol.ParsedRequest, retrieval=None):
    """Answer a parsed completion request: retrieval, rendering, decoding, storing, the response."""
    if retrieval is not None and parsed.messages is not None and all(m["role"] != "user" for m in parsed.messages):
        raise invalid("retrieval needs a user message: the last one is the query", param="messages")
    if retrieval is not None and parsed.messages is not None:   # passages into the last user turn
        parsed.messages = await anyio.to_thread.run_sync(rag.augment, parsed.messages, retrieval, s.config.rag_home)
    elif retrieval is not None:   # /v1/completions: passages before the one prompt
        parsed.prompts = [await anyio.to_thread.run_sync(rag.augment_prompt, parsed.prompts[0], retrieval,
                                                         s.config.rag_home)]
    served, prompts, prompt_tokens = await anyio.to_thread.run_sync(s.prepare, parsed)
    chat = endpoint == "chat.completions"
    cid = protocol.new_id("chatcmpl" if chat else "cmpl")
    if parsed.stream:
        return stream(s, endpoint, cid, served, prompts, prompt_tokens, parsed, retrieval)
    job = s.submit(served, prompts, parsed)
    completions = await wait(job, request)
    await anyio.to_thread.run_sync(s.store.record_completions,
                                   records(cid, endpoint, served, prompts, parsed, completions))
    build = protocol.chat_response if chat else protocol.text_response
    body = build(cid, parsed.model, served.version, completions, prompt_tokens)
    if retrieval is not None:
        extra, per_choice = rag.response_fields(retrieval, [c.text for c in completions], retrieval.query)
        body.update(extra)
        for choice, numbers in zip(body["choices"], per_choice):
            choice["citations"] = numbers
    return JSONResponse(body)


def stream(s: Server, endpoint, cid, served, prompts, prompt_tokens, parsed, retrieval=None) -> StreamingResponse:
    """The answer as server-sent events: a chunk per text delta, then the finish and usage chunks.

    Deltas that queued up while the previous chunk was being sent go out as one chunk per choice, so
    under load the event loop's work per chunk (JSON, the write) is paid per send, not per token."""
    chat = endpoint == "chat.completions"
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue = asyncio.Queue()

    def on_text(i: int, delta: str) -> None:  # in the worker thread
        loop.call_soon_threadsafe(deltas.put_nowait, (i, delta))

    job = s.submit(served, prompts, parsed, on_text)
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
            done = False
            while not done:
                items = [await deltas.get()]
                while not deltas.empty():
                    items.append(deltas.get_nowait())
                if items[-1] is None:   # the end marker comes after every delta
                    items.pop()
                    done = True
                merged: dict[int, str] = {}
                for i, text in items:
                    merged[i] = merged.get(i, "") + text
                for i, text in merged.items():
                    yield event(chunk(i, text))
            try:
                completions = job.future.result()
                await anyio.to_thread.run_sync(s.store.record_completions,
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
