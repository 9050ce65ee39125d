"""Job and item state in Redis, shared by producer and workers.

Keys (all expire `JOB_TTL` after creation):

- ``sdq:job:<id>`` hash: the `sdq.records.Job` fields (JSON where structured, see `Job.to_hash`)
  and counters ``c:<state>`` per item state, ``steps_done``/``steps_total`` for progress;
- ``sdq:job:<id>:items`` hash: item index -> `sdq.records.Item` as JSON (unset fields left out);
- ``sdq:jobs:<owner>`` sorted set of job ids by creation time;
- ``sdq:active`` sorted set of unfinished job ids by creation time (for queue positions);
- ``sdq:job:<id>:prog`` hash: item index -> steps counted by its current run;
- ``sdq:running:<worker>`` / ``sdq:running-workers``: which worker runs which items (the reaper);
- ``sdq:job:<id>:won`` hash: item index -> the run that may store its result, when an item has a
  straggler backup (the first copy to claim it wins; see `claim_result`);
- ``sdq:finalize`` sorted set of ended jobs not yet finalised;
- ``sdq:events:<id>`` pub/sub channel of job events (see `EVENTS`).

Each item carries ``gen``, the identity of its current attempt: a task message names the ``gen``
it was published for, and is ignored once the item was re-queued under a newer one.

Every state change of an item goes through one Lua script, so counters always agree with the
items, a duplicate delivery never counts twice, and the job finishes exactly once.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import redis

from sdq import defaults
from sdq.contract import ITEM_STATES
from sdq.records import EVENT, Item, Job, shown_in
from sdq.redisconn import text

try:  # a C decoder where installed (the producer extra has it): item pages decode ~3x faster
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - the standard library is enough, only slower
    _loads = json.loads

EVENTS = ("item.started", "item.progress", "item.finished", "job.finished")

_ITEM_FINISHED = "{" + ", ".join(f"{name} = it.{name}" for name in shown_in(Item, EVENT)) + "}"
"""The Lua table of an `item.finished` event: the item's fields that `EVENT` shows."""

_LUA_COMMON = """
local function bump(job, from, to)
  redis.call('HINCRBY', job, 'c:' .. from, -1)
  redis.call('HINCRBY', job, 'c:' .. to, 1)
end
local function emit(job_id, event, data)
  redis.call('PUBLISH', 'sdq:events:' .. job_id, cjson.encode({event = event, data = data}))
end
-- the item no longer runs on its worker: out of that worker's running index
local function unrun(job_id, it)
  if it.worker then redis.call('SREM', 'sdq:running:' .. it.worker, job_id .. ':' .. it.index) end
  redis.call('HDEL', 'sdq:job:' .. job_id .. ':won', it.index)
end
-- steps counted for the item's current run (`add_progress`), forgotten: a run that ends or is
-- lost never leaves its partial progress behind, so redelivery cannot over-count
local function take_progress(job, index)
  local p = tonumber(redis.call('HGET', job .. ':prog', index) or '0')
  if p ~= 0 then redis.call('HDEL', job .. ':prog', index) end
  return p
end
local function add_steps(job, n)
  if n ~= 0 then redis.call('HINCRBY', job, 'steps_done', n) end  -- never "-0": HINCRBY refuses it
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
  -- sdq runs on one Redis (not Cluster): the shared indexes are addressed by name.
  redis.call('ZREM', 'sdq:active', job_id)
  -- recorded "to finalise" in the same step: a finalize task writes manifest/grid/webhook and
  -- removes it; a sweeper sends the task again for any job left here (`sdq.lifecycle`)
  redis.call('ZADD', 'sdq:finalize', now, job_id)
  emit(job_id, 'job.finished', {id = job_id, state = final,
    counts = {succeeded = tonumber(redis.call('HGET', job, 'c:succeeded') or '0'),
              failed = tonumber(redis.call('HGET', job, 'c:failed') or '0'),
              cancelled = tonumber(redis.call('HGET', job, 'c:cancelled') or '0')}})
  return 1
end
-- a running item goes back to `queued`: off its worker, its unfinished progress uncounted
local function requeue_running(job, job_id, it)
  unrun(job_id, it)
  bump(job, 'running', 'queued')
  add_steps(job, -take_progress(job, it.index))
  it.state = 'queued'
end
-- an unfinished item ends in `state` (cancelled/failed) without running again
local function settle(job, items, job_id, it, state, now, error)
  unrun(job_id, it)
  bump(job, it.state, state)
  add_steps(job, it.steps - take_progress(job, it.index))
  it.state = state; it.finished_at = tonumber(now)
  if error then it.error = error end
  redis.call('HSET', items, tostring(it.index), cjson.encode(it))
  emit(job_id, 'item.finished', ITEM_FINISHED)
end
""".replace("ITEM_FINISHED", _ITEM_FINISHED)

