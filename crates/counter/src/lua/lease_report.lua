-- Record requests a proxy admitted from a lease: each goes into the usage stream (so
-- the ledger bills it, one to one, like a consume; entries of up to ARGV[last - 1] requests) and
-- counts as spent from the lease.
-- Records for a lease already closed (reported late) are charged to the current
-- windows instead, so nothing is both given back and used.
-- KEYS[1]    the lease record
-- KEYS[2]    the bucket's usage stream
-- KEYS[3]    this report's marker: a report sent again (its answer was lost) is
--            recognised and changes nothing, so nothing is counted spent twice
-- KEYS[4..]  the current windows of the route's meters (for late records)
-- ARGV[1]    lease id; ARGV[2] tenant; ARGV[3] plan; ARGV[4] meters per request
-- ARGV[5]    seconds a counter outlives its window; ARGV[6] number of records N
-- ARGV[7 .. 6 + 2N]  records: consume id, decision time (unix ms, Redis's clock)
-- ARGV[7 + 2N ..]    for KEYS[3..]: cost per request, window end (unix s)
-- ARGV[last - 1]  most records per stream entry (turnpike-wire's
--                 LEASE_RECORDS_PER_STREAM_ENTRY, which the collector reads by)
-- ARGV[last]  how long the report's marker is kept, seconds
-- Reply: {recorded, charged late (1/0)}; {0, 2} for a report seen before

if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[#ARGV]) then
  return {0, 2}
end
local count = tonumber(ARGV[6])
local open = redis.call('EXISTS', KEYS[1]) == 1
if open then
  redis.call('HINCRBY', KEYS[1], 's', count)
else
  local now = tonumber(redis.call('TIME')[1])
  local grace = tonumber(ARGV[5])
  local base = 7 + 2 * count
  for i = 4, #KEYS do
    local j = base + 2 * (i - 4)
    local take = tonumber(ARGV[j]) * count
    local v = redis.call('INCRBY', KEYS[i], take)
    if v == take then
      redis.call('EXPIRE', KEYS[i], math.max(tonumber(ARGV[j + 1]) - now, 1) + grace)
    end
  end
end
-- Up to per_entry records per stream entry (k=A, records as id:ms,id:ms,...): an
-- entry per request would cost Redis, and the collector reading it, most of what
-- leasing saves. The ids are [A-Za-z0-9_-] (the counter checked them), so ':' and ','
-- cannot clash.
local per_entry = tonumber(ARGV[#ARGV - 1])
for first = 0, count - 1, per_entry do
  local records = {}
  for r = first, math.min(first + per_entry, count) - 1 do
    records[#records + 1] = ARGV[7 + 2 * r] .. ':' .. ARGV[8 + 2 * r]
  end
  redis.call('XADD', KEYS[2], '*', 'k', 'A', 't', ARGV[2], 'p', ARGV[3], 'm', ARGV[4],
    'l', ARGV[1], 'r', table.concat(records, ','))
end
if open then return {count, 0} end
return {count, 1}
