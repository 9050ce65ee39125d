"""The OpenAPI 3.1 document, generated: paths from the app's URL rules and their views' docstrings,
query parameters, bodies and answers from the pydantic models the views use."""
from __future__ import annotations

import re
from typing import Any

from flask import Flask
from pydantic import BaseModel, Field
from werkzeug.routing import Rule

from producer.doors import a1111_schema
from producer.doors.openai_params import OpenAIError, OpenAIImageRequest
from producer.schemas import SubmitRequest
from sdq import __version__, contract


class ErrorDetail(BaseModel):
    """What went wrong, and the request field that caused it."""

    code: str
    message: str
    field: str | None


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message", "field"}}``."""

    error: ErrorDetail


class Accepted(BaseModel):
    """The 202 answer to a submit."""

    id: str
    state: str
    items: int
    seed: int
    warnings: list[str]
    links: dict[str, str]


class JobsPage(BaseModel):
    """Query of GET /v1/jobs: a page of the caller's jobs."""

    offset: int = Field(0, ge=0, le=10**9)
    limit: int = Field(20, ge=1, le=100)


class ItemsPage(BaseModel):
    """Query of GET /v1/jobs/{id}: a page of the job's items (limit 0: the job alone)."""

    offset: int = Field(0, ge=0, le=10**9)
    limit: int = Field(100, ge=0, le=100)


QUERIES: dict[str, type[BaseModel]] = {"api.list_jobs": JobsPage, "api.get_job": ItemsPage}
"""Endpoint -> the model its query string is parsed with."""

PROMPT_FILE_TYPES = ("text/plain", "text/csv", "application/x-ndjson")
"""Content types of a prompt-file submit body (one prompt per line, CSV, JSON lines)."""

BODIES: dict[str, dict[str, Any]] = {
    "api.submit": {"application/json": {"schema": {"$ref": "#/components/schemas/SubmitRequest"}},
                   **{t: {"schema": {"type": "string"}} for t in PROMPT_FILE_TYPES}},
    "api.upload": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                       "file": {"type": "string", "format": "binary"}}}},
                   **{t: {"schema": {"type": "string", "format": "binary"}}
                      for t in ("image/png", "image/jpeg", "image/webp")}},
    **{endpoint: {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
       for endpoint, model in a1111_schema.BODIES.items()},
    "a1111.set_options": {"application/json": {"schema": {"type": "object"}}},
    "openai.generations": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIImageRequest"}}},
    "openai.edits": {"multipart/form-data": {"schema": {"allOf": [
        {"$ref": "#/components/schemas/OpenAIImageRequest"},
        {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary",
                                                                     "description": "transparent pixels are repainted"}}},
    ]}}},
}
"""Endpoint -> its request body's content types and schemas."""

ANSWERS: dict[str, tuple[str, type[BaseModel] | None]] = {
    "api.submit": ("202", Accepted), "api.cancel_job": ("202", None), "api.retry_job": ("202", None),
    "api.upload": ("201", None),
}
"""Endpoint -> its success status and body model, where not 200 without a published model."""

OTHER_ANSWERS: dict[str, dict[str, dict[str, Any]]] = {
    "api.submit": {"200": {"description": "With `\"dry_run\": true`: the quote (planned items, able and unable "
                                          "workers with reasons, seconds per item, expected start and finish, "
                                          "refusals); nothing is created"}},
}
"""Endpoint -> further success answers it gives besides its main one."""

UNDOCUMENTED = ("static",)
"""Endpoints left out of the document (the page's own files)."""

_PATH_ARG = re.compile(r"<(?:[^:<>]+:)?[^<>]+>")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _parameters(rule: Rule, endpoint: str) -> list[dict[str, Any]]:
    params = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}] if rule.arguments else []
    query = QUERIES.get(endpoint)
    if query is not None:
        schema = query.model_json_schema()
        params += [{"name": name, "in": "query", "required": False, "schema": prop}
                   for name, prop in schema["properties"].items()]
    return params


ERROR_SHAPES = {"openai.": "OpenAIError", "a1111.": "A1111Error"}
"""Endpoint prefix -> the response its errors have, for the doors that answer in another API's shape."""


def _operation(app: Flask, rule: Rule, endpoint: str) -> dict[str, Any]:
    view = app.view_functions[endpoint]
    error = next((name for prefix, name in ERROR_SHAPES.items() if endpoint.startswith(prefix)), "Error")
    status, model = ANSWERS.get(endpoint, ("200", None))
    ok: dict[str, Any] = {"description": "OK"}
    if model is not None:
        ok["content"] = {"application/json": {"schema": _ref(model.__name__)}}
    op: dict[str, Any] = {"operationId": endpoint.replace(".", "_"),
                          "summary": (view.__doc__ or endpoint).strip().splitlines()[0],
                          "responses": {status: ok, **OTHER_ANSWERS.get(endpoint, {}),
                                        "4XX": {"$ref": f"#/components/responses/{error}"}}}
    if endpoint in BODIES:
        op["requestBody"] = {"required": True, "content": BODIES[endpoint]}
    params = _parameters(rule, endpoint)
    if params:
        op["parameters"] = params
    return op


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (SubmitRequest, ErrorBody, Accepted, OpenAIImageRequest, OpenAIError, *a1111_schema.SCHEMAS):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def build_openapi(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of `app`'s routes (path parameters are all named `id`)."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint in UNDOCUMENTED:
            continue
        path = _PATH_ARG.sub("{id}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(app, rule, rule.endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "sdq", "version": __version__, "description": "Distributed Stable Diffusion job queue. "
                 "Item states: " + ", ".join(contract.ITEM_STATES)},
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "responses": {"Error": {"description": "Bad input: the field and the bad value are named",
                                    "content": {"application/json": {"schema": _ref("ErrorBody")}}},
                          "A1111Error": {"description": "The A1111 door's errors, in FastAPI's shape: `detail`, a "
                                         "list of `{loc, msg, type}` for a 422, else a message",
                                         "content": {"application/json": {"schema": {
                                             "type": "object", "required": ["detail"]}}}},
                          "OpenAIError": {"description": "OpenAI's error object, naming the parameter",
                                          "content": {"application/json": {"schema": _ref("OpenAIError")}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "basic": {"type": "http", "scheme": "basic",
                                          "description": "/sdapi/v1 only: any user name, the token as the password"}},
        },
    }
