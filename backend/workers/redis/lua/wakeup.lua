-- wakeup.lua: how long until something in this queue needs a worker: the earliest scheduled
-- run_at or lease deadline, measured on this queue's own server clock.
-- KEYS (scripts.WAKEUP; the script reads them as K.<name>):  KEYS[1] waiting  KEYS[2] running
-- No ARGV.
-- Returns µs until then (0 if already due), or -1 when nothing is waiting or running.
local now = now_us()
local best = -1
for _, key in ipairs({K.waiting, K.running}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local due = math.max(0, tonumber(first[2]) - now)
    if best < 0 or due < best then best = due end
  end
end
return best
