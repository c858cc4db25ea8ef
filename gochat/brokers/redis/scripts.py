"""The Lua scripts of the Redis broker: each one is atomic, so each decision is made once.

Keys and channels (P is the configurable prefix, default `gochat:`; braces are literal: a
Redis Cluster hash tag, so all of a room's keys and its channel live in the room's slot):

    P room:{room}                  channel: the room's envelopes (`c<id>` chat, `p<userId>`
                                   presence); sharded (SPUBLISH) on a cluster
    P history:{room}               stream: chat suffixes, MAXLEN ~ GOCHAT_HISTORY; entry id =
                                   message id; expires GOCHAT_HISTORY_TTL after the last message
    P cids:{room}                  hash: dedupe key (userId, cid) -> id of the message published
                                   under it (kept while the stream may hold it; expires with it)
    P presence:{room}              hash: connection id -> userId (connection ids are `{node}/{n}`)
    P presence_users:{room}        hash: userId -> connections in the room, cluster-wide
    P presence_names:{room}        hash: userId -> display name (the room's members)
    P presence_node:{room}:<node>  hash: that node's connections in the room -> its incarnation
    P {nodes}                      hash: node -> incarnation, or `dead:<incarnation>` when reaped
    P {nodes}:alive                sorted set: node -> when its heartbeat expires (ms)
    P {nodes}:info                 hash: node -> its JSON info, for the console
    P control:<node>[:{n}]         channel: the node's liveness probe (one per master on a cluster)
    P events                       channel: console events of every node

A user's `online` is published when their count in a room goes from 0 to 1, and `offline`
when it returns to 0, inside the script that changes the count: exactly once per cluster.
Every script declares the keys it touches, and no script touches two slots: the presence
scripts work on one room; what spans rooms (a re-registration, reaping, a goodbye) is one
script per room, pipelined.
"""

from __future__ import annotations

# XADD and PUBLISH in one step: the stream id is the message id and the publish order is the
# stream order, so every node sees one order per room. The stream keeps the JSON after the id,
# and lives GOCHAT_HISTORY_TTL after the room's last message (the TTL is set again by each
# publish, in this same call: no extra round trip); a room gone quiet for that long has no
# history left, and a `since` into it is answered `recovered: false`.
# Sent once: with a dedupe key (userId and cid), a message whose key the room's cids hash
# maps to an id its stream still holds is not published again; the answer is {id, suffix}
# of that first message. The hash is pruned of ids older than the stream's first once it
# holds twice as many keys as the stream holds entries (MAXLEN ~ may keep more than
# GOCHAT_HISTORY), and expires with the stream.
# KEYS[1] stream, KEYS[2] cids hash; ARGV: trim operator (~ or =), maxlen, chat suffix,
# channel, chat prefix, TTL in ms (0: the stream never expires), dedupe key ('' for none),
# the publish command (PUBLISH on a single Redis, SPUBLISH on a cluster: the room's channel
# shares its keys' hash tag, so the message stays on the shard that owns the room)
PUBLISH = """
local key = ARGV[7]
if key ~= '' then
  local first = redis.call('HGET', KEYS[2], key)
  if first then
    local e = redis.call('XRANGE', KEYS[1], first, first)
    if #e > 0 then return {first, e[1][2][2]} end
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[2], '*', 's', ARGV[3])
if ARGV[6] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
redis.call(ARGV[8], ARGV[4], 'c' .. id .. '\\n' .. ARGV[5] .. id .. ARGV[3])
if key ~= '' then
  redis.call('HSET', KEYS[2], key, id)
  if ARGV[6] ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
  local held = math.max(tonumber(ARGV[2]), redis.call('XLEN', KEYS[1]))
  if redis.call('HLEN', KEYS[2]) > 2 * held then
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
    local function parts(i)
      local dash = string.find(i, '-', 1, true)
      return tonumber(string.sub(i, 1, dash - 1)), tonumber(string.sub(i, dash + 1))
    end
    local oms, oseq = parts(oldest)
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      local ms, seq = parts(all[i + 1])
      if ms < oms or (ms == oms and seq < oseq) then redis.call('HDEL', KEYS[2], all[i]) end
    end
  end
end
return id
"""

