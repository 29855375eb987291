-- retry.lua: failed / cancelled -> enqueued (manual retry), attempts reset, back of its priority.
-- Refused while another live job holds the job's unique_key (the key would have two live jobs).
-- KEYS (scripts.RETRY; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] state_prefix  KEYS[4] unique  KEYS[5] wake  KEYS[6] seq
-- ARGV[1] job id
-- Returns {CODE.OK, HGETALL}, {CODE.NOT_FOUND}, {CODE.ILLEGAL, current state} or
-- {CODE.CONFLICT, id of the live job holding the unique_key}. Every check comes before any write.
local id = ARGV[1]
local jobkey = K.job_prefix .. id
local f = redis.call('HMGET', jobkey, 'state', 'unique_key')
local state, key = f[1], f[2]
if not state then return {CODE.NOT_FOUND} end
if state ~= 'failed' and state ~= 'cancelled' then return {CODE.ILLEGAL, state} end
if key and key ~= '' then
  local holder = redis.call('HGET', K.unique, key)
  if holder and holder ~= id then
    local held = redis.call('HGET', K.job_prefix .. holder, 'state')
    if held and held ~= 'done' and held ~= 'failed' and held ~= 'cancelled' then
      return {CODE.CONFLICT, holder}
    end
  end
end
local now = now_us()
redis.call('HSET', jobkey, 'state', 'enqueued', 'attempts', 0, 'finished_at', '', 'run_at', now,
  'token', '', 'lease_until', '', 'state_at', now, 'cancel_req', '')
push_ready(jobkey, id)
if key and key ~= '' then redis.call('HSET', K.unique, key, id) end
move_state(id, state, 'enqueued', now)
wake_one()
return {CODE.OK, redis.call('HGETALL', jobkey)}
