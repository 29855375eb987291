-- confirm.lua: the claims of these claim calls reached their worker (before any of their handlers
-- starts): from now on an expiry is a charged run (LeaseExpired), not a lost claim given back
-- (give_back_lost in lib.lua). One GET and one DEL per claim call, nothing per job: the key
-- unconfirmed:<nonce> still says '1', so no claim of that call was recovered since, and deleting it
-- confirms them all. A call whose key says 'lost' (recovery met one of its claims) or is gone (a
-- re-sent confirm, a lapsed key, a reset store) is left to the caller, which confirms each of its
-- claims with extend.lua (fenced by its token, so a claim recovered meanwhile is found stale).
-- KEYS (scripts.CONFIRM; the script reads them as K.<name>):  KEYS[1] unconfirmed_prefix
-- ARGV[1] n  ARGV[2..] n records of WIDTH fields (scripts.ClaimCall): nonce
-- Returns the positions (1-based, in ARGV order) of the calls not confirmed here.
local n = tonumber(ARGV[1])
local left = {}
for i = 0, n - 1 do
  local b = 2 + i * WIDTH
  local nonce = unpack(ARGV, b, b + WIDTH - 1)
  local key = K.unconfirmed_prefix .. nonce
  if redis.call('GET', key) == '1' then
    redis.call('DEL', key)
  else
    left[#left + 1] = i + 1
  end
end
return left
