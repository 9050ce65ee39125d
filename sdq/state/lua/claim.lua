-- KEYS: items (hash), won (hash). ARGV: index, worker, ttl.
-- Before storing the result of an item that may have a second copy running: the first run to claim
-- it stores it (returns 1), the other one drops its result (returns 0).
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local it = cjson.decode(raw)
if it.state ~= 'running' then return 0 end
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if holder then return holder == ARGV[2] and 1 or 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
