-- Give a lease up: it is never extended again, and its unspent units go back to its
-- windows (lease_close.lua, run by the sweeper) once the report delay has passed, not
-- now. Requests its proxy admitted from it may still be on their way in a report:
-- given back now and charged again when that report arrived, their units could be
-- granted twice in between, and a window near its limit would go over it.
-- What the proxy says no worker took (it dropped the lease before they could) is the
-- exception: no report can name those, so they go back now, once per lease (field u).
-- Run when the proxy gives the lease back (its tenant went quiet, its VM stops) and
-- when the lease's windows rolled over. Idempotent; the earlier close time wins.
-- KEYS[1]  the lease record; KEYS[2] the bucket's lease index
-- KEYS[3..] the windows the lease took from (from the record's slots, read before)
-- ARGV[1]  the index member ("TENANT:ID"); ARGV[2] report delay, seconds
-- ARGV[3]  requests never taken, to give back now (0: none known)
-- ARGV[4..] cost per request of KEYS[3..]
-- Reply: {1 given up now / 0 already given up or closed, requests given back now}

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0}
end
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[2], 'XX', 'LT', now + tonumber(ARGV[2]), ARGV[1])
local back = 0
local untaken = tonumber(ARGV[3])
if untaken > 0 and redis.call('HEXISTS', KEYS[1], 'u') == 0 then
  local f = redis.call('HMGET', KEYS[1], 'g', 's')
  back = math.min(untaken, tonumber(f[1] or '0') - tonumber(f[2] or '0'))
  if back < 0 then back = 0 end
  return_to_windows(3, 1, back)
  redis.call('HSET', KEYS[1], 'u', back)
end
local retired = redis.call('HSETNX', KEYS[1], 'x', '1')
return {retired, back}
