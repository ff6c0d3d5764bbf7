-- A device was revoked: its mailbox and presence go, and every instance closes its socket.
-- KEYS: meta, presence   ARGV: device, streams prefix, channel
local m, p, d = KEYS[1], KEYS[2], ARGV[1]
redis.call('HDEL', m, 'D:' .. d, 'b:' .. d, 'dv:' .. d, 'ev:' .. d, 'x:' .. d)
redis.call('DEL', ARGV[2] .. d)
redis.call('HDEL', p, d)
redis.call('PUBLISH', ARGV[3], 'R|' .. d)
return 1
