-- include: common
-- KEYS: the shared six, then the job's five, then the worker record prefix (`keys.run_script_keys`).
-- ARGV: job_id, worker, device, dtype, now, max_attempts, then (index, gen) pairs.
-- Starts the items whose attempt identity (`gen`) matches the message's: a message left over from
-- an earlier attempt (re-queued by retry, hand-off or the reaper) starts nothing. A `running` item
-- of the same attempt is a duplicate delivery (a redelivery after its worker was lost, a remainder
-- published again by `share`, a requeued message): taken over only if its holder is gone
-- (`holder_alive`), else left to it and returned as held. An item already tried `max_attempts` times
-- is failed with its last error instead (poison item).
-- Safe to repeat (a reply lost under `retry_redis`): an item this worker started in this attempt at
-- this very `now` was started by the same call, and is returned as started again, unchanged.
-- Returns {started indices, held indices, 1 if the job ended else 0}.
local k, now = job_keys(7, ARGV[1]), ARGV[5]
local WORKERS = KEYS[12]
local job, items = k.job, k.items
if redis.call('EXISTS', job) == 0 then return {{}, {}, 0} end
local cancel = redis.call('HGET', job, 'cancel') == '1'
local max_attempts = tonumber(ARGV[6])
local out, held, settled = {}, {}, false
for i = 7, #ARGV, 2 do
  local raw = redis.call('HGET', items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    local same_attempt = (tonumber(it.gen) or 0) == tonumber(ARGV[i + 1])
    if same_attempt and it.state == 'running' and it.worker == ARGV[2]
        and tonumber(it.started_at) == tonumber(now) then
      table.insert(out, it.index)  -- this same call, repeated: already started
    elseif (it.state == 'queued' or it.state == 'running') and same_attempt then
      local live = it.state == 'running' and it.worker ~= ARGV[2]
        and holder_alive(WORKERS, it.worker, it.started_at, k.id, it.index)
      if live then
        table.insert(held, it.index)
      else
        if it.state == 'running' then
          unrun(k, it)
          add_steps(k, -take_progress(k, it.index))
          it.last_error = it.last_error or ('worker ' .. tostring(it.worker) .. ' stopped while running it')
        end
        if cancel then
          settle(k, it, 'cancelled', now, nil); settled = true
        elseif (tonumber(it.tries) or 0) >= max_attempts then
          settle(k, it, 'failed', now, 'gave up after ' .. (tonumber(it.tries) or 0) ..
            ' attempts; last: ' .. tostring(it.last_error)); settled = true
        else
          if it.state == 'queued' then bump(k, 'queued', 'running') end
          it.state = 'running'; it.worker = ARGV[2]; it.device = ARGV[3]; it.dtype = ARGV[4]
          it.backup = nil
          it.started_at = tonumber(now); it.attempts = (tonumber(it.attempts) or 0) + 1
          it.tries = (tonumber(it.tries) or 0) + 1  -- runs since submit or the last retry (poison limit)
          redis.call('SADD', RUNNING .. ARGV[2], k.id .. ':' .. it.index)
          redis.call('SADD', RUNNING_WORKERS, ARGV[2])
          redis.call('HSET', items, ARGV[i], cjson.encode(it))
          table.insert(out, it.index)
          emit(k, 'item.started', {index = it.index, worker = ARGV[2]})
        end
      end
    end
  end
end
if #out > 0 and redis.call('HGET', job, 'state') == 'queued' then
  redis.call('HSET', job, 'state', 'running')
  if not redis.call('HGET', job, 'started_at') then redis.call('HSET', job, 'started_at', now) end
end
local ended = 0
if settled and maybe_finish(k, now) == 1 then ended = 1 end
return {out, held, ended}
