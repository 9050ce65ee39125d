"""The typed contract: a job (`Job`), its items (`Item`), the task messages (`Chunk`) and a worker's
capability record in the fleet (`WorkerRecord`).

Each field is declared once, with the documents that show it: the task message a worker receives
(`MESSAGE`), the status view of the HTTP API (`STATUS`), the job's manifest in storage
(`MANIFEST`), the webhook body (`WEBHOOK`) and the `item.finished` event (`EVENT`). The producer
builds the records from a checked request (`producer.planning.jobs`); `sdq.state` keeps them in Redis
and hands them back as these types; everything else reads them by attribute. Adding a field to
a document means adding it here.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from sdq.contract import ITEM_STATES, PIPELINES, celery_priority
from sdq.exceptions import BadMessage

MESSAGE, STATUS, MANIFEST, WEBHOOK, EVENT = "message", "status", "manifest", "webhook", "event"
"""The documents that show record fields."""

R = TypeVar("R", bound="Record")


def _shown(*documents: str, default: Any = None) -> Any:
    return field(default=default, metadata={"documents": frozenset(documents)})


class Record:
    """What `Job` and `Item` share: built from a stored dict, stored as one, shown in documents."""

    @classmethod
    def from_record(cls: type[R], record: dict[str, Any]) -> R:
        """The record from its stored form (fields it does not declare are left out)."""
        names = cls.__dataclass_fields__  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in record.items() if k in names})

    @classmethod
    def undeclared(cls, record: dict[str, Any]) -> set[str]:
        """Keys of a stored record that no field declares (a test checks there are none)."""
        return set(record) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]

    def to_record(self) -> dict[str, Any]:
        """The stored form: every field that is set (Lua scripts read a missing field as nil)."""
        # a record's instance dict holds exactly its fields, in declaration order (read ~2x faster than getattr)
        return {k: v for k, v in vars(self).items() if v is not None}

    def replaced(self: R, **changes: Any) -> R:
        """A copy with `changes` set, made by copying the instance dict (no constructor run: the
        planner copies one checked item per prompt, 10,000 in a few milliseconds)."""
        new = object.__new__(type(self))
        new.__dict__.update(vars(self), **changes)
        return new

    def show(self, document: str) -> dict[str, Any]:
        """The part of the record `document` shows (unset fields as null)."""
        values = vars(self)
        return {name: values[name] for name in shown_in(type(self), document)}


@functools.cache
def shown_in(record: type, document: str) -> tuple[str, ...]:
    """The names of the fields of `record` that `document` shows, in declaration order."""
    return tuple(f.name for f in fields(record) if document in f.metadata.get("documents", ()))


@dataclass
class Job(Record):
    """A batch of items sharing a model, a pipeline and defaults (None: not set yet)."""

    id: str = _shown(STATUS, MANIFEST, WEBHOOK, default="")
    state: str | None = _shown(STATUS, MANIFEST, WEBHOOK)
    created_at: float | None = _shown(STATUS, MANIFEST, WEBHOOK)
    started_at: float | None = _shown(STATUS, MANIFEST, WEBHOOK)
    finished_at: float | None = _shown(STATUS, MANIFEST, WEBHOOK)
    model: str = _shown(STATUS, MANIFEST, WEBHOOK, default="")
    pipeline: str = _shown(STATUS, MANIFEST, WEBHOOK, default="")
    params: dict = _shown(STATUS, MANIFEST, default=None)
    size: list | None = _shown(STATUS, MANIFEST)  # [width, height] of the image it makes (the hires fix's larger size)
    sweep: dict | None = _shown(STATUS, MANIFEST)
    requires: dict = _shown(STATUS, MANIFEST, default=None)
    priority: int = _shown(STATUS, MANIFEST, WEBHOOK, default=5)
    seed: int | None = _shown(MANIFEST, WEBHOOK)
    n_items: int = _shown(STATUS, WEBHOOK, default=0)
    warnings: list | None = _shown(STATUS)
    counts: dict = _shown(MANIFEST, WEBHOOK, default=None)  # by item state; the status view adds progress
    manifest_key: str | None = _shown(WEBHOOK)
    grid_key: str | None = _shown(MANIFEST, WEBHOOK)
    owner: str = _shown(default="")  # the tenant (API token's name); "" without tokens
    webhook_url: str | None = _shown()
    webhook_delivered_at: float | None = _shown()
    steps_done: int = _shown(default=0)  # denoising steps made, over all items (progress and ETA)
    steps_total: int = _shown(default=0)
    busy_s: float | None = _shown()  # worker seconds spent on succeeded items
    # Flags the store's scripts set (never written at submit: a flag's presence is what they test).
    cancel: bool | None = _shown()  # cancel requested (items settle as workers notice)
    webhook_queued: bool | None = _shown()  # its webhook was queued for this end of the job

    def __post_init__(self) -> None:
        self.params = self.params or {}
        self.requires = self.requires or {}
        self.counts = self.counts or {}

    def to_hash(self) -> dict[str, str | int | float]:
        """The Redis hash of the job: JSON for structured fields, plain values for the rest."""
        return {k: json.dumps(v) if _JOB_KINDS[k] in (dict, list) else int(v) if isinstance(v, bool) else v
                for k, v in self.to_record().items() if k != "counts"}

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Job:
        """The job from its Redis hash (decoded text; counters `c:<state>` become `counts`)."""
        values = {k: _decode(_JOB_KINDS[k], v) for k, v in raw.items() if k in _JOB_KINDS}
        values["counts"] = {s: int(float(raw.get(f"c:{s}", 0))) for s in ITEM_STATES}
        return cls(**values)

_JOB_KINDS: dict[str, type] = {  # each field's type without "| None" ("dict | None" -> dict)
    f.name: {t.__name__: t for t in (dict, list, bool, int, float, str)}[str(f.type).split(" | ")[0]]
    for f in fields(Job)}


def _decode(kind: type, value: str) -> Any:
    """A job hash value as its field's type."""
    if kind in (dict, list):
        return json.loads(value)
    if kind in (int, float):
        return kind(float(value))
    if kind is bool:
        return value in ("1", "true", "True")
    return value


