-- Keeps a couple's meta and presence hashes alive while a socket is connected but quiet (the
-- scripts that write them renew them too).
-- KEYS: meta, presence   ARGV: keep ms
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
