-- KEYS: the outbox (zset), the parked chunks (zset). ARGV: due, member...
-- Parked chunks back in the outbox, due at `due`; each moved by one caller only.
local n = 0
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[2], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i]); n = n + 1
  end
end
return n
