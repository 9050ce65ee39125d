-- KEYS: job (hash), items (hash), per-item progress (hash), events channel.
-- ARGV: job_id, worker, steps, step, total, index...
-- Progress of a run: counted only for items still running on `worker` (a run that was superseded
-- after a hang, or a straggler backup, counts nothing). Returns 1 if the job was cancelled, 2 if no
-- item of the run is wanted from `worker` any more (another copy stored it first), else 0.
local job, items, prog, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local worker, steps = ARGV[2], tonumber(ARGV[3])
local counted, wanted = 0, false
for i = 6, #ARGV do
  local raw = redis.call('HGET', items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'running' and (it.worker == worker or (it.backup and it.backup.worker == worker)) then
      wanted = true
    end
    if it.state == 'running' and it.worker == worker then
      if steps ~= 0 then redis.call('HINCRBY', prog, ARGV[i], steps) end
      counted = counted + steps
      redis.call('PUBLISH', events, cjson.encode({event = 'item.progress',
        data = {index = it.index, step = tonumber(ARGV[4]), steps = tonumber(ARGV[5])}}))
    end
  end
end
if counted ~= 0 then
  redis.call('HINCRBY', job, 'steps_done', counted)
  redis.call('EXPIRE', prog, redis.call('TTL', job))
end
if redis.call('HGET', job, 'cancel') == '1' then return 1 end
if not wanted then return 2 end
return 0
