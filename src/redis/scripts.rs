//! The server-side Lua scripts. Every state change of a namespace is one of
//! these, so it is atomic on the server: a client that dies between two
//! calls leaves only whole holds and whole waiter registrations behind, and
//! those run out with their leases.
//!
//! The layout of a node's hash (`{ns}:n:<path>`) is described in the module
//! docs of [`crate::redis`]. A node's channel is derived from its key
//! (`{ns}:n:<path>` -> `{ns}:c:<path>`; a namespace has no braces), so no
//! script takes prefixes as arguments (each argument of an `FCALL` costs
//! the server about 0.25 usec).

use redis::Cmd;

/// Definitions shared by every script: the compatibility matrix, the
/// server clock, the state and entry encodings, pruning, and the wake-up
/// rule.
///
/// Written for the Lua VM's costs, measured on the server: every table a
/// call builds, every pattern match, number formatting or parse, and every
/// `redis.call` is paid on each acquire and release. So a node's state is
/// one fixed-width binary string (`struct.pack`/`struct.unpack`, which
/// Redis ships to Lua) decoded into one array per level, entries are binary
/// too, and the hot paths allocate no other table.
const PRELUDE: &str = r#"
-- Set by `start` at the beginning of every call: the server clock (ms
-- and us).
local NOW, NOW_US
-- Built on the first call after a load (the library's top-level code
-- cannot reach `string`, `math` or `struct`).
local PAD, PACK, UNPACK, FLOOR, MB, MODE
-- The last second TIME returned, as text and in us (parsed once a second:
-- Lua parses numbers through strtod, about 2,000 instructions each).
local SEC, SEC_US
-- Lease lengths (ms) as sent and as numbers; at most 64 kept.
local MSN, MSC = {}, 0
local function start()
  if PAD == nil then
    PAD = string.rep('.', 80)
    PACK, UNPACK, FLOOR = struct.pack, struct.unpack, math.floor
    MB, MODE = {}, {}
    for m = 0, 4 do MB[m], MODE[string.char(48 + m)] = string.char(m), m end
  end
  local t = redis.call('TIME')
  if t[1] ~= SEC then SEC, SEC_US = t[1], tonumber(t[1]) * 1000000 end
  NOW_US = SEC_US + tonumber(t[2])
  NOW = FLOOR(NOW_US / 1000)
end
-- A number of milliseconds from an argument (a lease: one of few values).
local function ms(a)
  local v = MSN[a]
  if v == nil then
    v = tonumber(a)
    if MSC < 64 then MSN[a], MSC = v, MSC + 1 end
  end
  return v
end
-- Gray's matrix: COMPAT[held * 5 + requested], modes 0..4 = IS IX S SIX X.
local COMPAT = {
  [0] = true, true, true, true, false,
  true, true, false, false, false,
  true, false, true, false, false,
  true, false, false, false, false,
  false, false, false, false, false,
}
-- The intention of each mode (for the levels above the node).
local INTENT = { [0] = 0, 1, 0, 1, 1 }
-- Keys outlive the latest deadline in them by at least this much (garbage
-- collection of nodes whose holders all died); an expiry is set 2 * GRACE
-- ahead, so most writes need no PEXPIREAT.
local GRACE = 5000

local function fmt(n) return string.format('%d', n) end

local function fail(key, field, why)
  error({ err = 'ERR hierlock: corrupt lock state in key ' .. key .. ' field ' .. tostring(field)
    .. ': ' .. why .. ' (were keys of the namespace modified by hand?)' })
end

-- Keys written by hierlock versions before the binary encoding (text
-- states "c0,c1,...", text entries "<mode>,<token>,..."): refused.
local function old(key, field)
  error({ err = 'ERR hierlock: key ' .. key .. ' field ' .. field .. ' holds lock state in the text'
    .. ' encoding of an older hierlock version; stop those clients and let their leases run out'
    .. ' (or delete the keys of the namespace) before using this version' })
end

-- A node's state, the field `s` (the first field of the hash, so found at
-- once): a format byte (2), holders per mode, waiters per mode, a lower
-- bound of every entry's deadline (0: none), and the expiry this script
-- family set on the key (ms). Decoded into one array:
-- st[1] = 2, st[2 + m] = holders in mode m, st[7 + m] = waiters in mode m,
-- st[12] = deadline bound, st[13] = expiry.
local SFMT = '<BI4I4I4I4I4I4I4I4I4I4dd'
local SLEN = 57

