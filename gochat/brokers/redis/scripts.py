"""The Lua scripts of the Redis broker: each one is atomic, so each decision is made once.

Keys and channels (P is the configurable prefix, default `gochat:`):

    P room:{room}             channel: the room's envelopes (`c<id>` chat, `p<userId>` presence)
    P history:{room}          stream: chat suffixes, MAXLEN ~ GOCHAT_HISTORY; entry id = message id;
                              expires GOCHAT_HISTORY_TTL after the room's last message
    P cids:{room}             hash: dedupe key (userId, cid) -> id of the message published
                              under it (kept while the stream may hold it; expires with it)
    P presence:{room}         hash: connection id -> userId (connection ids are `{node}/{n}`)
    P presence_users:{room}   hash: userId -> connections in the room, cluster-wide
    P presence_names:{room}   hash: userId -> display name (the room's members)
    P node_conns:{node}       set: `{room}\\n{connection id}` registered by that node
    P node:{node}             string with a TTL: the node's heartbeat (its JSON info)
    P nodes                   set: node ids that may own presence entries
    P control:{node}          channel: the node's own liveness probe
    P events                  channel: console events of every node

A user's `online` is published when their count in a room goes from 0 to 1, and `offline`
when it returns to 0, inside the script that changes the count: exactly once per cluster.
The presence scripts build key names from the prefix, so they need a single Redis (or a
cluster with every key in one slot); the publish script declares its keys.
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
# channel, chat prefix, TTL in ms (0: the stream never expires), dedupe key ('' for none)
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
redis.call('PUBLISH', ARGV[4], 'c' .. id .. '\\n' .. ARGV[5] .. id .. ARGV[3])
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

# Shared by the presence scripts. ARGV[1] is always the key prefix. Every script returns
# the transitions it published as a flat list {room, envelope, room, envelope...}: the node
# that ran it reports each one to its console, so each is reported once in the cluster.
_PRELUDE = """
local P = ARGV[1]
local published = {}

local function announce(room, env)
  redis.call('PUBLISH', P .. 'room:' .. room, env)
  published[#published + 1] = room
  published[#published + 1] = env
end

local function envelope(user, name, room, status)
  return 'p' .. user .. '\\n{"type":"presence","userId":' .. cjson.encode(user)
    .. ',"name":' .. cjson.encode(name) .. ',"room":' .. cjson.encode(room)
    .. ',"status":"' .. status .. '"}'
end

local function add(nc, room, conn, user, name)
  redis.call('SADD', nc, room .. '\\n' .. conn)
  if redis.call('HSETNX', P .. 'presence:' .. room, conn, user) == 0 then return 0 end
  if redis.call('HINCRBY', P .. 'presence_users:' .. room, user, 1) == 1 then
    redis.call('HSET', P .. 'presence_names:' .. room, user, name)
    announce(room, envelope(user, name, room, 'online'))
  end
  return 1
end

local function remove(nc, room, conn)
  redis.call('SREM', nc, room .. '\\n' .. conn)
  local pk = P .. 'presence:' .. room
  local user = redis.call('HGET', pk, conn)
  if not user then return 0 end
  redis.call('HDEL', pk, conn)
  local uk = P .. 'presence_users:' .. room
  if redis.call('HINCRBY', uk, user, -1) <= 0 then
    local nk = P .. 'presence_names:' .. room
    local name = redis.call('HGET', nk, user) or user
    redis.call('HDEL', uk, user)
    redis.call('HDEL', nk, user)
    announce(room, envelope(user, name, room, 'offline'))
  end
  return 1
end

local function remove_member(nc, m)
  local nl = string.find(m, '\\n', 1, true)
  return remove(nc, string.sub(m, 1, nl - 1), string.sub(m, nl + 1))
end

local function drop_node(node)
  local nc = P .. 'node_conns:' .. node
  for _, m in ipairs(redis.call('SMEMBERS', nc)) do remove_member(nc, m) end
  redis.call('DEL', nc)
  redis.call('SREM', P .. 'nodes', node)
end
"""

# ARGV: prefix, node, room, connection id, userId, name
PRESENCE_ADD = (
    _PRELUDE
    + """
add(P .. 'node_conns:' .. ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return published
"""
)

# ARGV: prefix, node, room, connection id
PRESENCE_REMOVE = (
    _PRELUDE
    + """
remove(P .. 'node_conns:' .. ARGV[2], ARGV[3], ARGV[4])
return published
"""
)

# Make the node's registered presence equal to what it has now, publishing only real
# transitions (a short blip changes nothing; after a Redis restart everything is added).
# ARGV: prefix, node, then (room, connection id, userId, name) for each local membership
PRESENCE_SYNC = (
    _PRELUDE
    + """
local nc = P .. 'node_conns:' .. ARGV[2]
local want = {}
for i = 3, #ARGV, 4 do want[ARGV[i] .. '\\n' .. ARGV[i + 1]] = true end
local removed, added = 0, 0
for _, m in ipairs(redis.call('SMEMBERS', nc)) do
  if not want[m] then removed = removed + remove_member(nc, m) end
end
for i = 3, #ARGV, 4 do added = added + add(nc, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) end
return {removed, added, published}
"""
)

# Refresh the heartbeat; returns 1 when the node was not registered (first start, or other
# nodes reaped it while it could not reach Redis): the caller then registers its presence.
# ARGV: prefix, node, info JSON, ttl in ms
HEARTBEAT = """
redis.call('SET', ARGV[1] .. 'node:' .. ARGV[2], ARGV[3], 'PX', ARGV[4])
return redis.call('SADD', ARGV[1] .. 'nodes', ARGV[2])
"""

# Every node runs this periodically; the first run after a heartbeat expires removes the
# dead node's members and publishes their `offline`, later runs find nothing to do.
# ARGV: prefix, calling node
REAP = (
    _PRELUDE
    + """
local dead = {}
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if node ~= ARGV[2] and redis.call('EXISTS', P .. 'node:' .. node) == 0 then
    drop_node(node)
    dead[#dead + 1] = node
  end
end
return {dead, published}
"""
)

# A clean goodbye: this node's members leave (offline where they were the last), heartbeat gone.
# ARGV: prefix, node
LEAVE = (
    _PRELUDE
    + """
drop_node(ARGV[2])
redis.call('DEL', P .. 'node:' .. ARGV[2])
return published
"""
)
