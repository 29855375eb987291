-- retry_many.lua: the manual retry (retry_job in lib.lua, the same step as retry.lua) of each
-- listed job of one queue; a job whose state does not allow it, or whose unique_key another live
-- job holds, or that is gone, is left as it is.
-- KEYS (scripts.RETRY_MANY; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] state_prefix  KEYS[4] unique  KEYS[5] wake  KEYS[6] seq
-- ARGV[1] n  ARGV[2..] n records of WIDTH fields (scripts.JobArgs): job_id
-- Returns how many were retried.
local n = tonumber(ARGV[1])
local moved = 0
for i = 0, n - 1 do
  local b = 2 + i * WIDTH
  local job_id = unpack(ARGV, b, b + WIDTH - 1)
  if retry_job(job_id) == CODE.OK then moved = moved + 1 end
end
return moved
