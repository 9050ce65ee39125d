"""Turning a validated submit request into a job, its items and its task messages."""
from __future__ import annotations

import itertools
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from celery import Celery

from producer.options import Checked, check_options
from producer.planning.family import check_item, family_defaults, info_for, with_frames
from producer.planning.inputs import item_images
from producer.schemas import ITEM_PARAM_KEYS, ItemIn, SubmitRequest
from producer.planning.sweep import check_cell, check_sweep, combinations, count as sweep_count
from producer.tenants import check_queue_room
from producer.uploads import upload_record
from sdq import contract, defaults, options, pipelines
from sdq.memory import fit, load_cast
from sdq.celery_app import item_queue, send_chunk
from sdq.config import Settings
from sdq.exceptions import AlreadySubmitted, InvalidInput, NotFound
from sdq.families import Family
from sdq.modelinfo import ModelInfo
from sdq.gridlayout import GRID_MAX_ITEMS, check_fits
from sdq.models import check_model
from sdq.params import check_denoising
from sdq.records import Chunk, Item, Job, WorkerRecord
from sdq.scheduling import scheduling, speed
from sdq.state import fleet
from sdq.state.idempotency import Once
from sdq.state.store import JobStore
from sdq.webhooks import check_webhook_url

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {key: getattr(defaults, key.upper(), None) for key in ITEM_PARAM_KEYS
                            if key not in pipelines.FAMILY_PARAMS} | {
    p.name: p.default for p in pipelines.all_params().values() if p.name not in pipelines.FAMILY_PARAMS}
"""Item parameter defaults (the named ones in `sdq.defaults`), applied at submit and recorded in the job;
a model family's own defaults are added over them (`producer.planning.family`)."""


@dataclass
class Plan:
    """A job ready to record and enqueue."""

    job: Job
    items: list[Item]
    warnings: list[str] = field(default_factory=list)
    replayed: bool = False
    """True when an idempotency key named an earlier job: `job` is that job, nothing new was made."""


def _item_params(base: dict[str, Any], override: Any | None) -> dict[str, Any]:
    params = {k: base.get(k) for k in ITEM_PARAM_KEYS}
    if override is not None:
        params.update({k: getattr(override, k) for k in ITEM_PARAM_KEYS if getattr(override, k) is not None})
    # A family parameter is carried only when set (its family's default, or given): other families'
    # items stay as they were (their result cache keys and infotext unchanged).
    return {k: v for k, v in params.items() if v is not None or k not in pipelines.FAMILY_PARAMS}


def _pixels(pipeline: str, params: dict[str, Any]) -> int:
    w, h = contract.item_size(pipeline, params)
    return w * h


def _check_limits(pipeline: str, params: dict[str, Any], where: str, settings: Settings) -> None:
    _check_denoising(pipeline, params, where)
    w, h = contract.item_size(pipeline, params)
    if w * h > settings.max_pixels:
        first = pipelines.spec(pipeline).output_size(params["width"], params["height"])
        grown = next((o.size_field for o, _ in options.active(params) if o.size_field), None)
        field = grown if grown and first[0] * first[1] <= settings.max_pixels else f"{where}width"
        raise InvalidInput(field, f"{w}x{h} output ({w * h} pixels) exceeds this server's limit of "
                           f"{settings.max_pixels} pixels per image", code="too_large")


def _check_denoising(pipeline: str, params: dict[str, Any], where: str) -> None:
    """Refuse a pass that would run no denoising step: diffusers' img2img runs `int(steps * strength)`."""
    scaled_by = pipelines.spec(pipeline).steps_scaled_by
    if scaled_by:
        check_denoising(params["steps"], params["strength"], f"{where}{scaled_by}")


