-- unpark.lua: self-healing pass for concurrency limits: a parked job whose key has a free slot
-- (its limit was raised, or a slot was freed by a path that could not hand it on) goes back to
-- ready at its original place. Run by housekeeping; costs one ZRANGE when nothing is parked.
-- KEYS (scripts.UNPARK; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] wake  KEYS[4] limit_prefix  KEYS[5] parked  KEYS[6] hlimits
-- ARGV[1] limit (parked jobs looked at)
-- Returns how many moved.
local ids = redis.call('ZRANGE', K.parked, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local moved = 0
local hl = nil
for i = 1, #ids, 2 do
  local id = ids[i]
  local f = redis.call('HMGET', K.job_prefix .. id, 'state', 'parked', 'plim', 'name')
  local lk = f[2]
  if f[1] ~= 'enqueued' or not lk or lk == '' then
    redis.call('ZREM', K.parked, id)
  else
    local lm = tonumber(f[3]) or 1
    if string.sub(lk, 1, 2) == 'h:' then -- a handler limit: use its current value
      if hl == nil then
        hl = {}
        local flat = redis.call('HGETALL', K.hlimits)
        for j = 1, #flat, 2 do hl[flat[j]] = tonumber(flat[j + 1]) end
      end
      lm = hl[f[4]] or 1000000000
    end
    if redis.call('SCARD', K.limit_prefix .. 'run:' .. lk) < lm then
      drop_parked(id, lk)
      redis.call('ZADD', K.ready, ids[i + 1], id)
      moved = moved + 1
    end
  end
end
if moved > 0 then wake_one() end
return moved
