-- KEYS: the outbox (zset). ARGV: now, until, limit.
-- Takes up to `limit` entries due by `now` for the caller: each is due again at `until` (the lease),
-- so a second taker skips it, and a taker killed before publishing it leaves it to the next one.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member) end
return due