def _init_image_size(params: dict[str, Any], record: dict[str, Any] | None, explicit: set[str],
                     multiple: int = 8) -> dict[str, Any]:
    """Image pipelines work at the init image's size unless width/height are given: the worker resizes
    the image to width x height (rounded down to a multiple of 8, or of the model family's own
    `size_multiple`); upscale makes 4x that."""
    if record is None:
        return params
    size = {"width": record["width"], "height": record["height"]}
    return {**params, **{k: max(multiple, v // multiple * multiple) for k, v in size.items() if k not in explicit}}


@dataclass(frozen=True)
class _Expansion:
    """What expanding a request's sources into items reads: the request, the server's limits, the job-wide
    parameters (`base`, and `given`: the request's own), the job seed, the sweep's combinations, the
    caller's uploads, the checked request options and the model's family (None: not known here)."""

    req: SubmitRequest
    settings: Settings
    base: dict[str, Any]
    given: dict[str, Any]
    seed: int
    combos: list[dict[str, Any]]
    uploads: Callable[[str, str], dict[str, Any]] | None
    checked: Checked
    fam: Family | None

    @property
    def multiple(self) -> int:
        """What image sides must be a multiple of."""
        return self.fam.size_multiple if self.fam else 8


Cells = list[tuple[dict[str, Any], Item]]
"""A source's sweep cells, resolved and checked once (every prompt of a request shares them, as prompts differ
only in their text): (sweep combination, the item it makes, with its checked parameters, size and inputs but
no index, prompt or seed yet)."""


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
    info = info_for(req.model, req.pipeline)  # the model's family, when the producer can read the model
    base = {**DEFAULTS, **family_defaults(info, given), **given}
    check_item(info.family, req.model, base, "params.")
    spec = pipelines.spec(req.pipeline)
    # Request options (`sdq.options`): each checked for this pipeline and model; the job records the checked values.
    checked = check_options(given, options.Submit(spec, req.model, info.family.name if info.family else None,
                                                  settings.models, uploads))
    base = {k: v for k, v in base.items() if k not in options.OPTIONS} | checked.values
    if spec.default_side is not None:
        base.update({side: spec.default_side for side in ("width", "height") if side not in given})
    seed = req.params.seed if req.params.seed is not None else secrets.randbelow(2**31)

    # 2. Items: prompts or explicit items, times sweep combinations, times images_per_prompt.
    _check_count(req, sweep, settings.max_items)
    items = _expand(_Expansion(req, settings, base, given, seed, combinations(sweep), uploads, checked, info.family))

    # 3. Checks over all the items: the watermark's smallest image, the grid's largest sheet.
    if req.params.watermark:
        _check_watermark(req.pipeline, items)
    if req.params.grid:
        _check_grid(req.pipeline, items, sweep, req.params.images_per_prompt)

    # 4. The job record.
    return Plan(_job_record(req, settings, owner, base, seed, sweep, len(items), with_frames(info, items)), items)


def _check_count(req: SubmitRequest, sweep: dict[str, list[Any]], max_items: int) -> None:
    """Refuse a job of more than `max_items` items (or a grid of too many), counted before any is made."""
    n_sources = len(req.prompts) if req.prompts else len(req.items or [])
    total = n_sources * sweep_count(sweep) * req.params.images_per_prompt
    if total > max_items:
        raise InvalidInput("sweep" if sweep else "prompts" if req.prompts else "items",
                           f"{total} items exceed this server's limit of {max_items} per job",
                           code="too_many_items")
    if req.params.grid and total > GRID_MAX_ITEMS:
        raise InvalidInput("params.grid", f"a grid holds at most {GRID_MAX_ITEMS} images; this job has {total}",
                           code="too_many_items")


def _expand(x: _Expansion) -> list[Item]:
    """The items of every prompt or entry of `items`, each checked against the server's limits and
    the model's family."""
    req = x.req
    sources = [(p, None) for p in req.prompts] if req.prompts else [(it.prompt, it) for it in req.items or []]
    n_per = req.params.images_per_prompt
    items: list[Item] = []
    cells: Cells | None = None  # prompts differ only in their text: resolved and checked once
    for src, (prompt, it) in enumerate(sources):
        if cells is None or it is not None:
            cells = _resolve(x, src, it)
        for combo, proto in cells:
            for k in range(n_per):
                index = len(items)
                item_seed = _item_seed(x.seed, combo, it, src, n_per, k, index) % (2**32)
                items.append(proto.replaced(index=index, prompt=prompt, seed=item_seed, size=list(proto.size)))
    return items


def _resolve(x: _Expansion, src: int, it: ItemIn | None) -> Cells:
    """Source `src` (a prompt, or the entry `it` of `items`) resolved: its parameters, image inputs,
    options and negative prompt checked, and its sweep cells made."""
    req, given = x.req, x.given
    where = f"items[{src}]." if it is not None else "params."
    params = _item_params(x.base, it)
    images = item_images(pipelines.spec(req.pipeline), given, it, where, x.uploads)
    size = x.checked.check_size(images.size, where)
    if size is not None:
        explicit = {k for k in ("width", "height") if k in given or (it is not None and getattr(it, k) is not None)}
        params = _init_image_size(params, size, explicit, x.multiple)
    params = x.checked.apply(params, x.multiple)
    _check_limits(req.pipeline, params, where, x.settings)
    negative = it.negative_prompt if it is not None and it.negative_prompt is not None else x.base["negative_prompt"]
    check_item(x.fam, req.model, params, where, negative)
    cache = it.cache if it is not None and it.cache is not None else req.params.cache  # False: run fresh
    cells: Cells = []
    for combo in x.combos:
        cell = _cell(x, params, combo)
        cells.append((combo, Item(
            negative_prompt=combo.get("negative_prompt", negative), init_image=images.init_image,
            images=images.others, params=cell, size=list(contract.item_size(req.pipeline, cell)),
            steps=cell["steps"], sweep=combo or None, cache=None if cache else False)))
    return cells


def _cell(x: _Expansion, params: dict[str, Any], combo: dict[str, Any]) -> dict[str, Any]:
    """One sweep combination of a source's parameters (a sweep overrides job and item values), checked."""
    cell = {**params, **{k: v for k, v in combo.items() if k in ITEM_PARAM_KEYS}}
    if combo:
        _check_limits(x.req.pipeline, cell, "sweep.", x.settings)
        check_item(x.fam, x.req.model, cell, "sweep.")
        check_cell(cell, combo, params, x.multiple)
    return cell


def _item_seed(seed: int, combo: dict[str, Any], it: ItemIn | None, src: int, n_per: int, k: int, index: int) -> int:
    """An item's seed: the sweep's, else its entry's (plus its copy number), else the job's counted on."""
    if "seed" in combo:
        return combo["seed"] + k
    if it is not None and it.seed is not None:
        return it.seed + k
    return seed + (src * n_per + k if combo else index)


def _check_watermark(pipeline: str, items: list[Item]) -> None:
    """Refuse a watermarked job of video clips (not marked), or with an image too small for the invisible watermark."""
    if pipelines.spec(pipeline).video:
        raise InvalidInput("params.watermark", f"{pipeline} makes video clips, which sdq does not watermark (the "
                           f"invisible watermark is for still images); leave params.watermark out",
                           code="unsupported_parameter")
    small = [it for it in items if _pixels(pipeline, it.params) < contract.WATERMARK_MIN_PIXELS]
    if small:
        w, h = contract.item_size(pipeline, small[0].params)
        raise InvalidInput("params.watermark", f"the invisible watermark needs images of at least "
                           f"{contract.WATERMARK_MIN_PIXELS} pixels (256x256); item {small[0].index} is {w}x{h}",
                           code="too_small")


def _check_grid(pipeline: str, items: list[Item], sweep: dict[str, list[Any]], n_per: int) -> None:
    """Refuse a grid whose contact sheet of these items would be too large."""
    sizes = [contract.item_size(pipeline, it.params) for it in items]
    try:
        check_fits(Job(sweep=sweep or None, params={"images_per_prompt": n_per}), len(items),
                   (max(w for w, _ in sizes), max(h for _, h in sizes)))
    except ValueError as exc:
        raise InvalidInput("params.grid", str(exc), code="too_large") from None


def _job_record(req: SubmitRequest, settings: Settings, owner: str, base: dict[str, Any], seed: int,
                sweep: dict[str, list[Any]], n_items: int, info: ModelInfo) -> Job:
    """The job record: its request with the defaults applied, the job seed, the watermark choice and
    the model family's memory need (`requires.memory`, when the family is known here)."""
    watermark = settings.watermark_default if req.params.watermark is None else req.params.watermark
    watermark = watermark and not pipelines.spec(req.pipeline).video  # clips are not marked (the operator's default)
    job_params = {k: v for k, v in base.items() if k not in ("seed",)}
    job_params["seed"] = seed
    job_params["watermark"] = watermark
    requires = req.requires.model_dump()
    if info.memory is not None:  # what a worker's device must hold (`sdq.memory.Memory`)
        requires["memory"] = info.memory.record()
    return Job(id=uuid.uuid4().hex, owner=owner, state="queued", created_at=time.time(), model=req.model,
               pipeline=req.pipeline, params=job_params, requires=requires, priority=req.priority,
               n_items=n_items, seed=seed, webhook_url=req.webhook_url, sweep=sweep or None)


def _chunks(plan: Plan, workers: list[WorkerRecord], by_speed: bool = True):
    """Consecutive items sharing parameters, each run cut into `(queue, items)` chunks whose sizes
    follow the measured rates of the live workers serving that queue (`sdq.scheduling.scheduling`; without
    `by_speed`, each worker counts as one)."""
    model, pipeline = plan.job.model, plan.job.pipeline
    batch = max([int(w.max_batch or 1) for w in workers] or [1])
    for _, group in itertools.groupby(plan.items, key=lambda it: it.params):  # dicts compare by content
        group = list(group)
        params = group[0].params
        queue = item_queue(plan.job, params)
        serving = fleet.serving(workers, queue, model)
        rates = list(speed.fleet_rates(serving, model, pipeline, params).values()) if by_speed else [1.0] * len(serving)
        start = 0
        for size in scheduling.chunk_sizes(len(group), rates, batch):
            yield queue, group[start:start + size]
            start += size


def need_gb(requires: dict[str, Any], worker: WorkerRecord, pixels: int) -> float | None:
    """The memory an item of `pixels` pixels needs on `worker` (its dtype, its load-time cast on a CPU, and
    offloaded when its `offload` setting lets it and the whole model does not fit: `sdq.memory.fit`)."""
    dtype = worker.dtype or "fp32"
    return fit(requires, dtype, pixels, worker.memory_total_gb, load_cast(worker.device or "", dtype),
               worker.offload or "never").need_gb


def route(plan: Plan, workers: list[WorkerRecord],
          by_speed: bool = True) -> list[Chunk]:
    """Split items into task chunks, each for its queue; records warnings on `plan`."""
    req = plan.job.requires
    model = plan.job.model
    routed = [Chunk.of(plan.job, queue, items) for queue, items in _chunks(plan, workers, by_speed)]
    for queue in sorted({c.queue for c in routed}):
        able = fleet.serving(workers, queue, model)
        pixels = max(_pixels(plan.job.pipeline, c.params) for c in routed if c.queue == queue)
        able = [wk for wk in able if (wk.memory_total_gb or 0) >= (need_gb(req, wk, pixels) or 0)]
        if not able:
            plan.warnings.append(
                f"no live worker can serve {queue} (device={req['device']}, dtype={req.get('dtype') or 'any'}, "
                f"model={model}) right now; the items wait until a capable worker joins")
    return routed


def submit(req: SubmitRequest, settings: Settings, owner: str, jobs: JobStore, celery: Celery,
           once: Once | None = None) -> Plan:
    """Plan, check the tenant's room, route, record and enqueue a job; nothing stays half-submitted:
    a failed enqueue removes the record again (so it neither shows nor counts against the tenant's cap).
    With `once` (an idempotency key, `sdq.state.idempotency.once`), a request that already made a job
    gets that job back (`Plan.replayed`) instead of a second one; every door submits through here."""
    # 0. Once: the job an earlier request under the same idempotency key made.
    if once is not None and (first := jobs.first_job(once)) is not None:
        return _replay(jobs, first)
    # 1. Plan: the request checked against the server's limits, expanded into items (nothing written).
    plan = plan_job(req, settings, owner,
                    uploads=lambda key, field: upload_record(jobs, key, owner, field))
    # 2. Room: the tenant's cap on queued items.
    check_queue_room(jobs, owner, len(plan.items), settings.max_queued_items)
    # 3. Route: task chunks per queue, and warnings for queues that no live worker serves.
    routed = route(plan, jobs.live_workers(), settings.scheduling == "speed")
    plan.job.warnings = plan.warnings
    # 4. Record (with the items' message in the outbox: if this process dies before enqueueing, a
    #    worker publishes them after the outbox lease), then enqueue and clear the outbox entry; the
    #    record is rolled back if enqueueing fails.
    try:
        jobs.create_and_publish(plan.job, plan.items, lambda: enqueue(celery, routed),
                                due=time.time() + settings.outbox_lease, once=once)
    except AlreadySubmitted as first:  # a request racing under the same key recorded its job first
        return _replay(jobs, first.job_id)
    return plan


def _replay(jobs: JobStore, job_id: str) -> Plan:
    """The answer to a request whose idempotency key already made job `job_id`."""
    job = jobs.get(job_id)
    if job is None:  # pragma: no cover - its record expired between two reads
        raise NotFound(f"no job {job_id!r}")
    return Plan(job, [], list(job.warnings or []), replayed=True)


def enqueue(celery: Celery, routed: list[Chunk]) -> None:
    """Publish one task message per chunk, pipelined over one broker connection (kombu batch); each
    queue is declared with its first message only (declaring cost a quarter of the publishing)."""
    declared: set[str | None] = set()
    with celery.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for chunk in routed:
            queue = chunk.to or chunk.queue
            send_chunk(celery, chunk, producer, declare=queue not in declared)
            declared.add(queue)


def requeue(jobs: JobStore, celery: Celery, job_id: str, workers: list[WorkerRecord],
            lease: float = defaults.OUTBOX_LEASE, max_queued: int | None = None) -> list[Item]:
    """Retry: re-queue the job's failed and cancelled items (same seeds) as new attempts and publish
    them again (messages of the earlier attempts are dropped when delivered). The re-queue records
    their messages in the outbox: if this process dies before publishing, a worker does. With
    `max_queued`, the owner's queued-items cap is checked first, as at submit (TooManyRequests)."""
    if max_queued is not None:
        job = jobs.get(job_id)
        if job is not None:
            again = job.counts.get("failed", 0) + job.counts.get("cancelled", 0)
            check_queue_room(jobs, job.owner, again, max_queued)

    def publish(items: list[Item]) -> None:
        plan = Plan(jobs.get(job_id), sorted(items, key=lambda it: it.index))
        enqueue(celery, route(plan, workers))

    return jobs.retry_and_publish(job_id, publish, due=time.time() + lease)
