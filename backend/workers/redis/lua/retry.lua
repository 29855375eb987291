-- retry.lua: failed / cancelled -> enqueued (manual retry), attempts reset, back of its priority.
-- KEYS (scripts.RETRY; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] state_prefix  KEYS[4] unique  KEYS[5] wake  KEYS[6] seq
-- ARGV[1] job id
-- Returns {CODE.OK, HGETALL}, {CODE.NOT_FOUND} or {CODE.ILLEGAL, current state}.
local id = ARGV[1]
local jobkey = K.job_prefix .. id
local state = redis.call('HGET', jobkey, 'state')
if not state then return {CODE.NOT_FOUND} end
if state ~= 'failed' and state ~= 'cancelled' then return {CODE.ILLEGAL, state} end
local now = now_us()
redis.call('HSET', jobkey, 'state', 'enqueued', 'attempts', 0, 'finished_at', '', 'run_at', now,
  'token', '', 'lease_until', '', 'state_at', now, 'cancel_req', '')
push_ready(jobkey, id)
local key = redis.call('HGET', jobkey, 'unique_key')
if key and key ~= '' and redis.call('HSETNX', K.unique, key, id) == 0 then
  local holder = redis.call('HGET', K.unique, key)
  if redis.call('EXISTS', K.job_prefix .. holder) == 0 then redis.call('HSET', K.unique, key, id) end
end
move_state(id, state, 'enqueued', now)
wake_one()
return {CODE.OK, redis.call('HGETALL', jobkey)}