@dataclass
class Item(Record):
    """One image of a job and what became of it (None: not set yet, or not for this item)."""

    index: int = _shown(MESSAGE, STATUS, MANIFEST, EVENT, default=0)
    prompt: str = _shown(MESSAGE, STATUS, MANIFEST, default="")
    negative_prompt: str | None = _shown(MESSAGE, STATUS, MANIFEST)
    seed: int = _shown(MESSAGE, STATUS, MANIFEST, EVENT, default=0)
    init_image: str | None = _shown(MESSAGE, STATUS, MANIFEST)  # upload key of img2img/upscale/depth2img
    images: dict | None = _shown(MESSAGE, STATUS, MANIFEST)  # upload keys of the pipeline's other image inputs
    gen: int = _shown(MESSAGE, default=0)  # the attempt a message was published for: a stale one starts nothing
    cache: bool | None = _shown(MESSAGE)  # False: the item opted out of the result cache
    params: dict = _shown(STATUS, MANIFEST, default=None)
    size: list | None = _shown(STATUS, MANIFEST)  # [width, height] of the image it makes (the hires fix's larger size)
    sweep: dict | None = _shown(STATUS, MANIFEST)  # the sweep cell this item is
    steps: int = _shown(default=0)  # denoising steps the item counts for in the job's progress
    state: str = _shown(STATUS, MANIFEST, EVENT, default="queued")
    worker: str | None = _shown(STATUS, MANIFEST, EVENT)
    device: str | None = _shown(STATUS, MANIFEST)
    dtype: str | None = _shown(STATUS, MANIFEST)
    backend: str | None = _shown(STATUS, MANIFEST)  # eager, channels_last or compile (`workers.loading.cpu_paths`)
    key: str | None = _shown(STATUS, MANIFEST, EVENT)  # the PNG in the bucket
    thumb_key: str | None = _shown()  # its WebP thumbnail (none when the image fits one)
    video_key: str | None = _shown(STATUS, MANIFEST)  # a video item's MP4 (`key` is then its poster PNG)
    video_bytes: int | None = _shown(STATUS)
    url: str | None = _shown(STATUS)  # filled in by the status view
    bytes: int | None = _shown(STATUS)
    duration_s: float | None = _shown(STATUS, MANIFEST, EVENT)
    timings: dict | None = _shown()  # seconds: load, generate, encode, upload
    watermark: bool | None = _shown()  # the invisible watermark was embedded
    error: str | None = _shown(STATUS, MANIFEST, EVENT)
    last_error: str | None = _shown()  # the error of the latest attempt given back (the poison limit's)
    attempts: int | None = _shown(STATUS, MANIFEST)
    tries: int | None = _shown()  # runs since submit or the last retry (the poison limit counts them)
    oom_retries: int | None = _shown(STATUS)
    oom_error: str | None = _shown(MESSAGE)
    low_memory: bool | None = _shown(STATUS)
    oom_workers: list | None = _shown(MESSAGE, STATUS)  # workers it ran out of memory on
    started_at: float | None = _shown(STATUS)
    finished_at: float | None = _shown(STATUS)
    batch: int | None = _shown(STATUS)  # images per pipeline call it was made in
    nsfw: bool | None = _shown(STATUS)
    backup: dict | None = _shown()  # {worker, started_at} of a straggler backup run
    runs: list | None = _shown(STATUS, MANIFEST)  # both runs of a backed-up item, and which won
    cached: bool | None = _shown(STATUS, MANIFEST, EVENT)
    cached_from: dict | None = _shown(STATUS, MANIFEST)  # {job, index} of the stored result it copies

    def __post_init__(self) -> None:
        self.params = self.params or {}

    def image_key(self, name: str) -> str | None:
        """The upload key of the item's image input `name` (`init_image`, or one of `images`)."""
        return self.init_image if name == "init_image" else (self.images or {}).get(name)


