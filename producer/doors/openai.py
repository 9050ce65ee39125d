"""The OpenAI Images API under `/openai/v1`: `images/generations`, `images/edits`, `models`.

`OpenAI(base_url="http://HOST:8000/openai/v1", api_key=TOKEN)` works unchanged: the API key is the
caller's sdq token (the Bearer auth of every route), and every request becomes an ordinary sdq job of
the caller's tenant (`producer.planning.jobs.submit`: caps, priorities, the result cache, storage as usual;
the job shows in `GET /v1/jobs`). The request then waits for its job (`openai_wait`), bounded by
`SDQ_OPENAI_WAIT_SECONDS`, and answers OpenAI's `ImagesResponse`. Errors are OpenAI's error object
(`{"error": {"message", "type", "param", "code"}}`, `errors.register_dialect`); bad input is a 400
naming the OpenAI parameter, an unknown model a 404, a full tenant queue a 429.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from producer import bodies, catalog

from producer.planning import jobs
from producer.doors import openai_images, openai_params, openai_wait, waiting
from producer.doors.openai_params import DoorSettings, ImageRequest, parse_request
from producer.errors import register_dialect
from producer.schemas import PROMPT_MAX_CHARS, parse_submit
from sdq import defaults
from sdq.exceptions import InvalidInput, NotFound
from sdq.models import check_model
from sdq.state import idempotency
from sdq.state.limits import TenantSlots

PREFIX = "/openai/v1"
bp = Blueprint("openai", __name__, url_prefix=PREFIX)

FIELDS = {"prompts": "prompt", "items": "n", "params.images_per_prompt": "n", "params.width": "size",
          "params.height": "size", "params.hires.scale": "size", "params.steps": "quality",
          "params.init_image": "image", "params.mask_image": "mask", "file": "image"}
"""sdq request field -> the OpenAI parameter it came from (errors name the caller's parameter)."""

TYPES = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
         408: "timeout_error", 429: "rate_limit_error"}
"""HTTP status -> OpenAI error `type` (other 4xx: `invalid_request_error`; 5xx: `server_error`)."""


def openai_error(status: int, code: str, message: str, field: str | None) -> tuple[dict[str, Any], int]:
    """An error in OpenAI's shape; sdq's 422 (a well-formed but unacceptable request) is OpenAI's 400."""
    status = 400 if status == 422 else status
    param = FIELDS.get(field or "", field)
    if code == "unknown_model":
        status, code = 404, "model_not_found"
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}, status


def _ext(name: str) -> Any:
    return current_app.extensions[name]


def _door() -> DoorSettings:
    return current_app.config["SDQ_OPENAI"]


def _submit(req: ImageRequest, pipeline: str, extra: dict[str, Any], pipeline_param: str,
            once: idempotency.Once | None = None) -> Any:
    """Submit the sdq job of `req` (with `extra` params: upload keys ...) through the job layer of
    `POST /v1/jobs` (`once`: its Idempotency-Key); errors name OpenAI's parameters."""
    settings = current_app.config["SDQ"]
    params: dict[str, Any] = {"images_per_prompt": req.n, **extra}
    if req.size is not None:
        params.update(width=req.size[0], height=req.size[1])
    if req.steps is not None:
        params["steps"] = req.steps
    body = {"prompts": [req.prompt], "model": _door().resolve(req.model or None), "pipeline": pipeline,
            "params": params}
    try:
        return jobs.submit(parse_submit(body), settings, g.owner, _ext("sdq_jobs"), _ext("celery"),
                           once)
    except InvalidInput as exc:
        raise _renamed(exc, req, pipeline_param) from None


def _renamed(exc: InvalidInput, req: ImageRequest, pipeline_param: str) -> InvalidInput:
    """`exc` naming the OpenAI parameter behind the sdq field it names (`pipeline_param` for the pipeline)."""
    param = pipeline_param if exc.field == "pipeline" else FIELDS.get(exc.field, exc.field)
    message = exc.message
    if param == "size" and req.size is not None:
        message = f"size {req.size[0]}x{req.size[1]}: {message}"
    return InvalidInput(param, message, code=exc.code, status=exc.status)


