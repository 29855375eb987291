-- cancel.lua: enqueued / scheduled / retry_scheduled -> cancelled. On a running job only a
-- cancel request is recorded (cancel_req = 1): its worker sees it at the next heartbeat (extend),
-- stops the handler and reports it through finish (running -> cancelled, fenced by its token).
-- KEYS: see lib.lua.  ARGV[1] id.
-- Returns {'ok', HGETALL}, {'missing'} or {'illegal', current state}.
local id = ARGV[1]
local jobkey = K.job .. id
local f = redis.call('HMGET', jobkey, 'state', 'parked', 'ev')
local state = f[1]
if not state then return {'missing'} end
if state == 'running' then
  if redis.call('HGET', jobkey, 'cancel_req') ~= '1' then
    redis.call('HSET', jobkey, 'cancel_req', 1)
    emit(f[3], id, 'cancel_requested')
  end
  return {'ok', redis.call('HGETALL', jobkey)}
end
if state ~= 'enqueued' and state ~= 'scheduled' and state ~= 'retry_scheduled' then
  return {'illegal', state}
end
local now = now_us()
redis.call('ZREM', K.ready, id)
redis.call('ZREM', K.waiting, id)
if f[2] and f[2] ~= '' then
  redis.call('ZREM', K.parked, id)
  redis.call('ZREM', K.limit .. 'wait:' .. f[2], id)
  redis.call('HSET', jobkey, 'parked', '')
end
redis.call('HSET', jobkey, 'state', 'cancelled', 'finished_at', now, 'state_at', now)
release_unique(jobkey, id)
move_state(id, state, 'cancelled', now)
emit(f[3], id, 'cancelled')
return {'ok', redis.call('HGETALL', jobkey)}
