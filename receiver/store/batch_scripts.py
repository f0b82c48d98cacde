"""The Redis scripts behind `batches.py` (see its docstring for the design).

Names. A batch is `<connector>:<batch id>` (its member). Its bookkeeping keys start with
`osma_router:osmos:batch:<member>:` (the batch prefix): `written` (a list, one entry per
staged chunk: `<time bucket>:<digest size>:` then the digests of the marks it wrote),
`chunks` (the chunk keys it wrote) and `staged` (first chunk number of a call -> its
answer, so chunks sent twice are staged once). None of them outlives the batch.

A connector's dedup marks live in hashes `<seen prefix><time bucket>:<part>`: the time
bucket is `floor(now_ms / window_ms)`, the part `(first two digest bytes) % parts`, each
field a record's digest and its value the time (ms) the mark expires. A mark is live while
its value is in the future; a lookup reads the current and the previous time bucket (a
mark lives one window, so older buckets hold none), and a hash expires as a whole once
none of its marks can be live. Redis 7.0 has no expiry per hash field, hence the buckets;
many small hashes rather than one big one keep each hash compact (a listpack while small)
and each expiry cheap. Key names are built in the scripts (standalone Redis, like RQ
itself). A chunk holds at most a few thousand records, within what Lua's `unpack` takes.
"""

from __future__ import annotations

_LIB = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function holds(holder_key, inflight, member)
  return redis.call('GET', holder_key) == member and redis.call('ZSCORE', inflight, member)
end
local function lost(why) return redis.error_reply('STAGING_LOST ' .. why) end
local function part_of(digest, parts)
  return (string.byte(digest, 1) * 256 + string.byte(digest, 2)) % parts
end
"""

# KEYS: [1] the connector's holder key, [2] inflight set, [3] reservations hash.
# ARGV: member, deadline (s), the batch's estimated growth (bytes), the budget: bytes
# (0: none) and percent of maxmemory (0: none).
# Returns {'ok'}, {'busy'} (another batch of the connector is being stored), {'stale',
# member} (one was abandoned: discard it first) or {'over', used + reserved, limit}.
BEGIN = (
    _LIB
    + """
local member = ARGV[1]
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= member then
  local deadline = redis.call('ZSCORE', KEYS[2], holder)
  if deadline and tonumber(deadline) > now_ms then return {'busy'} end
  return {'stale', holder}
end
local limit, percent = tonumber(ARGV[4]), tonumber(ARGV[5])
local info = redis.call('INFO', 'memory')
if percent > 0 then
  local maxmemory = tonumber(string.match(info, '\\nmaxmemory:(%d+)') or '0')
  if maxmemory > 0 then limit = math.floor(maxmemory * percent / 100) end
end
if limit > 0 then
  local used = tonumber(string.match(info, 'used_memory:(%d+)'))
  for _, bytes in ipairs(redis.call('HVALS', KEYS[3])) do used = used + tonumber(bytes) end
  if used + tonumber(ARGV[3]) > limit then return {'over', tostring(used), tostring(limit)} end
end
redis.call('SET', KEYS[1], member)
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]) * 1000, member)
redis.call('HSET', KEYS[3], member, ARGV[3])
return {'ok'}
"""
)

# KEYS: [1] holder key, [2] inflight set.
# ARGV: [1] member, [2] batch prefix, [3] deadline (s), [4] seen prefix, [5] window (ms),
# [6] m, then per chunk: its number, key, blob ('' when no job will read it) and record
# count; then g, then per mark hash part: its number, its record count k and the records'
# places in the call (2 bytes each, big-endian, counted from 0 over the chunks in order);
# then every part's k digests, part after part.
# Several chunks go in one call, their records grouped by mark hash part by the caller, so
# that each hash is read and written once for many records and a record costs little Lua.
# Writes a mark for each record not already marked live, and each chunk's blob when any of
# its records was new. Returns the places of the records already marked, comma-separated.
STAGE = (
    _LIB
    + """
