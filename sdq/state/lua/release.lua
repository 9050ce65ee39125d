-- include: common
-- KEYS: the shared six, then the job's five (`keys.job_script_keys`).
-- ARGV: job_id, worker, error, now, index...
-- An infrastructure error stopped the worker's run of these items: back to `queued` (same attempt
-- identity: the same message is delivered again) with the error kept for the poison limit.
-- Returns how many went back.
local k = job_keys(7, ARGV[1])
local n = 0
for i = 5, #ARGV do
  local raw = redis.call('HGET', k.items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'running' and it.worker == ARGV[2] then
      requeue_running(k, it)
      it.last_error = ARGV[3]
      redis.call('HSET', k.items, ARGV[i], cjson.encode(it))
      n = n + 1
    end
  end
end
return n
