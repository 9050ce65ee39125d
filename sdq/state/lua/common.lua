-- Shared by the job scripts that include it (first line `-- include: common`); loaded in front of them.
-- KEYS[1..6]: active jobs (zset), jobs to finalise (zset), the prefix of the per-worker running sets,
--   workers with running items (set), queued items per owner (hash), the outbox (zset,
--   `sdq.state.outbox`) as KEYS[6]. The running set is the one key
--   formed here (prefix .. worker), because the worker is read from the item record. Then five keys
--   per job (`job_keys(i)`).
-- The `item.finished` event table below is filled in by `sdq.state.scripts` (a placeholder here):
-- the item's fields that the EVENT view shows (`sdq.records`).
local ACTIVE, FINALIZE, RUNNING, RUNNING_WORKERS, QUEUED_BY_OWNER = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local OUTBOX = KEYS[6]

-- the keys of one job, from KEYS[i]: its hash, items, per-item progress, won, events channel
local function job_keys(i, job_id)
  return {id = job_id, job = KEYS[i], items = KEYS[i + 1], prog = KEYS[i + 2], won = KEYS[i + 3],
          events = KEYS[i + 4]}
end
-- one item changes state: the job's counters, and its owner's queued items (the cap checked at submit)
local function bump(k, from, to)
  redis.call('HINCRBY', k.job, 'c:' .. from, -1)
  redis.call('HINCRBY', k.job, 'c:' .. to, 1)
  if (from == 'queued') ~= (to == 'queued') then
    local owner = redis.call('HGET', k.job, 'owner') or ''
    local n = redis.call('HINCRBY', QUEUED_BY_OWNER, owner, to == 'queued' and 1 or -1)
    if n <= 0 then redis.call('HDEL', QUEUED_BY_OWNER, owner) end
  end
end
local function emit(k, event, data)
  redis.call('PUBLISH', k.events, cjson.encode({event = event, data = data}))
end
-- the item no longer runs on its worker: out of that worker's running index
local function unrun(k, it)
  if it.worker then redis.call('SREM', RUNNING .. it.worker, k.id .. ':' .. it.index) end
  redis.call('HDEL', k.won, it.index)
end
-- steps counted for the item's current run (`add_progress`), forgotten: a run that ends or is
-- lost never leaves its partial progress behind, so redelivery cannot over-count
local function take_progress(k, index)
  local p = tonumber(redis.call('HGET', k.prog, index) or '0')
  if p ~= 0 then redis.call('HDEL', k.prog, index) end
  return p
end
local function add_steps(k, n)
  if n ~= 0 then redis.call('HINCRBY', k.job, 'steps_done', n) end  -- never "-0": HINCRBY refuses it
end
local function maybe_finish(k, now)
  local job = k.job
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
  redis.call('ZREM', ACTIVE, k.id)
  -- recorded "to finalise" in the same step: a finalize task writes manifest/grid/webhook and
  -- removes it; a sweeper sends the task again for any job left here (`workers.finishing.finalize`)
  redis.call('ZADD', FINALIZE, now, k.id)
  emit(k, 'job.finished', {id = k.id, state = final,
    counts = {succeeded = tonumber(redis.call('HGET', job, 'c:succeeded') or '0'),
              failed = tonumber(redis.call('HGET', job, 'c:failed') or '0'),
              cancelled = tonumber(redis.call('HGET', job, 'c:cancelled') or '0')}})
  return 1
end
-- a running item goes back to `queued`: off its worker, its unfinished progress uncounted
local function requeue_running(k, it)
  unrun(k, it)
  bump(k, 'running', 'queued')
  add_steps(k, -take_progress(k, it.index))
  it.state = 'queued'
end
-- an unfinished item ends in `state` (cancelled/failed) without running again
local function settle(k, it, state, now, error)
  unrun(k, it)
  bump(k, it.state, state)
  add_steps(k, it.steps - take_progress(k, it.index))
  it.state = state; it.finished_at = tonumber(now)
  if error then it.error = error end
  redis.call('HSET', k.items, tostring(it.index), cjson.encode(it))
  emit(k, 'item.finished', ITEM_FINISHED)
end
-- Whether `worker` still holds a run of item `index` of job `job_id` that it started at `since`: its
-- fleet record (`workers` is the record prefix, KEYS[12] of the scripts that ask) exists (it expires
-- HEARTBEAT_TTL after the last beat), does not say `stalled` (no progress for STALL_TIMEOUT), is of a
-- process started no later than the run (not a restart under the same name), and names the item in
-- its `current_item` (or was last written before the run started, so cannot say yet).
local function holder_alive(workers, worker, since, job_id, index)
  if type(worker) ~= 'string' or worker == '' then return false end
  local raw = redis.call('GET', workers .. worker)
  if not raw then return false end
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' or rec.stalled == true then return false end
  since = tonumber(since) or 0
  if (tonumber(rec.started_at) or 0) > since then return false end
  if (tonumber(rec.last_seen) or 0) < since then return true end
  local cur = rec.current_item
  if type(cur) ~= 'table' or cur.job ~= job_id or type(cur.items) ~= 'table' then return false end
  for _, i in ipairs(cur.items) do
    if tonumber(i) == tonumber(index) then return true end
  end
  return false
end
-- When `worker` started its run of `it`: as the item's holder or as its straggler backup (nil: neither).
local function run_since(it, worker)
  if it.worker == worker then return it.started_at end
  if type(it.backup) == 'table' and it.backup.worker == worker then return it.backup.started_at end
  return nil
end
-- Items re-queued by this step need a message: record "publish item i of attempt g" in the outbox in
-- the same step, due at `due` (the caller publishes before then and removes it; if it dies, a sweeper
-- publishes it). `flat` is {index, gen, index, gen, ...}; the member is spelled as
-- `sdq.state.outbox.intent` spells it: ``<job>|<index>:<gen>,...``. Returns the member (nil: none).
local function add_intent(job_id, flat, due)
  if #flat == 0 then return nil end
  local parts = {}
  for n = 1, #flat, 2 do parts[#parts + 1] = tostring(flat[n]) .. ':' .. tostring(flat[n + 1]) end
  local member = job_id .. '|' .. table.concat(parts, ',')
  redis.call('ZADD', OUTBOX, tonumber(due), member)
  return member
end
-- A job that items were re-queued into (a retry) is open again: no cancel flag, no finish time, in the
-- active set and no longer waiting to be finalised; `running` if any item runs, else `queued`.
local function reopen(k)
  redis.call('HDEL', k.job, 'cancel', 'finished_at', 'webhook_queued')
  local running = tonumber(redis.call('HGET', k.job, 'c:running') or '0')
  redis.call('HSET', k.job, 'state', running > 0 and 'running' or 'queued')
  redis.call('ZADD', ACTIVE, redis.call('HGET', k.job, 'created_at'), k.id)
  redis.call('ZREM', FINALIZE, k.id)
end
