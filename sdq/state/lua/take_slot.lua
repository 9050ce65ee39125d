-- KEYS: the tenant's sorted set of uses in progress of one kind (`keys.held_key`).
-- ARGV: now, expires (seconds since the epoch), member, limit
-- Drops the uses that expired, then adds `member` (expiring at `expires`) unless `limit` are held;
-- the key expires with its last member. Returns 1 when taken, 0 when all slots are held.
local key, now, expires, member, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) >= limit then return 0 end
redis.call('ZADD', key, expires, member)
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
redis.call('PEXPIREAT', key, math.ceil(tonumber(last) * 1000))
return 1
