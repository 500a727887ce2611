"""The Lua scripts the Redis fleet state runs: each is one atomic step that would otherwise need a round trip and a
race (compare-and-set of a gate, a claim of a feedback record, the fleet's token buckets, a lease)."""

GATE_WRITE = """
-- KEYS[1] gates hash; ARGV: field, expected version, state JSON, force ("1": an operator's action)
local current = redis.call('HGET', KEYS[1], ARGV[1])
local version = -1
if current then version = tonumber(cjson.decode(current)['version']) or 0 end
local expected = tonumber(ARGV[2])
if ARGV[4] == '1' or not current or version == expected then
  local doc = cjson.decode(ARGV[3])
  doc['version'] = math.max(version, expected) + 1
  current = cjson.encode(doc)
  redis.call('HSET', KEYS[1], ARGV[1], current)
end
return current
"""

FEEDBACK_CLAIM = """
-- KEYS[1] the answer's record, KEYS[2] its scored mark; ARGV[1] the mark's lifetime (ms)
local record = redis.call('GET', KEYS[1])
if not record then return false end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return record end
return 'scored'
"""

BUCKETS = """
-- KEYS: one hash per bucket; ARGV: per_minute and used for each, in KEYS' order. Returns each level after it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local per_minute = tonumber(ARGV[2 * i - 1])
  local used = tonumber(ARGV[2 * i])
  local stored = redis.call('HMGET', key, 'level', 'updated')
  local level = tonumber(stored[1])
  local updated = tonumber(stored[2])
  if level == nil or updated == nil then
    level, updated = per_minute, now
  end
  level = math.min(per_minute, level + math.max(0, now - updated) * per_minute / 60000) - used
  redis.call('HSET', key, 'level', tostring(level), 'updated', tostring(now))
  local keep = 120000
  if level < 0 then keep = keep + math.ceil(-level * 60000 / per_minute) end
  redis.call('PEXPIRE', key, keep)
  out[i] = tostring(level)
end
return out
"""

LEASE = """
-- KEYS[1] the lease; ARGV: holder, lifetime (ms). 1 when the holder has it now.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
