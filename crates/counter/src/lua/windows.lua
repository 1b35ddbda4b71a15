-- Shared by consume.lua, consume_many.lua, lease.lua, lease_close.lua,
-- lease_retire.lua, refund.lua and settle.lua: the counter loads each of them with
-- this file in front (Redis scripts cannot call one another).

-- Redis's clock (TIME), so every counter replica agrees on which window "now" is in:
-- unix seconds and unix ms.
local function redis_now()
  local t = redis.call('TIME')
  local now = tonumber(t[1])
  return now, now * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether `now` lies in each of the `n` windows whose arguments start at ARGV[first],
-- `stride` arguments per window ending in start, end (cost, max, start, end in
-- consume.lua and lease.lua; max, start, end in consume_many.lua).
local function windows_hold(now, first, n, stride)
  for i = 1, n do
    local base = first + stride * (i - 1)
    if now < tonumber(ARGV[base + stride - 2]) or now >= tonumber(ARGV[base + stride - 1]) then
      return false
    end
  end
  return true
end

-- nil when the tenant's seed marker exists; else the "re-seed first" reply: {4, now_ms,
-- 1} when the bucket's epoch is younger than the billing month starting at
-- `month_start` (Redis may have lost usage of this month), {4, now_ms, 0} otherwise.
local function seed_reply(now, now_ms, month_start, marker_key, epoch_key)
  if redis.call('EXISTS', marker_key) == 1 then
    return nil
  end
  local epoch = redis.call('GET', epoch_key)
  if not epoch then
    redis.call('SET', epoch_key, now)
    epoch = now
  end
  if tonumber(epoch) > month_start then
    return {4, now_ms, 1}
  end
  return {4, now_ms, 0}
end

-- nil when a decision can be made now: `now` lies in each of the `n` windows (see
-- windows_hold) and, when `require_seed` is '1', in the billing month [month_start,
-- month_end) and the tenant's seed marker exists. Otherwise the reply that says why:
-- {3, now_ms} (stale: recompute and retry) or seed_reply's.
local function not_decidable(now, now_ms, first, n, stride, require_seed, month_start,
                             month_end, marker_key, epoch_key)
  if not windows_hold(now, first, n, stride) then
    return {3, now_ms}
  end
  if require_seed == '1' then
    if now < tonumber(month_start) or now >= tonumber(month_end) then
      return {3, now_ms}
    end
    return seed_reply(now, now_ms, tonumber(month_start), marker_key, epoch_key)
  end
  return nil
end

-- Adds `take` to the window counter `key`; a new counter lives until its window
-- `ends` (by Redis's clock: a relative expiry), plus `grace` seconds. The new value.
local function add_to_window(key, take, ends, now, grace)
  local v = redis.call('INCRBY', key, take)
  if v == take then
    redis.call('EXPIRE', key, ends - now + grace)
  end
  return v
end

-- Gives `give` units back to the window counter `key`: never below 0, keeping its
-- expiry. A counter that is gone belongs to a window that ended: nothing to give back.
local function give_back_to_window(key, give)
  local cur = redis.call('GET', key)
  if cur and give > 0 then
    if tonumber(cur) > give then
      redis.call('DECRBY', key, give)
    else
      redis.call('SET', key, 0, 'KEEPTTL')
    end
  end
end

-- Gives `n` requests back to the window counters KEYS[first..], ARGV[i + offset]
-- units a request for KEYS[i] (give_back_to_window).
local function return_to_windows(first, offset, n)
  for i = first, #KEYS do
    give_back_to_window(KEYS[i], tonumber(ARGV[i + offset]) * n)
  end
end
