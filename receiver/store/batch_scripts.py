"""The Redis scripts behind `batches.py` (see its docstring for the design).

Every key of one batch starts with `osma_router:osmos:batch:<connector>:<id>:` (ARGV[1],
the batch prefix): `ids` (the staged records' event ids, in order), `jobs:<queue>` (their
job ids per queue, in order), `queues` (the set of those queues), `owned` (job ids whose
hash this batch created) and `borrowed` (job ids whose hash existed and was rewritten).
A job id is `osmos_e-<event id>_<route key>` (`routes.job_id`; route keys hold no `_`),
so the event id of a job is read back from its id. Key names are built in the scripts
(standalone Redis, like RQ itself). Every bulk command takes at most `STEP` arguments
(Lua's `unpack` has a limit near 8,000).
"""

from __future__ import annotations

_LIB = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local STEP = 2000
local function live(score) return score and tonumber(score) > now_ms end
local function event_of(job_id) return string.match(job_id, '^osmos_e%-(.+)_[^_]+$') end
local function push_all(key, values)
  for s = 1, #values, STEP do
    redis.call('RPUSH', key, unpack(values, s, math.min(s + STEP - 1, #values)))
  end
end
-- the ids whose dedup mark in the set `seen` is live, as a table id -> true
local function live_ids(seen, ids)
  local found = {}
  for s = 1, #ids, STEP do
    local scores = redis.call('ZMSCORE', seen, unpack(ids, s, math.min(s + STEP - 1, #ids)))
    for k = 1, #scores do
      if live(scores[k]) then found[ids[s + k - 1]] = true end
    end
  end
  return found
end
local function batch_keys(prefix)
  local keys = {prefix .. 'ids', prefix .. 'owned', prefix .. 'borrowed', prefix .. 'queues'}
  for _, queue in ipairs(redis.call('SMEMBERS', prefix .. 'queues')) do
    keys[#keys + 1] = prefix .. 'jobs:' .. queue
  end
  return keys
end
"""

# KEYS: [1] seen set, [2] inflight set, [3] commit counter.
# ARGV: batch prefix, batch member, first chunk ("1"/"0"), now (RQ format), job key prefix,
# deadline (s), route count, per route: job id head, tail, queue, description, data head,
# middle, tail, field count, fields...; then the record count n, n event ids, n event
# bodies, and either "*" (every route for every record) or n lines of route numbers ("1,3").
# Returns: records staged, records skipped as already seen, the commit counter (first chunk).
STAGE = (
    _LIB
    + """
local prefix, member, job_prefix = ARGV[1], ARGV[2], ARGV[5]
local deadline = now_ms + tonumber(ARGV[6]) * 1000
local counter = false
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], deadline, member)
  counter = redis.call('GET', KEYS[3]) or '0'
elseif redis.call('ZSCORE', KEYS[2], member) then
  redis.call('ZADD', KEYS[2], 'XX', deadline, member)
else
  return redis.error_reply('STAGING_LOST the batch was swept as abandoned')
end
local now, nroutes = ARGV[4], tonumber(ARGV[7])
local a = 8
local routes, all = {}, {}
for r = 1, nroutes do
  local route = {jh = ARGV[a], jt = ARGV[a + 1], queue = ARGV[a + 2], desc = ARGV[a + 3],
                 dh = ARGV[a + 4], dm = ARGV[a + 5], dt = ARGV[a + 6]}
  local n = tonumber(ARGV[a + 7]); a = a + 8
  local fields = {}
  for i = 1, n do fields[i] = ARGV[a + i - 1] end
  a = a + n
  route.fields, route.count = fields, n / 2 + 4
  routes[r] = route
  all[r] = r
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, STEP)
if #expired > 0 then redis.call('ZREM', KEYS[1], unpack(expired)) end
local n = tonumber(ARGV[a])
local first_id, first_body, choices = a + 1, a + 1 + n, a + 1 + 2 * n
local ids = {}
for i = 1, n do ids[i] = ARGV[first_id + i - 1] end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
local fresh, owned, borrowed, jobs, duplicates = {}, {}, {}, {}, 0
for i = 1, n do
  local id = ids[i]
  if live(scores[i]) then
    duplicates = duplicates + 1
  else
    fresh[#fresh + 1] = id
    local chosen = all
    if ARGV[choices] ~= '*' then
      chosen = {}
      for number in string.gmatch(ARGV[choices + i - 1], '%d+') do chosen[#chosen + 1] = tonumber(number) end
    end
    local body = ARGV[first_body + i - 1]
    for _, r in ipairs(chosen) do
      local route = routes[r]
      local job_id = route.jh .. id .. route.jt
      local created = redis.call('HSET', job_prefix .. job_id,
        'data', route.dh .. id .. route.dm .. body .. route.dt,
        'description', route.desc, 'created_at', now, 'enqueued_at', now, unpack(route.fields))
      if created < route.count then borrowed[#borrowed + 1] = job_id else owned[#owned + 1] = job_id end
      if jobs[route.queue] == nil then jobs[route.queue] = {} end
      local q = jobs[route.queue]
      q[#q + 1] = job_id
    end
  end
end
push_all(prefix .. 'ids', fresh)
push_all(prefix .. 'owned', owned)
push_all(prefix .. 'borrowed', borrowed)
for queue, q in pairs(jobs) do
  push_all(prefix .. 'jobs:' .. queue, q)
  redis.call('SADD', prefix .. 'queues', queue)
end
return {#fresh, duplicates, counter}
"""
)

# KEYS: [1] seen set, [2] inflight set, [3] commit counter, [4] rq:queues.
# ARGV: batch prefix, batch member, dedup ttl (ms), counter when staging began, records
# staged, rq job prefix, rq queue prefix.
# Returns: records queued, records found committed meanwhile by another batch.
COMMIT = (
    _LIB
    + """
local prefix, member, ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local job_prefix, queue_prefix = ARGV[6], ARGV[7]
if not redis.call('ZSCORE', KEYS[2], member) then
  return redis.error_reply('STAGING_LOST the batch was swept as abandoned')
end
local ids = redis.call('LRANGE', prefix .. 'ids', 0, -1)
if #ids ~= tonumber(ARGV[5]) then
  return redis.error_reply('STAGING_LOST the batch holds ' .. #ids .. ' of ' .. ARGV[5] .. ' records')
end
-- Only if another batch committed since this one began staging can a staged record have
-- been marked seen meanwhile; then those records (and their jobs) are left out.
local taken = {}
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[4] then taken = live_ids(KEYS[1], ids) end
local function mine(job_id) return not taken[event_of(job_id)] end
local borrowed = {}
for _, job_id in ipairs(redis.call('LRANGE', prefix .. 'borrowed', 0, -1)) do
  if mine(job_id) then borrowed[#borrowed + 1] = job_prefix .. job_id end
end
for s = 1, #borrowed, STEP do
  local stop = math.min(s + STEP - 1, #borrowed)
  if redis.call('EXISTS', unpack(borrowed, s, stop)) ~= stop - s + 1 then
    return redis.error_reply('STAGING_LOST a job hash shared with another batch was removed')
  end
end
local expires, marks = now_ms + ttl_ms, {}
for _, id in ipairs(ids) do
  if not taken[id] then
    marks[#marks + 1] = expires
    marks[#marks + 1] = id
  end
end
for s = 1, #marks, 2 * STEP do
  redis.call('ZADD', KEYS[1], unpack(marks, s, math.min(s + 2 * STEP - 1, #marks)))
end
if #marks > 0 then redis.call('PEXPIRE', KEYS[1], ttl_ms + 60000) end
for _, queue in ipairs(redis.call('SMEMBERS', prefix .. 'queues')) do
  local q = redis.call('LRANGE', prefix .. 'jobs:' .. queue, 0, -1)
  if next(taken) ~= nil then
    local kept = {}
    for _, job_id in ipairs(q) do if mine(job_id) then kept[#kept + 1] = job_id end end
    q = kept
  end
  if #q > 0 then
    push_all(queue_prefix .. queue, q)
    redis.call('SADD', KEYS[4], queue_prefix .. queue)
  end
end
redis.call('INCR', KEYS[3])
redis.call('ZREM', KEYS[2], member)
redis.call('UNLINK', unpack(batch_keys(prefix)))
return {#marks / 2, #ids - #marks / 2}
"""
)

# KEYS: [1] seen set, [2] inflight set. ARGV: batch prefix, batch member, rq job prefix.
# Drops up to STEP job hashes a call: those this batch created, unless their record was
# marked seen meanwhile (a concurrent batch committed it: a live job now); with the last
# call, the batch's own keys. Returns 1 while there is more to drop.
DISCARD = (
    _LIB
    + """
local prefix = ARGV[1]
redis.call('ZREM', KEYS[2], ARGV[2])
local owned = redis.call('LPOP', prefix .. 'owned', STEP)
if not owned then
  redis.call('UNLINK', unpack(batch_keys(prefix)))
  return 0
end
local ids = {}
for i, job_id in ipairs(owned) do ids[i] = event_of(job_id) end
local taken = live_ids(KEYS[1], ids)
local doomed = {}
for i, job_id in ipairs(owned) do
  if not taken[ids[i]] then doomed[#doomed + 1] = ARGV[3] .. job_id end
end
if #doomed > 0 then redis.call('UNLINK', unpack(doomed)) end
return 1
"""
)

# KEYS: [1] inflight set. ARGV: how many. Batches past their deadline (abandoned).
STALE = (
    _LIB
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
"""
)
