-- Removes a device's presence held by a socket of an instance whose lease has run out, and
-- publishes that it left. The lease is checked here, against the Redis server's clock, in
-- the same step: a room's view of the live instances may be a second old, and an instance
-- that just started (or renewed late) must never lose its sockets to it.
-- KEYS: presence, leases   ARGV: device, owner, owner's instance, channel
-- Reply: 1 if removed, else 0
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = redis.call('ZSCORE', KEYS[2], ARGV[3])
if lease and tonumber(lease) > now then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[4], 'L|' .. ARGV[1] .. '|' .. ARGV[2])
return 1
