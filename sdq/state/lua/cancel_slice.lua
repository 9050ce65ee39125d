-- include: common
-- KEYS: the shared six, then the job's five (`keys.job_script_keys`).
-- ARGV: job_id, now, index...
-- One bounded slice of a cancel: its queued items become cancelled. Returns 1 if this call ended the job.
local k, now = job_keys(7, ARGV[1]), ARGV[2]
if redis.call('HGET', k.job, 'cancel') ~= '1' then return 0 end
for i = 3, #ARGV do
  local raw = redis.call('HGET', k.items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'queued' then settle(k, it, 'cancelled', now, nil) end
  end
end
return maybe_finish(k, now)
