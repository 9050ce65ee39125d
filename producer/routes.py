"""HTTP routes: parse, call the job layer, return JSON. No business logic here."""
from __future__ import annotations

from typing import TypeVar

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError

from producer import bodies, catalog, events, tenants, uploads

from producer.planning import jobs
from producer.planning.formats import body_from_prompt_file
from producer.openapi import ItemsPage, JobsPage
from producer.planning.quote import quote
from producer.schemas import parse_submit
from producer.status import job_view
from sdq.celery_app import request_finalize
from sdq.exceptions import InvalidInput, NotFound
from sdq.records import Job
from sdq.state import idempotency
from sdq.webhooks import tenant_secret

bp = Blueprint("api", __name__)

Query = TypeVar("Query", bound=BaseModel)


def _ext(name: str):
    return current_app.extensions[name]


def _query(model: type[Query]) -> Query:
    """The query string parsed with `model` (the one the OpenAPI document publishes); 400 naming the argument."""
    try:
        return model.model_validate({k: v for k, v in request.args.items() if k in model.model_fields})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = str(err["loc"][0])
        raise InvalidInput(name, f"{name}: {err['msg']} (got {err.get('input')!r})", status=400) from None


PUBLIC_ENDPOINTS = ("api.healthz", "meta.index", "static")
"""Endpoints that need no token: liveness and the (data-free) web page."""


@bp.before_app_request
def authenticate() -> Response | None:
    """Bound the body by endpoint; with SDQ_API_TOKENS set, require a bearer token and remember its owner."""
    limit = bodies.body_limit(request)
    try:
        request.max_content_length = limit  # Flask >= 3.1: also bounds a body sent without Content-Length
    except AttributeError:  # Flask 3.0: the app-wide MAX_CONTENT_LENGTH applies
        pass
    if (request.content_length or 0) > limit:
        raise InvalidInput("body", f"a body of {request.content_length} bytes exceeds this endpoint's limit of "
                           f"{limit} bytes", code="too_large", status=413)
    tokens = current_app.config["SDQ"].api_tokens
    g.owner = ""
    if not tokens or request.endpoint in PUBLIC_ENDPOINTS:
        return None
    token = tenants.presented_token(request.headers.get("Authorization", ""), basic=request.path.startswith("/sdapi/"))
    owner = tenants.owner_of(tokens, token) if token else None
    if owner is None:  # raised: a door answers it in its own API's shape
        raise InvalidInput("Authorization", "missing or unknown bearer token", code="unauthorized", status=401)
    g.owner = owner
    return None


def _own_job(job_id: str) -> Job:
    """The caller's job `job_id` (404 for an unknown id or another tenant's job)."""
    return tenants.own_job(_ext("sdq_jobs"), job_id, g.owner)


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers and reaches Redis (a 503 without the address when it does not)."""
    _ext("sdq_jobs").ping()
    return jsonify({"ok": True})


@bp.post("/v1/jobs")
def submit():
    """Validate, record and enqueue a job; 202 with its id. JSON, or a prompt file (producer.planning.formats).
    With an `Idempotency-Key` header, the same request sent again within a day answers its first job."""
    settings = current_app.config["SDQ"]
    body = bodies.read_submit(request, settings.max_items)
    if bodies.is_prompt_file(request.mimetype):
        body = body_from_prompt_file(body, request.mimetype, request.args.to_dict())
    bodies.check_strings(body)
    once = idempotency.once(g.owner, "v1", request.headers.get(idempotency.HEADER), body)
    req = parse_submit(body)
    if req.dry_run:
        return jsonify(quote(req, settings, g.owner, _ext("sdq_jobs"))), 200
    plan = jobs.submit(req, settings, g.owner, _ext("sdq_jobs"), _ext("celery"), once)
    job_id = plan.job.id
    return jsonify({
        "id": job_id, "state": plan.job.state if plan.replayed else "queued", "items": plan.job.n_items,
        "seed": plan.job.seed, "warnings": plan.warnings,
        "links": {"self": f"/v1/jobs/{job_id}", "events": f"/v1/jobs/{job_id}/events"},
    }), 202, ({"Idempotent-Replayed": "true"} if plan.replayed else {})


@bp.get("/v1/jobs")
def list_jobs():
    """The caller's jobs, newest first."""
    page = _query(JobsPage)
    offset, limit = page.offset, page.limit
    job_store = _ext("sdq_jobs")
    ids, total = job_store.list_jobs(g.owner, offset, limit)
    docs = [job_view(j, job_store, _ext("sdq_store"), with_items=False, with_position=False)
            for j in map(job_store.get, ids) if j]
    return jsonify({"jobs": docs, "total": total, "offset": offset, "limit": limit})


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    """Job status with one page of items."""
    job = _own_job(job_id)
    page = _query(ItemsPage)
    return jsonify(job_view(job, _ext("sdq_jobs"), _ext("sdq_store"), page.offset, page.limit))


