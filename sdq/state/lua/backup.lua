-- KEYS: job (hash), items (hash). ARGV: index, worker, now.
-- A straggler backup of a running item, at most one per item: records `backup` {worker, started_at}
-- on it. Returns 1 if started.
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw or redis.call('HGET', KEYS[1], 'cancel') == '1' then return 0 end
local it = cjson.decode(raw)
if it.state ~= 'running' or it.backup or it.worker == ARGV[2] then return 0 end
it.backup = {worker = ARGV[2], started_at = tonumber(ARGV[3])}
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(it))
return 1
