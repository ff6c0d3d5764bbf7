-- Removes the device's presence if `owner` still holds it (a replaced socket's late leave,
-- or a second sweeper, changes nothing) and publishes that it left.
-- KEYS: presence   ARGV: device, owner, channel   Reply: 1 if removed, else 0
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], 'L|' .. ARGV[1] .. '|' .. ARGV[2])
return 1
