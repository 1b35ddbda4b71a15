-- Several settlements of one tenant, in one script: each is applied exactly as
-- settle.lua applies one (its own compare-and-set of the record it was planned from,
-- its own stream entry), in the order given, as if sent one after another. Each window
-- is read once and written once, with what the settlements before left in it.
-- KEYS[1]    the bucket's usage stream
-- KEYS[2 .. 1+n]      every window any of the records' slots name, once
-- KEYS[2+n .. 1+n+m]  the idempotency record of each settled consume
-- ARGV[1]    tenant; ARGV[2] n, the number of windows
-- then for each settlement: the record as the counter read it, the record's new
--            meters text, its new slots text, the consume id, k, and k pairs (window
--            index, change: final - reserved, may be < 0), in the record's slot order
-- Reply: one code per settlement, as settle.lua's: 1 settled, 0 nothing to do, 3 the
-- record changed since it was read.

local n = tonumber(ARGV[2])
local m = #KEYS - 1 - n

-- Each window's value, and whether its counter exists: a counter that is gone belongs
-- to a finished window, and gets nothing back (settle.lua).
local value, exists, touched = {}, {}, {}
for i = 1, n do
  local v = redis.call('GET', KEYS[1 + i])
  exists[i] = v ~= false
  value[i] = tonumber(v or '0')
  touched[i] = false
end

local tenant = ARGV[1]
local replies = {}
local a = 3
for j = 1, m do
  local k = tonumber(ARGV[a + 4])
  local record_key = KEYS[1 + n + j]
  local rec = redis.call('GET', record_key)
  if (rec or '') ~= ARGV[a] then
    replies[j] = 3
  elseif not rec or string.sub(rec, 1, 1) ~= 'A' then
    replies[j] = 0
  else
    for b = a + 5, a + 3 + 2 * k, 2 do
      local i = tonumber(ARGV[b])
      local delta = tonumber(ARGV[b + 1])
      if delta > 0 then
        value[i] = value[i] + delta
        exists[i] = true
        touched[i] = true
      elseif delta < 0 and exists[i] then
        if value[i] > -delta then
          value[i] = value[i] + delta
        else
          value[i] = 0
        end
        touched[i] = true
      end
    end
    local meters = ARGV[a + 1]
    local time = string.match(rec, '^A|(%d+)|')
    redis.call('SET', record_key, 'S|' .. time .. '|' .. meters .. '|' .. ARGV[a + 2], 'KEEPTTL')
    redis.call('XADD', KEYS[1], '*', 'k', 's', 'i', ARGV[a + 3], 't', tenant, 'm', meters)
    replies[j] = 1
  end
  a = a + 5 + 2 * k
end

-- KEEPTTL: a window keeps its expiry; one that a settlement created has none, as the
-- INCRBY of settle.lua leaves it.
for i = 1, n do
  if touched[i] then
    -- %d, not tostring: Lua 5.1 prints large numbers in exponent form.
    redis.call('SET', KEYS[1 + i], string.format('%d', value[i]), 'KEEPTTL')
  end
end
return replies
