-- include: common
-- KEYS: the shared six, then the job's five, then the worker record prefix (`keys.run_script_keys`).
-- ARGV: job_id, index, worker, gen.
-- Before a run stores an item's result: only a run of the item's current attempt (`gen`), as its
-- holder or its straggler backup, may; the first to claim it stores it. A claim lasts as long as its
-- run is alive (`holder_alive`): one whose run is gone (killed after claiming, its upload failed) is
-- taken over. Returns 1: store it; 0: drop it (not this run's, or the holder's live backup won);
-- 2: the item's holder must ask again (a live backup holds the claim and may still fail to store).
local k = job_keys(7, ARGV[1])
local WORKERS, index, me = KEYS[12], ARGV[2], ARGV[3]
local raw = redis.call('HGET', k.items, index)
if not raw then return 0 end
local it = cjson.decode(raw)
if it.state ~= 'running' or (tonumber(it.gen) or 0) ~= tonumber(ARGV[4]) then return 0 end
if not run_since(it, me) then return 0 end
local holder = redis.call('HGET', k.won, index)
if holder and holder ~= me then
  local since = run_since(it, holder)
  if since and holder_alive(WORKERS, holder, since, k.id, it.index) then
    if it.worker == me then return 2 end
    return 0
  end
end
redis.call('HSET', k.won, index, me)
redis.call('EXPIRE', k.won, math.max(1, redis.call('TTL', k.job)))
return 1
