-- include: common
-- KEYS: the shared six, then the job's five (`keys.job_script_keys`).
-- ARGV: job_id, worker, error, due, index...
-- Out of memory even in low-memory mode: the worker's running items go back to `queued` as a new
-- attempt for another worker, remembering who could not make them, recorded in the outbox
-- (`add_intent`, due at `due`). Returns (index, gen) pairs.
local k = job_keys(7, ARGV[1])
if redis.call('HGET', k.job, 'cancel') == '1' then return {} end
local out = {}
for i = 5, #ARGV do
  local raw = redis.call('HGET', k.items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'running' and it.worker == ARGV[2] then
      requeue_running(k, it)
      local seen = it.oom_workers
      if type(seen) ~= 'table' then seen = {} end
      table.insert(seen, ARGV[2])
      it.oom_workers = seen; it.oom_error = ARGV[3]
      it.gen = (tonumber(it.gen) or 0) + 1
      redis.call('HSET', k.items, ARGV[i], cjson.encode(it))
      table.insert(out, it.index); table.insert(out, it.gen)
    end
  end
end
add_intent(k.id, out, ARGV[4])
return out
