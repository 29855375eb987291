-- release.lua: a shutting-down worker gives running jobs back: running -> enqueued,
-- the attempt not counted, back in its original place in the ready order.
-- A job with a cancel request is not given back: running -> cancelled.
-- KEYS (scripts.RELEASE; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] running  KEYS[4] state_prefix  KEYS[5] unique  KEYS[6] wake  KEYS[7] limit_prefix
--    KEYS[8] parked  KEYS[9] events
-- ARGV[1] n  ARGV[2..] n records of WIDTH fields (scripts.ClaimRef): job_id, token
-- Returns how many were released (cancelled ones included).
local n = tonumber(ARGV[1])
local now = now_us()
local released = 0
local woke = false
for i = 0, n - 1 do
  local b = 2 + i * WIDTH
  local job_id, token = unpack(ARGV, b, b + WIDTH - 1)
  local jobkey = K.job_prefix .. job_id
  local f = redis.call('HMGET', jobkey, 'state', 'token', 'priority', 'seq', 'lkey', 'ev', 'cancel_req',
    'unique_key', 'attempts')
  if f[1] == 'running' and f[2] == token then
    if f[7] == '1' then
      leave_running(job_id, jobkey, 'cancelled', now, f[5], f[6], {'finished_at', now})
      release_unique(jobkey, job_id, f[8])
    else
      -- read fields are converted with a default (never an error half-way through the batch)
      local attempts = math.max(0, (tonumber(f[9]) or 1) - 1)
      leave_running(job_id, jobkey, 'enqueued', now, f[5], f[6], {'worker', '', 'started_at', '',
        'attempts', attempts})
      redis.call('ZADD', K.ready, ready_score(tonumber(f[3]) or 0, tonumber(f[4]) or 0), job_id)
      woke = true
    end
    released = released + 1
  end
end
if woke then wake_one() end
return released
