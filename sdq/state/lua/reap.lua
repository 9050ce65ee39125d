-- include: common
-- KEYS: the shared six, then the worker's running set, then five keys per member below
--   (`keys.job_keys` of the member's job, in ARGV order).
-- ARGV: worker, now, due, then members (``job_id:index``) read from the running set by the caller.
-- The reaper: items still `running` on a worker that left the fleet go back to `queued` as a new
-- attempt (or `cancelled` if their job was cancelled). A member no longer in the set (another reaper
-- took it) is skipped. The re-queued items of each job are recorded in the outbox (`add_intent`, due at
-- `due`). Returns {job_id, index, gen, ...} of the re-queued items, to publish again.
local set, worker, now = KEYS[7], ARGV[1], ARGV[2]
local out, by_job, order = {}, {}, {}
for m = 4, #ARGV do
  local member = ARGV[m]
  if redis.call('SREM', set, member) == 1 then
    local job_id, index = string.match(member, '^(.*):(%d+)$')
    local k = job_keys(8 + 5 * (m - 4), job_id)
    local raw = redis.call('HGET', k.items, index)
    if raw then
      local it = cjson.decode(raw)
      if it.state == 'running' and it.worker == worker then
        if redis.call('HGET', k.job, 'cancel') == '1' then
          settle(k, it, 'cancelled', now, nil)
          maybe_finish(k, now)
        else
          bump(k, 'running', 'queued')
          add_steps(k, -take_progress(k, it.index))
          redis.call('HDEL', k.won, it.index)
          it.state = 'queued'; it.gen = (tonumber(it.gen) or 0) + 1
          it.last_error = 'worker ' .. worker .. ' left the fleet while running it'
          redis.call('HSET', k.items, index, cjson.encode(it))
          table.insert(out, job_id); table.insert(out, it.index); table.insert(out, it.gen)
          if not by_job[job_id] then by_job[job_id] = {}; table.insert(order, job_id) end
          table.insert(by_job[job_id], it.index); table.insert(by_job[job_id], it.gen)
        end
      end
    end
  end
end
for _, job_id in ipairs(order) do add_intent(job_id, by_job[job_id], ARGV[3]) end
if redis.call('SCARD', set) == 0 then redis.call('SREM', RUNNING_WORKERS, worker) end
return out
