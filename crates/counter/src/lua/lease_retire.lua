-- Give a lease up: it is never extended again, and its unspent units go back to its
-- windows (lease_close.lua, run by the sweeper) once the report delay has passed, not
-- now. Requests its proxy admitted from it may still be on their way in a report:
-- given back now and charged again when that report arrived, their units could be
-- granted twice in between, and a window near its limit would go over it.
-- Run when the proxy gives the lease back (its tenant went quiet, its VM stops) and
-- when the lease's windows rolled over. Idempotent; the earlier close time wins.
-- KEYS[1]  the lease record; KEYS[2] the bucket's lease index
-- ARGV[1]  the index member ("TENANT:ID"); ARGV[2] report delay, seconds
-- Reply: 1 given up now, 0 already given up or closed

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[2], 'XX', 'LT', now + tonumber(ARGV[2]), ARGV[1])
if redis.call('HSETNX', KEYS[1], 'x', '1') == 0 then
  return 0
end
return 1