# KEYS: job, items. ARGV: job_id, worker, device, dtype, now, max_attempts, then (index, gen) pairs.
# Starts the items whose attempt identity (`gen`) matches the message's: a message left over from
# an earlier attempt (re-queued by retry, hand-off or the reaper) starts nothing. A `running` item
# is a redelivery after its worker was lost. An item already tried `max_attempts` times is failed
# with its last error instead (poison item). Returns the indices to run, then -1 if the job ended.
_START = _LUA_COMMON + """
local job, items, job_id, now = KEYS[1], KEYS[2], ARGV[1], ARGV[5]
if redis.call('EXISTS', job) == 0 then return {} end
local cancel = redis.call('HGET', job, 'cancel') == '1'
local max_attempts = tonumber(ARGV[6])
local out, settled = {}, false
for i = 7, #ARGV, 2 do
  local raw = redis.call('HGET', items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if (it.state == 'queued' or it.state == 'running') and (tonumber(it.gen) or 0) == tonumber(ARGV[i + 1]) then
      if it.state == 'running' then
        unrun(job_id, it)
        add_steps(job, -take_progress(job, it.index))
        it.last_error = it.last_error or ('worker ' .. tostring(it.worker) .. ' stopped while running it')
      end
      if cancel then
        settle(job, items, job_id, it, 'cancelled', now, nil); settled = true
      elseif (tonumber(it.tries) or 0) >= max_attempts then
        settle(job, items, job_id, it, 'failed', now, 'gave up after ' .. (tonumber(it.tries) or 0) ..
          ' attempts; last: ' .. tostring(it.last_error)); settled = true
      else
        if it.state == 'queued' then bump(job, 'queued', 'running') end
        it.state = 'running'; it.worker = ARGV[2]; it.device = ARGV[3]; it.dtype = ARGV[4]
        it.started_at = tonumber(now); it.attempts = (tonumber(it.attempts) or 0) + 1
        it.tries = (tonumber(it.tries) or 0) + 1  -- runs since submit or the last retry (poison limit)
        redis.call('SADD', 'sdq:running:' .. ARGV[2], job_id .. ':' .. it.index)
        redis.call('SADD', 'sdq:running-workers', ARGV[2])
        redis.call('HSET', items, ARGV[i], cjson.encode(it))
        table.insert(out, it.index)
        emit(job_id, 'item.started', {index = it.index, worker = ARGV[2]})
      end
    end
  end
end
if #out > 0 and redis.call('HGET', job, 'state') == 'queued' then
  redis.call('HSET', job, 'state', 'running')
  if not redis.call('HGET', job, 'started_at') then redis.call('HSET', job, 'started_at', now) end
end
if settled and maybe_finish(job, job_id, now) == 1 then table.insert(out, -1) end
return out
"""

