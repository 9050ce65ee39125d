"""The AUTOMATIC1111 web UI's API under `/sdapi/v1`: A1111 clients (`webuiapi`, chat front ends, plugins) on the queue.

Each txt2img/img2img request becomes an ordinary sdq job of the caller's tenant (`producer.planning.jobs.submit`: caps,
priority, cache, webhooks and storage as usual; it shows in `GET /v1/jobs`), waited for (`a1111_run`) and
answered in A1111's shapes. Errors are FastAPI's, as A1111 answers them: `{"detail": [{"loc", "msg", "type"}]}`
with a 422 for a bad field, `{"detail": "..."}` otherwise. Options (`sd_model_checkpoint` ...) are the
caller's own, kept in Redis: one tenant's never changes another's. docs/INTEGRATIONS.md lists what maps to what.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from producer import bodies, catalog, errors, offload, uploads

from producer.planning import jobs
from producer.doors import a1111_run as run, waiting
from producer.doors.a1111_schema import IMAGE_MAX_CHARS, Img2ImgIn, PngInfoIn, Txt2ImgIn
from producer.doors.a1111_translate import (HARMLESS_SETTINGS, SCHEDULERS, a1111_field, checkpoint, sampler_table,
                                            submit_body)
from producer.schemas import parse_submit
from producer.status import job_view
from sdq import contract, defaults, pipelines
from sdq.celery_app import request_finalize
from sdq.exceptions import ConfigError, InvalidInput, NotFound, TooManyRequests
from sdq.loras import short_name
from sdq.records import Job
from sdq.state import idempotency
from sdq.state.store import JobStore

log = logging.getLogger(__name__)

bp = Blueprint("a1111", __name__, url_prefix="/sdapi/v1")

WAIT_SECONDS = 600.0
"""Default bound on a txt2img/img2img request's wait for its job (`SDQ_A1111_WAIT_SECONDS`)."""

RECENT_JOBS = 20
"""How many of the caller's newest jobs `progress` and `interrupt` look through for one still going."""

Body = TypeVar("Body", bound=BaseModel)


class Rejected(Exception):
    """A request FastAPI would refuse: `detail` as it answers it."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


def register(app: Flask) -> None:
    """Serve the door on `app`; the wait bound comes from `SDQ_A1111_WAIT_SECONDS` unless the app config sets it."""
    text = os.environ.get("SDQ_A1111_WAIT_SECONDS") or str(WAIT_SECONDS)
    try:
        bound = float(text)
    except ValueError:
        bound = -1.0
    if not 0 < bound < float("inf"):
        raise ConfigError(f"SDQ_A1111_WAIT_SECONDS={text!r}: give the seconds a request waits for its job, e.g. 600")
    app.config.setdefault("SDQ_A1111_WAIT_SECONDS", bound)
    app.extensions["sdq_a1111_waits"] = waiting.door_slots(app.extensions["sdq_jobs"], "a1111",
                                                           app.config["SDQ"].max_streams, bound)
    app.register_blueprint(bp)


def _ext(name: str) -> Any:
    return current_app.extensions[name]


# 1. What the caller may use: one place to switch to a model catalog.

def door_models() -> list[str]:
    """Checkpoints the caller may name: the model catalog's entries that make images from text."""
    entries = catalog.catalog(current_app.config["SDQ"].models, [], current_app.extensions["sdq_pushed"])
    return [e["id"] for e in entries if defaults.PIPELINE in e["pipelines"]]


def door_loras(allowlist: tuple[str, ...]) -> list[str]:
    """LoRA adapters the caller may tag: the catalog's adapters."""
    return list(catalog.option_weights(allowlist, current_app.extensions["sdq_pushed"])["loras"])


# 2. Per-tenant options.

def _options(jobs: JobStore, owner: str) -> dict[str, Any]:
    """The caller's options: A1111's defaults for what sdq does, then what the caller set."""
    out: dict[str, Any] = {k: v[0] for k, v in HARMLESS_SETTINGS.items()}
    out.update(sd_model_checkpoint=defaults.MODEL, sd_checkpoint_hash=None, eta_ddim=0.0, eta_ancestral=1.0)
    out.update(jobs.door_options(owner))
    return out


# 3. Parsing and answering.

