"""Job and item state in Redis, shared by producer and workers.

Keys (all expire `JOB_TTL` after creation):

- ``sdq:job:<id>`` hash: job fields (JSON-encoded where structured) and counters
  ``c:<state>`` per item state, ``steps_done``/``steps_total`` for progress;
- ``sdq:job:<id>:items`` hash: item index -> item JSON;
- ``sdq:jobs:<owner>`` sorted set of job ids by creation time;
- ``sdq:active`` sorted set of unfinished job ids by creation time (for queue positions);
- ``sdq:events:<id>`` pub/sub channel of job events (see `EVENTS`).

Every state change of an item goes through one Lua script, so counters always agree with the
items, a duplicate delivery never counts twice, and the job finishes exactly once.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import redis

from sdq import defaults

try:  # a C decoder where installed (the producer extra has it): item pages decode ~3x faster
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - the standard library is enough, only slower
    _loads = json.loads

EVENTS = ("item.started", "item.progress", "item.finished", "job.finished")

_LUA_COMMON = """
local function bump(job, from, to)
  redis.call('HINCRBY', job, 'c:' .. from, -1)
  redis.call('HINCRBY', job, 'c:' .. to, 1)
end
local function emit(job_id, event, data)
  redis.call('PUBLISH', 'sdq:events:' .. job_id, cjson.encode({event = event, data = data}))
end
local function maybe_finish(job, job_id, now)
  local q = tonumber(redis.call('HGET', job, 'c:queued') or '0')
  local r = tonumber(redis.call('HGET', job, 'c:running') or '0')
  local state = redis.call('HGET', job, 'state')
  if q > 0 or r > 0 or state == 'succeeded' or state == 'failed' or state == 'cancelled' then
    return 0
  end
  local final = 'succeeded'
  if redis.call('HGET', job, 'cancel') == '1' then final = 'cancelled'
  elseif tonumber(redis.call('HGET', job, 'c:failed') or '0') > 0 then final = 'failed'
  elseif tonumber(redis.call('HGET', job, 'c:cancelled') or '0') > 0 then final = 'cancelled' end
  redis.call('HSET', job, 'state', final, 'finished_at', now)
  -- sdq runs on one Redis (not Cluster): the active-jobs index is addressed by name.
  redis.call('ZREM', 'sdq:active', job_id)
  emit(job_id, 'job.finished', {id = job_id, state = final,
    counts = {succeeded = tonumber(redis.call('HGET', job, 'c:succeeded') or '0'),
              failed = tonumber(redis.call('HGET', job, 'c:failed') or '0'),
              cancelled = tonumber(redis.call('HGET', job, 'c:cancelled') or '0')}})
  return 1
