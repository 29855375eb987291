-- tidy.lua: bound what one queue keeps for handler names and for itself once nobody uses them.
-- A handler name that no live worker registers and that has no job left in the queue (every job
-- enqueued under it was purged: stats enq|name <= prg|name, see purge_expired; or the queue has
-- no job at all) loses every stats field `<kind>|name[|...]` at once: its metric series stop.
-- A queue with no job left that no live worker serves (and that is not paused: the pause must
-- outlive its workers) loses its remaining keys (stats, seq, wake,
-- hlimits, empty indexes); the caller then takes it off PREFIX:queues. An enqueue after that finds
-- no seq and says so (enqueue.lua's `fresh`), so its client lists the queue again.
-- KEYS (scripts.TIDY; the script reads them as K.<name>):  KEYS[1] stats  KEYS[2] jobs  KEYS[3] ready
--    KEYS[4] waiting  KEYS[5] running  KEYS[6] parked  KEYS[7] seq  KEYS[8] wake  KEYS[9] hlimits
--    KEYS[10] state_prefix  KEYS[11] unique  KEYS[12] paused
-- ARGV[1] served (1: a live worker serves the queue)  ARGV[2] known (0: a live worker did not say
--   which handlers it has: keep every name)  ARGV[3] n
-- ARGV[4..] n records of WIDTH fields (scripts.HandlerName): a handler name live workers register
-- Returns {names dropped, 1 when the queue was emptied else 0}.
local served, known, n = ARGV[1] == '1', ARGV[2] == '1', tonumber(ARGV[3])
local registered = {}
for i = 0, n - 1 do
  local b = 4 + i * WIDTH
  local name = unpack(ARGV, b, b + WIDTH - 1)
  registered[name] = true
end
local empty = true
for _, key in ipairs({K.jobs, K.ready, K.waiting, K.running, K.parked}) do
  if redis.call('ZCARD', key) > 0 then empty = false end
end
local fields = redis.call('HKEYS', K.stats)
local dead, dropped = {}, 0
for _, field in ipairs(fields) do
  local name = string.match(field, '^enq|([^|]+)$')
  if name and (not served and empty or known and not registered[name]) then
    local f = redis.call('HMGET', K.stats, 'enq|' .. name, 'prg|' .. name)
    local enq, prg = tonumber(f[1]), tonumber(f[2])
    if empty or (enq and prg and prg >= enq) then
      dead[name] = true
      dropped = dropped + 1
    end
  end
end
if empty and not served and redis.call('EXISTS', K.paused) == 0 then
  redis.call('DEL', K.stats, K.seq, K.wake, K.hlimits, K.unique)
  for _, state in ipairs({'scheduled', 'retry_scheduled', 'done', 'failed', 'cancelled'}) do
    redis.call('DEL', K.state_prefix .. state)
  end
  return {dropped, 1}
end
if dropped > 0 then
  local batch = {}
  for _, field in ipairs(fields) do
    local name = string.match(field, '^[^|]+|([^|]+)')
    if name and dead[name] then
      batch[#batch + 1] = field
      if #batch >= 500 then
        redis.call('HDEL', K.stats, unpack(batch))
        batch = {}
      end
    end
  end
  if #batch > 0 then redis.call('HDEL', K.stats, unpack(batch)) end
end
return {dropped, 0}