local function decode(key, s)
  if not s then return { 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 } end
  if #s ~= SLEN or string.byte(s, 1) ~= 2 then
    if string.find(s, '^%d+,%d+,') then old(key, 's') end
    fail(key, 's', 'unparsable state of ' .. #s .. ' bytes')
  end
  return { UNPACK(SFMT, s) }
end

local function encode(st)
  return PACK(SFMT, 2, st[2], st[3], st[4], st[5], st[6], st[7], st[8], st[9], st[10], st[11],
    st[12], st[13])
end

local function busy(st)
  return st[2] + st[3] + st[4] + st[5] + st[6] + st[7] + st[8] + st[9] + st[10] + st[11] > 0
end

-- Whether a mode conflicting with `lm` is counted in st[o .. o + 4]
-- (o = 2: held, o = 7: waited for); Gray's matrix written out (a loop
-- over COMPAT costs several times more).
local function conflicts(st, o, lm)
  if lm == 1 then return st[o + 2] + st[o + 3] + st[o + 4] > 0 end
  if lm == 0 then return st[o + 4] > 0 end
  if lm == 4 then return st[o] + st[o + 1] + st[o + 2] + st[o + 3] + st[o + 4] > 0 end
  if lm == 2 then return st[o + 1] + st[o + 3] + st[o + 4] > 0 end
  return st[o + 1] + st[o + 2] + st[o + 3] + st[o + 4] > 0
end

local function waiting(st)
  return st[7] + st[8] + st[9] + st[10] + st[11] > 0
end