WORKER_REQUIRES = ("min_memory_gb", "memory")
"""A job's requirements a worker checks itself (device and dtype are its queue's): the caller's
`min_memory_gb`, and the model family's `memory` need (`sdq.memory.Memory.record`)."""


@dataclass
class Chunk:
    """One `sdq.generate` task message: items of one job that share every parameter."""

    job: str
    model: str
    pipeline: str
    params: dict
    items: list[Item]
    queue: str | None = None  # the queue it is for (None: a message from before queues were named)
    priority: int = 0  # Celery priority (0 first)
    watermark: bool = False
    requires: dict = field(default_factory=dict)  # what a worker must have (`WORKER_REQUIRES`)
    failed_on: list[str] = field(default_factory=list)  # workers an infrastructure error stopped it on
    deferred: bool = False  # left once to a worker with the model loaded
    deferred_at: float | None = None  # when its items were first left to faster workers
    backup: bool = False  # a straggler backup run of its one item...
    to: str | None = None  # ...sent to this worker's own queue

    @classmethod
    def of(cls, job: Job, queue: str, items: list[Item]) -> Chunk:
        """The chunk of `items` of `job` (they share their parameters) for `queue`."""
        requires = {k: job.requires[k] for k in WORKER_REQUIRES if job.requires.get(k)}
        return cls(job=job.id, model=job.model, pipeline=job.pipeline, params=items[0].params, items=items,
                   queue=queue, priority=celery_priority(job.priority), watermark=bool(job.params.get("watermark")),
                   requires=requires)

    def message(self) -> dict[str, Any]:
        """The JSON body of the task (items as `MESSAGE` shows them, unset fields left out)."""
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        names = shown_in(Item, MESSAGE)
        body["items"] = [{k: values[k] for k in names if values[k] is not None} for values in map(vars, self.items)]
        return body

    @classmethod
    def from_message(cls, body: Any) -> Chunk:
        """The chunk from a task body (unknown keys ignored, missing optional ones at their defaults);
        `BadMessage` naming what is wrong when the body is not a chunk."""
        _check_message(body)
        values = {k: v for k, v in body.items() if k in cls.__dataclass_fields__}
        values["items"] = [Item.from_record(it) for it in body.get("items") or ()]
        return cls(**values)

    def with_items(self, items: list[Item], **changes: Any) -> Chunk:
        """The same chunk holding `items` (and any other `changes`)."""
        return replace(self, items=items, **changes)

    @property
    def indices(self) -> list[int]:
        """The item indices it holds."""
        return [it.index for it in self.items]


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_message(body: Any) -> None:
    """Raise `BadMessage` unless `body` has what a worker reads before it claims the items."""
    if not isinstance(body, dict):
        raise BadMessage(f"a chunk is a JSON object, not {type(body).__name__}")
    for key in ("job", "model"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise BadMessage(f"{key!r} must be a non-empty string, not {body.get(key)!r:.80}")
    if body.get("pipeline") not in PIPELINES:
        raise BadMessage(f"'pipeline' must be one of {', '.join(PIPELINES)}, not {body.get('pipeline')!r:.80}")
    params = body.get("params")
    if not isinstance(params, dict) or not all(_is_int(params.get(k), 1) for k in ("width", "height", "steps")):
        raise BadMessage(f"'params' must hold positive integers width, height and steps, not {params!r:.120}")
    items = body.get("items")
    if not isinstance(items, list) or not items:
        raise BadMessage(f"'items' must be a non-empty list, not {items!r:.80}")
    for it in items:
        if not isinstance(it, dict) or not _is_int(it.get("index")) or not _is_int(it.get("gen", 0)) \
                or not isinstance(it.get("prompt", ""), str):
            raise BadMessage(f"an item needs an integer index (and gen) and a text prompt, not {it!r:.120}")


_WORKER_LISTS = ("pipelines", "models", "loaded_models", "queues")
_WORKER_DICTS = ("loaded_adapters", "quantized", "speed", "offloaded_models", "held_gb")


@dataclass
class WorkerRecord:
    """A worker's capability record in the fleet (`sdq.state.fleet`): what it can do and is doing now,
    published by its heartbeat (`workers.fleet.capability`). Stored as JSON; a record written by an
    older worker may lack fields (they read as their defaults) and one written by a newer worker may
    carry more (kept in `extra`, written back as they came)."""

    name: str = ""
    host: str | None = None
    device: str | None = None  # "cpu", "cuda:0", "mps" ...
    kind: str | None = None  # cpu, gpu, mps (`sdq.contract.worker_kind`)
    device_name: str | None = None
    dtype: str | None = None
    backend: str | None = None
    cpu_path: dict | None = None
    memory_total_gb: float | None = None
    memory_free_gb: float | None = None
    peak_rss_gb: float | None = None
    pipelines: list = field(default_factory=list)  # empty: any
    models: list = field(default_factory=list)  # models it may load (empty: any)
    loaded_models: list = field(default_factory=list)
    loaded_adapters: dict = field(default_factory=dict)  # model id -> LoRA adapter ids loaded into it
    quantized: dict = field(default_factory=dict)  # loaded model id -> how its weights are quantized
    offload: str | None = None  # its `--offload` setting (`sdq.memory.fit`): auto, never, model, group
    offloaded_models: dict = field(default_factory=dict)  # loaded model id -> the offload mode it runs in
    held_gb: dict = field(default_factory=dict)  # loaded model id -> GiB options hold beside it (ControlNets)
    max_pixels: int | None = None
    max_batch: int | None = None
    queues: list = field(default_factory=list)
    threads: int | None = None
    items_done: int = 0
    speed: dict = field(default_factory=dict)  # measured rates (`sdq.scheduling.speed`)
    current_item: dict | None = None  # what it runs now (`workers.fleet.capability.Activity.current`)
    started_at: float | None = None
    last_seen: float | None = None
    version: str | None = None
    stalled: bool = False  # no progress for its stall timeout: what it holds counts as lost (written only when set)
    extra: dict = field(default_factory=dict)  # fields this version does not declare

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> WorkerRecord:
        """The record from its stored JSON form (missing or null fields at their defaults)."""
        names = cls.__dataclass_fields__
        values = {k: v for k, v in record.items() if k in names and k != "extra"}
        for key in _WORKER_LISTS + _WORKER_DICTS:
            if values.get(key) is None:
                values.pop(key, None)
        values["stalled"] = values.get("stalled") is True
        values["items_done"] = values.get("items_done") or 0
        return cls(**values, extra={k: v for k, v in record.items() if k not in names})

    def to_record(self) -> dict[str, Any]:
        """The stored JSON form (as the workers always wrote it: `stalled` only when set)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("stalled", "extra")}
        if self.stalled:
            out["stalled"] = True
        return {**out, **self.extra}