end
"""

# KEYS: job, items. ARGV: job_id, worker, device, dtype, now, index...
_START = _LUA_COMMON + """
local job, items, job_id, now = KEYS[1], KEYS[2], ARGV[1], ARGV[5]
if redis.call('EXISTS', job) == 0 then return {} end
local cancel = redis.call('HGET', job, 'cancel') == '1'
local out = {}
for i = 6, #ARGV do
  local raw = redis.call('HGET', items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'queued' or it.state == 'running' then
      if cancel then
        bump(job, it.state, 'cancelled')
        redis.call('HINCRBY', job, 'steps_done', it.steps)
        it.state = 'cancelled'
      else
        if it.state == 'queued' then bump(job, 'queued', 'running') end
        it.state = 'running'; it.worker = ARGV[2]; it.device = ARGV[3]; it.dtype = ARGV[4]
        it.started_at = tonumber(now); it.attempts = (it.attempts or 0) + 1
        table.insert(out, it.index)
        emit(job_id, 'item.started', {index = it.index, worker = ARGV[2]})
      end
      redis.call('HSET', items, ARGV[i], cjson.encode(it))
    end
  end
end
if #out > 0 and redis.call('HGET', job, 'state') == 'queued' then
  redis.call('HSET', job, 'state', 'running')
  if not redis.call('HGET', job, 'started_at') then redis.call('HSET', job, 'started_at', now) end
end
-- a trailing -1 says this call ended the (cancelled) job, so the caller finalizes it
if cancel and maybe_finish(job, job_id, now) == 1 then table.insert(out, -1) end
return out
"""

# KEYS: job, items. ARGV: job_id, index, state, now, fields_json, steps_reported
_FINISH = _LUA_COMMON + """
local job, items, job_id, now = KEYS[1], KEYS[2], ARGV[1], ARGV[4]
local raw = redis.call('HGET', items, ARGV[2])
if not raw then return -1 end
local it = cjson.decode(raw)
if it.state ~= 'queued' and it.state ~= 'running' then return -1 end
local state = ARGV[3]
bump(job, it.state, state)
for k, v in pairs(cjson.decode(ARGV[5])) do it[k] = v end
it.state = state; it.finished_at = tonumber(now)
redis.call('HSET', items, ARGV[2], cjson.encode(it))
redis.call('HINCRBY', job, 'steps_done', math.max(0, it.steps - tonumber(ARGV[6])))
if state == 'succeeded' and it.duration_s then
  redis.call('HINCRBYFLOAT', job, 'busy_s', it.duration_s)
end
emit(job_id, 'item.finished', {index = it.index, state = state, key = it.key, seed = it.seed,
  worker = it.worker, duration_s = it.duration_s, error = it.error})
return maybe_finish(job, job_id, now)
"""

# KEYS: job, items. ARGV: job_id, now. Returns {state, 1 if this call finished the job}.
_CANCEL = _LUA_COMMON + """
local job, items, job_id, now = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local state = redis.call('HGET', job, 'state')
if not state then return nil end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return {state, 0} end
redis.call('HSET', job, 'cancel', '1')
local all = redis.call('HGETALL', items)
for i = 1, #all, 2 do
  local it = cjson.decode(all[i + 1])
  if it.state == 'queued' then
    bump(job, 'queued', 'cancelled')
    redis.call('HINCRBY', job, 'steps_done', it.steps)
    it.state = 'cancelled'; it.finished_at = tonumber(now)
    redis.call('HSET', items, all[i], cjson.encode(it))
    emit(job_id, 'item.finished', {index = it.index, state = 'cancelled'})
  end
end
local finished = maybe_finish(job, job_id, now)
return {redis.call('HGET', job, 'state'), finished}
"""

# KEYS: job, items. ARGV: job_id. Returns the re-queued items as JSON.
_RETRY = _LUA_COMMON + """
local job, items, job_id = KEYS[1], KEYS[2], ARGV[1]
if redis.call('EXISTS', job) == 0 then return nil end
local out = {}
local all = redis.call('HGETALL', items)
for i = 1, #all, 2 do
  local it = cjson.decode(all[i + 1])
  if it.state == 'failed' or it.state == 'cancelled' then
    bump(job, it.state, 'queued')
    redis.call('HINCRBY', job, 'steps_done', -it.steps)
    it.state = 'queued'; it.error = cjson.null; it.finished_at = cjson.null
    local enc = cjson.encode(it)
    redis.call('HSET', items, all[i], enc)
    table.insert(out, enc)
  end
end
if #out > 0 then
  redis.call('HDEL', job, 'cancel', 'finished_at')
  local running = tonumber(redis.call('HGET', job, 'c:running') or '0')
  redis.call('HSET', job, 'state', running > 0 and 'running' or 'queued')
  redis.call('ZADD', 'sdq:active', redis.call('HGET', job, 'created_at'), job_id)
end
return out
"""

# KEYS: job, items. ARGV: job_id, worker, error, steps_reported, index...
# Out of memory even in low-memory mode: the worker's running items go back to `queued` for
# another worker, remembering who could not make them. Returns the indices handed back.
_HAND_OFF = _LUA_COMMON + """
local job, items, job_id = KEYS[1], KEYS[2], ARGV[1]
if redis.call('HGET', job, 'cancel') == '1' then return {} end
local out, back = {}, tonumber(ARGV[4])
for i = 5, #ARGV do
  local raw = redis.call('HGET', items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'running' and it.worker == ARGV[2] then
      bump(job, 'running', 'queued')
      if back > 0 then redis.call('HINCRBY', job, 'steps_done', -back) end  -- never "-0": HINCRBY refuses it
      local seen = it.oom_workers
      if type(seen) ~= 'table' then seen = {} end
      table.insert(seen, ARGV[2])
      it.oom_workers = seen; it.oom_error = ARGV[3]; it.state = 'queued'
      redis.call('HSET', items, ARGV[i], cjson.encode(it))
      table.insert(out, it.index)
    end
  end
end
return out
"""

ACTIVE_KEY = "sdq:active"
"""Sorted set of unfinished job ids by creation time."""

QUEUE_SCAN_MAX = 1000
"""Most unfinished jobs looked at when estimating a queue position."""

_JSON_FIELDS = ("params", "requires", "warnings", "sweep")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "busy_s")
_INT_FIELDS = ("n_items", "priority", "seed", "steps_done", "steps_total")


def _job_key(job_id: str) -> str:
    return f"sdq:job:{job_id}"


def _items_key(job_id: str) -> str:
    return f"sdq:job:{job_id}:items"


def events_channel(job_id: str) -> str:
    """Pub/sub channel of a job's events."""
    return f"sdq:events:{job_id}"


class JobStore:
    """Job and item records in Redis. Pass the connection in."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._retry = client.register_script(_RETRY)
        self._hand_off = client.register_script(_HAND_OFF)

    # -- producer side -------------------------------------------------------------------
    def create(self, job: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Record a new job and its items (all `queued`) in one transaction."""
        job_id = job["id"]
        fields = {k: json.dumps(v) if k in _JSON_FIELDS else v for k, v in job.items() if v is not None}
        fields.update({f"c:{s}": 0 for s in ("running", "succeeded", "failed", "cancelled")})
        fields["c:queued"] = len(items)
        fields["steps_done"] = 0
        fields["steps_total"] = sum(it["steps"] for it in items)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(_job_key(job_id), mapping=fields)
        for start in range(0, len(items), 2000):
            chunk = items[start:start + 2000]
            pipe.hset(_items_key(job_id), mapping={str(it["index"]): json.dumps(it) for it in chunk})
        pipe.zadd(f"sdq:jobs:{job.get('owner', '')}", {job_id: job["created_at"]})
        pipe.zadd(ACTIVE_KEY, {job_id: job["created_at"]})
        pipe.expire(_job_key(job_id), defaults.JOB_TTL)
        pipe.expire(_items_key(job_id), defaults.JOB_TTL)
        pipe.execute()

    def delete(self, job_id: str, owner: str = "") -> None:
        """Remove a job entirely (used when enqueueing fails, so nothing is half-submitted)."""
        self.r.delete(_job_key(job_id), _items_key(job_id))
        self.r.zrem(f"sdq:jobs:{owner}", job_id)
        self.r.zrem(ACTIVE_KEY, job_id)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job record with counters, or None."""
        raw = self.r.hgetall(_job_key(job_id))
        if not raw:
            return None
        job: dict[str, Any] = {}
        for k, v in raw.items():
            k = k.decode() if isinstance(k, bytes) else k
            v = v.decode() if isinstance(v, bytes) else v
            if k in _JSON_FIELDS:
                v = json.loads(v)
            elif k in _FLOAT_FIELDS:
                v = float(v)
            elif k in _INT_FIELDS or k.startswith("c:"):
                v = int(float(v))
            job[k] = v
        job["counts"] = {s: job.pop(f"c:{s}", 0) for s in ("queued", "running", "succeeded", "failed", "cancelled")}
        return job

    def items(self, job_id: str, offset: int, limit: int, n_items: int) -> list[dict[str, Any]]:
        """Items `offset` .. `offset+limit` in index order (one HMGET, independent of job size)."""
        indices = [str(i) for i in range(offset, min(offset + limit, n_items))]
        if not indices:
            return []
        return [_loads(raw) for raw in self.r.hmget(_items_key(job_id), indices) if raw]

    def all_items(self, job_id: str) -> list[dict[str, Any]]:
        """Every item of a job in index order (for manifests)."""
        raw = self.r.hgetall(_items_key(job_id))
        return sorted((json.loads(v) for v in raw.values()), key=lambda it: it["index"])

    def list_jobs(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        """Job ids of `owner`, newest first, and the total count."""
        key = f"sdq:jobs:{owner}"
        ids = self.r.zrevrange(key, offset, offset + limit - 1)
        return [i.decode() if isinstance(i, bytes) else i for i in ids], int(self.r.zcard(key))

    def cancel(self, job_id: str) -> tuple[str | None, bool]:
        """Cancel a job: queued items become cancelled, running ones see the flag.

        Returns the new state and whether this call ended the job (then the caller finalizes it).
        """
        out = self._cancel(keys=[_job_key(job_id), _items_key(job_id)], args=[job_id, time.time()])
        if not out:
            return None, False
        state = out[0].decode() if isinstance(out[0], bytes) else out[0]
        return state, int(out[1]) == 1

    def queue_position(self, job: dict[str, Any]) -> int | None:
        """Estimated items queued ahead of the job's first queued item (None: nothing queued).

        Counts the queued items of unfinished jobs that compete for the same workers (same
        `requires.device`, or `any` on either side) and are served first: a higher priority, or
        the same priority and created earlier. Looks at most `QUEUE_SCAN_MAX` jobs; independent
        of the number of items.
        """
        if not job["counts"].get("queued"):
            return None
        ids = [i.decode() if isinstance(i, bytes) else i for i in self.r.zrange(ACTIVE_KEY, 0, QUEUE_SCAN_MAX - 1)]
        pipe = self.r.pipeline(transaction=False)
        for other in ids:
            pipe.hmget(_job_key(other), "priority", "created_at", "c:queued", "requires")
        device = (job.get("requires") or {}).get("device", "any")
        mine = (int(job.get("priority", 5)), float(job["created_at"]))
        ahead, gone = 0, []
        for other, (prio, created, queued, requires) in zip(ids, pipe.execute()):
            if other == job["id"]:
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
            self.r.zrem(ACTIVE_KEY, *gone)
        return ahead

    def retry(self, job_id: str) -> list[dict[str, Any]] | None:
        """Re-queue failed and cancelled items; returns them (None if no such job)."""
        out = self._retry(keys=[_job_key(job_id), _items_key(job_id)], args=[job_id])
        return None if out is None else [json.loads(raw) for raw in out]

    # -- worker side ---------------------------------------------------------------------
    def start_items(self, job_id: str, indices: list[int], worker: str, device: str, dtype: str,
                    on_job_finished: Callable[[str], None] | None = None) -> list[int]:
        """Mark items running on `worker`; returns those to run (skips done or cancelled ones).

        If the job was cancelled and this call cancelled its last items, `on_job_finished(job_id)`
        is called (manifest, webhook)."""
        out = [int(i) for i in self._start(keys=[_job_key(job_id), _items_key(job_id)],
                                           args=[job_id, worker, device, dtype, time.time(), *indices])]
        if out and out[-1] == -1:
            out.pop()
            if on_job_finished is not None:
                on_job_finished(job_id)
        return out

    def finish_item(self, job_id: str, index: int, state: str, fields: dict[str, Any],
                    steps_reported: int = 0) -> bool:
        """Record an item's outcome; True when this finished the whole job."""
        done = self._finish(keys=[_job_key(job_id), _items_key(job_id)],
                            args=[job_id, index, state, time.time(), json.dumps(fields), steps_reported])
        return done == 1

    def hand_off(self, job_id: str, indices: list[int], worker: str, error: str, steps_reported: int = 0) -> list[int]:
        """Put `worker`'s running items back in `queued` after it ran out of memory (not if the job
        was cancelled); returns the indices handed back, each now naming `worker` in `oom_workers`."""
        return [int(i) for i in self._hand_off(keys=[_job_key(job_id), _items_key(job_id)],
                                               args=[job_id, worker, error, steps_reported, *indices])]

    def add_progress(self, job_id: str, indices: list[int], steps: int, step: int, total: int) -> bool:
        """Count `steps` more steps for each item, announce `item.progress`; True if cancelled."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(_job_key(job_id), "steps_done", steps * len(indices))
        for index in indices:
            pipe.publish(events_channel(job_id), json.dumps(
                {"event": "item.progress", "data": {"index": index, "step": step, "steps": total}}))
        pipe.hget(_job_key(job_id), "cancel")
        return pipe.execute()[-1] in (b"1", "1")

    def is_cancelled(self, job_id: str) -> bool:
        """Whether the job's cancel flag is set."""
        return self.r.hget(_job_key(job_id), "cancel") in (b"1", "1")

    def set_field(self, job_id: str, **fields: Any) -> None:
        """Set plain job fields (e.g. manifest key)."""
        self.r.hset(_job_key(job_id), mapping={k: json.dumps(v) if k in _JSON_FIELDS else v
                                               for k, v in fields.items()})

    # -- read-only views for the producer ------------------------------------------------------
    def queued_items_of(self, owner: str) -> int:
        """Items of `owner` still queued, over the first `QUEUE_SCAN_MAX` unfinished jobs (one pipeline)."""
        ids = self.r.zrange(ACTIVE_KEY, 0, QUEUE_SCAN_MAX - 1)
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(_job_key(job_id.decode() if isinstance(job_id, bytes) else job_id), "owner", "c:queued")
        total = 0
        for who, queued in pipe.execute() if ids else []:
            who = who.decode() if isinstance(who, bytes) else (who or "")
            if who == owner:
                total += int(float(queued or 0))
        return total
