"""``POST /v1/feedback``: a judgement on a served completion (see :mod:`acculturate.feedback.store`)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request

from acculturate.feedback.store import FEEDBACK_KINDS, FeedbackError
from acculturate.serve import openapi, protocol
from acculturate.serve.errors import invalid, not_found
from acculturate.serve.state import server

router = APIRouter()


@router.post("/v1/feedback", openapi_extra=openapi.feedback_body(sorted(FEEDBACK_KINDS)))
async def feedback(request: Request):
    s = server(request)
    client = s.check_api(request)
    fb = protocol.parse_feedback(await s.read_json(request), s.limits)
    try:
        row = await anyio.to_thread.run_sync(lambda: s.store.add_feedback(
            fb.completion_id, fb.kind, fb.choice_index, fb.corrected_text, fb.region, fb.comment,
            client=client))
    except FeedbackError as e:
        raise (not_found if e.not_found else invalid)(str(e), param=e.field) from None
    return {"object": "feedback", "id": row["id"], "completion_id": row["completion_id"],
            "choice_index": row["choice_index"], "kind": row["kind"], "reward": row["reward"],
            "corrected_reward": row["corrected_reward"], "created": int(row["created_at"]),
            "replaced": bool(row["replaced"])}
