"""The Celery application both sides use: the producer sends tasks by name, workers run them."""
from __future__ import annotations

import itertools
import logging
from typing import Any, Callable

from celery import Celery
from kombu.exceptions import KombuError

from sdq import contract, defaults
from sdq.records import Chunk, Item, Job, WorkerRecord
from sdq.state import fleet
from sdq.state.errors import StateError
from sdq.state.keys import UNACKED_INDEX_KEY
from sdq.state.outbox import Outbox, chunk_message, is_chunk, parse_intent
from sdq.state.store import JobStore
from sdq.state.redisconn import broker

log = logging.getLogger(__name__)

TASK_FINALIZE = "sdq.finalize"
"""Celery task name: write an ended job's manifest/grid and queue its webhook (control queue)."""

PARKED_CHECK_MAX = 10_000
"""Most parked chunks one recheck looks at (the rest wait for the next, `PARKED_RECHECK` later at most)."""


def celery_config(redis_url: str, visibility_timeout: int = defaults.VISIBILITY_TIMEOUT) -> dict:
    """Celery settings for a Redis broker carrying long, expensive tasks.

    Delivered messages wait in kombu's `UNACKED_INDEX_KEY` scored by delivery time; every
    consuming worker periodically puts back in their queues those older than
    `visibility_timeout`. Live workers keep the scores of the messages they hold fresh (see
    `workers.fleet.leases`), so only a dead worker's messages are restored.
    """
    broker_url, sentinel = broker(redis_url)
    sweep = max(1, min(10, visibility_timeout // defaults.LEASE_MIN_REFRESHES))
    return dict(
        broker_url=broker_url,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            "unacked_index_key": UNACKED_INDEX_KEY,
            "unacked_restore_interval": sweep,  # seconds between restore sweeps of an idle worker
            "unacked_restore_throttle": 1,  # scan on every sweep (kombu's default scans every 10th)
            "unacked_mutex_expire": max(10, min(60, visibility_timeout)),  # a dead sweeper's lock
            "queue_order_strategy": "priority",
            # a dead connection is noticed instead of hanging the worker (issue: hung workers)
            "socket_timeout": defaults.REDIS_SOCKET_TIMEOUT,
            "socket_connect_timeout": 10,
            "health_check_interval": defaults.REDIS_HEALTH_CHECK,
            "priority_steps": list(range(10)),
            **sentinel,
        },
        task_default_queue=contract.CONTROL_QUEUE,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # Flower (and `celery events`) see the tasks
        task_send_sent_event=False,
    )


def make_celery(redis_url: str, visibility_timeout: int = defaults.VISIBILITY_TIMEOUT) -> Celery:
    """A Celery app configured for sdq on `redis_url` (no tasks registered)."""
    app = Celery("sdq", set_as_current=False)
    app.conf.update(celery_config(redis_url, visibility_timeout))
    return app


def item_queue(job: Job, params: dict[str, Any]) -> str:
    """The queue of an item of `job` with these parameters."""
    w, h = contract.item_size(job.pipeline, params)
    return contract.queue_for(job.requires.get("device", "any"), job.requires.get("dtype"), w * h)


def send_chunk(celery: Celery, chunk: Chunk, producer=None, declare: bool = True) -> None:
    """Publish one `sdq.generate` message (to the worker named in `chunk.to`, else to its queue);
    `declare=False` skips declaring the queue (already declared by an earlier message of the same batch).

    The message's `kwargsrepr` (what Flower and `celery events` show) is a one-line summary naming the job
    and its items: Celery's own repr walks the whole body and cost a fifth of a 10,000-prompt submit."""
    celery.send_task(contract.TASK_GENERATE, kwargs={"chunk": chunk.message()}, queue=chunk.to or chunk.queue,
                     priority=chunk.priority, producer=producer, argsrepr="()", kwargsrepr=task_summary(chunk),
                     declare=None if declare else [])


def task_summary(chunk: Chunk) -> str:
    """What monitoring shows of a chunk's task: its job, model, pipeline and items."""
    idx = chunk.indices
    items = f"item {idx[0]}" if len(idx) == 1 else f"items {idx[0]}..{idx[-1]} ({len(idx)})"
    return f"{{'chunk': job {chunk.job} {chunk.model} {chunk.pipeline} {items}}}"


def chunks_of(job: Job, items: list[Item]) -> list[Chunk]:
    """`items` of `job` as task chunks: items sharing parameters together, at most `CHUNK_MAX` each."""
    out: list[Chunk] = []
    items = sorted(items, key=lambda it: it.index)
    for _, group in itertools.groupby(items, key=lambda it: sorted(it.params.items())):
        group = list(group)
        for start in range(0, len(group), defaults.CHUNK_MAX):
            part = group[start:start + defaults.CHUNK_MAX]
            out.append(Chunk.of(job, item_queue(job, part[0].params), part))
    return out


def publish_items(celery: Celery, job: Job, items: list[Item]) -> int:
    """Publish `items` of `job` again, in chunks of items sharing parameters; returns how many
    messages were sent."""
    chunks = chunks_of(job, items)
    for chunk in chunks:
        send_chunk(celery, chunk)
    return len(chunks)


FleetView = tuple[list[WorkerRecord], str]
"""The live workers' records and their `fleet.signature`, read once per flush."""


def _nobody_can_take(chunk: Chunk, workers: list[WorkerRecord]) -> bool:
    """Whether no live worker may take `chunk` (its queue, model, image size and memory need)."""
    if chunk.to is not None or not chunk.queue:
        return False
    w, h = contract.item_size(chunk.pipeline, chunk.params)
    return not fleet.able(workers, chunk.queue, chunk.model, w * h, chunk.requires)


def publish_member(jobs: JobStore, outbox: Outbox, member: str, publish: Callable[[Chunk], None],
                   view: FleetView | None = None) -> int:
    """Publish one outbox entry with `publish(chunk)`, then remove it; returns how many chunks were sent.
    An intent sends only its items still `queued` in the attempt it names (from their records now). A
    chunk (passed on) that no worker of the fleet `view` can take is parked instead (`Outbox.park`):
    it waits, without cycling between outbox, broker and workers, until the fleet changes."""
    if is_chunk(member):
        chunks = [Chunk.from_message(chunk_message(member))]
        if view is not None and _nobody_can_take(chunks[0], view[0]):
            state, cancelled = jobs.job_status(chunks[0].job)
            if state is None or state in contract.TERMINAL_STATES or cancelled:
                log.info("job %s: dropping a chunk nobody needs any more (its job ended or is gone)", chunks[0].job)
                outbox.done(member)
                return 0
            if outbox.park(member, view[1]):
                log.info("job %s: no live worker can take a chunk; parked until the fleet changes", chunks[0].job)
                return 0
    else:
        job_id, pairs = parse_intent(member)
        job = jobs.get(job_id)
        wanted = dict(pairs)
        items = [it for it in jobs.item_records(job_id, list(wanted)) if it.state == "queued"
                 and it.gen == wanted.get(it.index)] if job is not None else []
        chunks = chunks_of(job, items) if items else []
    for chunk in chunks:
        publish(chunk)
    outbox.done(member)
    return len(chunks)


def recheck_parked(jobs: JobStore, outbox: Outbox, workers: list[WorkerRecord],
                   most: int = PARKED_CHECK_MAX) -> int:
    """Parked chunks that a live worker can take now go back to the outbox (due now); those of jobs
    that ended, were cancelled or are gone are dropped. Returns how many went back."""
    back, kept, status = 0, 0, {}
    while kept + back < most:
        page = outbox.parked(kept)
        if not page:
            break
        wake, drop = [], []
        for member in page:
            try:
                chunk = Chunk.from_message(chunk_message(member))
            except Exception:  # noqa: BLE001 - not a chunk any more: nothing can publish it
                drop.append(member)
                continue
            if chunk.job not in status:
                status[chunk.job] = jobs.job_status(chunk.job)
            state, cancelled = status[chunk.job]
            if state is None or state in contract.TERMINAL_STATES or cancelled:
                drop.append(member)
            elif not _nobody_can_take(chunk, workers):
                wake.append(member)
        outbox.drop_parked(*drop)
        back += outbox.unpark(*wake)
        kept += len(page) - len(drop) - len(wake)
    if back:
        log.info("%d parked chunk(s) back in the outbox: a live worker can take them now", back)
    return back


def flush_outbox(jobs: JobStore, outbox: Outbox, publish: Callable[[Chunk], None], limit: int = 100) -> int:
    """Publish the outbox entries that are due (each taken by one caller for a lease); returns how
    many chunks were sent. An entry that fails is logged and left to come due again. When the fleet
    changed (or `PARKED_RECHECK` passed), the one caller that sees it first rechecks the parked chunks."""
    workers = jobs.live_workers()
    view = (workers, fleet.signature(workers))
    if outbox.fleet_changed(view[1]):
        recheck_parked(jobs, outbox, workers)
    sent = 0
    for member in outbox.take_due(limit):
        try:
            sent += publish_member(jobs, outbox, member, publish, view)
        except (StateError, OSError, KombuError):  # the broker or Redis: the entry comes due again
            log.warning("could not publish an outbox entry; it is tried again after its lease", exc_info=True)
        except Exception:  # noqa: BLE001 - never publishable (not a chunk, a record it cannot route): drop it
            log.error("dropping outbox entry %.200s: it cannot be published", member, exc_info=True)
            outbox.done(member)
    return sent


def request_finalize(celery, job_id: str) -> None:
    """Queue the finalize task of a job that just ended (on the control queue). If this message
    is lost, the job stays recorded "to finalise" and a worker's sweeper sends it again."""
    try:
        celery.send_task(TASK_FINALIZE, kwargs={"job_id": job_id}, queue=contract.CONTROL_QUEUE)
    except Exception:  # noqa: BLE001 - the sweeper resends it (`JobStore.finalize_due`)
        log.warning("could not queue the finalisation of job %s; the sweeper will", job_id, exc_info=True)
