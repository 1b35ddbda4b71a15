-- Record requests a proxy admitted from a lease: each goes into the usage stream (so
-- the ledger bills it, one to one, like a consume; in entries the counter has joined,
-- turnpike-wire's lease_stream_records) and counts as spent from the lease.
-- Records for a lease already closed (reported late), and records beyond what the
-- lease granted and did not give back already, are charged to the current windows
-- instead, so nothing is both given back and used.
-- KEYS[1]    the lease record
-- KEYS[2]    the bucket's usage stream
-- KEYS[3]    this report's marker: a report sent again (its answer was lost) is
--            recognised and changes nothing, so nothing is counted spent twice
-- KEYS[4..]  the current windows of the route's meters (for late records)
-- ARGV[1]    lease id; ARGV[2] tenant; ARGV[3] plan; ARGV[4] meters per request
-- ARGV[5]    seconds a counter outlives its window; ARGV[6] number of records N
-- ARGV[7]    number of stream entries E
-- ARGV[8 .. 7 + E]  each entry's records, `id:ms,id:ms,...` (decision times in unix
--                   ms, Redis's clock)
-- ARGV[8 + E ..]    for KEYS[4..]: cost per request, window end (unix s)
-- ARGV[last]  how long the report's marker is kept, seconds
-- Reply: {recorded, 0 counted spent / 1 some charged, how many charged}; {0, 2, 0}
-- for a report seen before

if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[#ARGV]) then
  return {0, 2, 0}
end
local count = tonumber(ARGV[6])
local entries = tonumber(ARGV[7])
local open = redis.call('EXISTS', KEYS[1]) == 1
local charge = count
if open then
  local s = redis.call('HINCRBY', KEYS[1], 's', count)
  local f = redis.call('HMGET', KEYS[1], 'g', 'u')
  -- More reported than the lease can account for (its proxy said some were never
  -- taken and gave them back): those were admitted all the same, so they count.
  local over = s + tonumber(f[2] or '0') - tonumber(f[1] or '0')
  charge = math.max(0, math.min(over, count))
end
if charge > 0 then
  local now = tonumber(redis.call('TIME')[1])
  local grace = tonumber(ARGV[5])
  local base = 8 + entries
  for i = 4, #KEYS do
    local j = base + 2 * (i - 4)
    local take = tonumber(ARGV[j]) * charge
    local v = redis.call('INCRBY', KEYS[i], take)
    if v == take then
      redis.call('EXPIRE', KEYS[i], math.max(tonumber(ARGV[j + 1]) - now, 1) + grace)
    end
  end
end
-- One entry per group of records (k=A): an entry per request would cost Redis, and the
-- collector reading it, most of what leasing saves.
for e = 8, 7 + entries do
  redis.call('XADD', KEYS[2], '*', 'k', 'A', 't', ARGV[2], 'p', ARGV[3], 'm', ARGV[4],
    'l', ARGV[1], 'r', ARGV[e])
end
if charge == 0 then return {count, 0, 0} end
return {count, 1, charge}
