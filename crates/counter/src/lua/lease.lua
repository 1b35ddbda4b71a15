-- Grant (or extend) a lease: a block of requests of one route, taken from every
-- window the route's meters count, exactly as that many consumes would take them, so a
-- limit can only be under-used, never exceeded. The proxy spends the block locally.
-- KEYS[1]    the lease record (hash: g granted, s spent reported, e expires (unix s),
--            k window slots "suffix=cost;..." per request, m meters per request;
--            later x given up, u given back when given up: lease_retire.lua)
-- KEYS[2]    the bucket's usage stream
-- KEYS[3]    the tenant's seed marker (see consume.lua)
-- KEYS[4]    the bucket's epoch (see consume.lua)
-- KEYS[5]    the bucket's lease index (zset: member "TENANT:ID", score = when the
--            sweeper closes it: its expiry plus the report delay)
-- KEYS[6..]  one window counter per selected limit
-- ARGV[1]    requests wanted
-- ARGV[2]    largest share of the room left in the tightest window one grant may take
-- ARGV[3]    longest lease, seconds
-- ARGV[4]    seconds a counter outlives its window
-- ARGV[5]    1 when the seed marker must exist
-- ARGV[6..7] the marker's billing month [start, end)
-- ARGV[8]    the lease's id (its index member is "TENANT:ID")
-- ARGV[9]    tenant
-- ARGV[10]   meters per request ("m=q,m=q"); ARGV[11] window slots per request
-- ARGV[12]   report delay, seconds: how long after the lease ends its proxy may still
--            report requests it admitted; its unspent units go back only then
-- ARGV[13 + 4(i-1) ..] for window i: cost per request, max, start, end
-- Replies {code, now_ms, payload...}:
--   1 {1, now_ms, granted, expires, used csv}   (granted may be 0: no room to lease)
--   3 stale, 4 seed (as consume.lua)
--   6 the lease exists but took from other windows (they rolled over since the caller
--     decided to extend it), or was given back: never extend it; lease anew

local now, now_ms = redis_now()
local n = #KEYS - 5

local held = redis.call('HGET', KEYS[1], 'k')
if held and (held ~= ARGV[11] or redis.call('HEXISTS', KEYS[1], 'x') == 1) then
  return {6, now_ms}
end

local blocked = not_decidable(now, now_ms, 13, n, 4, ARGV[5], ARGV[6], ARGV[7], KEYS[3], KEYS[4])
if blocked then
  return blocked
end

-- How many whole requests fit in every window, and the share of that a grant may take.
local room = nil
local used = {}
for i = 1, n do
  local base = 13 + 4 * (i - 1)
  local cost = tonumber(ARGV[base])
  local cur = tonumber(redis.call('GET', KEYS[i + 5]) or '0')
  used[i] = cur
  if cost > 0 then
    local fits = math.floor((tonumber(ARGV[base + 1]) - cur) / cost)
    if fits < 0 then fits = 0 end
    if room == nil or fits < room then room = fits end
  end
end
if room == nil then room = tonumber(ARGV[1]) end
local granted = math.min(tonumber(ARGV[1]), math.floor(room * tonumber(ARGV[2])))
if granted < 1 then
  local parts = {}
  for i = 1, n do parts[i] = string.format('%d', used[i]) end
  return {1, now_ms, 0, 0, table.concat(parts, ',')}
end

local expires = now + tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local parts = {}
for i = 1, n do
  local base = 13 + 4 * (i - 1)
  local v = add_to_window(KEYS[i + 5], tonumber(ARGV[base]) * granted, tonumber(ARGV[base + 3]), now, grace)
  parts[i] = string.format('%d', v)
  -- A lease never outlives a window it took from: after the window ends its units
  -- would count in no window at all.
  local ends = tonumber(ARGV[base + 3])
  if ends < expires then expires = ends end
end

redis.call('HINCRBY', KEYS[1], 'g', granted)
redis.call('HSET', KEYS[1], 'e', expires, 'k', ARGV[11], 'm', ARGV[10])
local delay = tonumber(ARGV[12])
redis.call('EXPIRE', KEYS[1], expires - now + delay + grace + 600)
redis.call('ZADD', KEYS[5], expires + delay, ARGV[9] .. ':' .. ARGV[8])
redis.call('XADD', KEYS[2], '*', 'k', 'g', 'l', ARGV[8], 't', ARGV[9], 'n', granted, 'm', ARGV[10])
return {1, now_ms, granted, expires, table.concat(parts, ',')}