_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})(?:$|[,;\s])")


def wait_bound() -> float:
    """Seconds to wait for the job: `SDQ_OPENAI_WAIT_SECONDS`, or less when the request says `Prefer: wait=N`."""
    bound = _door().wait_seconds
    match = _PREFER_WAIT.search(request.headers.get("Prefer", "")[:200])
    return min(bound, max(1, int(match.group(1)))) if match else bound


def _answer(req: ImageRequest, pipeline: str, extra: dict[str, Any], pipeline_param: str, request_id: Any):
    """Take a wait slot, submit, wait for the job, answer its images. With an `Idempotency-Key` (the openai SDK
    sends one and keeps it when it retries), the same request (`request_id`: what identifies it) answers the
    first job's images instead of making another."""
    once = idempotency.once(g.owner, "openai", request.headers.get(idempotency.HEADER), request_id)
    slots: TenantSlots = _ext("sdq_openai_waits")
    with slots.slot(g.owner):
        plan = _submit(req, pipeline, extra, pipeline_param, once)
        job = waiting.wait(_ext("sdq_jobs"), plan.job.id, wait_bound())
        if job is None:
            raise NotFound(f"job {plan.job.id} is gone")
        data, size = openai_wait.images(job, _ext("sdq_jobs"), _ext("sdq_store"), req)
    return jsonify(openai_wait.response(job, data, size, req))


MASKED, INSTRUCTED, WHOLE = "inpaint", "edit", "img2img"
"""The sdq pipelines of an edit: with a mask; without one, where the model's family has an instruction-edit
pipeline; without one otherwise."""


def _model_id(req: ImageRequest, pipeline: str | None) -> str:
    """The sdq model `req` names, checked (for `pipeline`; None: any it runs) before any image is stored
    (404 for an unknown one)."""
    model = _door().resolve(req.model or None)
    if pipeline is None:
        pipeline = next(iter(catalog.pipelines_of(model, _ext("sdq_pushed"))), WHOLE)
    try:
        check_model(model, pipeline, current_app.config["SDQ"].models)
    except InvalidInput as exc:
        raise _renamed(exc, req, "model") from None
    return model


@bp.post("/images/generations")
def generations():
    """OpenAI `images.generate`: an sdq txt2img job of `n` images, answered when it ends."""
    if not request.is_json:
        raise InvalidInput("body", "the body must be JSON (Content-Type: application/json)", code="invalid_json",
                           status=400)
    body = bodies.parse_json(bodies.read_limited(request, bodies.body_limit(request)), 1)
    if not isinstance(body, dict):
        raise InvalidInput("body", "the body must be a JSON object", code="invalid_json", status=400)
    bodies.check_strings(body)
    req = parse_request(body, PROMPT_MAX_CHARS)
    _model_id(req, "txt2img")
    return _answer(req, "txt2img", {}, "model", body)


def _edit_pipeline(model: str, images: dict[str, Any]) -> tuple[str, str]:
    """(pipeline, the OpenAI parameter its refusals name) of an edit; a masked one's `strength` is 1 (the
    transparent part is made anew, as OpenAI does)."""
    if "mask_image" in images:
        images["strength"] = 1.0
        return MASKED, "mask"
    return (INSTRUCTED if INSTRUCTED in catalog.pipelines_of(model, _ext("sdq_pushed")) else WHOLE), "model"


