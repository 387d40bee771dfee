-- Admit as many of one process's waiters, in its order, as fit every dimension now.
-- ARGV: 1 ticket, 2 wake channel, 3 lease ms, 4 grace ms, 5 key lifetime ms,
--       6 concurrency limit, 7-15 limit, window ms, slots for RPM, TPM, TPD,
--       16 n, then n times: lease id, tokens, priority.
-- Returns {code, value, granted, slots of each grant (3 each, -1 if ungoverned), stats}:
-- code 0 all granted, 1 wait value ms, 2 the next can never fit dimension value,
-- 3 granted some and others are queued (call again, behind them).
local ticket, channel = ARGV[1], ARGV[2]
local lease_ms, grace_ms, keep_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[16])

local climit = tonumber(ARGV[6])
local adopted = cfg_number('limit:0')
if adopted and (climit == 0 or adopted < climit) then climit = adopted end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local inflight = redis.call('ZCARD', KEYS[3])

local windows = {}
for i = 1, 3 do
  local base = 4 + 3 * i
  windows[i] = load(i, tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]))
end
local pauses = {}
for i = 0, 3 do pauses[i] = cfg_number('pause:' .. i) or 0 end

drop_dead_tickets()
local queued = redis.call('ZCARD', KEYS[1])
local mine = redis.call('ZSCORE', KEYS[1], ticket)

local function enqueue(priority)
  -- Priority first, then arrival; a ticket keeps its arrival while its process waits.
  local seq
  if mine then
    seq = tonumber(mine) % 4294967296
  else
    seq = redis.call('INCR', KEYS[8]) % 4294967296
    redis.call('PEXPIRE', KEYS[8], keep_ms)
  end
  mine = (priority + 524288) * 4294967296 + seq
  redis.call('ZADD', KEYS[1], mine, ticket)
end

-- Milliseconds until the waiter fits (0: now), or -i when it never fits dimension i.
local function wait_for(tokens)
  local wait = 0
  for i = 0, 3 do wait = math.max(wait, pauses[i] - now) end
  if climit > 0 and inflight >= climit then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(first[2]) - now)
  end
  for i = 1, 3 do
    local w = windows[i]
    if w.limit > 0 then
      local amount = (i == 1) and 1 or tokens
      if amount > w.limit then return -i end
      local excess = w.sum + amount - w.limit
      if excess > 0 then
        local freed, k = 0, w.head
        while freed < excess and k <= w.last do
          freed = freed + (tonumber(redis.call('HGET', w.key, k)) or 0)
          k = k + 1
        end
        wait = math.max(wait, (k + w.ns) * w.g - now)
      end
    end
  end
  return wait
end

local code, value, granted, slots = 0, 0, 0, {}
local head_ok = queued == 0
if not head_ok then
  enqueue(tonumber(ARGV[19]))
  head_ok = head_ticket() == ticket
  if not head_ok then
    -- Behind another process: come back when its ticket would lapse, or when woken.
    local head_expiry = tonumber(redis.call('ZSCORE', KEYS[2], head_ticket())) or now
    code, value = 1, math.max(1, math.min(head_expiry - now, lease_ms))
  end
end
if head_ok then
  -- With other processes queued, a turn takes a fair share of the room there is now (one
  -- hand-over per request would cost a wake-up and a round trip each).
  local others = redis.call('ZCARD', KEYS[1]) - (mine and 1 or 0)
  local turn = n
  if others > 0 then
    local room = math.huge
    if climit > 0 then room = climit - inflight end
    if windows[1].limit > 0 then room = math.min(room, windows[1].limit - windows[1].sum) end
    turn = math.max(1, math.floor(room / (others + 1)))
  end
  for j = 1, n do
    local base = 16 + 3 * (j - 1)
    if granted >= turn then
      code = 3
      break
    end
    local tokens = tonumber(ARGV[base + 2])
    local wait = wait_for(tokens)
    if wait < 0 then
      code, value = 2, -wait
      break
    elseif wait > 0 then
      enqueue(tonumber(ARGV[base + 3]))
      code, value = 1, wait
      break
    end
    for i = 1, 3 do
      local w = windows[i]
      if w.limit > 0 then
        save(w, w.cur, (i == 1) and 1 or tokens)
        slots[#slots + 1] = w.cur
      else
        slots[#slots + 1] = -1
      end
    end
    if climit > 0 then
      redis.call('ZADD', KEYS[3], now + lease_ms, ARGV[base + 1])
      inflight = inflight + 1
    end
    granted = granted + 1
  end
  if code ~= 1 and mine then
    -- Served (or failing one that can never fit): the next turn starts behind the others.
    redis.call('ZREM', KEYS[1], ticket)
    redis.call('ZREM', KEYS[2], ticket)
    mine = nil
    wake(channel)
  end
end
if mine then
  redis.call('ZADD', KEYS[2], now + math.max(value, 0) + grace_ms, ticket)
end
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], keep_ms) end

local reply = {code, math.ceil(value), granted}
for _, slot in ipairs(slots) do reply[#reply + 1] = slot end
reply[#reply + 1] = climit
reply[#reply + 1] = inflight
reply[#reply + 1] = math.ceil(math.max(0, pauses[0] - now))
for i = 1, 3 do
  reply[#reply + 1] = windows[i].limit
  reply[#reply + 1] = windows[i].sum
  reply[#reply + 1] = math.ceil(math.max(0, pauses[i] - now))
end
return reply
