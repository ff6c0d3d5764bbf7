-- Appends one signal to its recipients' streams and publishes it: the channel's order is
-- the seq order. All or nothing: every recipient must have room first (delivered entries
-- are evicted for it, undelivered ones never are).
-- KEYS: meta, presence, resend id key (ignored when the window is 0)
-- ARGV: run_id, now, ttl ms, from, id, payload, max signals, max bytes, window ms,
--       streams prefix, channel, to ('' = every other paired device), meta keep ms,
--       wall clock ms (for the relay latency measured where the signal is delivered)
-- Reply: {'OK', seq, expired, evicted} | {'DUP', seq} | {'EPOCH'} | {'UNKNOWN'} | {'FULL'}
local m, p, idk = KEYS[1], KEYS[2], KEYS[3]
local rid, now, ttl, from, sid, payload = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local max_n, max_b, window = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local sp, chan, to, keep, wall = ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]

if window > 0 then
  local taken = redis.call('GET', idk)
  if taken then return {'DUP', taken} end
end

-- Every field this needs from the meta hash, in one call (each call costs; this script runs
-- once per signal).
local rcpt = {}
if to ~= '' then
  rcpt[1] = to
else
  for _, k in ipairs(redis.call('HKEYS', m)) do
    if string.sub(k, 1, 2) == 'D:' and string.sub(k, 3) ~= from then
      rcpt[#rcpt + 1] = string.sub(k, 3)
    end
  end
end
local fields = {'e', 'c', 'rid', 'D:' .. from}
for _, d in ipairs(rcpt) do
  fields[#fields + 1] = 'D:' .. d
  fields[#fields + 1] = 'b:' .. d
  fields[#fields + 1] = 'dv:' .. d
  fields[#fields + 1] = 'x:' .. d
end
local v = redis.call('HMGET', m, unpack(fields))
if not v[1] or v[3] ~= rid then return {'EPOCH'} end
local c = num(v[2]) + 1
if c >= SHIFT then return {'EPOCH'} end
if not v[4] then return {'UNKNOWN'} end

-- Pass 1: expiry, then room in every mailbox (evicting delivered entries only).
local len = #payload
local expired = 0
local bytes, evict, bounds = {}, {}, {}
for i, d in ipairs(rcpt) do
  local o = 4 + (i - 1) * 4
  if not v[o + 1] then return {'UNKNOWN'} end
  local s = sp .. d
  local gone, freed, bound = expire(m, s, d, now, v[o + 4])
  bounds[i] = bound
  expired = expired + gone
  local n = redis.call('XLEN', s)
  local b = num(v[o + 2]) - freed
  if n == 0 then b = 0 end
  if n + 1 > max_n or b + len > max_b then
    local dv = num(v[o + 3])
    local through, count = nil, 0
    for _, e in ipairs(redis.call('XRANGE', s, '-', '+')) do
      if n + 1 <= max_n and b + len <= max_b then break end
      local seq = seqof(e[1])
      if seq > dv then return {'FULL'} end
      n, b, count, through = n - 1, b - #field(e, 'p'), count + 1, seq
    end
    if n + 1 > max_n or b + len > max_b then return {'FULL'} end
    evict[i] = {through, count}
  end
  bytes[i] = b
end

-- Pass 2: nothing fails from here on.
local seq = seqstr(num(v[1]) * SHIFT + c)
local expires = now + ttl
local evicted = 0
local here = {}
if #rcpt > 0 then here = redis.call('HMGET', p, unpack(rcpt)) end
local sets = {'c', c}
for i, d in ipairs(rcpt) do
  local s = sp .. d
  local ev = evict[i]
  if ev then
    redis.call('XTRIM', s, 'MINID', seqstr(ev[1] + 1))
    evicted = evicted + ev[2]
    sets[#sets + 1] = 'ev:' .. d
    sets[#sets + 1] = seqstr(ev[1])
  end
  redis.call('XADD', s, seq .. '-0', 'f', from, 'i', sid, 't', now, 'x', expires, 'p', payload)
  redis.call('PEXPIRE', s, keep)
  sets[#sets + 1] = 'b:' .. d
  sets[#sets + 1] = bytes[i] + len
  if not bounds[i] then
    sets[#sets + 1] = 'x:' .. d
    sets[#sets + 1] = expires
  end
  -- Published to a joined socket: it may be evicted later for room, as in a single node.
  if here[i] then
    sets[#sets + 1] = 'dv:' .. d
    sets[#sets + 1] = seq
  end
end
redis.call('HSET', m, unpack(sets))
redis.call('PEXPIRE', m, keep)
redis.call('PEXPIRE', p, keep)
if window > 0 then redis.call('SET', idk, seq, 'PX', window) end
redis.call('PUBLISH', chan, table.concat({'S', seq, from, sid, now, expires, table.concat(rcpt, ','), wall, payload}, '|'))
return {'OK', seq, expired, evicted}
