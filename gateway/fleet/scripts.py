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
-- KEYS[1] the answer's scored mark; KEYS[2..] the record slices to look in, newest first.
-- ARGV: the answer's field, its lifetime (ms). Returns the record, 'scored', or false.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #KEYS do
  local record = redis.call('HGET', KEYS[i], ARGV[1])
  if record then
    local at = tonumber(string.match(record, '\\31(%d+)$'))
    if at == nil or now - at > tonumber(ARGV[2]) then return false end
    if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then return record end
    return 'scored'
  end
end
return false
"""

BUCKETS = """
-- KEYS: one hash per bucket (level, updated); its holdings are in KEYS[i]..':held' (instance -> "held:ms").
-- ARGV: this instance, how long a holding counts without news (ms), then per bucket its per_minute and what this
-- instance holds now. Returns per bucket the grant (negative: given back) and the live instances.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, live_ms = ARGV[1], tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local per_minute = tonumber(ARGV[2 * i + 1])
  local held = tonumber(ARGV[2 * i + 2])
  local holdings = key .. ':held'
  local entries = redis.call('HGETALL', holdings)
  local others, live = 0, 1
  for j = 1, #entries, 2 do
    if entries[j] ~= me then
      local amount, at = string.match(entries[j + 1], '^(.-):(%d+)$')
      if amount == nil or now - tonumber(at) > live_ms then
        redis.call('HDEL', holdings, entries[j])
      else
        others = others + math.max(0, tonumber(amount) or 0)
        live = live + 1
      end
    end
  end
  local room = per_minute - others - math.max(0, held)
  local stored = redis.call('HMGET', key, 'level', 'updated')
  local level, updated = tonumber(stored[1]), tonumber(stored[2])
  if level == nil or updated == nil then
    level, updated = room, now
  end
  level = math.min(room, level + math.max(0, now - updated) * per_minute / 60000)
  local want = per_minute / live - held
  local grant = 0
  if want < 0 then
    grant = want
  elseif level > 0 then
    grant = math.min(want, level)
  end
  level = level - grant
  redis.call('HSET', key, 'level', tostring(level), 'updated', tostring(now))
  redis.call('HSET', holdings, me, tostring(held + grant) .. ':' .. tostring(now))
  redis.call('PEXPIRE', key, 120000)
  redis.call('PEXPIRE', holdings, 120000)
  out[2 * i - 1] = tostring(grant)
  out[2 * i] = live
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

DOCUMENT_PUT = """
-- KEYS[1] documents hash; ARGV: name, JSON, expected version ('' for any). Returns the document stored now.
local current = redis.call('HGET', KEYS[1], ARGV[1])
local version = 0
if current then version = tonumber(cjson.decode(current)['version']) or 0 end
if ARGV[3] == '' or not current or tonumber(ARGV[3]) == version then
  local doc = cjson.decode(ARGV[2])
  doc['version'] = version + 1
  current = cjson.encode(doc)
  redis.call('HSET', KEYS[1], ARGV[1], current)
end
return current
"""
