"""Turning a validated submit request into a job, its items and its task messages."""
from __future__ import annotations

import itertools
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from celery import Celery

from producer.family import check_item, family_defaults, info_for
from producer.inputs import item_images
from producer.schemas import ITEM_PARAM_KEYS, SubmitRequest
from producer.sweep import check_sweep, combinations, count as sweep_count
from sdq import contract, defaults, families, fleet, pipelines, scheduling, speed
from sdq.config import Settings
from sdq.exceptions import InvalidInput
from sdq.grid import GRID_MAX_ITEMS, check_fits
from sdq.models import check_model
from sdq.celery_app import item_queue, send_chunk
from sdq.records import Chunk, Item, Job
from sdq.webhooks import check_webhook_url

DEFAULTS: dict[str, Any] = {key: getattr(defaults, key.upper(), None) for key in ITEM_PARAM_KEYS
                            if key not in pipelines.FAMILY_PARAMS} | {
    p.name: p.default for p in pipelines.all_params().values() if p.name not in pipelines.FAMILY_PARAMS}
"""Item parameter defaults (the named ones in `sdq.defaults`), applied at submit and recorded in the job;
a model family's own defaults are added over them (`producer.family`)."""


@dataclass
class Plan:
    """A job ready to record and enqueue."""

    job: Job
    items: list[Item]
    warnings: list[str] = field(default_factory=list)


def _item_params(base: dict[str, Any], override: Any | None) -> dict[str, Any]:
    params = {k: base.get(k) for k in ITEM_PARAM_KEYS}
    if override is not None:
        params.update({k: getattr(override, k) for k in ITEM_PARAM_KEYS if getattr(override, k) is not None})
    # A family parameter is carried only when set (its family's default, or given): other families'
    # items stay as they were (their result cache keys and infotext unchanged).
    return {k: v for k, v in params.items() if v is not None or k not in pipelines.FAMILY_PARAMS}


def _pixels(pipeline: str, params: dict[str, Any]) -> int:
    w, h = contract.output_size(pipeline, params["width"], params["height"])
    return w * h


def _check_limits(pipeline: str, params: dict[str, Any], where: str, settings: Settings) -> None:
    w, h = contract.output_size(pipeline, params["width"], params["height"])
    if w * h > settings.max_pixels:
        raise InvalidInput(f"{where}width", f"{w}x{h} output ({w * h} pixels) exceeds this server's limit of "
                           f"{settings.max_pixels} pixels per image", code="too_large")


