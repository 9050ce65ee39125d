-- KEYS: job (hash), active jobs (zset), jobs to finalise (zset). ARGV: job_id.
-- After a retry re-queued items: the job is open again.
local job, job_id = KEYS[1], ARGV[1]
redis.call('HDEL', job, 'cancel', 'finished_at', 'webhook_queued')
local running = tonumber(redis.call('HGET', job, 'c:running') or '0')
redis.call('HSET', job, 'state', running > 0 and 'running' or 'queued')
redis.call('ZADD', KEYS[2], redis.call('HGET', job, 'created_at'), job_id)
redis.call('ZREM', KEYS[3], job_id)
return 1
