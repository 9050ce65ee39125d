-- include: common
-- KEYS: the shared six, then the job's five (`keys.job_script_keys`).
-- ARGV: job_id, due, index...
-- One bounded slice of a retry: failed and cancelled items go back to `queued` as a new attempt
-- (`gen` + 1, the poison limit's `tries` counted afresh; `attempts` keeps counting every run).
-- They are recorded in the outbox (`add_intent`, due at `due`), and the job is open again (`reopen`), in
-- this same step: a retry cut short between slices leaves an open job whose re-queued items run and
-- finish it again (a second retry re-queues the rest). Returns them as JSON (nil for no such job).
local k = job_keys(7, ARGV[1])
if redis.call('EXISTS', k.job) == 0 then return nil end
local out, flat = {}, {}
for i = 3, #ARGV do
  local raw = redis.call('HGET', k.items, ARGV[i])
  if raw then
    local it = cjson.decode(raw)
    if it.state == 'failed' or it.state == 'cancelled' then
      bump(k, it.state, 'queued')
      add_steps(k, -it.steps)
      it.state = 'queued'; it.error = cjson.null; it.finished_at = cjson.null; it.last_error = cjson.null
      it.gen = (tonumber(it.gen) or 0) + 1; it.tries = 0
      local enc = cjson.encode(it)
      redis.call('HSET', k.items, ARGV[i], enc)
      table.insert(out, enc)
      table.insert(flat, it.index); table.insert(flat, it.gen)
    end
  end
end
if #flat > 0 then
  add_intent(k.id, flat, ARGV[2])
  reopen(k)
end
return out
