-- Keep a lease's units out a report delay from now: its proxy still runs requests it
-- admitted from it, to be reported when they complete. The sweeper closes a lease (its
-- unspent units back to the windows) at its index score: moved later, never earlier,
-- and the record kept as long past it as lease.lua keeps it.
-- KEYS[1]  the lease record; KEYS[2] the bucket's lease index
-- ARGV[1]  the index member ("TENANT:ID"); ARGV[2] report delay, seconds
-- ARGV[3]  seconds a counter outlives its window
-- Reply: 1 pinned, 0 the lease is closed already (its requests will be charged late)

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local now = tonumber(redis.call('TIME')[1])
local delay = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', 'GT', now + delay, ARGV[1])
redis.call('EXPIRE', KEYS[1], delay + tonumber(ARGV[3]) + 600, 'GT')
return 1