# The presence scripts: each touches one room's keys only, all declared, all in the room's
# slot (hash tag `{room}`), so a cluster runs each on the shard that owns the room. A user's
# transition is published by the script that changes their count in the room, so once per
# cluster. Every script returns the transitions it published as a flat list
# {room, envelope, room, envelope...}: the node that ran it reports each one to its console.
# KEYS[1] presence:{room} (connection -> userId), KEYS[2] presence_users:{room} (userId ->
# connections), KEYS[3] presence_names:{room} (userId -> name), KEYS[4]
# presence_node:{room}:<node> (that node's connections in the room -> its incarnation)
# ARGV[1] the publish command (PUBLISH or SPUBLISH), ARGV[2] the room's channel, ARGV[3] room
_PRELUDE = """
local room = ARGV[3]
local published = {}

local function announce(env)
  redis.call(ARGV[1], ARGV[2], env)
  published[#published + 1] = room
  published[#published + 1] = env
end

local function envelope(user, name, status)
  return 'p' .. user .. '\\n{"type":"presence","userId":' .. cjson.encode(user)
    .. ',"name":' .. cjson.encode(name) .. ',"room":' .. cjson.encode(room)
    .. ',"status":"' .. status .. '"}'
end

local function add(conn, user, name, inc)
  redis.call('HSET', KEYS[4], conn, inc)
  if redis.call('HSETNX', KEYS[1], conn, user) == 0 then return 0 end
  if redis.call('HINCRBY', KEYS[2], user, 1) == 1 then
    redis.call('HSET', KEYS[3], user, name)
    announce(envelope(user, name, 'online'))
  end
  return 1
end

local function remove(conn)
  redis.call('HDEL', KEYS[4], conn)
  local user = redis.call('HGET', KEYS[1], conn)
  if not user then return 0 end
  redis.call('HDEL', KEYS[1], conn)
  if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
    local name = redis.call('HGET', KEYS[3], user) or user
    redis.call('HDEL', KEYS[2], user)
    redis.call('HDEL', KEYS[3], user)
    announce(envelope(user, name, 'offline'))
  end
  return 1
end
"""

# ARGV[4..]: connection id, userId, name, the node's incarnation
PRESENCE_ADD = (
    _PRELUDE
    + """
add(ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return published
"""
)

# ARGV[4]: connection id
PRESENCE_REMOVE = (
    _PRELUDE
    + """
remove(ARGV[4])
return published
"""
)

# Make the node's registered presence in one room equal to what it has now, publishing only
# real transitions (a short blip changes nothing; after a Redis restart everything is added):
# its other connections there are removed, these are added and stamped with its incarnation.
# ARGV[4]: the node's incarnation, then (connection id, userId, name) per local membership
PRESENCE_SYNC = (
    _PRELUDE
    + """
local want = {}
for i = 5, #ARGV, 3 do want[ARGV[i]] = true end
local removed, added = 0, 0
for _, conn in ipairs(redis.call('HKEYS', KEYS[4])) do
  if not want[conn] then removed = removed + remove(conn) end
end
for i = 5, #ARGV, 3 do added = added + add(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[4]) end
return {removed, added, published}
"""
)

# A node's connections in one room leave (reaping a dead node, or a clean goodbye): those
# stamped with incarnation ARGV[4] ('' for every one). A node reaped while alive re-stamps
# its connections with a new incarnation when it registers again, so a reaper still working
# through the old one cannot remove them.
PRESENCE_DROP = (
    _PRELUDE
    + """
local all = redis.call('HGETALL', KEYS[4])
for i = 1, #all, 2 do
  if ARGV[4] == '' or all[i + 1] == ARGV[4] then remove(all[i]) end
end
return published
"""
)

# The node table: KEYS[1] nodes (node -> incarnation, or `dead:<incarnation>` once reaped),
# KEYS[2] alive (sorted set: node -> when its heartbeat expires, ms of Redis's clock),
# KEYS[3] info (node -> its JSON description, for the console). One hash tag, one slot.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Refresh the heartbeat. Returns 0 when the node was registered under its incarnation
# ARGV[2]; else (first start, a previous run under the same id, reaped while it could not
# reach Redis) registers it under ARGV[3] and returns 1: the caller then takes ARGV[3] as its
# incarnation and registers its presence again.
# ARGV: node, incarnation, next incarnation, info JSON, ttl in ms
HEARTBEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
)

# Every node runs this periodically: each other node whose heartbeat expired is marked dead
# (once: `dead:<incarnation>`). Returns {newly marked nodes, {node, incarnation} of every
# node marked dead}: the caller removes their presence room by room (PRESENCE_DROP, which
# is idempotent, so several reapers agree) and then REAPED takes the node out of the table.
# ARGV: calling node
REAP = (
    _NOW
    + """
local marked = {}
local dead = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local node, inc = all[i], all[i + 1]
  if string.sub(inc, 1, 5) == 'dead:' then
    dead[#dead + 1] = {node, string.sub(inc, 6)}
  elseif node ~= ARGV[1] then
    local expires = redis.call('ZSCORE', KEYS[2], node)
    if not expires or tonumber(expires) <= now then
      redis.call('HSET', KEYS[1], node, 'dead:' .. inc)
      redis.call('ZREM', KEYS[2], node)
      redis.call('HDEL', KEYS[3], node)
      marked[#marked + 1] = node
      dead[#dead + 1] = {node, inc}
    end
  end
end
return {marked, dead}
"""
)

# The dead node ARGV[1] (incarnation ARGV[2]) has no presence left: out of the table, unless
# it registered again meanwhile. Also a clean goodbye (ARGV[2] its live incarnation).
REAPED = """
local inc = redis.call('HGET', KEYS[1], ARGV[1])
if inc == ARGV[2] or inc == 'dead:' .. ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 0
"""

# The console's nodes table: the info of every node whose heartbeat has not expired.
NODES = (
    _NOW
    + """
local alive = redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')
if #alive == 0 then return {} end
return redis.call('HMGET', KEYS[3], unpack(alive))
"""
)
