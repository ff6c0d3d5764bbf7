-- Renews this instance's lease and returns the instances whose lease is live. Scored by
-- the Redis server's clock, so instances' clocks need not agree.
-- KEYS: leases (sorted set)   ARGV: instance, lease ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