# KEYS: job, items. ARGV: job_id, index, state, now, fields_json
_FINISH = _LUA_COMMON + """
local job, items, job_id, now = KEYS[1], KEYS[2], ARGV[1], ARGV[4]
local raw = redis.call('HGET', items, ARGV[2])
if not raw then return -1 end
local it = cjson.decode(raw)
if it.state ~= 'queued' and it.state ~= 'running' then return -1 end
local state = ARGV[3]
unrun(job_id, it)
bump(job, it.state, state)
local first = {worker = it.worker, started_at = it.started_at}
for k, v in pairs(cjson.decode(ARGV[5])) do it[k] = v end
if it.backup and state == 'succeeded' then  -- both runs of a backed-up item: the first to store won
  local primary_won = it.worker == first.worker
  it.runs = {{worker = first.worker, started_at = first.started_at, outcome = primary_won and 'won' or 'stopped'},
             {worker = it.backup.worker, started_at = it.backup.started_at, backup = true,
              outcome = primary_won and 'stopped' or 'won'}}
end
it.state = state; it.finished_at = tonumber(now)
redis.call('HSET', items, ARGV[2], cjson.encode(it))
add_steps(job, it.steps - take_progress(job, it.index))
if state == 'succeeded' and it.duration_s then
  redis.call('HINCRBYFLOAT', job, 'busy_s', it.duration_s)
end
emit(job_id, 'item.finished', ITEM_FINISHED)
return maybe_finish(job, job_id, now)
""".replace("ITEM_FINISHED", _ITEM_FINISHED)

