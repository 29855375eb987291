-- cancel.lua: enqueued / scheduled / retry_scheduled -> cancelled.
-- KEYS: see lib.lua.  ARGV[1] id.
-- Returns {'ok', HGETALL}, {'missing'} or {'illegal', current state}.
local id = ARGV[1]
local jobkey = K.job .. id
local state = redis.call('HGET', jobkey, 'state')
if not state then return {'missing'} end
if state ~= 'enqueued' and state ~= 'scheduled' and state ~= 'retry_scheduled' then
  return {'illegal', state}
end
local now = now_us()
redis.call('ZREM', K.ready, id)
redis.call('ZREM', K.waiting, id)
redis.call('HSET', jobkey, 'state', 'cancelled', 'finished_at', now, 'state_at', now)
release_unique(jobkey, id)
move_state(id, state, 'cancelled', now)
return {'ok', redis.call('HGETALL', jobkey)}
