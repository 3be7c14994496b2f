"""The Lua scripts of the Redis job store: every state change is one atomic script.

Keys (``p`` is the configured prefix followed by ``:``)::

    p..'job:'..id          hash: body (job JSON, request left out), request (JSON),
                           status, attempts, cancel ('0'|'1'), entry (the stream
                           entry of the running attempt: its lease and fencing token),
                           session, asset, hash
    p..'idem:'..s..'/'..a  string: the job id for (session_id, asset_id)
    p..'sq:'..session      list: the session's queued job ids, oldest first
    p..'ring'              list: sessions with queued jobs, in round-robin order
    p..'delayed'           zset: job id -> epoch seconds when a retried job is due
    p..'queued'            counter: queued jobs (sub-queues + delayed)
    p..'stream'            stream + consumer group: one entry per running attempt
    p..'dlv:'..n           hash: one webhook delivery
    p..'dlv:job:'..id      list: the job's pending deliveries, in order
    p..'dlv:due'           zset: delivery id -> next attempt time (heads of job lists only)
    p..'dlv:url:'..h       set: pending delivery ids to the URL with hash h
    p..'dlv:wid:'..wid     string: delivery id of a webhook-id (inserts are idempotent)
    p..'gone:'..h          string with a TTL: the URL with hash h answered 410

Scripts name the keys they build from the prefix in ARGV, so the store runs on one
Redis (or a primary with replicas), not on Redis Cluster.
"""

from __future__ import annotations

TERMINAL = "local TERMINAL = {succeeded = true, failed = true, canceled = true}\n"

# Appends deliveries given as groups of 10 ARGV values from index `from`.
ADD_DELIVERIES = """
local function add_deliveries(p, argv, from, retention)
  local out = {}
  local i = from
  while i + 9 <= #argv do
    local wid, jid, url, uh = argv[i], argv[i + 1], argv[i + 2], argv[i + 3]
    local status, nxt = argv[i + 9], argv[i + 7]
    local known = redis.call('GET', p .. 'dlv:wid:' .. wid)
    if known then
      table.insert(out, known)
      table.insert(out, redis.call('HGET', p .. 'dlv:' .. known, 'status') or 'expired')
    else
      local id = tostring(redis.call('INCR', p .. 'dlv:seq'))
      local err = ''
      if status == 'pending' and redis.call('EXISTS', p .. 'gone:' .. uh) == 1 then
        status, err = 'gone', 'receiver answered 410 earlier'
      end
      local key = p .. 'dlv:' .. id
      redis.call('HSET', key, 'webhook_id', wid, 'job_id', jid, 'url', url, 'url_hash', uh,
        'event_type', argv[i + 4], 'payload', argv[i + 5], 'created_at', argv[i + 6],
        'next_attempt_at', nxt, 'attempts', argv[i + 8], 'status', status, 'last_error', err)
      redis.call('SET', p .. 'dlv:wid:' .. wid, id, 'EX', retention)
      if status == 'pending' then
        local q = p .. 'dlv:job:' .. jid
        if redis.call('RPUSH', q, id) == 1 then redis.call('ZADD', p .. 'dlv:due', nxt, id) end
        redis.call('SADD', p .. 'dlv:url:' .. uh, id)
      else
        redis.call('EXPIRE', key, retention)
      end
      table.insert(out, id)
      table.insert(out, status)
    end
    i = i + 10
  end
  return out
end
"""

# Hands job j to the calling consumer: a fresh stream entry read through the group,
# so the entry id is unique to this attempt.
HAND_OVER = """
local function hand_over(stream, group, consumer, j)
  local id = redis.call('XADD', stream, '*', 'job', j)
  for _ = 1, 100 do  -- entries never handed over (none, unless written by hand) go first
    local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS',
      stream, '>')
    local read = got[1][2][1][1]
    if read == id then break end
    redis.call('XACK', stream, group, read)
    redis.call('XDEL', stream, read)
  end
  redis.call('HSET', P .. 'job:' .. j, 'entry', id)
  return id
end
local function enqueue_front(ring, j)
  local s = redis.call('HGET', P .. 'job:' .. j, 'session')
  if not s then return end
  local sq = P .. 'sq:' .. s
  if redis.call('LLEN', sq) == 0 then redis.call('RPUSH', ring, s) end
  redis.call('LPUSH', sq, j)
end
"""

