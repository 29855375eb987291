-- pause.lua: pause or resume one queue. While the paused key exists, claim.lua claims nothing from
-- the queue (its housekeeping still runs; running jobs finish; enqueues are accepted). Resuming
-- pushes a wake-up token, so a worker blocked on the queue claims at once.
-- KEYS (scripts.PAUSE; the script reads them as K.<name>):  KEYS[1] paused  KEYS[2] wake
-- ARGV[1] 1 to pause, 0 to resume
-- Returns 1 when the queue is now paused, else 0.
if ARGV[1] == '1' then
  redis.call('SET', K.paused, 1)
  return 1
end
redis.call('DEL', K.paused)
wake_one()
return 0
