"""Routes about the service itself: the web page, Prometheus metrics and the OpenAPI document."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify

from producer.schemas import SubmitRequest
from sdq import __version__, contract, fleet

bp = Blueprint("meta", __name__)

PAGE = Path(__file__).with_name("static") / "index.html"
REDIS_PRIORITY_SEP = "\x06\x16"
"""kombu's separator between a queue name and its priority suffix."""


PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "img-src 'self' data: http: https:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
"""The page's Content-Security-Policy: its own scripts only; images may come from the bucket's host."""


@bp.get("/")
def index():
    """The web page (producer/static): submit prompts, watch jobs fill with images, see the fleet."""
    return Response(PAGE.read_text(encoding="utf-8"), mimetype="text/html", headers={
        "Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


def _queue_depths(client) -> dict[str, int]:
    names = {q for w in fleet.live_workers(client) for q in w.get("queues", [])}
    pipe = client.pipeline(transaction=False)
    ordered = sorted(names)
    for q in ordered:
        for pri in range(10):
            pipe.llen(q if pri == 0 else f"{q}{REDIS_PRIORITY_SEP}{pri}")
    sizes = pipe.execute()
    return {q: sum(sizes[i * 10:(i + 1) * 10]) for i, q in enumerate(ordered)}


@bp.get("/metrics")
def metrics():
    """Prometheus text format, read from Redis at scrape time (the same from every producer process)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    client = current_app.extensions["sdq_redis"]
    registry = CollectorRegistry()
    workers = fleet.live_workers(client)
    Gauge("sdq_workers_live", "Live workers in the fleet", registry=registry).set(len(workers))
    done = Gauge("sdq_worker_items_done", "Items made by a live worker since it started", ["worker", "device", "dtype"],
                 registry=registry)
    for w in workers:
        done.labels(w["name"], w["device"], w["dtype"]).set(w.get("items_done", 0))
    depth = Gauge("sdq_queue_messages", "Task messages waiting in a queue", ["queue"], registry=registry)
    for queue, size in _queue_depths(client).items():
        depth.labels(queue).set(size)
    Gauge("sdq_info", "sdq version", ["version"], registry=registry).labels(__version__).set(1)
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")


def _op(summary: str, body: str | None = None, params: tuple[str, ...] = ()) -> dict:
    op: dict = {"summary": summary, "responses": {"200": {"description": "OK"},
                                                  "4XX": {"$ref": "#/components/responses/Error"}}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": body}}}}
    if params:
        op["parameters"] = [{"name": p, "in": "path" if p == "id" else "query", "required": p == "id",
                             "schema": {"type": "string" if p == "id" else "integer"}} for p in params]
    return op


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of the HTTP API."""
    submit_schema = SubmitRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = submit_schema.pop("$defs", {})
    schemas["SubmitRequest"] = submit_schema
    schemas["Error"] = {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": ["string", "null"]}}}}}
    job = "/v1/jobs/{id}"
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "sdq", "version": __version__,
                 "description": "Distributed Stable Diffusion job queue. Item states: " + ", ".join(contract.ITEM_STATES)},
        "paths": {
            "/v1/jobs": {"post": _op("Submit a job (202)", "#/components/schemas/SubmitRequest"),
                         "get": _op("List the caller's jobs", params=("offset", "limit"))},
            job: {"get": _op("Job status with a page of items", params=("id", "offset", "limit")),
                  "delete": _op("Cancel a job", params=("id",))},
            job + "/events": {"get": _op("Server-Sent Events of a job", params=("id",))},
            job + "/retry": {"post": _op("Re-queue failed and cancelled items", params=("id",))},
            job + "/download.zip": {"get": _op("The job's PNGs, manifest and grid as a zip (streamed)",
                                               params=("id",))},
            "/v1/uploads": {"post": _op("Upload an init image (PNG/JPEG/WebP)")},
            "/v1/uploads/{id}": {"get": _op("An upload's record (the caller's own only)", params=("id",))},
            "/v1/webhook-secret": {"get": _op("The caller's webhook signing secret")},
            "/v1/workers": {"get": _op("Live workers and their capability records")},
            "/v1/queues": {"get": _op("Task messages waiting per queue")},
            "/healthz": {"get": _op("Liveness")},
            "/metrics": {"get": _op("Prometheus metrics")},
        },
        "components": {"schemas": schemas, "responses": {"Error": {
            "description": "Bad input: the field and the bad value are named",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
    return jsonify(doc)
