//! The server-side Lua scripts. Every state change of a namespace is one of
//! these, so it is atomic on the server: a client that dies between two
//! calls leaves only whole holds and whole waiter registrations behind, and
//! those run out with their leases.
//!
//! The layout of a node's hash (`{ns}:n:<path>`) is described in the module
//! docs of [`crate::redis`]. Every script takes the key prefix (`ARGV[1]`,
//! `{ns}:n:`) and the channel prefix (`ARGV[2]`, `{ns}:c:`) first, so a
//! node's channel is derived from its key without another argument.

use redis::Script;

/// Definitions shared by every script: the compatibility matrix, the
/// server clock, entry parsing, pruning, and the wake-up rule.
const PRELUDE: &str = r#"
local NP, CP = ARGV[1], ARGV[2]
-- Gray's matrix: COMPAT[held][requested], modes 0..4 = IS IX S SIX X.
local COMPAT = {
  [0] = { [0] = true, true, true, true, false },
  [1] = { [0] = true, true, false, false, false },
  [2] = { [0] = true, false, true, false, false },
  [3] = { [0] = true, false, false, false, false },
  [4] = { [0] = false, false, false, false, false },
}
-- A node hash's counters, in HMGET order: holders per mode, waiters per
-- mode, and a lower bound of every entry's deadline.
local FIELDS = { 'c0', 'c1', 'c2', 'c3', 'c4', 'w0', 'w1', 'w2', 'w3', 'w4', 'min' }
-- Keys outlive the latest deadline in them by this much (garbage collection
-- of nodes whose holders all died).
local GRACE = 5000
local NOW, NOW_US
do
  local t = redis.call('TIME')
  NOW_US = tonumber(t[1]) * 1000000 + tonumber(t[2])
  NOW = math.floor(NOW_US / 1000)
end

local function fmt(n) return string.format('%d', n) end

local function fail(key, field, why)
  error({ err = 'ERR hierlock: corrupt lock state in key ' .. key .. ' field ' .. tostring(field)
    .. ': ' .. why .. ' (were keys of the namespace modified by hand?)' })
end

-- An entry: "<mode>,<token or ticket>,<deadline ms>,<rest>".
local function parse(key, field, v)
  local m, n, dl, rest = string.match(v, '^([0-4]),(%d+),(%d+),(.*)$')
  if not m then fail(key, field, 'unparsable entry "' .. v .. '"') end
  return tonumber(m), n, tonumber(dl), rest
end

local function num(key, field, v)
  if not v then return 0 end
  local x = tonumber(v)
  if not x then fail(key, field, 'not a number: "' .. v .. '"') end
  return x
end

local function counts(key, r, base)
  local c, w = {}, {}
  for m = 0, 4 do
    c[m] = num(key, 'c' .. m, r[base + m])
    w[m] = num(key, 'w' .. m, r[base + 5 + m])
  end
  return c, w
end