def _body(model: type[Body]) -> Body:
    """The JSON body parsed with `model`; FastAPI's 422 list of field errors otherwise."""
    data = bodies.read_limited(request, bodies.body_limit(request))
    body = bodies.parse_json(data, 0) if data.strip() else {}
    bodies.check_strings(body)
    if not isinstance(body, dict):
        raise Rejected(422, [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        detail = [{"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
                  for err in exc.errors(include_url=False, include_input=False)]
        raise Rejected(422, json.loads(json.dumps(detail, default=str))) from None


def _submit(body: Txt2ImgIn | Img2ImgIn) -> Response:
    """Submit the request as an sdq job, wait for it and answer A1111's txt2img/img2img shape."""
    settings, owner, state = current_app.config["SDQ"], g.owner, _ext("sdq_jobs")
    # 1. The sdq request, its images uploaded.
    default_model = _options(state, owner)["sd_model_checkpoint"]
    sdq_body = submit_body(body, default_model, door_models(), settings.models)
    with _ext("sdq_a1111_waits").slot(owner):  # at most SDQ_MAX_STREAMS waiting requests per tenant
        try:
            parse_submit(sdq_body)  # the request's own fields, checked before any image is stored
            if isinstance(body, Img2ImgIn):
                _attach_images(body, sdq_body)
            # 2. Submit (the tenant's cap, routing, the job record) and wait.
            once = idempotency.once(owner, "a1111", request.headers.get(idempotency.HEADER), body.model_dump())
            plan = jobs.submit(parse_submit(sdq_body), settings, owner, state, _ext("celery"), once)
        except InvalidInput as exc:
            exc.field = a1111_field(exc.field) or "body"
            raise
        job = waiting.wait(state, plan.job.id, current_app.config["SDQ_A1111_WAIT_SECONDS"])
    # 3. The answer.
    items, pngs = run.results(_ext("sdq_jobs"), _ext("sdq_store"), job)
    if not items and job.state == "failed":
        first = next((it.error for it in _ext("sdq_jobs").items(job.id, 0, 1, job.n_items) if it.error), None)
        return jsonify({"detail": f"job {job.id} failed: {first or 'no image was made'}", "job_id": job.id}), 502
    echo = body.model_dump()
    if isinstance(body, Img2ImgIn) and not body.include_init_images:
        echo.update(init_images=None, mask=None)
    sampler = pipelines.SCHEDULERS[sdq_body["params"]["scheduler"]].sampler
    return jsonify(run.answer(job, items, pngs, echo, body.send_images, sampler))


def _attach_images(body: Img2ImgIn, sdq_body: dict[str, Any]) -> None:
    """Store the init image (and the mask, made sdq's: white repaints) as uploads named in `sdq_body`."""
    settings, owner = current_app.config["SDQ"], g.owner
    store, state, slots = _ext("sdq_store"), _ext("sdq_jobs"), _ext("sdq_decodes")
    init = run.decode_b64((body.init_images or [""])[0], "init_images")
    try:
        record = uploads.save_upload(store, state, init, owner, slots, settings.upload_quota_bytes)
    except InvalidInput as exc:
        raise InvalidInput("init_images", f"init_images: {exc.message}", exc.code, exc.status) from None
    sdq_body["params"]["init_image"] = record["key"]
    if body.mask is None:
        return
    mask = run.decode_b64(body.mask, "mask")
    try:
        png = offload.run(run.mask_png, mask, (record["width"], record["height"]), body.inpainting_mask_invert == 1)
        sdq_body["params"]["mask_image"] = uploads.save_upload(store, state, png, owner, slots,
                                                               settings.upload_quota_bytes)["key"]
    except InvalidInput as exc:
        raise InvalidInput("mask", f"mask: {exc.message}", exc.code, exc.status) from None


def _going(owner: str) -> Job | None:
    """The caller's newest job that has not ended (None: none among its `RECENT_JOBS` newest)."""
    store = _ext("sdq_jobs")
    ids, _ = store.list_jobs(owner, 0, RECENT_JOBS)
    for job in map(store.get, ids):
        if job is not None and job.state not in contract.TERMINAL_STATES:
            return job
    return None


# 4. Routes.

@bp.post("/txt2img")
@bodies.limited(defaults.MAX_OTHER_BODY_BYTES * 16)
def txt2img():
    """A1111 txt2img: images from a prompt, made by an sdq job and waited for."""
    return _submit(_body(Txt2ImgIn))


@bp.post("/img2img")
@bodies.limited(2 * IMAGE_MAX_CHARS + defaults.MAX_OTHER_BODY_BYTES * 16)
def img2img():
    """A1111 img2img: `init_images[0]` changed by the prompt; with `mask`, an inpaint (white is repainted)."""
    return _submit(_body(Img2ImgIn))


@bp.get("/sd-models")
def sd_models():
    """The checkpoints the caller may use, in A1111's shape (`title` is what `sd_model_checkpoint` takes)."""
    return jsonify([{"title": m, "model_name": m, "hash": None, "sha256": None, "filename": m, "config": None}
                    for m in door_models()])


@bp.get("/samplers")
def samplers():
    """Samplers, by A1111 name, each an sdq scheduler."""
    return jsonify([{"name": title, "aliases": [sched, *aliases], "options": {}}
                    for title, sched, aliases in sampler_table()])


@bp.get("/schedulers")
def schedulers():
    """Sigma schedules: only 'Automatic' (each sampler with the model's own schedule)."""
    return jsonify([{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                    for name, label in SCHEDULERS.items()])


@bp.get("/loras")
def loras():
    """LoRA adapters the caller may tag (`<lora:name:weight>`), in A1111's shape."""
    return jsonify([{"name": short_name(a), "alias": short_name(a), "path": a, "metadata": {}}
                    for a in door_loras(current_app.config["SDQ"].models)])


@bp.get("/options")
def get_options():
    """The caller's options (`sd_model_checkpoint` ...)."""
    return jsonify(_options(_ext("sdq_jobs"), g.owner))


@bp.post("/options")
@bodies.limited(defaults.MAX_OTHER_BODY_BYTES)
def set_options():
    """Set the caller's own options (`sd_model_checkpoint`, or A1111 settings at values sdq runs with)."""
    data = bodies.read_limited(request, bodies.body_limit(request))
    body = bodies.parse_json(data, 0) if data.strip() else {}
    bodies.check_strings(body)
    if not isinstance(body, dict):
        raise Rejected(422, [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}])
    values: dict[str, str] = {}
    for key, value in body.items():
        if key == "sd_model_checkpoint":
            value = checkpoint(value, door_models(), key)
        elif value not in HARMLESS_SETTINGS.get(key, ()):
            raise InvalidInput(key, f"{key}: this option is not supported at {value!r}", code="unsupported")
        values[key] = value
    _ext("sdq_jobs").set_door_options(g.owner, values)
    return jsonify(None)


@bp.get("/progress")
def progress():
    """The caller's newest unfinished job's progress, in A1111's shape (`current_image` is always null)."""
    job = _going(g.owner)
    state: dict[str, Any] = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
                             "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0,
                             "sampling_steps": 0}
    if job is None:
        return jsonify({"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                        "textinfo": None, "current_task": None})
    doc = job_view(job, _ext("sdq_jobs"), _ext("sdq_store"), with_items=False, with_position=False)
    done = sum(job.counts.get(k, 0) for k in contract.TERMINAL_STATES)
    per_item = job.steps_total // max(1, job.n_items)
    state.update(job=job.id, job_count=job.n_items, job_no=done, interrupted=bool(job.cancel),
                 job_timestamp=f"{int(job.created_at or 0)}", sampling_steps=per_item,
                 sampling_step=max(0, min(per_item, job.steps_done - done * per_item)))
    return jsonify({"progress": doc["progress"], "eta_relative": doc["eta_seconds"] or 0.0, "state": state,
                    "current_image": None, "textinfo": f"sdq job {job.id}: {job.state}", "current_task": job.id})


@bp.post("/interrupt")
def interrupt():
    """Cancel the caller's newest unfinished job (queued items never run, running ones stop at their next step)."""
    job = _going(g.owner)
    if job is not None:
        _, ended = _ext("sdq_jobs").cancel(job.id)
        if ended:
            request_finalize(_ext("celery"), job.id)
    return jsonify({})


@bp.get("/scripts")
def scripts():
    """Scripts by tab: none (sdq runs no A1111 scripts or extensions; `webuiapi` asks at start)."""
    return jsonify({"txt2img": [], "img2img": []})


@bp.post("/png-info")
@bodies.limited(IMAGE_MAX_CHARS + defaults.MAX_OTHER_BODY_BYTES)
def png_info():
    """The generation parameters a PNG carries (its `parameters` text chunk, A1111 infotext)."""
    body = _body(PngInfoIn)
    if not body.image:
        raise InvalidInput("image", "image: give a base64 image", code="missing")
    return jsonify(offload.run(run.png_info, run.decode_b64(body.image, "image")))


# 5. Errors in FastAPI's shapes.

def _detail(status: int, detail: Any, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    resp = jsonify({"detail": detail, **extra})
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


@bp.errorhandler(InvalidInput)
def _invalid(exc: InvalidInput) -> Response:
    if exc.status == 401:
        return _detail(401, "Incorrect username or password (HTTP Basic: any user name, the sdq token as the "
                       "password; or Authorization: Bearer <token>)", {"WWW-Authenticate": "Basic"})
    if exc.status != 422:
        return _detail(exc.status, exc.message)
    loc = ["body", *str(exc.field or "body").removeprefix("body").lstrip(".").split(".")]
    return _detail(422, [{"loc": [p for p in loc if p], "msg": exc.message, "type": exc.code}])


@bp.errorhandler(Rejected)
def _rejected(exc: Rejected) -> Response:
    return _detail(exc.status, exc.detail)


@bp.errorhandler(waiting.JobPending)
def _timeout(exc: waiting.JobPending) -> Response:
    return _detail(408, str(exc), job_id=exc.job_id)


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound) -> Response:
    return _detail(404, str(exc))


@bp.errorhandler(TooManyRequests)
def _too_many(exc: TooManyRequests) -> Response:
    return _detail(429, str(exc), {"Retry-After": str(exc.retry_after)})


@bp.errorhandler(HTTPException)
def _http(exc: HTTPException) -> Response:
    return _detail(exc.code or 500, exc.description or exc.name)


@bp.errorhandler(Exception)
def _other(exc: Exception) -> Response:
    if isinstance(exc, errors._service_errors()):
        log.warning("service unavailable: %s", exc)
        return _detail(503, f"a backing service is unavailable ({type(exc).__name__}); retry later",
                       {"Retry-After": str(defaults.UNAVAILABLE_RETRY_AFTER)})
    log.exception("unhandled error")
    return _detail(500, f"internal error ({type(exc).__name__}); this is a bug")
