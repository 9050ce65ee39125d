"""The producer's side of the job store: submit, read, cancel, retry and list jobs.

Key layout: `sdq.state.keys`. Every state change of an item goes through one Lua script
(`sdq.state.scripts`), so counters always agree with the items, a duplicate delivery never counts
twice, and the job finishes exactly once. Each item carries ``gen``, the identity of its current
attempt: a task message names the ``gen`` it was published for, and is ignored once the item was
re-queued under a newer one. The worker's side is `sdq.state.runs`; `sdq.state.store.JobStore` is both.
"""
from __future__ import annotations

import json
import time
from typing import Any

from redis.exceptions import WatchError

from sdq import defaults
from sdq.contract import ITEM_STATES
from sdq.records import Item, Job
from sdq.exceptions import AlreadySubmitted
from sdq.state import keys
from sdq.state.idempotency import Once, recorded_job
from sdq.state.outbox import intent
from sdq.state.redisconn import text
from sdq.state.scripts import ScriptedStore

try:  # a C codec where installed (the producer extra has it): item pages decode ~3x faster, and a
    # 10,000-item job's records encode ~5x faster
    from orjson import dumps, loads
except ImportError:  # pragma: no cover - the standard library is enough, only slower
    dumps, loads = json.dumps, json.loads

SLICE = 500
"""Items one cancel or retry script touches at most (the broker's Redis is never blocked long)."""

QUEUE_SCAN_MAX = 1000
"""Most unfinished jobs looked at when estimating a queue position."""


