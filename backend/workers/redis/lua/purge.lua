-- purge.lua: delete terminal jobs that finished at least `older_than` µs ago.
-- KEYS (scripts.PURGE; the script reads them as K.<name>):  KEYS[1] job_prefix
--    KEYS[2] state_prefix  KEYS[3] jobs
-- ARGV[1] older_than µs  ARGV[2] limit  ARGV[3] only this terminal state ('' = all three)
-- Returns how many.
local cutoff = now_us() - tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local purged = 0
local states = {'done', 'failed', 'cancelled'}
if ARGV[3] == 'done' or ARGV[3] == 'failed' or ARGV[3] == 'cancelled' then states = {ARGV[3]} end
for _, state in ipairs(states) do
  if purged >= limit then break end
  local ids = redis.call('ZRANGEBYSCORE', K.state_prefix .. state, '-inf', cutoff, 'LIMIT', 0, limit - purged)
  for _, id in ipairs(ids) do
    redis.call('DEL', K.job_prefix .. id)
    redis.call('ZREM', K.state_prefix .. state, id)
    redis.call('ZREM', K.jobs, id)
  end
  purged = purged + #ids
end
return purged
