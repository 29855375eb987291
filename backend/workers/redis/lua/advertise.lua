-- advertise.lua: a worker says, on the server clock, which handlers it runs on this queue (refreshed with
-- its heartbeat: finish's hand_back reads when a live worker last had a handler) and each one's policy
-- for jobs that set none of their own (read by enqueue and claim).
-- KEYS (scripts.ADVERTISE; the script reads them as K.<name>):  KEYS[1] handlers  KEYS[2] hpolicy
-- ARGV[1] n  ARGV[2..] n records of WIDTH fields (scripts.AdvertiseItem): name, policy
-- Returns now µs.
local now = now_us()
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local b = 2 + i * WIDTH
  local name, policy = unpack(ARGV, b, b + WIDTH - 1)
  redis.call('HSET', K.handlers, name, now)
  redis.call('HSET', K.hpolicy, name, policy)
end
return now
