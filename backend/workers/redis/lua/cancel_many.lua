-- cancel_many.lua: the cancel (cancel_job in lib.lua, the same step as cancel.lua) of each listed
-- job of one queue: not started -> cancelled, running -> cancel requested; a finished or gone job
-- is left as it is.
-- KEYS (scripts.CANCEL_MANY; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] waiting  KEYS[4] state_prefix  KEYS[5] unique  KEYS[6] limit_prefix  KEYS[7] parked
--    KEYS[8] events
-- ARGV[1] n  ARGV[2..] n records of WIDTH fields (scripts.JobArgs): job_id
-- Returns how many changed (cancelled, or a cancel request newly recorded).
local n = tonumber(ARGV[1])
local moved = 0
for i = 0, n - 1 do
  local b = 2 + i * WIDTH
  local job_id = unpack(ARGV, b, b + WIDTH - 1)
  local _, _, changed = cancel_job(job_id)
  if changed then moved = moved + 1 end
end
return moved
