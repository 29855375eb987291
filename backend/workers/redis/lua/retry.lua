-- retry.lua: failed / cancelled -> enqueued (manual retry), attempts reset, back of its priority.
-- KEYS: see lib.lua.  ARGV[1] id.
-- Returns {'ok', HGETALL}, {'missing'} or {'illegal', current state}.
local id = ARGV[1]
local jobkey = K.job .. id
local state = redis.call('HGET', jobkey, 'state')
if not state then return {'missing'} end
if state ~= 'failed' and state ~= 'cancelled' then return {'illegal', state} end
local now = now_us()
redis.call('HSET', jobkey, 'state', 'enqueued', 'attempts', 0, 'finished_at', '', 'run_at', now,
  'token', '', 'lease_until', '', 'state_at', now, 'cancel_req', '')
push_ready(jobkey, id)
local key = redis.call('HGET', jobkey, 'unique_key')
if key and key ~= '' and redis.call('HSETNX', K.unique, key, id) == 0 then
  local holder = redis.call('HGET', K.unique, key)
  if redis.call('EXISTS', K.job .. holder) == 0 then redis.call('HSET', K.unique, key, id) end
end
move_state(id, state, 'enqueued', now)
wake_one()
return {'ok', redis.call('HGETALL', jobkey)}
