-- Acknowledges through `ack`, expires, then returns the entries after `after`.
-- KEYS: meta   ARGV: device, ack ('' = none), after ('' = all), now, streams prefix
-- Reply: {expired, entries}
local m = KEYS[1]
local d, acked, after, now, sp = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local s = sp .. d
if acked ~= '' then ack(m, s, d, tonumber(acked)) end
local expired = expire(m, s, d, now)
local from = '-'
if after ~= '' then from = seqstr(tonumber(after) + 1) end
return {expired, entries(s, from)}
