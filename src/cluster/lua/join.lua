-- Makes `owner` the device's one socket: acknowledges through lastSeq, expires, marks the
-- whole mailbox delivered, and publishes a join (or a replacement of the old socket).
-- KEYS: meta, presence
-- ARGV: device, owner, lastSeq ('' = none), now, streams prefix, channel, keep ms (both hashes)
-- Reply: {'OK', head, recovered 0/1, expired, presence (flat device/owner pairs), entries}
--        | {'EPOCH'} | {'UNKNOWN'}
local m, p = KEYS[1], KEYS[2]
local d, owner, last, now, sp, chan, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
if redis.call('HEXISTS', m, 'e') == 0 then return {'EPOCH'} end
if redis.call('HEXISTS', m, 'D:' .. d) == 0 then return {'UNKNOWN'} end
local s = sp .. d
if last ~= '' then ack(m, s, d, tonumber(last)) end
local expired = expire(m, s, d, now)
local ev = redis.call('HGET', m, 'ev:' .. d)
local recovered = 0
if not ev or (last ~= '' and tonumber(last) >= num(ev)) then recovered = 1 end
local top = head(m)
redis.call('HSET', m, 'dv:' .. d, seqstr(top))
local old = redis.call('HGET', p, d)
redis.call('HSET', p, d, owner)
redis.call('PEXPIRE', m, keep)
redis.call('PEXPIRE', p, keep)
if old and old ~= owner then
  redis.call('PUBLISH', chan, 'K|' .. d .. '|' .. old .. '|' .. owner)
elseif not old then
  redis.call('PUBLISH', chan, 'J|' .. d .. '|' .. owner)
end
return {'OK', seqstr(top), recovered, expired, redis.call('HGETALL', p), entries(s, '-')}