def _init_image_size(params: dict[str, Any], record: dict[str, Any] | None, explicit: set[str],
                     multiple: int = 8) -> dict[str, Any]:
    """Image pipelines work at the init image's size unless width/height are given: the worker resizes
    the image to width x height (rounded down to a multiple of 8, or of the model family's own
    `size_multiple`); upscale makes 4x that."""
    if record is None:
        return params
    size = {"width": record["width"], "height": record["height"]}
    return {**params, **{k: max(multiple, v // multiple * multiple) for k, v in size.items() if k not in explicit}}


def plan_job(req: SubmitRequest, settings: Settings, owner: str,
             uploads: Callable[[str, str], dict[str, Any]] | None = None) -> Plan:
    """Validate `req` against the server's limits and expand it into items (nothing written).
    `uploads(key, field)` returns an init image's upload record or raises InvalidInput naming `field`."""
    # 1. Model and job-wide parameters.
    check_model(req.model, req.pipeline, settings.models)
    if req.webhook_url:
        check_webhook_url(req.webhook_url, settings.webhook_allow_private)
    sweep = check_sweep(req.sweep)
    given = req.params.model_dump(exclude_none=True)
    info = info_for(req.model, req.pipeline)
    base = {**DEFAULTS, **family_defaults(info, given), **given}
    check_item(info.family, req.model, base, "params.")
    spec = pipelines.spec(req.pipeline)
    if spec.default_side is not None:
        base.update({side: spec.default_side for side in ("width", "height") if side not in given})
    seed = req.params.seed if req.params.seed is not None else secrets.randbelow(2**31)
    n_per = req.params.images_per_prompt
    watermark = settings.watermark_default if req.params.watermark is None else req.params.watermark

    # 2. Items: prompts or explicit items, times sweep combinations, times images_per_prompt.
    sources = [(p, None) for p in req.prompts] if req.prompts else [(it.prompt, it) for it in req.items]
    total = len(sources) * sweep_count(sweep) * n_per  # counted before anything is expanded
    if total > settings.max_items:
        raise InvalidInput("sweep" if sweep else "prompts" if req.prompts else "items",
                           f"{total} items exceed this server's limit of {settings.max_items} per job",
                           code="too_many_items")
    if req.params.grid and total > GRID_MAX_ITEMS:
        raise InvalidInput("params.grid", f"a grid holds at most {GRID_MAX_ITEMS} images; this job has {total}",
                           code="too_many_items")
    combos = combinations(sweep)
    items: list[Item] = []
    for src, (prompt, it) in enumerate(sources):
        where = f"items[{src}]." if it is not None else "params."
        params = _item_params(base, it)
        images = item_images(spec, given, it, where, uploads)
        if images.size is not None:
            explicit = {k for k in ("width", "height") if k in given or (it is not None and getattr(it, k) is not None)}
            params = _init_image_size(params, images.size, explicit,
                                      info.family.size_multiple if info.family else 8)
        _check_limits(req.pipeline, params, where, settings)
        check_item(info.family, req.model, params, where)
        negative = it.negative_prompt if it is not None and it.negative_prompt is not None else base["negative_prompt"]
        cache = it.cache if it is not None and it.cache is not None else req.params.cache  # False: run fresh
        for combo in combos:
            # A sweep overrides job and item values; its cells of one prompt share a seed.
            cell = {**params, **{k: v for k, v in combo.items() if k in ITEM_PARAM_KEYS}}
            if combo:
                _check_limits(req.pipeline, cell, "sweep.", settings)
                check_item(info.family, req.model, cell, "sweep.")
            for k in range(n_per):
                index = len(items)
                if "seed" in combo:
                    item_seed = combo["seed"] + k
                elif it is not None and it.seed is not None:
                    item_seed = it.seed + k
                else:
                    item_seed = seed + (src * n_per + k if combo else index)
                items.append(Item(
                    index=index, prompt=prompt, negative_prompt=combo.get("negative_prompt", negative),
                    seed=item_seed % (2**32), init_image=images.init_image, images=images.others, params=cell,
                    steps=cell["steps"], sweep=combo or None, cache=None if cache else False))

    if req.params.watermark:
        small = [it for it in items if _pixels(req.pipeline, it.params) < contract.WATERMARK_MIN_PIXELS]
        if small:
            w, h = contract.output_size(req.pipeline, small[0].params["width"], small[0].params["height"])
            raise InvalidInput("params.watermark", f"the invisible watermark needs images of at least "
                               f"{contract.WATERMARK_MIN_PIXELS} pixels (256x256); item {small[0].index} is {w}x{h}",
                               code="too_small")

    if req.params.grid:
        sizes = [contract.output_size(req.pipeline, it.params["width"], it.params["height"]) for it in items]
        try:
            check_fits(Job(sweep=sweep or None, params={"images_per_prompt": n_per}), len(items),
                       (max(w for w, _ in sizes), max(h for _, h in sizes)))
        except ValueError as exc:
            raise InvalidInput("params.grid", str(exc), code="too_large") from None

    # 3. The job record.
    job_params = {k: v for k, v in base.items() if k not in ("seed",)}
    job_params["seed"] = seed
    job_params["watermark"] = watermark
    requires = req.requires.model_dump()
    if info.memory is not None:  # what a worker's device must hold (`sdq.families.Memory`)
        requires["memory"] = info.memory.record()
    job = Job(id=uuid.uuid4().hex, owner=owner, state="queued", created_at=time.time(), model=req.model,
              pipeline=req.pipeline, params=job_params, requires=requires, priority=req.priority,
              n_items=len(items), seed=seed, webhook_url=req.webhook_url, sweep=sweep or None)
    return Plan(job, items)


def _chunks(plan: Plan, workers: list[dict[str, Any]], by_speed: bool = True):
    """Consecutive items sharing parameters, each run cut into `(queue, items)` chunks whose sizes
    follow the measured rates of the live workers serving that queue (`sdq.scheduling`; without
    `by_speed`, each worker counts as one)."""
    model, pipeline = plan.job.model, plan.job.pipeline
    batch = max([int(w.get("max_batch") or 1) for w in workers] or [1])
    for _, group in itertools.groupby(plan.items, key=lambda it: sorted(it.params.items())):
        group = list(group)
        params = group[0].params
        queue = item_queue(plan.job, params)
        serving = fleet.serving(workers, queue, model)
        rates = list(speed.fleet_rates(serving, model, pipeline, params).values()) if by_speed else [1.0] * len(serving)
        start = 0
        for size in scheduling.chunk_sizes(len(group), rates, batch):
            yield queue, group[start:start + size]
            start += size


def route(plan: Plan, workers: list[dict[str, Any]],
          by_speed: bool = True) -> list[Chunk]:
    """Split items into task chunks, each for its queue; records warnings on `plan`."""
    req = plan.job.requires
    model = plan.job.model
    routed = [Chunk.of(plan.job, queue, items) for queue, items in _chunks(plan, workers, by_speed)]
    for queue in sorted({c.queue for c in routed}):
        able = fleet.serving(workers, queue, model)
        pixels = max(_pixels(plan.job.pipeline, c.params) for c in routed if c.queue == queue)
        able = [wk for wk in able if (wk.get("memory_total_gb") or 0) >= (
            families.required_gb(req, wk.get("dtype") or "fp32", pixels) or 0)]
        if not able:
            plan.warnings.append(
                f"no live worker can serve {queue} (device={req['device']}, dtype={req.get('dtype') or 'any'}, "
                f"model={model}) right now; the items wait until a capable worker joins")
    return routed


def enqueue(celery: Celery, routed: list[Chunk]) -> None:
    """Publish one task message per chunk, pipelined over one broker connection (kombu batch)."""
    with celery.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for chunk in routed:
            send_chunk(celery, chunk, producer)


def requeue(jobs, celery: Celery, job_id: str, workers: list[dict[str, Any]]) -> list[Item]:
    """Retry: re-queue the job's failed and cancelled items (same seeds) as new attempts and publish
    them again (messages of the earlier attempts are dropped when delivered)."""
    items = jobs.retry(job_id) or []
    if items:
        plan = Plan(jobs.get(job_id), sorted(items, key=lambda it: it.index))
        enqueue(celery, route(plan, workers))
    return items