@bp.post("/images/edits")
@bodies.limited(2 * defaults.MAX_UPLOAD_BODY_BYTES)  # an image and a mask
def edits():
    """OpenAI `images.edit`: with a mask (or a transparent image) an sdq inpaint job, else img2img (or edit)."""
    if request.mimetype != "multipart/form-data":
        raise InvalidInput("image", "images/edits takes multipart/form-data with an 'image' file", code="invalid_body",
                           status=400)
    form = {k: v for k, v in request.form.items()}
    for name in ("image", "image[]", "mask"):
        if name in form:
            raise InvalidInput(name, f"'{name}' must be a file part, not a text field", code="invalid_type",
                               status=400)
    bodies.check_strings(form)
    req = parse_request(form, PROMPT_MAX_CHARS)
    parts = request.files.getlist("image") + request.files.getlist("image[]")
    unknown = [k for k in request.files if k not in ("image", "image[]", "mask")]
    if unknown:
        raise openai_params.unknown(unknown[0])
    if len(parts) != 1:
        raise InvalidInput("image", f"sdq edits one image per request, got {len(parts)}" if parts else
                           "Missing required parameter: 'image'.", code="invalid_value", status=400)
    mask_part = request.files.get("mask")
    model = _model_id(req, None)
    image = openai_images.read_file(parts[0], "image")
    mask = openai_images.read_file(mask_part, "mask") if mask_part is not None else None
    settings = current_app.config["SDQ"]
    images = openai_images.store_images(image, mask, _ext("sdq_store"), _ext("sdq_jobs"), g.owner,
                                        _ext("sdq_decodes"), settings.upload_quota_bytes)
    pipeline, param = _edit_pipeline(model, images)
    files = {"image": hashlib.sha256(image).hexdigest(), "mask": mask and hashlib.sha256(mask).hexdigest()}
    return _answer(req, pipeline, images, param, {"form": form, "files": files})


def _model_object(entry: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return {"id": name or entry["id"], "object": "model", "created": 0, "owned_by": "sdq",
            "sdq": {k: entry[k] for k in ("id", "family", "pipelines", "defaults", "warm_on")}}


def _models() -> list[dict[str, Any]]:
    """The catalog as OpenAI model objects: each alias (pointing at an allowed model), then every model id."""
    entries = {e["id"]: e for e in catalog.catalog(current_app.config["SDQ"].models,
                                                   _ext("sdq_jobs").live_workers(), _ext("sdq_pushed"))}
    aliases = [_model_object(entries[target], alias) for alias, target in _door().aliases.items() if target in entries]
    return aliases + [_model_object(e) for e in entries.values()]


@bp.get("/models")
def models():
    """OpenAI `models.list`: the model catalog (`GET /v1/models`) in OpenAI's list shape, aliases first."""
    return jsonify({"object": "list", "data": _models()})


@bp.get("/models/<path:model>")
def model(model: str):
    """OpenAI `models.retrieve`: one model (an alias or an sdq model id); 404 `model_not_found` otherwise."""
    found = next((m for m in _models() if m["id"] == model), None)
    if found is None:
        raise InvalidInput("model", f"The model {model[:200]!r} does not exist or you do not have access to it.",
                           code="unknown_model", status=404)
    return jsonify(found)


@bp.errorhandler(waiting.JobPending)
def _pending(exc: waiting.JobPending):
    resp, status = openai_error(408, "job_pending", str(exc), None)
    resp["error"]["job_id"] = exc.job_id
    out = jsonify(resp)
    out.headers.update({"x-should-retry": "false", "Location": f"/v1/jobs/{exc.job_id}"})
    return out, status


@bp.errorhandler(openai_wait.JobEnded)
def _ended(exc: openai_wait.JobEnded):
    status, code = (409, "job_cancelled") if exc.job.state == "cancelled" else (500, "job_failed")
    resp, status = openai_error(status, code, str(exc), None)
    resp["error"]["job_id"] = exc.job.id
    out = jsonify(resp)
    out.headers.update({"x-should-retry": "false", "Location": f"/v1/jobs/{exc.job.id}"})
    return out, status


def setup(app: Any) -> None:
    """Register the door on `app`: its settings (from the environment), wait slots, blueprint and error shape."""
    door = DoorSettings.from_env()
    settings = app.config["SDQ"]
    app.config.setdefault("SDQ_OPENAI", door)
    app.extensions["sdq_openai_waits"] = waiting.door_slots(app.extensions["sdq_jobs"], "openai",
                                                            settings.max_streams, door.wait_seconds)
    app.register_blueprint(bp)
    register_dialect(PREFIX, openai_error)
