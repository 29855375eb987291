-- cancel.lua: enqueued / scheduled / retry_scheduled -> cancelled. On a running job only a
-- cancel request is recorded (cancel_req = 1): its worker sees it at the next heartbeat (extend),
-- stops the handler and reports it through finish (running -> cancelled, fenced by its token).
-- The transition is cancel_job in lib.lua (shared with cancel_many.lua).
-- KEYS (scripts.CANCEL; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] waiting  KEYS[4] state_prefix  KEYS[5] unique  KEYS[6] limit_prefix  KEYS[7] parked
--    KEYS[8] events
-- ARGV[1] job id
-- Returns {CODE.OK, HGETALL}, {CODE.NOT_FOUND} or {CODE.ILLEGAL, current state}.
local code, detail = cancel_job(ARGV[1])
if code ~= CODE.OK then return {code, detail} end
return {CODE.OK, redis.call('HGETALL', K.job_prefix .. ARGV[1])}