# KEYS: idem, job, sq, ring, queued
# ARGV: job_id, session, body, request, hash, max_queue, session_cap, asset, wake_channel
SUBMIT = """
local existing = redis.call('GET', KEYS[1])
if existing then return {'exists', existing} end
local queued = tonumber(redis.call('GET', KEYS[5]) or '0')
if queued >= tonumber(ARGV[6]) then return {'full', tostring(queued)} end
local mine = redis.call('LLEN', KEYS[3])
if mine >= tonumber(ARGV[7]) then return {'session_full', tostring(queued)} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'body', ARGV[3], 'request', ARGV[4], 'status', 'queued',
  'attempts', '0', 'cancel', '0', 'entry', '', 'session', ARGV[2], 'asset', ARGV[8],
  'hash', ARGV[5])
if mine == 0 then redis.call('RPUSH', KEYS[4], ARGV[2]) end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[9], ARGV[1])
return {'created', ARGV[1]}
"""

# KEYS: stream, ring, delayed, queued
# ARGV: prefix, group, consumer, now, lease_ms, max_attempts
CLAIM = """
local P = ARGV[1]
""" + HAND_OVER + """
local stream, group, me = KEYS[1], ARGV[2], ARGV[3]
-- 1. retries that are due go back to the front of their session's sub-queue
for _, j in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[4], 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[3], j)
  enqueue_front(KEYS[2], j)
end
-- 2. an attempt whose lease ran out (its worker died or hung): take it over
local cursor = '0-0'
for _ = 1, 10000 do
  local got = redis.call('XAUTOCLAIM', stream, group, me, ARGV[5], cursor, 'COUNT', 1)
  cursor = got[1]
  local entry = got[2][1]
  if entry then
    local old, fields = entry[1], entry[2]
    redis.call('XACK', stream, group, old)
    redis.call('XDEL', stream, old)
    local j = fields and fields[2]
    if not j then return {'skip'} end
    local jkey = P .. 'job:' .. j
    if redis.call('HGET', jkey, 'status') ~= 'running' or redis.call('HGET', jkey, 'entry') ~= old
    then return {'skip'} end
    if tonumber(redis.call('HGET', jkey, 'attempts') or '0') >= tonumber(ARGV[6]) then
      return {'exhausted', j, hand_over(stream, group, me, j)}
    end
    redis.call('HINCRBY', jkey, 'attempts', 1)
    return {'reclaimed', j, hand_over(stream, group, me, j)}
  end
  if cursor == '0-0' then break end
end
-- 3. the next session in round-robin order gives its oldest job
for _ = 1, 64 do
  local s = redis.call('LMOVE', KEYS[2], KEYS[2], 'LEFT', 'RIGHT')
  if not s then return {'empty'} end
  local sq = P .. 'sq:' .. s
  local j = redis.call('LPOP', sq)
  if redis.call('LLEN', sq) == 0 then redis.call('LREM', KEYS[2], 0, s) end
  if j then
    redis.call('DECR', KEYS[4])
    local jkey = P .. 'job:' .. j
    if redis.call('HGET', jkey, 'status') == 'queued' then
      redis.call('HSET', jkey, 'status', 'running')
      redis.call('HINCRBY', jkey, 'attempts', 1)
      return {'claimed', j, hand_over(stream, group, me, j)}
    end
  end
end
return {'empty'}
"""

# KEYS: stream ; ARGV: prefix, group, consumer, then job, token pairs.
# Renews the lease of every attempt this consumer still owns; returns the lost ones.
HEARTBEAT = """
local lost = {}
for i = 4, #ARGV, 2 do
  local j, token = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', ARGV[1] .. 'job:' .. j, 'entry') == token then
    redis.call('XCLAIM', KEYS[1], ARGV[2], ARGV[3], 0, token, 'JUSTID')
  else
    table.insert(lost, j)
  end
end
return lost
"""

# KEYS: job ; ARGV: token, body, channel, message
SAVE = TERMINAL + """
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry ~= ARGV[1] or TERMINAL[redis.call('HGET', KEYS[1], 'status')] then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# KEYS: job, stream, idem
# ARGV: prefix, group, token, status, body, attempts, retention, channel, message,
#       then deliveries (10 values each)
FINISH = TERMINAL + ADD_DELIVERIES + """
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry ~= ARGV[3] or TERMINAL[redis.call('HGET', KEYS[1], 'status')] then return {'0'} end
redis.call('HSET', KEYS[1], 'body', ARGV[5], 'status', ARGV[4], 'attempts', ARGV[6],
  'entry', '')
if ARGV[3] ~= '' then
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
  redis.call('XDEL', KEYS[2], ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[7])
