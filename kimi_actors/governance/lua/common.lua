-- Shared by admit.lua and ops.lua (kimi_actors/governance/redis.py prepends it to each).
--
-- KEYS: 1 queue (zset ticket -> priority|arrival), 2 ticket expiries (zset ticket -> ms),
--       3 leases (zset lease id -> expiry ms), 4 shared reactions (hash: limit:i, pause:i),
--       5-7 the RPM, TPM and TPD windows (hash: slot -> units, plus sum, head, last),
--       8 the arrival counter.
-- Dimension i: 0 concurrency, 1 RPM, 2 TPM, 3 TPD. Times are the server's, in milliseconds.
--
-- A window of length W is cut into NS slots of G = W / NS ms; slot k holds what was admitted
-- in [k*G, (k+1)*G) and stops counting at (k+1+NS)*G: never earlier than the exact rule, at
-- most one slot later.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

local function cfg_number(field)
  return tonumber(redis.call('HGET', KEYS[4], field))
end

-- A window's state, expired up to now. limit 0 = not governed.
local function load(i, limit, window_ms, ns)
  local w = {key = KEYS[4 + i], ns = ns, g = window_ms / ns}
  local adopted = cfg_number('limit:' .. i)
  if adopted and (limit == 0 or adopted < limit) then limit = adopted end
  w.limit = limit
  local m = redis.call('HMGET', w.key, 'sum', 'head', 'last')
  w.sum = tonumber(m[1]) or 0
  w.head = tonumber(m[2])
  w.last = tonumber(m[3])
  w.cur = math.floor(now / w.g)
  -- A server clock that stepped back counts new units in the newest slot: later is safe.
  if w.last and w.cur < w.last then w.cur = w.last end
  if w.head == nil then
    w.sum = 0
    return w
  end
  local first = w.cur - ns
  if w.last < first then
    redis.call('DEL', w.key)
    w.head, w.last, w.sum = nil, nil, 0
  elseif w.head < first then
    for k = w.head, first - 1 do
      local units = tonumber(redis.call('HGET', w.key, k))
      if units then
        w.sum = w.sum - units
        redis.call('HDEL', w.key, k)
      end
    end
    w.head = first
    redis.call('HSET', w.key, 'sum', w.sum, 'head', first)
  end
  return w
end

local function save(w, slot, units)
  redis.call('HINCRBY', w.key, slot, units)
  w.sum = w.sum + units
  if w.head == nil then w.head = slot end
  if w.last == nil or slot > w.last then w.last = slot end
  redis.call('HSET', w.key, 'sum', w.sum, 'head', w.head, 'last', w.last)
  redis.call('PEXPIRE', w.key, math.ceil((w.ns + 2) * w.g) + 1000)
end

-- Take back up to units from slot (a refund); returns what was taken. Expired units stay gone.
local function take(w, slot, units)
  if w.head == nil or slot < w.head then return 0 end
  local held = tonumber(redis.call('HGET', w.key, slot))
  if not held or held <= 0 then return 0 end
  local taken = math.min(held, units)
  redis.call('HINCRBY', w.key, slot, -taken)
  w.sum = w.sum - taken
  redis.call('HSET', w.key, 'sum', w.sum)
  return taken
end

local function head_ticket()
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)
  return head[1]
end

-- Tell the process at the head of the queue that something changed for it.
local function wake(channel)
  local head = head_ticket()
  if head then redis.call('PUBLISH', channel, head) end
end

local function drop_dead_tickets()
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  if #dead > 0 then
    redis.call('ZREM', KEYS[1], unpack(dead))
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  end
end
