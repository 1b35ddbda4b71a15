-- Give back what an allowed consume took, once, and record the refund in the usage
-- stream. A refund that arrives before its consume (a client gone while the consume
-- callout was in flight) leaves a tombstone, so the late consume is refused, not billed.
-- KEYS[1]    idempotency record ("S|T|METERS|SLOTS", see consume.lua; S = A or S)
-- KEYS[2]    the bucket's usage stream
-- KEYS[3..]  the window counters the consume incremented (from the record's slots)
-- ARGV[1]    the record as the caller read it ("" if absent): if it changed since,
--            the caller's KEYS may be wrong; answer 3 so it reads again
-- ARGV[2]    record TTL for a tombstone, seconds
-- ARGV[3..4] stream entry: consume id, tenant
-- ARGV[5..]  the cost taken from KEYS[3..]
-- Replies: 1 refunded, 0 nothing to give back (already refunded or cancelled),
--          2 tombstone written (the consume had not arrived), 3 record changed: retry

local rec = redis.call('GET', KEYS[1])
if (rec or '') ~= ARGV[1] then
  return 3
end
if not rec then
  redis.call('SET', KEYS[1], 'C|0||', 'EX', ARGV[2])
  redis.call('XADD', KEYS[2], '*', 'k', 'c', 'i', ARGV[3], 't', ARGV[4])
  return 2
end
-- Allowed, or allowed and settled (the record's slots then hold the settled costs).
local state = string.sub(rec, 1, 1)
if state ~= 'A' and state ~= 'S' then
  return 0
end

return_to_windows(3, 2, 1)

-- SETRANGE keeps the record's TTL.
redis.call('SETRANGE', KEYS[1], 0, 'R')
redis.call('XADD', KEYS[2], '*', 'k', 'r', 'i', ARGV[3], 't', ARGV[4])
return 1