@bp.delete("/v1/jobs/<job_id>")
def cancel_job(job_id: str):
    """Cancel: queued items never run, running ones stop at their next step."""
    _own_job(job_id)
    state, ended = _ext("sdq_jobs").cancel(job_id)
    if ended:  # no item was running: this call ended the job; a worker finalises it (never here)
        request_finalize(_ext("celery"), job_id)
    return jsonify({"id": job_id, "state": state}), 202


@bp.post("/v1/jobs/<job_id>/retry")
def retry_job(job_id: str):
    """Re-queue the job's failed and cancelled items with their seeds (429 past the tenant's queued-items cap)."""
    _own_job(job_id)
    settings = current_app.config["SDQ"]
    requeued = jobs.requeue(_ext("sdq_jobs"), _ext("celery"), job_id, _ext("sdq_jobs").live_workers(),
                            settings.outbox_lease, settings.max_queued_items)
    job = _ext("sdq_jobs").get(job_id)
    return jsonify({"id": job_id, "state": job.state, "requeued": len(requeued),
                    "items": [it.index for it in requeued[:1000]]}), 202


@bp.get("/v1/jobs/<job_id>/events")
def job_events(job_id: str):
    """Server-Sent Events of one job (see producer.events)."""
    _own_job(job_id)
    frames = events.open_stream(_ext("sdq_streams"), g.owner, _ext("sdq_jobs"), _ext("sdq_store"),
                                job_id, max_seconds=current_app.config["SDQ"].stream_max_seconds)
    return Response(frames, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.post("/v1/uploads")
def upload():
    """Store an init image (PNG/JPEG/WebP; multipart `file` or raw body); 201 with {key, width, height}."""
    data = uploads.read_upload_body(request)
    return jsonify(uploads.save_upload(_ext("sdq_store"), _ext("sdq_jobs"), data, g.owner, _ext("sdq_decodes"),
                                       current_app.config["SDQ"].upload_quota_bytes)), 201


@bp.get("/v1/uploads/<name>")
def upload_info(name: str):
    """An upload's record {key, width, height}; 404 unless the caller uploaded it."""
    key = f"{uploads.UPLOAD_PREFIX}{name}"
    try:
        record = uploads.upload_record(_ext("sdq_jobs"), key, g.owner, "key")
    except InvalidInput:
        raise NotFound(f"no upload {key!r}") from None
    return jsonify({k: record[k] for k in ("key", "width", "height")})


@bp.get("/v1/workers")
def workers():
    """Live workers and their capability records (another tenant's current job is not named)."""
    records = _ext("sdq_jobs").live_workers()
    return jsonify({"workers": tenants.redact_workers(records, _ext("sdq_jobs"), g.owner)})


@bp.get("/v1/models")
def models():
    """Every model the caller may name: family, pipelines, options, defaults, the workers holding it warm."""
    return jsonify({"models": catalog.catalog(current_app.config["SDQ"].models, _ext("sdq_jobs").live_workers(),
                                              _ext("sdq_pushed"))})


@bp.get("/v1/webhook-secret")
def webhook_secret():
    """The caller's own webhook signing secret (derived from SDQ_WEBHOOK_SECRET and the tenant)."""
    master = current_app.config["SDQ"].webhook_secret
    if not master:
        raise NotFound("webhook signing is not configured on this server (SDQ_WEBHOOK_SECRET is unset)")
    return jsonify({"secret": tenant_secret(master, g.owner), "algorithm": "hmac-sha256"})
