-- Give back what an allowed consume took, once.
-- KEYS[1]    idempotency record of the consume ("AR|USED|TICKET", see consume.lua)
-- KEYS[2..]  the window counters it incremented
-- ARGV[i]    the cost taken from KEYS[i + 1]
-- Returns 1 when units were given back, 0 when the consume was unknown, denied or
-- already refunded.

-- Allowed and not yet refunded; a missing record reads as "".
if redis.call('GETRANGE', KEYS[1], 0, 1) ~= '10' then
  return 0
end

for i = 2, #KEYS do
  local cost = tonumber(ARGV[i - 1])
  local cur = redis.call('GET', KEYS[i])
  -- A counter that is gone belongs to a finished window: nothing to give back.
  if cur and cost > 0 then
    if tonumber(cur) > cost then
      redis.call('DECRBY', KEYS[i], cost)
    else
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end

-- SETRANGE keeps the record's TTL.
redis.call('SETRANGE', KEYS[1], 1, '1')
return 1
