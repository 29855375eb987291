-- extend.lua: push the leases of current claims to now + lease, and confirm them (cf = the token: the
-- worker received the claim, so an expiry from now on is charged as a run; see confirm.lua).
-- KEYS (scripts.EXTEND; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] running
-- ARGV[1] lease µs  ARGV[2] n  ARGV[3..] n records of WIDTH fields (scripts.ClaimRef): job_id, token
-- Returns {positions (1-based, in ARGV order) of the claims that are no longer current, positions of
-- current claims whose job has a cancel request}: per claim, not per job id, since one call may
-- carry an old and the current claim of one job.
local lease_until = now_us() + tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local stale, cancel = {}, {}
for i = 0, n - 1 do
  local b = 3 + i * WIDTH
  local job_id, token = unpack(ARGV, b, b + WIDTH - 1)
  local f = redis.call('HMGET', K.job_prefix .. job_id, 'state', 'token', 'cancel_req')
  if f[1] == 'running' and f[2] == token then
    redis.call('HSET', K.job_prefix .. job_id, 'lease_until', lease_until, 'cf', token) -- the worker has it
    redis.call('ZADD', K.running, 'XX', lease_until, job_id)
    if f[3] == '1' then cancel[#cancel + 1] = i + 1 end
  else
    stale[#stale + 1] = i + 1
  end
end
return {stale, cancel}
