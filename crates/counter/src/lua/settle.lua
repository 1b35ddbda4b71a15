-- Settle a consume: replace what it reserved of some meters with what the exchange
-- really used (tokens an LLM reported, bytes sent), atomically and once. The
-- difference goes back to, or is taken from, the windows the consume counted in; more
-- than reserved may take a window past its maximum (the work is done) and the next
-- request is refused. The usage stream gets the final quantities.
-- KEYS[1]    idempotency record ("S|T|METERS|SLOTS", see consume.lua); read before
-- KEYS[2]    the bucket's usage stream
-- KEYS[3..]  the windows in the record's slots
-- ARGV[1]    the record as the caller read it: if it changed since, answer 3
-- ARGV[2]    the record's new meters text (final quantities of every meter)
-- ARGV[3]    the record's new slots text (final cost per slot)
-- ARGV[4]    consume id; ARGV[5] tenant
-- ARGV[6..]  for KEYS[3..]: the change of each window (final - reserved; may be < 0)
-- Replies: 1 settled, 0 nothing to do (unknown, refunded, cancelled or settled
--          before), 3 record changed: read again

local rec = redis.call('GET', KEYS[1])
if (rec or '') ~= ARGV[1] then
  return 3
end
if not rec or string.sub(rec, 1, 1) ~= 'A' then
  return 0
end
for i = 3, #KEYS do
  local delta = tonumber(ARGV[i + 3])
  if delta > 0 then
    redis.call('INCRBY', KEYS[i], delta)
  elseif delta < 0 then
    give_back_to_window(KEYS[i], -delta)
  end
end
local time = string.match(rec, '^A|(%d+)|')
redis.call('SET', KEYS[1], 'S|' .. time .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'KEEPTTL')
redis.call('XADD', KEYS[2], '*', 'k', 's', 'i', ARGV[4], 't', ARGV[5], 'm', ARGV[2])
return 1