# KEYS: job. ARGV: none. Sets the cancel flag; returns the state, or nil for no such job.
_CANCEL_BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return nil end
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return state
"""

# KEYS: job, items. ARGV: job_id, now, index... One bounded slice of a cancel: its queued items
# become cancelled. Returns 1 if this call ended the job.
_CANCEL_SLICE = _LUA_COMMON + """
local job, items, job_id, now = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
if redis.call('HGET', job, 'cancel') ~= '1' then return 0 end
for i = 3, #ARGV do
  local raw = redis.call('HGET', items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'queued' then settle(job, items, job_id, it, 'cancelled', now, nil) end
  end
end
return maybe_finish(job, job_id, now)
"""

# KEYS: job, items. ARGV: job_id, index... One bounded slice of a retry: failed and cancelled items
# go back to `queued` as a new attempt (`gen` + 1, the poison limit's `tries` counted afresh;
# `attempts` keeps counting every run). Returns them as JSON.
_RETRY_SLICE = _LUA_COMMON + """
local job, items, job_id = KEYS[1], KEYS[2], ARGV[1]
if redis.call('EXISTS', job) == 0 then return nil end
local out = {}
for i = 2, #ARGV do
  local raw = redis.call('HGET', items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'failed' or it.state == 'cancelled' then
      bump(job, it.state, 'queued')
      add_steps(job, -it.steps)
      it.state = 'queued'; it.error = cjson.null; it.finished_at = cjson.null; it.last_error = cjson.null
      it.gen = (tonumber(it.gen) or 0) + 1; it.tries = 0
      local enc = cjson.encode(it)
      redis.call('HSET', items, ARGV[i], enc)
      table.insert(out, enc)
    end
  end
end
return out
"""

# KEYS: job. ARGV: job_id. After a retry re-queued items: the job is open again.
_REOPEN = """
local job, job_id = KEYS[1], ARGV[1]
redis.call('HDEL', job, 'cancel', 'finished_at', 'webhook_queued')
local running = tonumber(redis.call('HGET', job, 'c:running') or '0')
redis.call('HSET', job, 'state', running > 0 and 'running' or 'queued')
redis.call('ZADD', 'sdq:active', redis.call('HGET', job, 'created_at'), job_id)
redis.call('ZREM', 'sdq:finalize', job_id)
return 1
"""

# KEYS: job, items. ARGV: job_id, worker, error, index...
# Out of memory even in low-memory mode: the worker's running items go back to `queued` as a new
# attempt for another worker, remembering who could not make them. Returns (index, gen) pairs.
_HAND_OFF = _LUA_COMMON + """
local job, items, job_id = KEYS[1], KEYS[2], ARGV[1]
if redis.call('HGET', job, 'cancel') == '1' then return {} end
local out = {}
for i = 4, #ARGV do
  local raw = redis.call('HGET', items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'running' and it.worker == ARGV[2] then
      requeue_running(job, job_id, it)
      local seen = it.oom_workers
      if type(seen) ~= 'table' then seen = {} end
      table.insert(seen, ARGV[2])
      it.oom_workers = seen; it.oom_error = ARGV[3]
      it.gen = (tonumber(it.gen) or 0) + 1
      redis.call('HSET', items, ARGV[i], cjson.encode(it))
      table.insert(out, it.index); table.insert(out, it.gen)
    end
  end
end
return out
"""

# KEYS: job, items. ARGV: job_id, worker, error, now, index...
# An infrastructure error stopped the worker's run of these items: back to `queued` (same attempt
# identity: the same message is delivered again) with the error kept for the poison limit.
_RELEASE = _LUA_COMMON + """
local job, items, job_id = KEYS[1], KEYS[2], ARGV[1]
local n = 0
for i = 5, #ARGV do
  local raw = redis.call('HGET', items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'running' and it.worker == ARGV[2] then
      requeue_running(job, job_id, it)
      it.last_error = ARGV[3]
      redis.call('HSET', items, ARGV[i], cjson.encode(it))
      n = n + 1
    end
  end
end
return n
"""

# ARGV: worker, now, limit. The reaper: up to `limit` items still `running` on a worker that left
# the fleet go back to `queued` as a new attempt (or `cancelled` if their job was cancelled).
# Returns {job_id, index, ...} of the re-queued items, to publish again.
_REAP = _LUA_COMMON + """
local worker, now = ARGV[1], ARGV[2]
local set = 'sdq:running:' .. worker
local out = {}
for _, member in ipairs(redis.call('SPOP', set, tonumber(ARGV[3]))) do
  local job_id, index = string.match(member, '^(.*):(%d+)$')
  local job, items = 'sdq:job:' .. job_id, 'sdq:job:' .. job_id .. ':items'
  local raw = redis.call('HGET', items, index)
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'running' and it.worker == worker then
      if redis.call('HGET', job, 'cancel') == '1' then
        settle(job, items, job_id, it, 'cancelled', now, nil)
        maybe_finish(job, job_id, now)
      else
        bump(job, 'running', 'queued')
        add_steps(job, -take_progress(job, it.index))
        redis.call('HDEL', job .. ':won', it.index)
        it.state = 'queued'; it.gen = (tonumber(it.gen) or 0) + 1
        it.last_error = 'worker ' .. worker .. ' left the fleet while running it'
        redis.call('HSET', items, index, cjson.encode(it))
        table.insert(out, job_id); table.insert(out, it.index)
      end
    end
  end
end
if redis.call('SCARD', set) == 0 then redis.call('SREM', 'sdq:running-workers', worker) end
return out
"""

# KEYS: job, items. ARGV: job_id, worker, steps, step, total, index...
# Progress of a run: counted only for items still running on `worker` (a run that was superseded
# after a hang, or a straggler backup, counts nothing). Returns 1 if the job was cancelled, 2 if no
# item of the run is wanted from `worker` any more (another copy stored it first), else 0.
_PROGRESS = """
local job, items, job_id, worker, steps = KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3])
local counted, wanted = 0, false
for i = 6, #ARGV do
  local raw = redis.call('HGET', items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'running' and (it.worker == worker or (it.backup and it.backup.worker == worker)) then
      wanted = true
    end
    if it.state == 'running' and it.worker == worker then
      if steps ~= 0 then redis.call('HINCRBY', job .. ':prog', ARGV[i], steps) end
      counted = counted + steps
      redis.call('PUBLISH', 'sdq:events:' .. job_id, cjson.encode({event = 'item.progress',
        data = {index = it.index, step = tonumber(ARGV[4]), steps = tonumber(ARGV[5])}}))
    end
  end
end
if counted ~= 0 then
  redis.call('HINCRBY', job, 'steps_done', counted)
  redis.call('EXPIRE', job .. ':prog', redis.call('TTL', job))
end
if redis.call('HGET', job, 'cancel') == '1' then return 1 end
if not wanted then return 2 end
return 0
"""

# KEYS: job, items. ARGV: index, worker, now. A straggler backup of a running item, at most one per
# item: records `backup` {worker, started_at} on it. Returns 1 if started.
_BACKUP = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw or redis.call('HGET', KEYS[1], 'cancel') == '1' then return 0 end
local it = cjson.decode(raw)
if it.state ~= 'running' or it.backup or it.worker == ARGV[2] then return 0 end
it.backup = {worker = ARGV[2], started_at = tonumber(ARGV[3])}
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(it))
return 1
"""

# KEYS: items, won. ARGV: index, worker, ttl. Before storing the result of an item that may have a
# second copy running: the first run to claim it stores it, the other one drops its result.
_CLAIM = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local it = cjson.decode(raw)
if it.state ~= 'running' then return 0 end
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if holder then return holder == ARGV[2] and 1 or 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""

STOP_CANCELLED, STOP_UNWANTED = 1, 2
"""`add_progress` answers: the job was cancelled; no item of the run is wanted from this worker."""

ACTIVE_KEY = "sdq:active"
"""Sorted set of unfinished job ids by creation time."""

FINALIZE_KEY = "sdq:finalize"
"""Sorted set of ended jobs whose manifest/grid/webhook are not done yet, by time recorded."""

RUNNING_WORKERS_KEY = "sdq:running-workers"
"""Set of workers with items `running`; ``sdq:running:<worker>`` holds each one's ``job:index``."""

SLICE = 500
"""Items one cancel or retry script touches at most (the broker's Redis is never blocked long)."""

QUEUE_SCAN_MAX = 1000
"""Most unfinished jobs looked at when estimating a queue position."""


def _job_key(job_id: str) -> str:
    return f"sdq:job:{job_id}"


def _items_key(job_id: str) -> str:
    return f"sdq:job:{job_id}:items"


def _progress_key(job_id: str) -> str:
    return f"sdq:job:{job_id}:prog"


def events_channel(job_id: str) -> str:
    """Pub/sub channel of a job's events."""
    return f"sdq:events:{job_id}"


class JobStore:
    """Job and item records in Redis. Pass the connection in."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._cancel_begin = client.register_script(_CANCEL_BEGIN)
        self._cancel_slice = client.register_script(_CANCEL_SLICE)
        self._retry_slice = client.register_script(_RETRY_SLICE)
        self._reopen = client.register_script(_REOPEN)
        self._hand_off = client.register_script(_HAND_OFF)
        self._release = client.register_script(_RELEASE)
        self._reap = client.register_script(_REAP)
        self._progress = client.register_script(_PROGRESS)
        self._backup = client.register_script(_BACKUP)
        self._claim = client.register_script(_CLAIM)

    # -- producer side -------------------------------------------------------------------
    def create(self, job: Job, items: list[Item]) -> None:
        """Record a new job and its items (all `queued`) in one transaction."""
        job_id = job.id
        fields = job.to_hash()
        fields.update({f"c:{s}": 0 for s in ITEM_STATES})
        fields["c:queued"] = len(items)
        fields["steps_done"] = 0
        fields["steps_total"] = sum(it.steps for it in items)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(_job_key(job_id), mapping=fields)
        for start in range(0, len(items), 2000):
            chunk = items[start:start + 2000]
            pipe.hset(_items_key(job_id), mapping={str(it.index): json.dumps(it.to_record()) for it in chunk})
        pipe.zadd(f"sdq:jobs:{job.owner}", {job_id: job.created_at})
        pipe.zadd(ACTIVE_KEY, {job_id: job.created_at})
        pipe.expire(_job_key(job_id), defaults.JOB_TTL)
        pipe.expire(_items_key(job_id), defaults.JOB_TTL)
        pipe.execute()

    def delete(self, job_id: str, owner: str = "") -> None:
        """Remove a job entirely (used when enqueueing fails, so nothing is half-submitted)."""
        self.redis.delete(_job_key(job_id), _items_key(job_id), _progress_key(job_id))
        self.redis.zrem(f"sdq:jobs:{owner}", job_id)
        self.redis.zrem(ACTIVE_KEY, job_id)

    def get(self, job_id: str) -> Job | None:
        """The job with its counters, or None."""
        raw = self.redis.hgetall(_job_key(job_id))
        return Job.from_hash({text(k): text(v) for k, v in raw.items()}) if raw else None

    def items(self, job_id: str, offset: int, limit: int, n_items: int) -> list[Item]:
        """Items `offset` .. `offset+limit` in index order (one HMGET, independent of job size)."""
        indices = [str(i) for i in range(offset, min(offset + limit, n_items))]
        if not indices:
            return []
        return [Item.from_record(_loads(raw)) for raw in self.redis.hmget(_items_key(job_id), indices) if raw]

    def all_items(self, job_id: str) -> list[Item]:
        """Every item of a job in index order (for manifests)."""
        raw = self.redis.hgetall(_items_key(job_id))
        return sorted((Item.from_record(_loads(v)) for v in raw.values()), key=lambda it: it.index)

    def list_jobs(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        """Job ids of `owner`, newest first, and the total count."""
        key = f"sdq:jobs:{owner}"
        ids = self.redis.zrevrange(key, offset, offset + limit - 1)
        return [text(i) for i in ids], int(self.redis.zcard(key))

    def cancel(self, job_id: str) -> tuple[str | None, bool]:
        """Cancel a job: queued items become cancelled, running ones see the flag.

        Works in slices of `SLICE` items, one short script each, so a big job never blocks the
        Redis that is also the broker. Returns the new state and whether this call ended the job
        (it is then recorded "to finalise", see `sdq.lifecycle`).
        """
        state = self._cancel_begin(keys=[_job_key(job_id)])
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
            ended |= self._cancel_slice(keys=[_job_key(job_id), _items_key(job_id)],
                                        args=[job_id, time.time(), *indices[start:start + SLICE]]) == 1
        return ended

    def _n_items(self, job_id: str) -> int:
        return int(self.redis.hget(_job_key(job_id), "n_items") or 0)

    def _state(self, job_id: str) -> str | None:
        raw = self.redis.hget(_job_key(job_id), "state")
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
        ids = [text(i) for i in self.redis.zrange(ACTIVE_KEY, 0, QUEUE_SCAN_MAX - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for other in ids:
            pipe.hmget(_job_key(other), "priority", "created_at", "c:queued", "requires")
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
            self.redis.zrem(ACTIVE_KEY, *gone)
        return ahead

    def retry(self, job_id: str) -> list[Item] | None:
        """Re-queue failed and cancelled items as new attempts, in slices of `SLICE` items; returns
        them (None if no such job). Messages of their earlier attempts are dropped when delivered."""
        n = self._n_items(job_id)
        if not n and not self.redis.exists(_job_key(job_id)):
            return None
        out: list[Item] = []
        for start in range(0, n, SLICE):
            raw = self._retry_slice(keys=[_job_key(job_id), _items_key(job_id)],
                                    args=[job_id, *range(start, min(n, start + SLICE))])
            out += [Item.from_record(_loads(r)) for r in raw or ()]
        if out:
            self._reopen(keys=[_job_key(job_id)], args=[job_id])
        return out

    # -- worker side ---------------------------------------------------------------------
    def start_items(self, job_id: str, items: list[tuple[int, int] | int], worker: str, device: str, dtype: str,
                    on_job_finished: Callable[[str], None] | None = None,
                    max_attempts: int = defaults.MAX_ATTEMPTS) -> list[int]:
        """Mark items running on `worker`; returns those to run. `items` are (index, gen) pairs from
        the message (a bare index means attempt 0): done, cancelled or superseded (stale `gen`)
        items are skipped, and an item
        tried `max_attempts` times already is failed with its last error.

        If this call ended the job (cancelled or failed its last items), `on_job_finished(job_id)`
        is called (finalisation)."""
        pairs = [(it, 0) if isinstance(it, int) else it for it in items]
        args = [a for index, gen in pairs for a in (index, gen)]
        out = [int(i) for i in self._start(keys=[_job_key(job_id), _items_key(job_id)],
                                           args=[job_id, worker, device, dtype, time.time(), max_attempts, *args])]
        if out and out[-1] == -1:
            out.pop()
            if on_job_finished is not None:
                on_job_finished(job_id)
        return out

    def finish_item(self, job_id: str, index: int, state: str, fields: dict[str, Any],
                    steps_reported: int = 0) -> bool:
        """Record an item's outcome; True when this finished the whole job. (`steps_reported` is
        ignored: the steps this run counted are kept per item, see `add_progress`.)"""
        done = self._finish(keys=[_job_key(job_id), _items_key(job_id)],
                            args=[job_id, index, state, time.time(), json.dumps(fields)])
        return done == 1

    def hand_off(self, job_id: str, indices: list[int], worker: str, error: str,
                 steps_reported: int = 0) -> list[tuple[int, int]]:
        """Put `worker`'s running items back in `queued` as new attempts after it ran out of memory
        (not if the job was cancelled); returns the (index, gen) pairs handed back, each now naming
        `worker` in `oom_workers`."""
        out = [int(x) for x in self._hand_off(keys=[_job_key(job_id), _items_key(job_id)],
                                              args=[job_id, worker, error, *indices])]
        return list(zip(out[::2], out[1::2]))

    def release(self, job_id: str, indices: list[int], worker: str, error: str) -> int:
        """Give `worker`'s running items back (`queued`, same attempt) after an infrastructure
        error, keeping `error` as their last one; returns how many."""
        return int(self._release(keys=[_job_key(job_id), _items_key(job_id)],
                                 args=[job_id, worker, error, time.time(), *indices]))

    def running_workers(self) -> list[str]:
        """Workers that have (or had, until they died) items `running`."""
        return sorted(text(n) for n in self.redis.smembers(RUNNING_WORKERS_KEY))

    def reap(self, worker: str, limit: int = 500) -> list[tuple[str, int]]:
        """Put back up to `limit` items still `running` on `worker`, which left the fleet; returns
        the (job id, index) pairs re-queued as new attempts (the caller publishes them)."""
        out = self._reap(args=[worker, time.time(), limit])
        out = [text(x) for x in out]
        return [(out[i], int(out[i + 1])) for i in range(0, len(out), 2)]

    def item_records(self, job_id: str, indices: list[int]) -> list[Item]:
        """The records of these items (missing ones skipped)."""
        if not indices:
            return []
        return [Item.from_record(_loads(raw)) for raw in self.redis.hmget(_items_key(job_id), [str(i) for i in indices]) if raw]

    # -- finalisation ----------------------------------------------------------------------
    def finalize_due(self, older_than: float) -> list[str]:
        """Jobs recorded "to finalise" more than `older_than` seconds ago (re-stamped now, so each
        is returned once per period)."""
        now = time.time()
        ids = [text(i)
               for i in self.redis.zrangebyscore(FINALIZE_KEY, "-inf", now - older_than, start=0, num=100)]
        if ids:
            self.redis.zadd(FINALIZE_KEY, {i: now for i in ids}, xx=True)
        return ids

    def finalized(self, job_id: str) -> None:
        """The job's finalisation is done."""
        self.redis.zrem(FINALIZE_KEY, job_id)

    def claim_webhook(self, job_id: str) -> bool:
        """True once per job end: whoever gets it queues the webhook."""
        return bool(self.redis.hsetnx(_job_key(job_id), "webhook_queued", 1))

    def add_progress(self, job_id: str, indices: list[int], steps: int, step: int, total: int,
                     worker: str | None = None) -> int:
        """Count `steps` more steps for each item still running on `worker`, announce
        `item.progress`. Returns `STOP_CANCELLED` if the job was cancelled, `STOP_UNWANTED` if no item
        of the run is wanted from `worker` any more (a straggler backup or its original stored it
        first), else 0. Each item's count is kept too, so a lost run's partial progress is taken back.
        (Without `worker`: counted for any running item.)"""
        if worker:
            return int(self._progress(keys=[_job_key(job_id), _items_key(job_id)],
                                      args=[job_id, worker, steps, step, total, *indices]))
        pipe = self.redis.pipeline(transaction=False)
        if steps:
            pipe.hincrby(_job_key(job_id), "steps_done", steps * len(indices))
            for index in indices:
                pipe.hincrby(_progress_key(job_id), str(index), steps)
            pipe.expire(_progress_key(job_id), defaults.JOB_TTL)
        for index in indices:
            pipe.publish(events_channel(job_id), json.dumps(
                {"event": "item.progress", "data": {"index": index, "step": step, "steps": total}}))
        pipe.hget(_job_key(job_id), "cancel")
        return STOP_CANCELLED if pipe.execute()[-1] in (b"1", "1") else 0

    def start_backup(self, job_id: str, index: int, worker: str) -> bool:
        """Record a straggler backup of a running item on `worker` (at most one per item)."""
        return int(self._backup(keys=[_job_key(job_id), _items_key(job_id)], args=[index, worker, time.time()])) == 1

    def claim_result(self, job_id: str, index: int, worker: str) -> bool:
        """Before storing an item that may run twice (a straggler backup): True for the first run to
        claim it, False for the other (which drops its result)."""
        return int(self._claim(keys=[_items_key(job_id), f"sdq:job:{job_id}:won"],
                               args=[index, worker, defaults.JOB_TTL])) == 1

    def job_status(self, job_id: str) -> tuple[str | None, bool]:
        """(state, cancel flag) of a job; state None when the job does not exist."""
        state, cancel = self.redis.hmget(_job_key(job_id), "state", "cancel")
        return text(state), cancel in (b"1", "1")

    def queued_count(self, job_id: str) -> int:
        """How many of the job's items are queued now."""
        return int(self.redis.hget(_job_key(job_id), "c:queued") or 0)

    def is_cancelled(self, job_id: str) -> bool:
        """Whether the job's cancel flag is set."""
        return self.redis.hget(_job_key(job_id), "cancel") in (b"1", "1")

    def set_field(self, job_id: str, **fields: Any) -> None:
        """Set job fields (e.g. the manifest key), stored as `Job.to_hash` stores them."""
        stored = Job(**fields).to_hash()
        self.redis.hset(_job_key(job_id), mapping={k: stored[k] for k in fields})

    # -- read-only views for the producer ------------------------------------------------------
    def queued_items_of(self, owner: str) -> int:
        """Items of `owner` still queued, over the first `QUEUE_SCAN_MAX` unfinished jobs (one pipeline)."""
        ids = self.redis.zrange(ACTIVE_KEY, 0, QUEUE_SCAN_MAX - 1)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(_job_key(text(job_id)), "owner", "c:queued")
        total = 0
        for who, queued in pipe.execute() if ids else []:
            who = text(who) or ""
            if who == owner:
                total += int(float(queued or 0))
        return total