class Jobs(ScriptedStore):
    """Job and item records as the producer sees them: whole jobs, their pages of items, cancel, retry."""

    def create(self, job: Job, items: list[Item], due: float | None = None, once: Once | None = None) -> str:
        """Record a new job and its items (all `queued`) in one transaction, with their message in the
        outbox (`sdq.state.outbox`) due at `due` (default: one lease from now): publish them, then
        `Outbox.done` the returned member; if the caller dies first, a worker publishes them. With
        `once`, its idempotency key is recorded in the same transaction; AlreadySubmitted (nothing
        recorded) if a request under that key recorded a job first (`sdq.state.idempotency`)."""
        member = intent(job.id, [(it.index, it.gen) for it in items]) if items else ""
        due = time.time() + defaults.OUTBOX_LEASE if due is None else due
        while True:
            with self.redis.pipeline(transaction=True) as pipe:  # reset (unwatched) on the way out
                if once is not None:  # watched: of requests racing under one key, one records its job
                    pipe.watch(once.key)
                    first = recorded_job(pipe.get(once.key), once)
                    if first is not None:
                        raise AlreadySubmitted(first)
                    pipe.multi()
                    pipe.set(once.key, once.record(job.id), ex=defaults.IDEMPOTENCY_TTL)
                self._record(pipe, job, items, member, due)
                try:
                    pipe.execute()
                    return member
                except WatchError:  # the key changed meanwhile: look again (it names a job, or was rolled back)
                    continue

    @staticmethod
    def _record(pipe: Any, job: Job, items: list[Item], member: str, due: float) -> None:
        """The commands of `create` that record the job, its items, its owner's counts and its outbox entry."""
        job_id = job.id
        fields = job.to_hash()
        fields.update({f"c:{s}": 0 for s in ITEM_STATES})
        fields["c:queued"] = len(items)
        fields["steps_done"] = 0
        fields["steps_total"] = sum(it.steps for it in items)
        pipe.hset(keys.job_key(job_id), mapping=fields)
        for start in range(0, len(items), 2000):
            chunk = items[start:start + 2000]
            pipe.hset(keys.items_key(job_id), mapping={str(it.index): dumps(it.to_record()) for it in chunk})
        owner_jobs = keys.owner_jobs_key(job.owner)
        pipe.zremrangebyscore(owner_jobs, "-inf", f"({time.time() - defaults.JOB_TTL}")  # expired jobs
        pipe.zadd(owner_jobs, {job_id: job.created_at})
        pipe.expire(owner_jobs, defaults.JOB_TTL)  # goes with the owner's last job
        pipe.zadd(keys.ACTIVE_KEY, {job_id: job.created_at})
        if items:
            pipe.hincrby(keys.QUEUED_BY_OWNER_KEY, job.owner, len(items))
        pipe.expire(keys.job_key(job_id), defaults.JOB_TTL)
        pipe.expire(keys.items_key(job_id), defaults.JOB_TTL)
        if member:
            pipe.zadd(keys.OUTBOX_KEY, {member: due})

    def delete(self, job_id: str, owner: str = "", member: str = "", once: Once | None = None) -> None:
        """Remove a job entirely, its outbox entry `member` and its idempotency key `once` (used when
        enqueueing fails, so nothing is half-submitted)."""
        if member:
            self.redis.zrem(keys.OUTBOX_KEY, member)
        if once is not None:
            self.redis.delete(once.key)
        queued = int(self.redis.hget(keys.job_key(job_id), "c:queued") or 0)
        if queued:
            self.redis.hincrby(keys.QUEUED_BY_OWNER_KEY, owner, -queued)
        self.redis.delete(keys.job_key(job_id), keys.items_key(job_id), keys.progress_key(job_id))
        self.redis.zrem(keys.owner_jobs_key(owner), job_id)
        self.redis.zrem(keys.ACTIVE_KEY, job_id)

    def get(self, job_id: str) -> Job | None:
        """The job with its counters, or None."""
        raw = self.redis.hgetall(keys.job_key(job_id))
        return Job.from_hash({text(k): text(v) for k, v in raw.items()}) if raw else None

    def items(self, job_id: str, offset: int, limit: int, n_items: int) -> list[Item]:
        """Items `offset` .. `offset+limit` in index order (one HMGET, independent of job size)."""
        indices = [str(i) for i in range(offset, min(offset + limit, n_items))]
        if not indices:
            return []
        return [Item.from_record(loads(raw)) for raw in self.redis.hmget(keys.items_key(job_id), indices) if raw]

    def all_items(self, job_id: str) -> list[Item]:
        """Every item of a job in index order (for manifests)."""
        raw = self.redis.hgetall(keys.items_key(job_id))
        return sorted((Item.from_record(loads(v)) for v in raw.values()), key=lambda it: it.index)

    def list_jobs(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        """Job ids of `owner`, newest first, and the total count."""
        key = keys.owner_jobs_key(owner)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", f"({time.time() - defaults.JOB_TTL}")  # jobs whose records expired
        pipe.zrevrange(key, offset, offset + limit - 1)
        pipe.zcard(key)
        _, ids, total = pipe.execute()
        return [text(i) for i in ids], int(total)

    def drop_active(self, job_id: str) -> None:
        """Take a job whose records expired out of the active set."""
        self.redis.zrem(keys.ACTIVE_KEY, job_id)

    def unfinished_since(self, before: float, limit: int = 100) -> list[str]:
        """Unfinished jobs created before `before` (oldest first, at most `limit`)."""
        return [text(i) for i in self.redis.zrangebyscore(keys.ACTIVE_KEY, "-inf", before, start=0, num=limit)]

    def cancel(self, job_id: str) -> tuple[str | None, bool]:
        """Cancel a job: queued items become cancelled, running ones see the flag.

        Works in slices of `SLICE` items, one short script each, so a big job never blocks the
        Redis that is also the broker. Returns the new state and whether this call ended the job
        (it is then recorded "to finalise", see `workers.finishing.finalize`).
        """
        state = self.scripts["cancel_begin"](keys=[keys.job_key(job_id)])
        if state is None:
            return None, False
        state = text(state)
        if state in ("succeeded", "failed", "cancelled"):
            return state, False
        ended = self.cancel_items(job_id, range(self._n_items(job_id)))
        return self._state(job_id), ended

    def cancel_items(self, job_id: str, indices) -> bool:
        """Cancel these queued items of a job whose cancel flag is set; True if that ended the job."""
        indices, ended = list(indices), False
        for start in range(0, len(indices), SLICE):
            ended |= self.scripts["cancel_slice"](keys=keys.job_script_keys(job_id),
                                                  args=[job_id, time.time(), *indices[start:start + SLICE]]) == 1
        return ended

    def _n_items(self, job_id: str) -> int:
        return int(self.redis.hget(keys.job_key(job_id), "n_items") or 0)

    def _state(self, job_id: str) -> str | None:
        raw = self.redis.hget(keys.job_key(job_id), "state")
        return text(raw)

    def queue_position(self, job: Job) -> int | None:
        """Estimated items queued ahead of the job's first queued item (None: nothing queued).

        Counts the queued items of unfinished jobs that compete for the same workers (same
        `requires.device`, or `any` on either side) and are served first: a higher priority, or
        the same priority and created earlier. Looks at most `QUEUE_SCAN_MAX` jobs; independent
        of the number of items.
        """
        if not job.counts.get("queued"):
            return None
        ids = [text(i) for i in self.redis.zrange(keys.ACTIVE_KEY, 0, QUEUE_SCAN_MAX - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for other in ids:
            pipe.hmget(keys.job_key(other), "priority", "created_at", "c:queued", "requires")
        device = job.requires.get("device", "any")
        mine = (job.priority, job.created_at or 0.0)
        ahead, gone = 0, []
        for other, (prio, created, queued, requires) in zip(ids, pipe.execute()):
            if other == job.id:
                continue
            if prio is None:
                gone.append(other)
                continue
            dev = json.loads(requires).get("device", "any") if requires else "any"
            if dev != device and "any" not in (dev, device):
                continue
            if (-int(prio), float(created)) < (-mine[0], mine[1]):
                ahead += int(queued or 0)
        if gone:
            self.redis.zrem(keys.ACTIVE_KEY, *gone)
        return ahead

    def retry(self, job_id: str, due: float | None = None) -> list[Item] | None:
        """Re-queue failed and cancelled items as new attempts, in slices of `SLICE` items; returns
        them (None if no such job). Messages of their earlier attempts are dropped when delivered.
        Each slice re-queues, records its message in the outbox, due at `due` (default: one lease from
        now), and reopens the job in one script: publish them, then `Outbox.done` the members
        `retry_intents` gives. A retry cut short between slices strands nothing."""
        n = self._n_items(job_id)
        if not n and not self.redis.exists(keys.job_key(job_id)):
            return None
        due = time.time() + defaults.OUTBOX_LEASE if due is None else due
        out: list[Item] = []
        for start in range(0, n, SLICE):
            raw = self.scripts["retry_slice"](keys=keys.job_script_keys(job_id),
                                              args=[job_id, due, *range(start, min(n, start + SLICE))])
            out += [Item.from_record(loads(r)) for r in raw or ()]
        return out

    @staticmethod
    def retry_intents(job_id: str, items: list[Item]) -> list[str]:
        """The outbox members `retry` recorded for `items` (as it returned them: one per slice)."""
        by_slice: dict[int, list[tuple[int, int]]] = {}
        for it in items:
            by_slice.setdefault(it.index // SLICE, []).append((it.index, it.gen))
        return [intent(job_id, pairs) for pairs in by_slice.values()]

    def job_status(self, job_id: str) -> tuple[str | None, bool]:
        """(state, cancel flag) of a job; state None when the job does not exist."""
        state, cancel = self.redis.hmget(keys.job_key(job_id), "state", "cancel")
        return text(state), cancel in (b"1", "1")

    def queued_count(self, job_id: str) -> int:
        """How many of the job's items are queued now."""
        return int(self.redis.hget(keys.job_key(job_id), "c:queued") or 0)

    def queued_counts(self, job_ids: list[str]) -> dict[str, int]:
        """How many items of each job are queued now; one round trip for all."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job_key(job_id), "c:queued")
        return {job_id: int(raw or 0) for job_id, raw in zip(job_ids, pipe.execute() if job_ids else [])}

    def is_cancelled(self, job_id: str) -> bool:
        """Whether the job's cancel flag is set."""
        return self.redis.hget(keys.job_key(job_id), "cancel") in (b"1", "1")

    def set_field(self, job_id: str, **fields: Any) -> None:
        """Set job fields (e.g. the manifest key), stored as `Job.to_hash` stores them."""
        stored = Job(**fields).to_hash()
        self.redis.hset(keys.job_key(job_id), mapping={k: stored[k] for k in fields})

    def queued_items_of(self, owner: str) -> int:
        """Items of `owner` now `queued`, over all its jobs: one field the job scripts keep (O(1))."""
        return max(0, int(self.redis.hget(keys.QUEUED_BY_OWNER_KEY, owner) or 0))