local out = add_deliveries(ARGV[1], ARGV, 10, ARGV[7])
redis.call('PUBLISH', ARGV[8], ARGV[9])
table.insert(out, 1, '1')
return out
"""

# KEYS: job, stream, delayed, ring, queued
# ARGV: prefix, group, token, body, attempts, not_before, delayed ('1'|'0'), channel, message,
#       job_id
REQUEUE = TERMINAL + """
local P = ARGV[1]
""" + HAND_OVER + """
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry ~= ARGV[3] or TERMINAL[redis.call('HGET', KEYS[1], 'status')] then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[4], 'status', 'queued', 'attempts', ARGV[5],
  'entry', '')
if ARGV[3] ~= '' then
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
  redis.call('XDEL', KEYS[2], ARGV[3])
end
local j = ARGV[10]
if ARGV[7] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[6], j)
else
  enqueue_front(KEYS[4], j)
end
redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[8], ARGV[9])
return 1
"""

# KEYS: job, delayed, ring, queued, sq, idem
# ARGV: job_id, session, body, retention, channel, message
CANCEL_QUEUED = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local removed = redis.call('LREM', KEYS[5], 1, ARGV[1])
if removed > 0 then
  if redis.call('LLEN', KEYS[5]) == 0 then redis.call('LREM', KEYS[3], 0, ARGV[2]) end
else
  removed = redis.call('ZREM', KEYS[2], ARGV[1])
end
if removed > 0 then redis.call('DECR', KEYS[4]) end
redis.call('HSET', KEYS[1], 'status', 'canceled', 'cancel', '1', 'body', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[6], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# KEYS: job ; ARGV: cancel channel, job_id. Returns the status, or false for no job.
REQUEST_CANCEL = TERMINAL + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if not TERMINAL[status] then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return status
"""

# ARGV: prefix, retention, then deliveries (10 values each)
ADD = ADD_DELIVERIES + """
return add_deliveries(ARGV[1], ARGV, 3, ARGV[2])
"""

# KEYS: due ; ARGV: prefix, now, claimed_until, limit
# Claims due deliveries: each is pushed to `claimed_until`, so no other process
# sends it meanwhile; should this one die, it is due again then.
DUE = """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])) do
  redis.call('ZADD', KEYS[1], ARGV[3], id)
  table.insert(out, id)
  table.insert(out, redis.call('HGETALL', ARGV[1] .. 'dlv:' .. id))
end
return out
"""

# ARGV: prefix, id, attempts, next_attempt_at, status, last_error, retention
UPDATE_DELIVERY = """
local p, id = ARGV[1], ARGV[2]
local key = p .. 'dlv:' .. id
if redis.call('HGET', key, 'status') ~= 'pending' then return 0 end
redis.call('HSET', key, 'attempts', ARGV[3], 'next_attempt_at', ARGV[4], 'status', ARGV[5],
  'last_error', ARGV[6])
if ARGV[5] == 'pending' then
  redis.call('ZADD', p .. 'dlv:due', 'XX', ARGV[4], id)
  return 1
end
redis.call('ZREM', p .. 'dlv:due', id)
local jid = redis.call('HGET', key, 'job_id')
redis.call('LREM', p .. 'dlv:job:' .. jid, 1, id)
redis.call('SREM', p .. 'dlv:url:' .. redis.call('HGET', key, 'url_hash'), id)
redis.call('EXPIRE', key, ARGV[7])
if ARGV[5] ~= 'gone' then  -- after a 410 the job's later events are stopped too
  local nxt = redis.call('LINDEX', p .. 'dlv:job:' .. jid, 0)
  if nxt then
    local at = redis.call('HGET', p .. 'dlv:' .. nxt, 'next_attempt_at')
    redis.call('ZADD', p .. 'dlv:due', at, nxt)
  end
end
return 1
"""

# ARGV: prefix, url_hash, gone_for_s, now, retention
STOP_URL = """
local p, uh = ARGV[1], ARGV[2]
redis.call('SET', p .. 'gone:' .. uh, ARGV[4], 'EX', ARGV[3])
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', p .. 'dlv:url:' .. uh)) do
  local key = p .. 'dlv:' .. id
  if redis.call('HGET', key, 'status') == 'pending' then
    redis.call('HSET', key, 'status', 'gone', 'last_error', 'receiver answered 410')
    redis.call('ZREM', p .. 'dlv:due', id)
    redis.call('LREM', p .. 'dlv:job:' .. redis.call('HGET', key, 'job_id'), 1, id)
    redis.call('EXPIRE', key, ARGV[5])
    n = n + 1
  end
end
redis.call('DEL', p .. 'dlv:url:' .. uh)
return n
"""
