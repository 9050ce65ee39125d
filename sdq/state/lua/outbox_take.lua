-- KEYS: the outbox (zset), the prefix of job records (`keys.job_key` without the id).
-- ARGV: now, until, limit, window.
-- Takes up to `limit` entries due by `now` for the caller: each is due again at `until` (the lease),
-- so a second taker skips it, and a taker killed before publishing it leaves it to the next one.
-- Fair across tenants: of the first `window` due entries (oldest first), it takes one per tenant (the
-- owner of the entry's job) in turn, so one tenant's many entries do not hold back another's.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
local limit = tonumber(ARGV[3])
local owners, queues, order = {}, {}, {}
local function job_of(member)
  local bar = string.find(member, '|', 1, true)
  if string.sub(member, 1, 1) ~= '{' then return bar and string.sub(member, 1, bar - 1) or '' end
  local ok, doc = pcall(cjson.decode, member)
  if not ok or type(doc) ~= 'table' then return '' end
  local chunk = type(doc.chunk) == 'table' and doc.chunk or doc
  return type(chunk.job) == 'string' and chunk.job or ''
end
for _, member in ipairs(due) do
  local job = job_of(member)
  local owner = owners[job]
  if owner == nil then
    owner = (job ~= '' and redis.call('HGET', KEYS[2] .. job, 'owner')) or ''
    owners[job] = owner
  end
  if queues[owner] == nil then queues[owner] = {}; table.insert(order, owner) end
  table.insert(queues[owner], member)
end
local taken, round = {}, 1
while #taken < limit do
  local any = false
  for _, owner in ipairs(order) do
    local member = queues[owner][round]
    if member and #taken < limit then
      table.insert(taken, member); any = true
    end
  end
  if not any then break end
  round = round + 1
end
for _, member in ipairs(taken) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member) end
return taken
