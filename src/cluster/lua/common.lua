-- Shared by every couple script (prepended to each). Keys of one couple share the hash tag
-- {couple}: KEYS[1] is its meta hash, the device streams are `<streams prefix><device>`.
-- Meta fields: e epoch, c counter, rid the Redis run_id the epoch was taken under,
-- D:<device> paired devices, b:<device> payload bytes waiting, dv:<device> newest seq handed
-- to a socket, ev:<device> newest seq evicted and not acknowledged since, x:<device> a lower
-- bound on the expiry of its oldest entry.
-- Stream entries have the id `<seq>-0` and fields f (from), i (id), t (created ms),
-- x (expires ms), p (payload).
local SHIFT = 16777216 -- seq = epoch << 24 | counter, as in a single-node room

local function num(v)
  return tonumber(v) or 0
end

-- Exact for every seq below 2^53.
local function seqstr(n)
  return string.format('%.0f', n)
end

local function seqof(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return ''
end

-- The newest seq handed out.
local function head(m)
  local ec = redis.call('HMGET', m, 'e', 'c')
  return num(ec[1]) * SHIFT + num(ec[2])
end

-- Drops the expired entries at the head of a device's stream (TTLs are equal, so they are
-- the oldest). x:<device> holds a lower bound on the oldest entry's expiry, so a stream
-- with nothing due costs no read (reading the head entry means reading its payload).
-- `bound` is x:<device> if the caller already read it. Returns how many entries it dropped,
-- their payload bytes (already taken off b:<device>), and the bound now (false: none).
local function expire(m, s, d, now, bound)
  if bound == nil then bound = redis.call('HGET', m, 'x:' .. d) end
  if not bound or num(bound) > now then return 0, 0, bound end
  local dropped, freed = 0, 0
  local first
  while true do
    first = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)[1]
    if not first or num(field(first, 'x')) > now then break end
    redis.call('XDEL', s, first[1])
    local l = #field(first, 'p')
    redis.call('HINCRBY', m, 'b:' .. d, -l)
    dropped, freed = dropped + 1, freed + l
  end
  if first then
    bound = field(first, 'x')
    redis.call('HSET', m, 'x:' .. d, bound)
  else
    bound = false
    redis.call('HDEL', m, 'x:' .. d)
  end
  return dropped, freed, bound
end

-- Cumulative acknowledgement, clamped to the newest seq handed out (a bogus ack cannot hide
-- later signals); returns how many entries it removed.
local function ack(m, s, d, up)
  up = math.min(up, head(m))
  local gone = redis.call('XRANGE', s, '-', seqstr(up))
  if #gone > 0 then
    local bytes = 0
    for _, e in ipairs(gone) do bytes = bytes + #field(e, 'p') end
    redis.call('XTRIM', s, 'MINID', seqstr(up + 1))
    redis.call('HINCRBY', m, 'b:' .. d, -bytes)
  end
  local ev = redis.call('HGET', m, 'ev:' .. d)
  if ev and num(ev) <= up then redis.call('HDEL', m, 'ev:' .. d) end
  return #gone
end

-- A device's stream entries, as the reply carries them.
local function entries(s, from)
  return redis.call('XRANGE', s, from, '+')
end
