-- Releases a couple's lock only if this token still holds it (it may have expired and been
-- taken by another instance meanwhile).
-- KEYS: lock   ARGV: token   Reply: 1 if released
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
