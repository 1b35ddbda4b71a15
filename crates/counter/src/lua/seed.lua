-- Re-seed a tenant's long windows from the ledger, once per billing month and plan,
-- after Redis lost them (restart, failover to an empty replica) or before the first
-- consume of a month, a plan or an anchor day. A counter is only ever raised to the
-- ledger's figure, never lowered: what Redis holds may be newer than the ledger.
-- KEYS[1]    the seed marker
-- KEYS[2..]  window counters to seed
-- ARGV[1]    seconds a counter outlives its window
-- ARGV[2]    the marker's billing month end, unix seconds
-- ARGV[3 + 2(i-1) ..] for window i: the ledger's units, the window's end (unix s)
-- With no window keys, only the marker is set: a best-effort seed the ledger could
-- not answer (a new month while Redis kept everything of the last one).
-- Reply: {seeded (1/0), units added}

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, 0}
end
local now = tonumber(redis.call('TIME')[1])
local grace = tonumber(ARGV[1])
local added = 0
for i = 2, #KEYS do
  local base = 3 + 2 * (i - 2)
  local value = tonumber(ARGV[base])
  local ends = tonumber(ARGV[base + 1])
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  if value > cur and ends > now then
    redis.call('SET', KEYS[i], string.format('%d', value), 'EX', ends - now + grace)
    added = added + (value - cur)
  end
end
local marker_end = tonumber(ARGV[2])
redis.call('SET', KEYS[1], '1', 'EX', math.max(marker_end - now, 1) + grace)
return {1, added}
