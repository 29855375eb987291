-- retry.lua: failed / cancelled -> enqueued (manual retry), attempts reset, back of its priority.
-- Refused while another live job holds the job's unique_key (the key would have two live jobs).
-- The transition is retry_job in lib.lua (shared with retry_many.lua).
-- KEYS (scripts.RETRY; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] state_prefix  KEYS[4] unique  KEYS[5] wake  KEYS[6] seq
-- ARGV[1] job id
-- Returns {CODE.OK, HGETALL}, {CODE.NOT_FOUND}, {CODE.ILLEGAL, current state} or
-- {CODE.CONFLICT, id of the live job holding the unique_key}. Every check comes before any write.
local code, detail = retry_job(ARGV[1])
if code ~= CODE.OK then return {code, detail} end
return {CODE.OK, redis.call('HGETALL', K.job_prefix .. ARGV[1])}
