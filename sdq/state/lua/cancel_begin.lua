-- KEYS: job (hash). ARGV: none.
-- Sets the cancel flag of an unfinished job; returns the job's state, or nil for no such job.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return nil end
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return state
