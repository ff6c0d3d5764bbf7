-- KEYS: meta   ARGV: device, up to, streams prefix   Reply: entries removed
return ack(KEYS[1], ARGV[3] .. ARGV[1], ARGV[1], tonumber(ARGV[2]))
