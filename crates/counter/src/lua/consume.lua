-- Check and consume, atomically, in one round trip.
-- KEYS[1]    idempotency record, a string "AR|USED|TICKET": A = allowed (0/1),
--            R = refunded (0/1), USED = comma-separated counters, TICKET = JSON.
--            (A string, not a hash: the ticket is too long for a listpack hash,
--            and a real hashtable per consume costs twice the memory.)
-- KEYS[2..]  one window counter per selected limit (all hash-tagged by tenant)
-- ARGV[1]    idempotency TTL, seconds
-- ARGV[2]    ticket: the answer's fixed parts, kept for replays and refunds
-- ARGV[3i], ARGV[3i+1], ARGV[3i+2]   for counter i (1-based): cost, max, expire-at (unix s)
-- Returns {0, allowed, used csv} for a fresh consume, {1, allowed, record} for a replay.

local rec = redis.call('GET', KEYS[1])
if rec then
  -- A retried consume: the stored answer, even if the plans changed since.
  return {1, tonumber(string.sub(rec, 1, 1)), rec}
end

local n = #KEYS - 1
local used = {}
local allowed = 1
for i = 1, n do
  local cur = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
  used[i] = cur
  if cur + tonumber(ARGV[3 * i]) > tonumber(ARGV[3 * i + 1]) then
    allowed = 0
  end
end

-- All or nothing: a denied consume increments no counter.
if allowed == 1 then
  for i = 1, n do
    local cost = tonumber(ARGV[3 * i])
    local v = redis.call('INCRBY', KEYS[i + 1], cost)
    if v == cost then
      -- A new counter: it lives until its window ends (plus grace).
      redis.call('EXPIREAT', KEYS[i + 1], ARGV[3 * i + 2])
    end
    used[i] = v
  end
end

-- %d, not tostring: Lua 5.1 prints large numbers in exponent form.
local parts = {}
for i = 1, n do
  parts[i] = string.format('%d', used[i])
end
local csv = table.concat(parts, ',')
redis.call('SET', KEYS[1], allowed .. '0|' .. csv .. '|' .. ARGV[2], 'EX', ARGV[1])
return {0, allowed, csv}
