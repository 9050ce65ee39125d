"""Routes about the service itself: the web page, Prometheus metrics and the OpenAPI document."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify

from producer import form
from producer.openapi import build_openapi
from sdq import __version__, contract
from sdq.records import WorkerRecord
from sdq.state.store import JobStore

bp = Blueprint("meta", __name__)

PAGE = Path(__file__).with_name("static") / "index.html"


PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "img-src 'self' data: http: https:; media-src http: https:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
"""The page's Content-Security-Policy: its own scripts only; images and videos may come from the bucket's host."""


@bp.get("/")
def index():
    """The web page (producer/static): submit prompts, watch jobs fill with images, see the fleet."""
    return Response(form.render(PAGE.read_text(encoding="utf-8")), mimetype="text/html", headers={
        "Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


def queue_depths(jobs: JobStore, workers: list[WorkerRecord] | None = None) -> dict[str, int]:
    """Task messages waiting per queue (every priority level summed): every queue that live workers
    consume, and every other shared or control queue that holds messages (with no worker at all, a
    backlog still shows)."""
    consumed = {q for w in (jobs.live_workers() if workers is None else workers) for q in w.queues}
    depths = jobs.queue_lengths(sorted(consumed | {*contract.item_queues(), contract.CONTROL_QUEUE}))
    return {q: n for q, n in depths.items() if n or q in consumed}


@bp.get("/metrics")
def metrics():
    """Prometheus text format, read from Redis at scrape time (the same from every producer process)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    jobs = current_app.extensions["sdq_jobs"]
    registry = CollectorRegistry()
    workers = jobs.live_workers()
    Gauge("sdq_workers_live", "Live workers in the fleet", registry=registry).set(len(workers))
    done = Gauge("sdq_worker_items_done", "Items made by a live worker since it started", ["worker", "device", "dtype"],
                 registry=registry)
    for w in workers:
        done.labels(w.name, w.device, w.dtype).set(w.items_done)
    depth = Gauge("sdq_queue_messages", "Task messages waiting in a queue", ["queue"], registry=registry)
    for queue, size in queue_depths(jobs, workers).items():
        depth.labels(queue).set(size)
    Gauge("sdq_info", "sdq version", ["version"], registry=registry).labels(__version__).set(1)
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of the HTTP API, generated from the routes and their models."""
    return jsonify(build_openapi(current_app))
