-- KEYS: the outbox (zset), the parked chunks (zset), the fleet they were checked against (string).
-- ARGV: member, now, fleet signature.
-- Parks an outbox entry no live worker of fleet `signature` can take: out of the outbox, into the
-- parked set. Only while that is still the fleet the parked chunks were last checked against (else
-- the fleet changed meanwhile: the entry stays in the outbox, due again after its lease, and is looked
-- at with the new fleet). Returns 1 if parked.
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
