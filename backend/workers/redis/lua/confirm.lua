-- confirm.lua: the worker received these claims (before any of their handlers starts): from now on an
-- expiry is a charged run (LeaseExpired), not a lost claim given back (give_back_lost in lib.lua).
-- The common case costs one GET and one DEL per claim call, nothing per job: the key
-- unconfirmed:<nonce> of the call still says '1', so no claim of that call was recovered since, and
-- deleting it confirms them all. Otherwise (a claim of the call was recovered: 'lost'; or the key is
-- gone: a re-sent confirm, a lapsed key, a reset store) each claim is checked on its own, and a current
-- one is confirmed in its job (cf = its token).
-- KEYS (scripts.CONFIRM; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] unconfirmed_prefix
-- ARGV[1] n  ARGV[2..] n records of WIDTH fields (scripts.ClaimRef): job_id, token
-- Returns the positions (1-based, in ARGV order) of the claims that are no longer current.
local n = tonumber(ARGV[1])
local calls = {} -- nonce -> true when all its claims are current
local stale = {}
for i = 0, n - 1 do
  local b = 2 + i * WIDTH
  local job_id, token = unpack(ARGV, b, b + WIDTH - 1)
  local nonce = string.match(token, '^(.+)%.%d+$') or ''
  if calls[nonce] == nil then
    calls[nonce] = redis.call('GET', K.unconfirmed_prefix .. nonce) == '1'
    if calls[nonce] then redis.call('DEL', K.unconfirmed_prefix .. nonce) end
  end
  if not calls[nonce] then
    local jobkey = K.job_prefix .. job_id
    local f = redis.call('HMGET', jobkey, 'state', 'token')
    if f[1] == 'running' and f[2] == token then
      redis.call('HSET', jobkey, 'cf', token)
    else
      stale[#stale + 1] = i + 1
    end
  end
end
return stale