local function chan(key) return CP .. string.sub(key, #NP + 1) end

-- Publish on the node's channel if a waiter there conflicts with a mode
-- that was just given up (freed: set of modes).
local function wake(key, w, freed)
  for m = 0, 4 do
    if w[m] > 0 then
      for f, _ in pairs(freed) do
        if not COMPAT[m][f] then
          redis.call('PUBLISH', chan(key), 'r')
          return
        end
      end
    end
  end
end

local function hdel_many(key, list)
  for i = 1, #list, 1000 do
    redis.call('HDEL', key, unpack(list, i, math.min(i + 999, #list)))
  end
end

-- Let the key outlive `ttl` ms from now (never shorten it).
local function keep(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end

local function entries(key, all)
  local live = {}
  for i = 1, #all, 2 do
    local f = all[i]
    local kind = string.sub(f, 1, 2)
    if kind == 'h:' or kind == 'w:' then
      local m, n, dl, rest = parse(key, f, all[i + 1])
      live[#live + 1] = { f = f, kind = kind, id = string.sub(f, 3), mode = m, n = n, dl = dl, rest = rest }
    end
  end
  return live
end

-- Rebuild a node's counters from its entries, dropping every expired one,
-- and wake the waiters the dropped ones blocked.
local function rescan(st)
  local key = st.key
  local c, w = { [0] = 0, 0, 0, 0, 0 }, { [0] = 0, 0, 0, 0, 0 }
  local mn, live, dead, freed = nil, {}, {}, {}
  for _, e in ipairs(entries(key, redis.call('HGETALL', key))) do
    if e.dl <= NOW then
      dead[#dead + 1] = e.f
      freed[e.mode] = true
    else
      if e.kind == 'h:' then c[e.mode] = c[e.mode] + 1 else w[e.mode] = w[e.mode] + 1 end
      if mn == nil or e.dl < mn then mn = e.dl end
      live[#live + 1] = e
    end
  end
  st.c, st.w, st.min, st.live = c, w, mn, live
  if #live == 0 then
    redis.call('DEL', key)
    return
  end
  hdel_many(key, dead)
  local set, del = {}, {}
  for m = 0, 4 do
    if c[m] > 0 then set[#set + 1] = 'c' .. m; set[#set + 1] = c[m] else del[#del + 1] = 'c' .. m end
    if w[m] > 0 then set[#set + 1] = 'w' .. m; set[#set + 1] = w[m] else del[#del + 1] = 'w' .. m end
  end
  set[#set + 1] = 'min'; set[#set + 1] = fmt(mn)
  redis.call('HSET', key, unpack(set))
  hdel_many(key, del)
  if #dead > 0 then wake(key, w, freed) end
end

-- A node's counters; pruned first if an entry may have expired.
local function load(key)
  local r = redis.call('HMGET', key, unpack(FIELDS))
  local st = { key = key }
  st.c, st.w = counts(key, r, 1)
  local any = false
  for m = 0, 4 do
    if st.c[m] > 0 or st.w[m] > 0 then any = true end
  end
  if r[11] then st.min = num(key, 'min', r[11]) end
  if (st.min == nil and any) or (st.min ~= nil and (st.min <= NOW or not any)) then rescan(st) end
  return st
end

-- The node's live entries (read once per script).
local function live(st)
  if not st.live then
    st.live = {}
    for _, e in ipairs(entries(st.key, redis.call('HGETALL', st.key))) do
      if e.dl > NOW then st.live[#st.live + 1] = e end
    end
  end
  return st.live
end

-- Remove entries ({f = field, k = 'h' or 'w', m = mode}) from a node, fix its
-- counters (r: an HMGET of FIELDS starting at r[base]), delete the key when
-- nothing is left, and wake the waiters the removed entries blocked.
local function drop(key, list, r, base)
  if #list == 0 then return end
  local c, w = counts(key, r, base)
  local del, freed = {}, {}
  for _, e in ipairs(list) do
    del[#del + 1] = e.f
    freed[e.m] = true
    if e.k == 'h' then c[e.m] = c[e.m] - 1 else w[e.m] = w[e.m] - 1 end
  end
  local set, empty = {}, true
  for m = 0, 4 do
    if c[m] > 0 then empty = false; set[#set + 1] = 'c' .. m; set[#set + 1] = c[m] else del[#del + 1] = 'c' .. m end
    if w[m] > 0 then empty = false; set[#set + 1] = 'w' .. m; set[#set + 1] = w[m] else del[#del + 1] = 'w' .. m end
  end
  if empty then
    redis.call('DEL', key)
    return
  end
  hdel_many(key, del)
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
  wake(key, w, freed)
end

-- The namespace's fencing counter; a missing counter is seeded from the
-- server clock in microseconds, above every token issued before it was lost.
local function next_token(key)
  local t = redis.call('INCR', key)
  if t == 1 then
    t = NOW_US
    redis.call('SET', key, fmt(t))
  end
  return t
end
"#;

/// Acquire (or try to acquire) a mode on a node and its ancestors' intentions.
///
/// `KEYS[1]`: the token counter; `KEYS[2..]`: node hashes, root first.
/// `ARGV`: prefixes, holder id, owner, mode (0-4), lease ms, wait (0/1),
/// ticket (0: not queued yet), waiter lease ms.
///
/// Returns `{1, token, lease_ms}` when granted, else `{0, ticket, retry_ms}`
/// (`retry_ms` = time until the earliest conflicting entry's deadline, -1
/// if none).
const ACQUIRE: &str = r#"
local tok_key = KEYS[1]
local id, owner = ARGV[3], ARGV[4]
local mode, lease = tonumber(ARGV[5]), tonumber(ARGV[6])
local wait, ticket, wlease = ARGV[7] == '1', tonumber(ARGV[8]), tonumber(ARGV[9])
local INTENT = { [0] = 0, 1, 0, 1, 1 }
local n = #KEYS - 1
local sts = {}
local blocked, hint = false, nil
for i = 1, n do
  local lm = mode
  if i < n then lm = INTENT[mode] end
  local st = load(KEYS[i + 1])
  st.lm = lm
  sts[i] = st
  local conflict = false
  for m = 0, 4 do
    if st.c[m] > 0 and not COMPAT[m][lm] then conflict = true end
  end
  if not conflict then
    local maybe = false
    for m = 0, 4 do
      if st.w[m] > 0 and not COMPAT[m][lm] then maybe = true end
    end
    if maybe then
      for _, e in ipairs(live(st)) do
        if e.kind == 'w:' and e.id ~= id and not COMPAT[e.mode][lm]
            and (ticket == 0 or tonumber(e.n) < ticket) then
          conflict = true
          break
        end
      end
    end
  end
  if conflict then
    blocked = true
    for _, e in ipairs(live(st)) do
      if e.id ~= id and not COMPAT[e.mode][lm]
          and (e.kind == 'h:' or ticket == 0 or tonumber(e.n) < ticket) then
        if hint == nil or e.dl < hint then hint = e.dl end
      end
    end
  end
end

if not blocked then
  local token = next_token(tok_key)
  local dl = NOW + lease
  local info = ',' .. fmt(token) .. ',' .. fmt(dl) .. ',' .. owner
  for i = 1, n do
    local st = sts[i]
    local lm = st.lm
    local args = { 'h:' .. id, lm .. info, 'c' .. lm, st.c[lm] + 1 }
    if st.min == nil or dl < st.min then
      args[#args + 1] = 'min'; args[#args + 1] = fmt(dl)
    end
    if ticket > 0 and redis.call('HDEL', st.key, 'w:' .. id) == 1 then
      if st.w[lm] > 1 then
        args[#args + 1] = 'w' .. lm; args[#args + 1] = st.w[lm] - 1
      else
        redis.call('HDEL', st.key, 'w' .. lm)
      end
    end
    redis.call('HSET', st.key, unpack(args))
    keep(st.key, lease + GRACE)
  end
  return { 1, token, lease }
end

if wait then
  if ticket == 0 then ticket = next_token(tok_key) end
  local wdl = NOW + wlease
  for i = 1, n do
    local st = sts[i]
    local lm = st.lm
    local f = 'w:' .. id
    local since = NOW
    local old = redis.call('HGET', st.key, f)
    if old then
      local _, _, _, rest = parse(st.key, f, old)
      since = tonumber(string.match(rest, '^(%d+),')) or NOW
    end
    local args = { f, lm .. ',' .. fmt(ticket) .. ',' .. fmt(wdl) .. ',' .. fmt(since) .. ',' .. owner }
    if not old then
      args[#args + 1] = 'w' .. lm; args[#args + 1] = st.w[lm] + 1
    end
    if st.min == nil or wdl < st.min then
      args[#args + 1] = 'min'; args[#args + 1] = fmt(wdl)
    end
    redis.call('HSET', st.key, unpack(args))
    keep(st.key, wlease + GRACE)
  end
else
  ticket = 0
end
local retry = -1
if hint then retry = hint - NOW end
return { 0, ticket, retry }
"#;

/// Release a hold (and, when cancelling, a waiter registration).
///
/// `KEYS`: node hashes, root first. `ARGV`: prefixes, holder id, token
/// (`"0"`: cancel — any token, and the waiter entries too).
///
/// Returns 1 if the hold was whole and unexpired at every level, else 0.
const RELEASE: &str = r#"
local id, token = ARGV[3], ARGV[4]
local cancel = token == '0'
local hf, wf = 'h:' .. id, 'w:' .. id
local ok = true
for i = 1, #KEYS do
  local key = KEYS[i]
  local r = redis.call('HMGET', key, hf, wf, unpack(FIELDS))
  local list = {}
  if r[1] then
    local m, tok, dl = parse(key, hf, r[1])
    if cancel or tok == token then
      if dl <= NOW then ok = false end
      list[#list + 1] = { f = hf, k = 'h', m = m }
    else
      ok = false
    end
  else
    ok = false
  end
  if cancel and r[2] then
    local m = parse(key, wf, r[2])
    list[#list + 1] = { f = wf, k = 'w', m = m }
  end
  drop(key, list, r, 3)
end
if ok then return 1 end
return 0
"#;

/// Renew (or only check) a hold at every level; never recreates a lost one.
///
/// `KEYS`: node hashes, root first. `ARGV`: prefixes, holder id, token,
/// lease ms, extend (0/1).
///
/// Returns 1 if the hold is whole and unexpired (and now extended), else 0
/// after removing whatever was left of it.
const RENEW: &str = r#"
local id, token, lease, extend = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6] == '1'
local hf = 'h:' .. id
local vals = {}
local ok = true
for i = 1, #KEYS do
  local v = redis.call('HGET', KEYS[i], hf)
  if v then
    local m, tok, dl, owner = parse(KEYS[i], hf, v)
    if tok == token then
      vals[i] = { m = m, owner = owner }
      if dl <= NOW then ok = false end
    else
      ok = false
    end
  else
    ok = false
  end
end
if ok then
  if extend then
    local dl = fmt(NOW + lease)
    for i = 1, #KEYS do
      redis.call('HSET', KEYS[i], hf, vals[i].m .. ',' .. token .. ',' .. dl .. ',' .. vals[i].owner)
      keep(KEYS[i], lease + GRACE)
    end
  end
  return 1
end
for i = 1, #KEYS do
  if vals[i] then
    drop(KEYS[i], { { f = hf, k = 'h', m = vals[i].m } }, redis.call('HMGET', KEYS[i], unpack(FIELDS)), 1)
  end
end
return 0
"#;

/// Remove every hold on a node (including the intention holds of locks
/// below it) together with those holders' intentions on the ancestors.
///
/// `KEYS`: node hashes of the path, root first. Returns the number of holds
/// removed from the node.
const FORCE_RELEASE: &str = r#"
local node = KEYS[#KEYS]
local ids = {}
for _, e in ipairs(entries(node, redis.call('HGETALL', node))) do
  if e.kind == 'h:' then ids[#ids + 1] = e.f end
end
if #ids == 0 then return 0 end
for i = 1, #KEYS do
  local key = KEYS[i]
  local list = {}
  for j = 1, #ids, 1000 do
    local chunk = { unpack(ids, j, math.min(j + 999, #ids)) }
    local vs = redis.call('HMGET', key, unpack(chunk))
    for k, f in ipairs(chunk) do
      if vs[k] then
        local m = parse(key, f, vs[k])
        list[#list + 1] = { f = f, k = 'h', m = m }
      end
    end
  end
  drop(key, list, redis.call('HMGET', key, unpack(FIELDS)), 1)
end
return #ids
"#;

/// Read a node: `{now_ms, {field, value, ...}}`.
const INSPECT: &str = r#"
return { NOW, redis.call('HGETALL', KEYS[1]) }
"#;

/// The loaded scripts (their SHA1s; sent with EVALSHA, reloaded on NOSCRIPT
/// by [`redis::Script`]).
pub(super) struct Scripts {
    pub(super) acquire: Script,
    pub(super) release: Script,
    pub(super) renew: Script,
    pub(super) force_release: Script,
    pub(super) inspect: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        let s = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            acquire: s(ACQUIRE),
            release: s(RELEASE),
            renew: s(RENEW),
            force_release: s(FORCE_RELEASE),
            inspect: s(INSPECT),
        }
    }
}