-- An entry (`h:<id>` or `w:<id>`): mode byte, token or ticket and deadline
-- (ms) as doubles, then the rest (a hold: the owner id; a waiter: since
-- when it waits, a double, then the owner id).
local EFMT = '<Bdd'
local function bad_entry(key, field, v)
  if string.find(v, '^[0-4],%d+,') then old(key, field) end
  fail(key, field, 'unparsable entry of ' .. #v .. ' bytes')
end
local function entry(key, field, v)
  if #v < 17 then bad_entry(key, field, v) end
  local m, n, dl = UNPACK(EFMT, v)
  if m > 4 then bad_entry(key, field, v) end
  return m, n, dl
end

-- Note that an entry with deadline `dl` is written: lowers the bound, and
-- pushes the key's expiry out if it would not outlive `dl` by GRACE.
-- Returns true if the caller must PEXPIREAT the key to st[13].
local function cover(st, dl)
  if st[12] == 0 or dl < st[12] then st[12] = dl end
  if st[13] < dl + GRACE then
    st[13] = dl + 2 * GRACE
    return true
  end
  return false
end

-- Redis keeps a hash of at most 512 fields of at most 64 bytes as a
-- listpack, scanned field by field to find (or to miss) a field: on a busy
-- node (the root holds an intention for every lock in the namespace) every
-- new or removed entry would cost a scan of all the others. One longer
-- value turns the hash into a hash table for good, so a node is given the
-- field `z` with `PAD` (80 bytes) whenever its entries reach a multiple of 16.

-- HSET the state (first) and one field, then the expiry if needed.
local function store(key, st, f, v, expire)
  local n = st[2] + st[3] + st[4] + st[5] + st[6] + st[7] + st[8] + st[9] + st[10] + st[11]
  if n % 16 == 0 and n > 0 then
    redis.call('HSET', key, 's', encode(st), f, v, 'z', PAD)
  else
    redis.call('HSET', key, 's', encode(st), f, v)
  end
  if expire then redis.call('PEXPIREAT', key, fmt(st[13])) end
end

-- `{ns}:n:<path>` -> `{ns}:c:<path>`.
local function chan(key)
  local b = string.find(key, '}', 1, true)
  return string.sub(key, 1, b) .. ':c:' .. string.sub(key, b + 4)
end

-- Publish on the node's channel if a waiter there conflicts with a mode
-- that was just given up (freed: list of modes).
local function wake(key, st, freed)
  for m = 0, 4 do
    if st[7 + m] > 0 then
      for _, f in ipairs(freed) do
        if not COMPAT[m * 5 + f] then
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

local function entries(key, all)
  local live = {}
  for i = 1, #all, 2 do
    local f = all[i]
    local kind = string.sub(f, 1, 2)
    if kind == 'h:' or kind == 'w:' then
      local v = all[i + 1]
      local m, n, dl = entry(key, f, v)
      live[#live + 1] = { f = f, kind = kind, id = string.sub(f, 3), mode = m, n = n, dl = dl, v = v }
    end
  end
  return live
end

-- Rebuild a node's state from its entries, dropping every expired one,
-- and wake the waiters the dropped ones blocked.
local function rescan(key, st)
  for j = 2, 11 do st[j] = 0 end
  local mn, live, dead, freed = 0, {}, {}, {}
  for _, e in ipairs(entries(key, redis.call('HGETALL', key))) do
    if e.dl <= NOW then
      dead[#dead + 1] = e.f
      freed[#freed + 1] = e.mode
    else
      if e.kind == 'h:' then st[2 + e.mode] = st[2 + e.mode] + 1 else st[7 + e.mode] = st[7 + e.mode] + 1 end
      if mn == 0 or e.dl < mn then mn = e.dl end
      live[#live + 1] = e
    end
  end
  st[12], st.live = mn, live
  if #live == 0 then
    redis.call('DEL', key)
    st[13] = 0
    return
  end
  hdel_many(key, dead)
  redis.call('HSET', key, 's', encode(st))
  if #dead > 0 then wake(key, st, freed) end
end

-- A node's state from its field `s`; pruned first if an entry may have
-- expired (or the bound disagrees with the counts).
local function load(key, s)
  local st = decode(key, s)
  local mn = st[12]
  if mn == 0 then
    if busy(st) then rescan(key, st) end
  elseif mn <= NOW or not busy(st) then
    rescan(key, st)
  end
  return st
end

-- The node's live entries (read once per script).
local function live(key, st)
  if not st.live then
    local l = {}
    for _, e in ipairs(entries(key, redis.call('HGETALL', key))) do
      if e.dl > NOW then l[#l + 1] = e end
    end
    st.live = l
  end
  return st.live
end

-- Remove fields `del` from a node whose state `st` already counts them
-- out, delete the key when nothing is left, and wake the waiters that the
-- modes `freed` blocked.
local function drop(key, st, del, freed)
  for j = 2, 11 do
    if st[j] < 0 then st[j] = 0 end
  end
  if not busy(st) then
    redis.call('DEL', key)
    st[13] = 0
    return
  end
  hdel_many(key, del)
  redis.call('HSET', key, 's', encode(st))
  if waiting(st) then wake(key, st, freed) end
end

-- The same for one hold in mode m: no list built unless a waiter is there.
local function drop_hold(key, st, f, m)
  local c = st[2 + m] - 1
  if c < 0 then c = 0 end
  st[2 + m] = c
  if not busy(st) then
    redis.call('DEL', key)
    st[13] = 0
    return
  end
  redis.call('HDEL', key, f)
  redis.call('HSET', key, 's', encode(st))
  if waiting(st) then wake(key, st, { m }) end
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
/// `ARGV`: holder id, owner, mode (0-4), lease ms, wait (0/1),
/// ticket (0: not queued yet), waiter lease ms, repeat (0/1: this request
/// may have reached the server before, its answer lost).
///
/// Returns `{1, token, lease_ms}` when granted, else `{0, ticket, retry_ms}`
/// (`retry_ms` = time until the earliest conflicting entry's deadline, -1
/// if none).
const ACQUIRE: &str = r#"
local tok_key = KEYS[1]
local id, owner = ARGV[1], ARGV[2]
local mode, lease = MODE[ARGV[3]] or tonumber(ARGV[3]), ms(ARGV[4])
local wait, ticket, wlease = ARGV[5] == '1', 0, ms(ARGV[7])
if ARGV[6] ~= '0' then ticket = tonumber(ARGV[6]) end
local again = ARGV[8] == '1'
-- A request that never registered as a waiter has no `w:` entry to find.
local fresh = ticket == 0 and not again
local n = #KEYS - 1
local im = INTENT[mode]
local hf, wf = 'h:' .. id, 'w:' .. id
local sts = {}
local prior_h, prior_w
for i = 1, n - 1 do
  local key = KEYS[i + 1]
  sts[i] = load(key, redis.call('HGET', key, 's'))
end
if again then
  local r = redis.call('HMGET', KEYS[n + 1], 's', hf, wf)
  sts[n] = load(KEYS[n + 1], r[1])
  prior_h, prior_w = r[2], r[3]
else
  sts[n] = load(KEYS[n + 1], redis.call('HGET', KEYS[n + 1], 's'))
end

-- Idempotent per request id: a client that may have lost the answer to this
-- request sends it again with `again`. A hold it was granted is returned
-- again (same token, the lease left); a waiter keeps its ticket. A hold of
-- this id that is no longer whole (force-released above the node) is
-- removed, and the request starts over.
if again then
  if prior_h then
    local _, ptok, pdl = entry(KEYS[n + 1], hf, prior_h)
    if pdl > NOW then
      local whole = true
      for i = 1, n - 1 do
        local v = redis.call('HGET', KEYS[i + 1], hf)
        if v then
          local _, t, d = entry(KEYS[i + 1], hf, v)
          if t ~= ptok or d <= NOW then whole = false end
        else
          whole = false
        end
      end
      if whole then return { 1, ptok, pdl - NOW } end
      for i = 1, n do
        local key = KEYS[i + 1]
        local v = redis.call('HGET', key, hf)
        if v then
          drop_hold(key, decode(key, redis.call('HGET', key, 's')), hf, (entry(key, hf, v)))
        end
        sts[i] = load(key, redis.call('HGET', key, 's'))
      end
    end
  end
  if ticket == 0 and prior_w then
    local _, t, d = entry(KEYS[n + 1], wf, prior_w)
    if d > NOW then ticket = t end
  end
end

local blocked, hint = false, nil
for i = 1, n do
  local lm = mode
  if i < n then lm = im end
  local st = sts[i]
  local conflict = conflicts(st, 2, lm)
  if not conflict then
    if conflicts(st, 7, lm) then
      for _, e in ipairs(live(KEYS[i + 1], st)) do
        if e.kind == 'w:' and e.id ~= id and not COMPAT[e.mode * 5 + lm]
            and (ticket == 0 or e.n < ticket) then
          conflict = true
          break
        end
      end
    end
  end
  if conflict then
    blocked = true
    for _, e in ipairs(live(KEYS[i + 1], st)) do
      if e.id ~= id and not COMPAT[e.mode * 5 + lm]
          and (e.kind == 'h:' or ticket == 0 or e.n < ticket) then
        if hint == nil or e.dl < hint then hint = e.dl end
      end
    end
  end
end

if not blocked then
  local token = next_token(tok_key)
  local dl = NOW + lease
  local info = PACK('<dd', token, dl) .. owner
  for i = 1, n do
    local key, st = KEYS[i + 1], sts[i]
    local lm = mode
    if i < n then lm = im end
    st[2 + lm] = st[2 + lm] + 1
    if ticket > 0 and redis.call('HDEL', key, wf) == 1 and st[7 + lm] > 0 then
      st[7 + lm] = st[7 + lm] - 1
    end
    store(key, st, hf, MB[lm] .. info, cover(st, dl))
  end
  return { 1, token, lease }
end

if wait then
  if ticket == 0 then ticket = next_token(tok_key) end
  local wdl = NOW + wlease
  local tail = PACK('<dd', ticket, wdl)
  for i = 1, n do
    local key, st = KEYS[i + 1], sts[i]
    local lm = mode
    if i < n then lm = im end
    local since = NOW
    local old = nil
    if not fresh then old = redis.call('HGET', key, wf) end
    if old then
      entry(key, wf, old)
      if #old >= 25 then since = UNPACK('<d', old, 18) end
    else
      st[7 + lm] = st[7 + lm] + 1
    end
    store(key, st, wf, MB[lm] .. tail .. PACK('<d', since) .. owner, cover(st, wdl))
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
/// `KEYS`: node hashes, root first. `ARGV`: holder id, token (`"0"`:
/// cancel — any token, and the waiter entries too).
///
/// Returns 1 if the hold was whole and unexpired at every level, else 0.
const RELEASE: &str = r#"
local id, token = ARGV[1], tonumber(ARGV[2])
local cancel = token == 0
local hf, wf = 'h:' .. id, 'w:' .. id
local ok = true
for i = 1, #KEYS do
  local key = KEYS[i]
  if cancel then
    local r = redis.call('HMGET', key, 's', hf, wf)
    local del, freed = {}, {}
    local st
    if r[2] then
      local m, _, dl = entry(key, hf, r[2])
      if dl <= NOW then ok = false end
      st = decode(key, r[1])
      st[2 + m] = st[2 + m] - 1
      del[#del + 1], freed[#freed + 1] = hf, m
    else
      ok = false
    end
    if r[3] then
      local m = entry(key, wf, r[3])
      st = st or decode(key, r[1])
      st[7 + m] = st[7 + m] - 1
      del[#del + 1], freed[#freed + 1] = wf, m
    end
    if st then drop(key, st, del, freed) end
  else
    local r = redis.call('HMGET', key, 's', hf)
    if r[2] then
      local m, tok, dl = entry(key, hf, r[2])
      if tok == token then
        if dl <= NOW then ok = false end
        drop_hold(key, decode(key, r[1]), hf, m)
      else
        ok = false
      end
    else
      ok = false
    end
  end
end
if ok then return 1 end
return 0
"#;

/// Renew (or only check) a hold at every level; never recreates a lost one.
///
/// `KEYS`: node hashes, root first. `ARGV`: holder id, token, lease ms,
/// extend (0/1).
///
/// Returns 1 if the hold is whole and unexpired (and now extended), else 0
/// after removing whatever was left of it.
const RENEW: &str = r#"
local id, token, lease, extend = ARGV[1], tonumber(ARGV[2]), ms(ARGV[3]), ARGV[4] == '1'
local hf = 'h:' .. id
local vals = {}
local ok = true
for i = 1, #KEYS do
  local r = redis.call('HMGET', KEYS[i], 's', hf)
  if r[2] then
    local m, tok, dl = entry(KEYS[i], hf, r[2])
    if tok == token then
      vals[i] = { m, r[1], string.sub(r[2], 18) }
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
    local dl = NOW + lease
    local v = PACK('<dd', token, dl)
    for i = 1, #KEYS do
      local key, m, s, owner = KEYS[i], vals[i][1], vals[i][2], vals[i][3]
      local st = decode(key, s)
      if cover(st, dl) then
        store(key, st, hf, MB[m] .. v .. owner, true)
      else
        redis.call('HSET', key, hf, MB[m] .. v .. owner)
      end
    end
  end
  return 1
end
for i = 1, #KEYS do
  if vals[i] then drop_hold(KEYS[i], decode(KEYS[i], vals[i][2]), hf, vals[i][1]) end
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
  local st = decode(key, redis.call('HGET', key, 's'))
  local del, freed, seen = {}, {}, {}
  for j = 1, #ids, 1000 do
    local chunk = { unpack(ids, j, math.min(j + 999, #ids)) }
    local vs = redis.call('HMGET', key, unpack(chunk))
    for k, f in ipairs(chunk) do
      if vs[k] then
        local m = entry(key, f, vs[k])
        st[2 + m] = st[2 + m] - 1
        del[#del + 1] = f
        if not seen[m] then
          seen[m] = true
          freed[#freed + 1] = m
        end
      end
    end
  end
  if #del > 0 then drop(key, st, del, freed) end
end
return #ids
"#;

/// Read a node: `{now_ms, {field, value, ...}}`.
const INSPECT: &str = r#"
return { NOW, redis.call('HGETALL', KEYS[1]) }
"#;

/// The scripts as one Redis Functions library, and the names of its
/// functions.
///
/// The library is loaded (`FUNCTION LOAD REPLACE`) on first use and again
/// whenever the server answers that a function is missing (a restart, a
/// `FUNCTION FLUSH`, a new cluster primary). Its top-level code (the
/// helpers of [`PRELUDE`], the matrix) runs once per load instead of once
/// per call, as it would with `EVALSHA`. The library's and functions'
/// names carry a hash of its text, so clients of different versions of
/// this crate on one server each use their own.
pub(super) struct Scripts {
    pub(super) library: String,
    pub(super) acquire: Function,
    pub(super) release: Function,
    pub(super) renew: Function,
    pub(super) force_release: Function,
    pub(super) inspect: Function,
}

/// One function of the library: its name for `FCALL`.
pub(super) struct Function {
    pub(super) name: String,
}

impl Function {
    /// `FCALL name numkeys keys... args...`.
    pub(super) fn cmd<K: AsRef<str>, A: AsRef<str>>(&self, keys: &[K], args: &[A]) -> Cmd {
        let mut c = redis::cmd("FCALL");
        c.arg(&self.name).arg(keys.len());
        for k in keys {
            c.arg(k.as_ref());
        }
        for a in args {
            c.arg(a.as_ref());
        }
        c
    }
}

/// The placeholder for the library's name in its text before it is named.
const LIB: &str = "@LIB@";

impl Scripts {
    pub(super) fn new() -> Scripts {
        let bodies = [
            ("acquire", ACQUIRE),
            ("release", RELEASE),
            ("renew", RENEW),
            ("force_release", FORCE_RELEASE),
            ("inspect", INSPECT),
        ];
        let mut text = format!("#!lua name={LIB}\n{PRELUDE}");
        for (name, body) in bodies {
            text.push_str(&format!(
                "redis.register_function('{LIB}_{name}', function(KEYS, ARGV)\nstart()\n{body}\nend)\n"
            ));
        }
        let hash = redis::Script::new(&text).get_hash().to_owned();
        let lib = format!("hierlock_{}", &hash[..16]);
        let f = |name: &str| Function {
            name: format!("{lib}_{name}"),
        };
        Scripts {
            library: text.replace(LIB, &lib),
            acquire: f("acquire"),
            release: f("release"),
            renew: f("renew"),
            force_release: f("force_release"),
            inspect: f("inspect"),
        }
    }

    /// `FUNCTION LOAD REPLACE` of the library (in a cluster, routed to
    /// every primary by the cluster client).
    pub(super) fn load_cmd(&self) -> Cmd {
        let mut c = redis::cmd("FUNCTION");
        c.arg("LOAD").arg("REPLACE").arg(&self.library);
        c
    }
}

/// Whether `e` is the server's answer to an `FCALL` of a function it does
/// not have (never loaded, or forgotten by a restart or `FUNCTION FLUSH`).
pub(super) fn function_missing(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::ResponseError
        && e.detail()
            .is_some_and(|d| d.starts_with("Function not found"))
}

/// The scripts against a real `redis-server` (started here on a free
/// loopback port without persistence, killed at the end).
#[cfg(test)]
mod tests {
    use super::*;

    struct Server {
        child: std::process::Child,
        url: String,
    }

    impl Server {
        /// The server (killed on drop) and a connection to it.
        fn start() -> (Server, redis::Connection) {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let url = format!("redis://127.0.0.1:{port}/0");
            let srv = Server {
                url: url.clone(),
                child: std::process::Command::new(
                    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()),
                )
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start redis-server (install it)"),
            };
            let t0 = std::time::Instant::now();
            loop {
                if let Ok(con) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
                {
                    return (srv, con);
                }
                assert!(
                    t0.elapsed() < std::time::Duration::from_secs(10),
                    "redis-server did not come up on port {port}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    const NP: &str = "{t}:n:";

    fn keys(path: &[&str]) -> Vec<String> {
        let mut k = vec![NP.to_owned()];
        for i in 1..=path.len() {
            k.push(format!("{NP}{}", path[..i].join("/")));
        }
        k
    }

    /// Calls `f` (loading the library if the server does not have it).
    fn call<T: redis::FromRedisValue>(
        con: &mut redis::Connection,
        f: impl Fn(&Scripts) -> &Function,
        keys: &[String],
        args: &[String],
    ) -> T {
        let scripts = Scripts::new();
        let cmd = f(&scripts).cmd(keys, args);
        match cmd.query(con) {
            Err(e) if function_missing(&e) => {
                scripts.load_cmd().query::<()>(con).unwrap();
                cmd.query(con).unwrap()
            }
            r => r.unwrap(),
        }
    }

    /// `{status, token or ticket, lease left or retry}`.
    fn acquire(
        con: &mut redis::Connection,
        path: &[&str],
        id: &str,
        mode: u8,
        wait: bool,
        ticket: i64,
        again: bool,
    ) -> Vec<i64> {
        let mut k = vec!["{t}:token".to_owned()];
        k.extend(keys(path));
        let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
        let args = [
            id.to_owned(),
            "me".to_owned(),
            mode.to_string(),
            "10000".to_owned(),
            flag(wait),
            ticket.to_string(),
            "10000".to_owned(),
            flag(again),
        ];
        call(con, |s| &s.acquire, &k, &args)
    }

    fn field(con: &mut redis::Connection, key: &str, f: &str) -> Option<Vec<u8>> {
        redis::cmd("HGET").arg(key).arg(f).query(con).unwrap()
    }

    /// The holder and waiter counts of a node's state field, as
    /// `"c0,c1,c2,c3,c4,w0,w1,w2,w3,w4"` (all zero if there is none).
    fn counts(con: &mut redis::Connection, key: &str) -> String {
        let Some(s) = field(con, key, "s") else {
            return ["0"; 10].join(",");
        };
        assert_eq!((s.len(), s[0]), (57, 2), "state of {key}: {s:?}");
        (0..10)
            .map(|k| u32::from_le_bytes(s[1 + 4 * k..5 + 4 * k].try_into().unwrap()).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn release(con: &mut redis::Connection, path: &[&str], id: &str, token: &str) -> i64 {
        let args = [id, token].map(str::to_owned);
        call(con, |s| &s.release, &keys(path), &args)
    }

    #[test]
    fn acquire_is_idempotent_per_request_id() {
        let (_srv, mut con) = Server::start();
        let con = &mut con;
        // A grant sent twice is one hold with one token.
        let first = acquire(con, &["a"], "A", 4, true, 0, false);
        assert_eq!(first[0], 1);
        let again = acquire(con, &["a"], "A", 4, true, 0, true);
        assert_eq!((again[0], again[1]), (1, first[1]));
        assert!(again[2] > 0 && again[2] <= 10_000);
        assert_eq!(counts(con, "{t}:n:a"), "0,0,0,0,1,0,0,0,0,0");
        assert_eq!(counts(con, "{t}:n:"), "0,1,0,0,0,0,0,0,0,0");
        // A waiter sent twice keeps its ticket and is counted once.
        let w1 = acquire(con, &["a", "b"], "B", 2, true, 0, false);
        assert_eq!(w1[0], 0);
        let w2 = acquire(con, &["a", "b"], "B", 2, true, 0, true);
        assert_eq!((w2[0], w2[1]), (0, w1[1]));
        assert_eq!(counts(con, "{t}:n:a"), "0,0,0,0,1,1,0,0,0,0");
        // Once free, a retry that lost its ticket is granted and leaves no
        // waiter entry behind.
        assert_eq!(release(con, &["a"], "A", &first[1].to_string()), 1);
        let g = acquire(con, &["a", "b"], "B", 2, true, 0, true);
        assert_eq!(g[0], 1);
        assert!(g[1] > w1[1]);
        for k in keys(&["a", "b"]) {
            assert_eq!(field(con, &k, "w:B"), None, "{k}");
        }
        assert_eq!(counts(con, "{t}:n:"), "1,0,0,0,0,0,0,0,0,0");
        assert_eq!(counts(con, "{t}:n:a"), "1,0,0,0,0,0,0,0,0,0");
        assert_eq!(counts(con, "{t}:n:a/b"), "0,0,1,0,0,0,0,0,0,0");
        assert_eq!(release(con, &["a", "b"], "B", &g[1].to_string()), 1);
        let left: Vec<String> = redis::cmd("KEYS").arg("{t}:n:*").query(con).unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Keys in the text encoding of older versions are refused with an
    /// error that says so, by every script that reads them.
    #[test]
    fn the_old_text_encoding_is_refused_clearly() {
        let (_srv, mut con) = Server::start();
        let con = &mut con;
        redis::cmd("HSET")
            .arg("{t}:n:")
            .arg("s")
            .arg("0,1,0,0,0,0,0,0,0,0,99999999999999,99999999999999")
            .arg("h:A")
            .arg("1,17,99999999999999,old")
            .query::<()>(con)
            .unwrap();
        redis::cmd("HSET")
            .arg("{t}:n:a")
            .arg("s")
            .arg("0,0,0,0,1,0,0,0,0,0,99999999999999,99999999999999")
            .arg("h:A")
            .arg("4,17,99999999999999,old")
            .query::<()>(con)
            .unwrap();
        let scripts = Scripts::new();
        scripts.load_cmd().query::<()>(con).unwrap();
        let older = |r: redis::RedisResult<redis::Value>| {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("older hierlock version"), "{e}");
        };
        let mut k = vec!["{t}:token".to_owned()];
        k.extend(keys(&["b"]));
        let args = ["B", "me", "2", "1000", "0", "0", "1000", "0"];
        older(scripts.acquire.cmd(&k, &args).query(con));
        older(scripts.release.cmd(&keys(&["a"]), &["A", "17"]).query(con));
        older(scripts.release.cmd(&keys(&["a"]), &["A", "0"]).query(con));
        let renew = ["A", "17", "1000", "1"];
        older(scripts.renew.cmd(&keys(&["a"]), &renew).query(con));
        older(
            scripts
                .force_release
                .cmd(&keys(&["a"]), &[] as &[&str])
                .query(con),
        );
    }

    /// force_release wakes a waiter whatever the order of the holds it
    /// removes: here the one hold the waiter conflicts with (IX) comes
    /// after five it does not (IS).
    #[test]
    fn force_release_wakes_a_waiter_blocked_by_any_removed_mode() {
        let (srv, mut con) = Server::start();
        let con = &mut con;
        for i in 1..=5 {
            let (leaf, id) = (format!("b{i}"), format!("H{i}"));
            assert_eq!(acquire(con, &["a", &leaf], &id, 0, false, 0, false)[0], 1);
        }
        assert_eq!(acquire(con, &["a", "c"], "X", 4, false, 0, false)[0], 1);
        let w = acquire(con, &["a"], "W", 2, true, 0, false);
        assert_eq!(w[0], 0);
        let mut sub = redis::Client::open(srv.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut sub = sub.as_pubsub();
        sub.subscribe("{t}:c:a").unwrap();
        sub.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let args: [String; 0] = [];
        let n: i64 = call(con, |s| &s.force_release, &keys(&["a"]), &args);
        assert_eq!(n, 6);
        let msg = sub.get_message().expect("a wake-up on /a's channel");
        assert_eq!(msg.get_channel_name(), "{t}:c:a");
        // The waiter now gets its S.
        assert_eq!(acquire(con, &["a"], "W", 2, true, w[1], false)[0], 1);
    }

    #[test]
    fn a_busy_node_becomes_a_hash_table_and_still_empties() {
        let (_srv, mut con) = Server::start();
        let con = &mut con;
        let encoding = |con: &mut redis::Connection| -> String {
            redis::cmd("OBJECT")
                .arg("ENCODING")
                .arg("{t}:n:")
                .query(con)
                .unwrap()
        };
        let mut held = Vec::new();
        for i in 0..20 {
            let (node, id) = (format!("n{i}"), format!("H{i}"));
            let g = acquire(con, &[&node], &id, 2, false, 0, false);
            assert_eq!(g[0], 1);
            // The root's 16th entry comes with the padding field.
            assert_eq!(encoding(con) == "hashtable", i >= 15, "{} holds", i + 1);
            held.push((node, id, g[1]));
        }
        assert_eq!(counts(con, "{t}:n:"), "20,0,0,0,0,0,0,0,0,0");
        assert_eq!(field(con, "{t}:n:", "z").map(|z| z.len()), Some(80));
        for (node, id, token) in held {
            assert_eq!(release(con, &[&node], &id, &token.to_string()), 1);
        }
        let left: Vec<String> = redis::cmd("KEYS").arg("{t}:n:*").query(con).unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_retried_acquire_whose_hold_was_cut_starts_over() {
        let (_srv, mut con) = Server::start();
        let con = &mut con;
        let first = acquire(con, &["a", "b"], "C", 4, false, 0, false);
        assert_eq!(first[0], 1);
        // An operator frees /a: C's intention holds on / and /a are gone,
        // its X on /a/b is not.
        let args: [String; 0] = [];
        let n: i64 = call(con, |s| &s.force_release, &keys(&["a"]), &args);
        assert_eq!(n, 1);
        assert!(field(con, "{t}:n:a/b", "h:C").is_some());
        // The same request again: not the old, broken hold but a new one.
        let again = acquire(con, &["a", "b"], "C", 4, false, 0, true);
        assert_eq!(again[0], 1);
        assert!(again[1] > first[1]);
        assert_eq!(counts(con, "{t}:n:a/b"), "0,0,0,0,1,0,0,0,0,0");
        assert_eq!(counts(con, "{t}:n:a"), "0,1,0,0,0,0,0,0,0,0");
        assert_eq!(release(con, &["a", "b"], "C", &again[1].to_string()), 1);
        let left: Vec<String> = redis::cmd("KEYS").arg("{t}:n:*").query(con).unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}
