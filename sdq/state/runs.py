"""The worker's side of the job store: start, finish, hand off, release and reap runs of items,
count their progress, back up stragglers, claim results; and the finalisation bookkeeping.

Every state change of an item is one Lua script (`sdq.state.scripts`); key layout: `sdq.state.keys`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from sdq import defaults
from sdq.records import Item
from sdq.state import keys
from sdq.state.base import StoreBase
from sdq.state.jobs import loads
from sdq.state.outbox import intent
from sdq.state.redisconn import text

STOP_CANCELLED, STOP_UNWANTED = 1, 2
"""`add_progress` answers: the job was cancelled; no item of the run is wanted from this worker."""

LOST, CLAIMED, HELD = 0, 1, 2
"""`claim_result` answers: drop the result; store it; a live backup holds the claim, ask again."""

NOT_RECORDED, RECORDED, ENDED_JOB = -1, 0, 1
"""`record_outcome` answers: nothing recorded (done already, or not this run's); recorded; recorded
and the job ended."""


@dataclass
class Started:
    """What `Runs.start_run` did with a message's items."""

    run: list[int]  # started here: run them
    held: list[int]  # still running on a live holder (a duplicate delivery): left to it
    ended: bool  # the call ended the job (cancelled or failed its last items): finalise it


class Runs(StoreBase):
    """Runs of items on workers, as the workers and the reaper record them."""

    def start_run(self, job_id: str, items: list[tuple[int, int] | int], worker: str, device: str, dtype: str,
                  max_attempts: int = defaults.MAX_ATTEMPTS, now: float | None = None) -> Started:
        """Mark items running on `worker` (`lua/start.lua`). `items` are (index, gen) pairs from the
        message (a bare index means attempt 0): done, cancelled or superseded (stale `gen`) items are
        skipped; an item tried `max_attempts` times already is failed with its last error; one still
        running on a live holder (a duplicate delivery) is left to it and returned as `held`. Safe to
        repeat with the same `now` (the start time, kept to the millisecond; default: now): a repeat
        after a lost reply returns the items that call started, without starting them again."""
        pairs = [(it, 0) if isinstance(it, int) else it for it in items]
        args = [a for index, gen in pairs for a in (index, gen)]
        # to the millisecond (exact through the record's JSON), rounded down: a fleet record written after the
        # start must never read as written before it (`holder_alive` would wait for it to name the item)
        now = math.floor((time.time() if now is None else now) * 1000) / 1000
        run, held, ended = self.scripts["start"](keys=keys.run_script_keys(job_id),
                                                 args=[job_id, worker, device, dtype, repr(now), max_attempts,
                                                       *args])
        return Started([int(i) for i in run], [int(i) for i in held], int(ended) == 1)

    def start_items(self, job_id: str, items: list[tuple[int, int] | int], worker: str, device: str, dtype: str,
                    on_job_finished: Callable[[str], None] | None = None,
                    max_attempts: int = defaults.MAX_ATTEMPTS) -> list[int]:
        """`start_run`, returning the indices to run. If this call ended the job (cancelled or failed
        its last items), `on_job_finished(job_id)` is called (finalisation)."""
        started = self.start_run(job_id, items, worker, device, dtype, max_attempts)
        if started.ended and on_job_finished is not None:
            on_job_finished(job_id)
        return started.run

    def record_outcome(self, job_id: str, index: int, state: str, fields: dict[str, Any], worker: str = "",
                       gen: int = 0) -> int:
        """Record an item's outcome (`lua/finish.lua`). With `worker`, only that run of attempt `gen`
        may (the holder, or a backup storing the success it claimed). Returns `ENDED_JOB`, `RECORDED`
        or `NOT_RECORDED` (done already, or not this run's)."""
        return int(self.scripts["finish"](keys=keys.run_script_keys(job_id),
                                          args=[job_id, index, state, time.time(), json.dumps(fields), worker,
                                                gen]))

    def finish_item(self, job_id: str, index: int, state: str, fields: dict[str, Any],
                    steps_reported: int = 0, worker: str = "", gen: int = 0) -> bool:
        """`record_outcome`; True when this finished the whole job. (`steps_reported` is ignored: the
        steps this run counted are kept per item, see `add_progress`.)"""
        return self.record_outcome(job_id, index, state, fields, worker, gen) == ENDED_JOB

    def hand_off(self, job_id: str, indices: list[int], worker: str, error: str,
                 steps_reported: int = 0, due: float | None = None) -> list[tuple[int, int]]:
        """Put `worker`'s running items back in `queued` as new attempts after it ran out of memory
        (not if the job was cancelled); returns the (index, gen) pairs handed back, each now naming
        `worker` in `oom_workers`. Their message is recorded in the outbox, due at `due` (default: one
        lease from now): publish them, then `outbox.done(intent(job_id, pairs))` (`hand_off_and_publish`)."""
        due = time.time() + defaults.OUTBOX_LEASE if due is None else due
        out = [int(x) for x in self.scripts["hand_off"](keys=keys.job_script_keys(job_id),
                                                        args=[job_id, worker, error, due, *indices])]
        return list(zip(out[::2], out[1::2]))

    def hand_off_and_publish(self, job_id: str, indices: list[int], worker: str, error: str,
                             publish: Callable[[list[tuple[int, int]]], None]) -> list[tuple[int, int]]:
        """`hand_off`, then `publish(pairs)` the handed items' message and remove its outbox entry (if
        `publish` raises, the entry stays and comes due); returns the pairs (none: nothing published)."""
        pairs = self.hand_off(job_id, indices, worker, error)
        if pairs:
            publish(pairs)
            self.outbox.done(intent(job_id, pairs))
        return pairs

    def publish_later(self, message: dict[str, Any], seconds: float) -> str:
        """Publish chunk `message` in `seconds` (from the outbox, by whichever worker's heartbeat comes
        first); returns its outbox member."""
        return self.outbox.add_chunk(message, time.time() + seconds)

    def release(self, job_id: str, indices: list[int], worker: str, error: str) -> int:
        """Give `worker`'s running items back (`queued`, same attempt) after an infrastructure
        error, keeping `error` as their last one; returns how many."""
        return int(self.scripts["release"](keys=keys.job_script_keys(job_id),
                                           args=[job_id, worker, error, time.time(), *indices]))

    def running_workers(self) -> list[str]:
        """Workers that have (or had, until they died) items `running`."""
        return sorted(text(n) for n in self.redis.smembers(keys.RUNNING_WORKERS_KEY))

    def reap(self, worker: str, limit: int = 500, due: float | None = None) -> list[tuple[str, int]]:
        """Put back up to `limit` items still `running` on `worker`, which left the fleet; returns
        the (job id, index) pairs re-queued as new attempts. Their messages are recorded in the
        outbox, one intent per job (`sdq.state.outbox.intent` of its (index, gen) pairs in `reap_run`'s
        order), due at `due` (default: one lease from now)."""
        return [(job_id, index) for job_id, index, _ in self.reap_run(worker, limit, due)]

    def reaper_turn(self, hold_ms: int) -> bool:
        """Take the reaper's lock for `hold_ms` ms: True for the one caller that sweeps now."""
        return bool(self.redis.set(keys.REAPER_LOCK_KEY, 1, nx=True, px=hold_ms))

    def reap_and_publish(self, worker: str, publish: Callable[[str, list[tuple[int, int]], str], Any],
                         limit: int = 500) -> list[tuple[str, int, int]]:
        """`reap_run` (due one outbox lease from now), then `publish(job_id, pairs, member)` each job's
        re-queued (index, gen) pairs and outbox entry (an intent: `sdq.celery_app.publish_member` sends
        what is still queued and removes it); a caller killed in between leaves the entries to the next
        heartbeat after the lease."""
        reaped = self.reap_run(worker, limit, due=self.outbox.due())
        by_job: dict[str, list[tuple[int, int]]] = {}
        for job_id, index, gen in reaped:
            by_job.setdefault(job_id, []).append((index, gen))
        for job_id, pairs in by_job.items():
            publish(job_id, pairs, intent(job_id, pairs))
        return reaped

    def reap_run(self, worker: str, limit: int = 500, due: float | None = None) -> list[tuple[str, int, int]]:
        """`reap`, returning (job id, index, gen) of each re-queued item."""
        due = time.time() + defaults.OUTBOX_LEASE if due is None else due
        running = keys.running_key(worker)
        members = [text(m) for m in self.redis.srandmember(running, limit)] if limit > 0 else []
        job_keys = [k for member in members for k in keys.job_keys(member.rpartition(":")[0])]
        out = self.scripts["reap"](keys=[*keys.SHARED_SCRIPT_KEYS, running, *job_keys],
                                   args=[worker, time.time(), due, *members])
        out = [text(x) for x in out]
        return [(out[i], int(out[i + 1]), int(out[i + 2])) for i in range(0, len(out), 3)]

    def item_records(self, job_id: str, indices: list[int]) -> list[Item]:
        """The records of these items (missing ones skipped)."""
        if not indices:
            return []
        raws = self.redis.hmget(keys.items_key(job_id), [str(i) for i in indices])
        return [Item.from_record(loads(raw)) for raw in raws if raw]

    def add_progress(self, job_id: str, indices: list[int], steps: int, step: int, total: int,
                     worker: str | None = None) -> int:
        """Count `steps` more steps for each item still running on `worker`, announce
        `item.progress`. Returns `STOP_CANCELLED` if the job was cancelled, `STOP_UNWANTED` if no item
        of the run is wanted from `worker` any more (a straggler backup or its original stored it
        first), else 0. Each item's count is kept too, so a lost run's partial progress is taken back.
        (Without `worker`: counted for any running item.)"""
        if worker:
            return int(self.scripts["progress"](keys=[keys.job_key(job_id), keys.items_key(job_id),
                                                keys.progress_key(job_id), keys.events_channel(job_id)],
                                                args=[job_id, worker, steps, step, total, *indices]))
        pipe = self.redis.pipeline(transaction=False)
        if steps:
            pipe.hincrby(keys.job_key(job_id), "steps_done", steps * len(indices))
            for index in indices:
                pipe.hincrby(keys.progress_key(job_id), str(index), steps)
            pipe.expire(keys.progress_key(job_id), defaults.JOB_TTL)
        for index in indices:
            pipe.publish(keys.events_channel(job_id), json.dumps(
                {"event": "item.progress", "data": {"index": index, "step": step, "steps": total}}))
        pipe.hget(keys.job_key(job_id), "cancel")
        return STOP_CANCELLED if pipe.execute()[-1] in (b"1", "1") else 0

    def publish_preview(self, job_id: str, data: dict[str, Any]) -> None:
        """Announce `item.preview` (an item's image forming, `data`: index, step, steps, image) on the job's
        channel; nothing is stored (a client not listening misses it)."""
        self.redis.publish(keys.events_channel(job_id), json.dumps({"event": "item.preview", "data": data}))

    def steps_counted(self, runs: list[tuple[str, list[int]]]) -> list[dict[int, int]]:
        """For each (job, item indices): the steps each item's current (original) run has counted so far,
        by index (0 if none yet); one round trip for all."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, indices in runs:
            pipe.hmget(keys.progress_key(job_id), [str(i) for i in indices])
        return [{i: int(raw or 0) for i, raw in zip(indices, raws)}
                for (_, indices), raws in zip(runs, pipe.execute() if runs else [])]

    def start_backup(self, job_id: str, index: int, worker: str) -> bool:
        """Record a straggler backup of a running item on `worker` (at most one per item)."""
        return int(self.scripts["backup"](keys=[keys.job_key(job_id), keys.items_key(job_id)],
                                          args=[index, worker, time.time()])) == 1

    def claim_result(self, job_id: str, index: int, worker: str, gen: int = 0) -> int:
        """Before a run of attempt `gen` on `worker` stores an item's result (`lua/claim.lua`):
        `CLAIMED` (store it), `LOST` (drop it: not this run's, or its live backup won) or `HELD` (a
        live straggler backup holds the claim: ask again; a claim whose run is gone is taken over)."""
        return int(self.scripts["claim"](keys=keys.run_script_keys(job_id), args=[job_id, index, worker, gen]))

    # -- finalisation ----------------------------------------------------------------------
    def finalize_due(self, older_than: float) -> list[str]:
        """Jobs recorded "to finalise" more than `older_than` seconds ago (re-stamped now, so each
        is returned once per period)."""
        now = time.time()
        ids = [text(i)
               for i in self.redis.zrangebyscore(keys.FINALIZE_KEY, "-inf", now - older_than, start=0, num=100)]
        if ids:
            self.redis.zadd(keys.FINALIZE_KEY, {i: now for i in ids}, xx=True)
        return ids

    def finalized(self, job_id: str) -> None:
        """The job's finalisation is done."""
        self.redis.zrem(keys.FINALIZE_KEY, job_id)

    def webhook_queued(self, job_id: str) -> bool:
        """Whether the webhook of this end of the job was queued already (`mark_webhook_queued`)."""
        return self.redis.hget(keys.job_key(job_id), "webhook_queued") in (b"1", "1")

    def mark_webhook_queued(self, job_id: str) -> None:
        """The webhook of this end of the job was queued: marked only once the send succeeded, so a send
        that fails (or a finaliser that dies first) leaves it to the finalize task's next run."""
        self.redis.hset(keys.job_key(job_id), "webhook_queued", 1)

    def claim_webhook(self, job_id: str) -> bool:
        """True once per job end: whoever gets it queues the webhook."""
        return bool(self.redis.hsetnx(keys.job_key(job_id), "webhook_queued", 1))