local member, prefix = ARGV[1], ARGV[2]
if not holds(KEYS[1], KEYS[2], member) then return lost('the batch was swept as abandoned') end
redis.call('ZADD', KEYS[2], 'XX', now_ms + tonumber(ARGV[3]) * 1000, member)
local again = redis.call('HGET', prefix .. 'staged', ARGV[7])
if again then return again end
local m = tonumber(ARGV[6])
local chunks, a = {}, 7
for c = 1, m do
  chunks[c] = {key = ARGV[a + 1], blob = ARGV[a + 2], n = tonumber(ARGV[a + 3]), seen = 0}
  a = a + 4
end
local g = tonumber(ARGV[a]); a = a + 1
local parts = {}
for p = 1, g do
  parts[p] = {number = ARGV[a], k = tonumber(ARGV[a + 1]), places = ARGV[a + 2]}
  a = a + 3
end
local window = tonumber(ARGV[5])
local bucket = math.floor(now_ms / window)
local current, previous = ARGV[4] .. bucket .. ':', ARGV[4] .. (bucket - 1) .. ':'
local expires, gone_at = now_ms + window, (bucket + 2) * window + 1000
local seen, written = {}, {}
for _, part in ipairs(parts) do
  local first, last = a, a + part.k - 1
  a = last + 1
  local key = current .. part.number
  local now_marks = redis.call('HMGET', key, unpack(ARGV, first, last))
  local old_marks = redis.call('HMGET', previous .. part.number, unpack(ARGV, first, last))
  local writes, dropped = {}, false
  for j = 1, part.k do
    local mark, old = now_marks[j], old_marks[j]
    if (mark and tonumber(mark) > now_ms) or (old and tonumber(old) > now_ms) then
      local high, low = string.byte(part.places, 2 * j - 1, 2 * j)
      seen[#seen + 1] = high * 256 + low
      dropped = true
    else
      writes[#writes + 1] = ARGV[first + j - 1]
      writes[#writes + 1] = expires
    end
  end
  if #writes > 0 then
    redis.call('HSET', key, unpack(writes))
    redis.call('PEXPIREAT', key, gone_at)
    if dropped then
      for w = 1, #writes, 2 do written[#written + 1] = writes[w] end
    else
      written[#written + 1] = table.concat(ARGV, '', first, last)
    end
  end
end
if #written > 0 then
  local size = #ARGV[a - 1]
  redis.call('RPUSH', prefix .. 'written', bucket .. ':' .. size .. ':' .. table.concat(written))
end
table.sort(seen)
local c, ends = 1, chunks[1] and chunks[1].n or 0
for _, i in ipairs(seen) do
  while i >= ends do c = c + 1; ends = ends + chunks[c].n end
  chunks[c].seen = chunks[c].seen + 1
end
for _, chunk in ipairs(chunks) do
  if chunk.seen < chunk.n and chunk.blob ~= '' then
    redis.call('HSET', chunk.key, 'records', chunk.blob)
    redis.call('RPUSH', prefix .. 'chunks', chunk.key)
  end
end
local answer = table.concat(seen, ',')
redis.call('HSET', prefix .. 'staged', ARGV[7], answer)
return answer
"""
)

# KEYS: [1] holder key, [2] inflight set, [3] reservations hash, [4] rq:queues.
# ARGV: [1] member, [2] batch prefix, [3] rq job prefix, [4] rq queue prefix, [5] now (RQ
# format), [6] job templates (a JSON array of flat field lists), [7] m, then per chunk read
# by jobs: its key, the number of routes r whose jobs read it, and those r route keys;
# then d, then d chunk keys no job reads; then j, then j times: template number, job id,
# queue, data, description.
# Queues the chunk jobs and ends the batch. Returns 'ok'. (A commit whose answer was lost
# and is sent again finds the batch ended: STAGING_LOST, answered 503; the sender's resend
# then finds every record a duplicate.)
COMMIT = (
    _LIB
    + """
local member, prefix = ARGV[1], ARGV[2]
if not holds(KEYS[1], KEYS[2], member) then return lost('the batch was swept as abandoned') end
local a = 7
local m = tonumber(ARGV[a]); a = a + 1
for _ = 1, m do
  local key, r = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, r do
    redis.call('HSET', key, 'reader:' .. ARGV[a], '1'); a = a + 1
  end
end
local d = tonumber(ARGV[a]); a = a + 1
for _ = 1, d do
  redis.call('UNLINK', ARGV[a]); a = a + 1
end
local templates = cjson.decode(ARGV[6])
local now = ARGV[5]
local j = tonumber(ARGV[a]); a = a + 1
for _ = 1, j do
  local template, job_id, queue = templates[tonumber(ARGV[a])], ARGV[a + 1], ARGV[a + 2]
  redis.call('HSET', ARGV[3] .. job_id, 'data', ARGV[a + 3], 'description', ARGV[a + 4],
    'created_at', now, 'enqueued_at', now, unpack(template))
  redis.call('RPUSH', ARGV[4] .. queue, job_id)
  redis.call('SADD', KEYS[4], ARGV[4] .. queue)
  a = a + 5
end
redis.call('DEL', prefix .. 'written', prefix .. 'chunks', prefix .. 'staged')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], member)
redis.call('HDEL', KEYS[3], member)
return 'ok'
"""
)

# KEYS: [1] holder key, [2] inflight set, [3] reservations hash.
# ARGV: [1] member, [2] batch prefix, [3] seen prefix, [4] parts, [5] '1' to discard the
# caller's own batch, '0' to sweep one found abandoned.
# One step per call: first the batch leaves the inflight set (it can stage and commit no
# more), then the marks of one staged chunk, then up to 100 chunk blobs, then the rest.
# The connector stays held until the last step, so no batch of it reads marks that are
# being removed. Returns 1 while there is more to do, 0 when done, -1 when a batch to
# sweep turned out alive (its deadline moved on).
DISCARD = (
    _LIB
    + """
local member, prefix = ARGV[1], ARGV[2]
if ARGV[5] == '0' then
  local deadline = redis.call('ZSCORE', KEYS[2], member)
  if deadline and tonumber(deadline) > now_ms then return -1 end
end
redis.call('ZREM', KEYS[2], member)
local entry = redis.call('LPOP', prefix .. 'written')
if entry then
  local parts = tonumber(ARGV[4])
  local colon = string.find(entry, ':', 1, true)
  local second = string.find(entry, ':', colon + 1, true)
  local head = ARGV[3] .. string.sub(entry, 1, colon - 1) .. ':'
  local size = tonumber(string.sub(entry, colon + 1, second - 1))
  local groups = {}
  for i = second + 1, #entry, size do
    local digest = string.sub(entry, i, i + size - 1)
    local part = part_of(digest, parts)
    local group = groups[part]
    if not group then group = {}; groups[part] = group end
    group[#group + 1] = digest
  end
  for part, digests in pairs(groups) do redis.call('HDEL', head .. part, unpack(digests)) end
  return 1
end
local chunks = redis.call('LPOP', prefix .. 'chunks', 100)
if chunks then
  redis.call('UNLINK', unpack(chunks))
  return 1
end
redis.call('DEL', prefix .. 'staged')
if redis.call('GET', KEYS[1]) == member then redis.call('DEL', KEYS[1]) end
redis.call('HDEL', KEYS[3], member)
return 0
"""
)

# KEYS: [1] inflight set. ARGV: how many. Batches past their deadline (abandoned).
STALE = (
    _LIB
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
"""
)

# KEYS: [1] a chunk key. ARGV: [1] a route key. Called by the chunk's job for that route
# when it is done with the chunk (twice is harmless: a job RQ ran again while its first
# run went on); the last reader removes the chunk. Returns the readers left.
RELEASE = """
redis.call('HDEL', KEYS[1], 'reader:' .. ARGV[1])
local left = redis.call('HLEN', KEYS[1]) - 1
if left <= 0 then redis.call('UNLINK', KEYS[1]) end
return left
"""
