"""Request-body schemas of the OpenAI routes, published in ``GET /openapi.json``.

The routes read their bodies themselves (:mod:`acculturate.serve.protocol` checks every field and
names it in a 400), so FastAPI cannot infer these; they are written here, in JSON Schema, for
clients and for property-based testing (tests/serve/test_openapi_fuzz.py runs Schemathesis on
them). They give the fields and their types, deliberately not the server's bounds: generated
requests then cross the bounds, and each must come back as a 400, never a 500.
"""

from __future__ import annotations

_STRINGS = {"type": "array", "items": {"type": "string"}}
_SAMPLING = {
    "max_tokens": {"type": "integer"}, "temperature": {"type": "number"}, "top_p": {"type": "number"},
    "n": {"type": "integer"}, "seed": {"type": "integer"}, "stream": {"type": "boolean"},
    "stop": {"anyOf": [{"type": "string"}, _STRINGS]},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
}


def _body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def chat_body() -> dict:
    """``POST /v1/chat/completions`` (the model names are filled in by :func:`with_models`)."""
    message = {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {
            "type": "object", "required": ["type", "text"],
            "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}}]}}}
    return _body({"type": "object", "required": ["model", "messages"], "properties": {
        "model": {"type": "string"}, "messages": {"type": "array", "items": message},
        "max_completion_tokens": {"type": "integer"}, **_SAMPLING}})


def completion_body() -> dict:
    """``POST /v1/completions``."""
    return _body({"type": "object", "required": ["model", "prompt"], "properties": {
        "model": {"type": "string"}, "prompt": {"anyOf": [{"type": "string"}, _STRINGS]},
        **_SAMPLING}})


def feedback_body(kinds: list[str]) -> dict:
    """``POST /v1/feedback``."""
    return _body({"type": "object", "required": ["completion_id", "kind"], "properties": {
        "completion_id": {"type": "string"}, "kind": {"type": "string", "enum": kinds},
        "choice_index": {"type": "integer"}, "corrected_text": {"type": "string"}, "region": {"type": "string"},
        "comment": {"type": "string"}}})


def with_models(schema: dict, models: list[str]) -> dict:
    """``schema`` (the app's OpenAPI document) with the generation routes' ``model`` limited to the
    names served now (adapters come and go while the server runs, so this is applied per request)."""
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["model"] = {"type": "string", "enum": list(models)}
    return schema
