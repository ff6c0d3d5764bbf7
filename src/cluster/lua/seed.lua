-- Installs a new epoch (only if above the current one: concurrent takers are harmless) and
-- the couple's paired devices, as the store has them. A device new to the list starts with
-- an empty mailbox, so a device paired again under a revoked one's id never receives the old
-- one's signals; a device gone from the list is revoked here as revoke.lua does (its
-- mailbox and presence go, and its socket closes wherever it is), in case that revocation
-- never reached Redis.
-- KEYS: meta, presence   ARGV: epoch (0 = keep), run_id, streams prefix, keep ms, channel,
--       then device, paired_at pairs
local m, p = KEYS[1], KEYS[2]
local epoch, rid, sp, keep, chan = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if epoch > num(redis.call('HGET', m, 'e')) then
  redis.call('HSET', m, 'e', seqstr(epoch), 'c', 0, 'rid', rid)
end
if redis.call('HEXISTS', m, 'e') == 0 then return 0 end
local paired = {}
for i = 6, #ARGV, 2 do paired[ARGV[i]] = ARGV[i + 1] end
for _, k in ipairs(redis.call('HKEYS', m)) do
  local d = string.sub(k, 3)
  if string.sub(k, 1, 2) == 'D:' and not paired[d] then
    redis.call('HDEL', m, k, 'b:' .. d, 'dv:' .. d, 'ev:' .. d, 'x:' .. d)
    redis.call('DEL', sp .. d)
    redis.call('HDEL', p, d)
    redis.call('PUBLISH', chan, 'R|' .. d)
  end
end
for d, at in pairs(paired) do
  if redis.call('HEXISTS', m, 'D:' .. d) == 0 then
    redis.call('DEL', sp .. d)
    redis.call('HDEL', m, 'b:' .. d, 'dv:' .. d, 'ev:' .. d, 'x:' .. d)
    redis.call('HSET', m, 'D:' .. d, at)
  end
end
redis.call('PEXPIRE', m, keep)
return 1
