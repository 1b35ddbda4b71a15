-- Close a lease: give back to its windows what it granted and the proxies did not
-- report spending (nor gave back already when they dropped it: field u), once. Run
-- by every counter's sweeper, a report delay after the lease ended or was given up
-- (lease_retire.lua), so it must be idempotent: a closed lease has no record.
-- KEYS[1]    the lease record
-- KEYS[2]    the bucket's usage stream
-- KEYS[3]    the bucket's lease index
-- KEYS[4..]  the windows the lease took from (from the record's slots, read before)
-- ARGV[1]    the index member ("TENANT:ID"); ARGV[2] lease id; ARGV[3] tenant
-- ARGV[4..]  cost per request of KEYS[4..]
-- Reply: {closed (1/0), granted, spent, returned now}

local g = tonumber(redis.call('HGET', KEYS[1], 'g') or '-1')
if g < 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {0, 0, 0, 0}
end
local f = redis.call('HMGET', KEYS[1], 's', 'u')
local s = tonumber(f[1] or '0')
local early = tonumber(f[2] or '0')
local unspent = g - s - early
if unspent < 0 then unspent = 0 end
return_to_windows(4, 0, unspent)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'k', 'x', 'l', ARGV[2], 't', ARGV[3], 'g', g, 's', s, 'r', unspent + early)
return {1, g, s, unspent}
