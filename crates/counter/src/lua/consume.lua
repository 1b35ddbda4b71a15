-- Check and consume, atomically, in one round trip, on Redis's clock (TIME), so every
-- counter replica agrees on which window "now" is in.
-- KEYS[1]    idempotency record of this consume id (see "Records" below)
-- KEYS[2]    the bucket's usage stream: every admitted consume is appended here in the
--            same atomic step, so the ledger can never miss one
-- KEYS[3]    the tenant's seed marker for this billing month and plan
-- KEYS[4]    the bucket's epoch: when Redis started holding this bucket (unix s). If it
--            is younger than the billing month, Redis may have lost usage of this month
-- KEYS[5..]  one window counter per selected limit
-- ARGV[1]    record TTL, seconds
-- ARGV[2]    1 when the marker must exist (the counter re-seeds from the ledger first)
-- ARGV[3..4] the marker's billing month [start, end), unix seconds
-- ARGV[5..8] stream entry: consume id, tenant, plan, meters ("m=q,m=q")
-- ARGV[9]    record: the window slots a refund gives back ("suffix=cost;...")
-- ARGV[10]   seconds a window counter outlives its window
-- ARGV[11 + 4(i-1) ..] for window i: cost, max, start, end (unix seconds)
--
-- Records: "S|T|METERS|SLOTS", S = A (allowed), S (allowed, then settled: see
-- settle.lua), R (refunded), C (cancelled: refunded before the consume arrived),
-- T = consume time, unix ms. Denied consumes write
-- nothing at all: a flood of 429s costs no memory.
--
-- Replies {code, now_ms, payload[, used]}:
--   1 allowed (payload: used after, csv)   0 denied (payload: used as found, csv)
--   2 replay of this id (payload: record; 4th: current used csv)
--   3 stale: a window or the month does not contain now_ms; recompute and retry
--   4 seed: the marker is gone; re-seed from the ledger, then retry. payload 1: the
--     bucket's epoch is younger than the month, so usage may have been lost and the
--     ledger must answer; 0: a new month, plan or tenant, the ledger is best effort
--   5 cancelled: this id was refunded before it arrived; nothing consumed

local now, now_ms = redis_now()
local n = #KEYS - 4

local function used_csv()
  local parts = {}
  for i = 1, n do
    parts[i] = string.format('%d', tonumber(redis.call('GET', KEYS[i + 4]) or '0'))
  end
  return table.concat(parts, ',')
end

local rec = redis.call('GET', KEYS[1])
if rec then
  if string.sub(rec, 1, 1) == 'C' then
    return {5, now_ms}
  end
  return {2, now_ms, rec, used_csv()}
end

local blocked = not_decidable(now, now_ms, 11, n, 4, ARGV[2], ARGV[3], ARGV[4], KEYS[3], KEYS[4])
if blocked then
  return blocked
end

local used = {}
local allowed = true
for i = 1, n do
  local base = 11 + 4 * (i - 1)
  local cur = tonumber(redis.call('GET', KEYS[i + 4]) or '0')
  used[i] = cur
  if cur + tonumber(ARGV[base]) > tonumber(ARGV[base + 1]) then
    allowed = false
  end
end

local parts = {}
if not allowed then
  for i = 1, n do
    parts[i] = string.format('%d', used[i])
  end
  return {0, now_ms, table.concat(parts, ',')}
end

-- All or nothing: every window had room, so every window is incremented.
local grace = tonumber(ARGV[10])
for i = 1, n do
  local base = 11 + 4 * (i - 1)
  local v = add_to_window(KEYS[i + 4], tonumber(ARGV[base]), tonumber(ARGV[base + 3]), now, grace)
  -- %d, not tostring: Lua 5.1 prints large numbers in exponent form.
  parts[i] = string.format('%d', v)
end
redis.call('SET', KEYS[1], 'A|' .. now_ms .. '|' .. ARGV[8] .. '|' .. ARGV[9], 'EX', ARGV[1])
-- The decision time goes with the entry (ts): the entry's id is Redis's clock at the
-- XADD, not at the TIME above, and a script that Redis paused in between (a stall, a
-- descheduled VM) would otherwise be billed in a later second, or month, than the
-- windows it counted in.
redis.call('XADD', KEYS[2], '*', 'k', 'a', 'i', ARGV[5], 't', ARGV[6], 'p', ARGV[7], 'm', ARGV[8],
  'ts', string.format('%d', now_ms))
return {1, now_ms, table.concat(parts, ',')}
