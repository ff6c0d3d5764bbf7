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
local meta = redis.call('HMGET', m, 'e', 'c', 'rid')
if not meta[1] or meta[3] ~= rid then return {'EPOCH'} end
local c = num(meta[2]) + 1
if c >= SHIFT then return {'EPOCH'} end
if redis.call('HEXISTS', m, 'D:' .. from) == 0 then return {'UNKNOWN'} end

local rcpt = {}
if to ~= '' then
  if redis.call('HEXISTS', m, 'D:' .. to) == 0 then return {'UNKNOWN'} end
  rcpt[1] = to
else
  for _, k in ipairs(redis.call('HKEYS', m)) do
    if string.sub(k, 1, 2) == 'D:' and string.sub(k, 3) ~= from then
      rcpt[#rcpt + 1] = string.sub(k, 3)
    end
  end
end

local len = #payload
local expired = 0
local evict = {}
for i, d in ipairs(rcpt) do
  local s = sp .. d
  expired = expired + expire(m, s, d, now)
  local n = redis.call('XLEN', s)
  local b = num(redis.call('HGET', m, 'b:' .. d))
  if n + 1 > max_n or b + len > max_b then
    local dv = num(redis.call('HGET', m, 'dv:' .. d))
    local through, bytes = nil, 0
    for _, e in ipairs(redis.call('XRANGE', s, '-', '+')) do
      if n + 1 <= max_n and b + len <= max_b then break end
      local seq = seqof(e[1])
      if seq > dv then return {'FULL'} end
      local l = #field(e, 'p')
      n, b, bytes, through = n - 1, b - l, bytes + l, seq
    end
    if n + 1 > max_n or b + len > max_b then return {'FULL'} end
    evict[i] = {through, bytes}
  end
end

-- Nothing fails from here on.
local seq = seqstr(num(meta[1]) * SHIFT + c)
redis.call('HSET', m, 'c', c)
local expires = now + ttl
local evicted = 0
for i, d in ipairs(rcpt) do
  local s = sp .. d
  local ev = evict[i]
  if ev then
    local before = redis.call('XLEN', s)
    redis.call('XTRIM', s, 'MINID', seqstr(ev[1] + 1))
    evicted = evicted + before - redis.call('XLEN', s)
    redis.call('HINCRBY', m, 'b:' .. d, -ev[2])
    redis.call('HSET', m, 'ev:' .. d, seqstr(ev[1]))
  end
  redis.call('XADD', s, seq .. '-0', 'f', from, 'i', sid, 't', now, 'x', expires, 'p', payload)
  redis.call('HINCRBY', m, 'b:' .. d, len)
  redis.call('PEXPIRE', s, keep)
  -- Published to a joined socket: it may be evicted later for room, as in a single node.
  if redis.call('HEXISTS', p, d) == 1 then redis.call('HSET', m, 'dv:' .. d, seq) end
end
redis.call('PEXPIRE', m, keep)
if window > 0 then redis.call('SET', idk, seq, 'PX', window) end
redis.call('PUBLISH', chan, table.concat({'S', seq, from, sid, now, expires, table.concat(rcpt, ','), wall, payload}, '|'))
return {'OK', seq, expired, evicted}
