-- cancel.lua: enqueued / scheduled / retry_scheduled -> cancelled. On a running job only a
-- cancel request is recorded (cancel_req = 1): its worker sees it at the next heartbeat (extend),
-- stops the handler and reports it through finish (running -> cancelled, fenced by its token).
-- KEYS (scripts.CANCEL; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] waiting  KEYS[4] state_prefix  KEYS[5] unique  KEYS[6] limit_prefix  KEYS[7] parked
--    KEYS[8] events
-- ARGV[1] job id
-- Returns {CODE.OK, HGETALL}, {CODE.NOT_FOUND} or {CODE.ILLEGAL, current state}.
local id = ARGV[1]
local jobkey = K.job_prefix .. id
local f = redis.call('HMGET', jobkey, 'state', 'parked', 'ev')
local state = f[1]
if not state then return {CODE.NOT_FOUND} end
if state == 'running' then
  if redis.call('HGET', jobkey, 'cancel_req') ~= '1' then
    redis.call('HSET', jobkey, 'cancel_req', 1)
    emit(f[3], id, 'cancel_requested')
  end
  return {CODE.OK, redis.call('HGETALL', jobkey)}
end
if state ~= 'enqueued' and state ~= 'scheduled' and state ~= 'retry_scheduled' then
  return {CODE.ILLEGAL, state}
end
local now = now_us()
redis.call('ZREM', K.ready, id)
redis.call('ZREM', K.waiting, id)
if f[2] and f[2] ~= '' then drop_parked(id, f[2]) end
redis.call('HSET', jobkey, 'state', 'cancelled', 'finished_at', now, 'state_at', now)
release_unique(jobkey, id)
move_state(id, state, 'cancelled', now)
emit(f[3], id, 'cancelled')
return {CODE.OK, redis.call('HGETALL', jobkey)}
