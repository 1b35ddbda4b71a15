-- Several consumes of one tenant, in one script: each is decided exactly as
-- consume.lua decides one (its own id, record and all-or-nothing check of its own
-- windows), in the order given, as if sent one after another. The clock, the seed
-- marker and the windows are read once, each window is incremented once by what the
-- allowed consumes took, and they go into the usage stream together: entries of up
-- to ARGV[9] consumes with the same meters, as a lease report's (`k=A`, each record
-- `id:ms`, without a lease). A busy proxy's batch costs Redis one script instead of
-- one per consume, and the collector an entry per hundred.
-- A batch's consumes mostly share a shape (meters, record slots, windows and costs:
-- one route, one plan): each shape is sent and read once, and a consume names its
-- own. Redis then turns two arguments a consume into Lua strings instead of ten, and
-- builds each shape's record value once.
-- KEYS[1]    the bucket's usage stream
-- KEYS[2]    the tenant's seed marker for this billing month and plan
-- KEYS[3]    the bucket's epoch (see consume.lua)
-- KEYS[4 .. 3+n]      every window counter any of the consumes takes from, once
-- KEYS[4+n .. 3+n+m]  the idempotency record of each consume
-- ARGV[1]    record TTL, seconds
-- ARGV[2]    1 when the marker must exist
-- ARGV[3..4] the marker's billing month [start, end), unix seconds
-- ARGV[5..6] stream entry: tenant, plan
-- ARGV[7]    seconds a window counter outlives its window
-- ARGV[8]    n, the number of windows
-- ARGV[9]    consumes per stream entry, at most
-- ARGV[10 + 3(i-1) ..] for window i: max, start, end (unix seconds)
-- then g, the number of shapes, and for each shape: meters ("m=q,m=q"), record
--            slots, k, and k pairs (window index, cost): its windows, in its
--            ticket's order
-- then for each consume: id, its shape's index (from 1)
--
-- Replies {3, now_ms} (stale) and {4, now_ms, required} (seed) as consume.lua, for all
-- of them; otherwise {1, now_ms, {each window's value as found}, {each consume's
-- reply}}, a reply being 1 (allowed), 0 (denied), 5 (cancelled) or, for a replay, its
-- record. The counter works out the used values each answer shows from the values
-- found and the replies, in order: the script formats no number per consume.

local now, now_ms = redis_now()
local n = tonumber(ARGV[8])
local m = #KEYS - 3 - n

local blocked = not_decidable(now, now_ms, 10, n, 3, ARGV[2], ARGV[3], ARGV[4], KEYS[2], KEYS[3])
if blocked then
  return blocked
end

-- What each window holds as the consumes are decided in order, and what they took.
local used, found, max, taken = {}, {}, {}, {}
for i = 1, n do
  used[i] = tonumber(redis.call('GET', KEYS[3 + i]) or '0')
  found[i] = used[i]
  max[i] = tonumber(ARGV[10 + 3 * (i - 1)])
  taken[i] = 0
end

local ttl, tenant, plan = ARGV[1], ARGV[5], ARGV[6]
local shapes = {}
local a = 10 + 3 * n
local g = tonumber(ARGV[a])
a = a + 1
for s = 1, g do
  local k = tonumber(ARGV[a + 2])
  local index, cost = {}, {}
  for x = 1, k do
    index[x] = tonumber(ARGV[a + 1 + 2 * x])
    cost[x] = tonumber(ARGV[a + 2 + 2 * x])
  end
  shapes[s] = {
    meters = ARGV[a],
    record = 'A|' .. now_ms .. '|' .. ARGV[a] .. '|' .. ARGV[a + 1],
    k = k,
    index = index,
    cost = cost,
  }
  a = a + 3 + 2 * k
end

local replies = {}
-- The allowed consumes' ids by their meters, the meters in the order first seen.
local joined, meters_seen = {}, {}
for j = 1, m do
  local shape = shapes[tonumber(ARGV[a + 1])]
  local record_key = KEYS[3 + n + j]
  -- A record written by an earlier consume of this call (the same id twice) is found
  -- here too: the second is a replay, as it would be one call later.
  local rec = redis.call('GET', record_key)
  if rec then
    if string.sub(rec, 1, 1) == 'C' then
      replies[j] = 5
    else
      replies[j] = rec
    end
  else
    local index, cost = shape.index, shape.cost
    local fits = true
    for x = 1, shape.k do
      local i = index[x]
      if used[i] + cost[x] > max[i] then
        fits = false
        break
      end
    end
    if fits then
      for x = 1, shape.k do
        local i = index[x]
        used[i] = used[i] + cost[x]
        taken[i] = taken[i] + cost[x]
      end
      redis.call('SET', record_key, shape.record, 'EX', ttl)
      local meters = shape.meters
      local ids = joined[meters]
      if not ids then
        ids = {}
        joined[meters] = ids
        meters_seen[#meters_seen + 1] = meters
      end
      ids[#ids + 1] = ARGV[a]
      replies[j] = 1
    else
      replies[j] = 0
    end
  end
  a = a + 2
end

local grace = tonumber(ARGV[7])
for i = 1, n do
  if taken[i] > 0 then
    add_to_window(KEYS[3 + i], taken[i], tonumber(ARGV[10 + 3 * (i - 1) + 2]), now, grace)
  end
end

-- Every record carries the decision time: `id:ms,id:ms`, joined by table.concat.
local per_entry = tonumber(ARGV[9])
local at = ':' .. now_ms
for _, meters in ipairs(meters_seen) do
  local ids = joined[meters]
  for first = 1, #ids, per_entry do
    local last = math.min(first + per_entry - 1, #ids)
    local records = table.concat(ids, at .. ',', first, last) .. at
    redis.call('XADD', KEYS[1], '*', 'k', 'A', 't', tenant, 'p', plan, 'm', meters, 'r', records)
  end
end
return {1, now_ms, found, replies}
