-- Apply one process's batched bookkeeping in one call.
-- ARGV: 1 wake channel, 2 lease ms, 3 reactions lifetime ms, 4 key lifetime ms,
--       5-13 limit, window ms, slots for RPM, TPM, TPD, then ops of four fields each:
--   R lease            release a concurrency lease (idempotent)
--   N lease            renew a lease; result 1 when it had lapsed
--   F i slot units     refund units of dimension i from their own slot (expired units stay gone)
--   C i units          charge units now; result the slot they joined
--   M i slot units     count units from now instead; result the slot they joined
--   P i ms             pause dimension i for ms (the latest end wins)
--   L i limit          adopt a lower limit for dimension i
--   W ticket           withdraw a process's queue ticket
-- Returns one integer per op.
local channel, lease_ms = ARGV[1], tonumber(ARGV[2])
local reactions_ms, keep_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local windows = {}
local function window(i)
  if not windows[i] then
    local base = 2 + 3 * i
    windows[i] = load(i, 0, tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]))
  end
  return windows[i]
end

local freed = false
local results = {}
for j = 14, #ARGV, 4 do
  local op, a, b, c = ARGV[j], ARGV[j + 1], tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local result = 0
  if op == 'R' then
    if redis.call('ZREM', KEYS[3], a) == 1 then freed = true end
  elseif op == 'N' then
    -- An expired lease that no admission has pruned yet is lapsed all the same: renewing
    -- it would take back a slot another process may already have been given.
    local expiry = tonumber(redis.call('ZSCORE', KEYS[3], a))
    if expiry and expiry > now then
      redis.call('ZADD', KEYS[3], now + lease_ms, a)
    else
      redis.call('ZREM', KEYS[3], a)
      result = 1
    end
  elseif op == 'F' then
    if take(window(tonumber(a)), b, c) > 0 then freed = true end
  elseif op == 'C' then
    local w = window(tonumber(a))
    save(w, w.cur, b)
    result = w.cur
  elseif op == 'M' then
    local w = window(tonumber(a))
    local moved = take(w, b, c)
    if moved > 0 then save(w, w.cur, moved) end
    result = w.cur
  elseif op == 'P' then
    local field = 'pause:' .. a
    local until_ms = now + b
    if until_ms > (tonumber(redis.call('HGET', KEYS[4], field)) or 0) then
      redis.call('HSET', KEYS[4], field, until_ms)
    end
    redis.call('PEXPIRE', KEYS[4], reactions_ms)
  elseif op == 'L' then
    local field = 'limit:' .. a
    local current = tonumber(redis.call('HGET', KEYS[4], field))
    if not current or b < current then redis.call('HSET', KEYS[4], field, b) end
    redis.call('PEXPIRE', KEYS[4], reactions_ms)
  elseif op == 'W' then
    if head_ticket() == a then freed = true end
    redis.call('ZREM', KEYS[1], a)
    redis.call('ZREM', KEYS[2], a)
  end
  results[#results + 1] = result
end
if freed then wake(channel) end
redis.call('PEXPIRE', KEYS[3], keep_ms)
return results
