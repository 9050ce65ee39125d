-- include: common
-- KEYS: the shared six, then the job's five, then the worker record prefix (`keys.run_script_keys`).
-- ARGV: job_id, index, state, now, fields_json, worker, gen.
-- Records an item's outcome. With a `worker` (every run does), only that run of the current attempt
-- (`gen`) may: the item's holder, or its straggler backup storing a success it claimed (or, for a
-- queued item, a worker that refuses it); a stale or superseded run, or a losing copy, records
-- nothing. (Without a worker: any queued or running item.)
-- Returns 1 if this ended the job, 0 if not, -1 if nothing was recorded (done already, or not this run's).
local k, now = job_keys(7, ARGV[1]), ARGV[4]
local job, items = k.job, k.items
local raw = redis.call('HGET', items, ARGV[2])
if not raw then return -1 end
local it = cjson.decode(raw)
if it.state ~= 'queued' and it.state ~= 'running' then return -1 end
local state, worker = ARGV[3], ARGV[6]
if worker ~= '' then
  if (tonumber(it.gen) or 0) ~= tonumber(ARGV[7]) then return -1 end
  if it.state == 'running' and it.worker ~= worker then  -- a backup only ever stores a success
    if state ~= 'succeeded' or not run_since(it, worker) then return -1 end
  end
  local holder = redis.call('HGET', k.won, ARGV[2])
  if state == 'succeeded' and holder and holder ~= worker then return -1 end
end
unrun(k, it)
bump(k, it.state, state)
local first = {worker = it.worker, started_at = it.started_at}
for key, v in pairs(cjson.decode(ARGV[5])) do it[key] = v end
if it.backup and state == 'succeeded' then  -- both runs of a backed-up item: the first to store won
  local primary_won = it.worker == first.worker
  it.runs = {{worker = first.worker, started_at = first.started_at, outcome = primary_won and 'won' or 'stopped'},
             {worker = it.backup.worker, started_at = it.backup.started_at, backup = true,
              outcome = primary_won and 'stopped' or 'won'}}
end
it.state = state; it.finished_at = tonumber(now)
redis.call('HSET', items, ARGV[2], cjson.encode(it))
add_steps(k, it.steps - take_progress(k, it.index))
if state == 'succeeded' and it.duration_s then
  redis.call('HINCRBYFLOAT', job, 'busy_s', it.duration_s)
end
emit(k, 'item.finished', ITEM_FINISHED)
return maybe_finish(k, now)
