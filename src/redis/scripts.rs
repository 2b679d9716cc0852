//! The server-side Lua scripts. Every state change of a namespace is one of
//! these, so it is atomic on the server: a client that dies between two
//! calls leaves only whole holds and whole waiter registrations behind, and
//! those run out with their leases.
//!
//! The layout of a node's hash (`{ns}:n:<path>`) is described in the module
//! docs of [`crate::redis`]. Every script takes the key prefix (`ARGV[1]`,
//! `{ns}:n:`) and the channel prefix (`ARGV[2]`, `{ns}:c:`) first, so a
//! node's channel is derived from its key without another argument.

use redis::Cmd;

/// Definitions shared by every script: the compatibility matrix, the
/// server clock, entry parsing, pruning, and the wake-up rule.
const PRELUDE: &str = r#"
-- Set by `start` at the beginning of every call: the key and channel
-- prefixes and the server clock (ms and us).
local NP, CP, NOW, NOW_US
-- Built on the first call after a load (the library's top-level code
-- cannot reach `string`): see `decode` and `store`.
local STR, NUM, PAD
local function start(ARGV)
  if PAD == nil then
    STR, NUM = {}, {}
    for i = 0, 1023 do
      local t = string.format('%d', i)
      STR[i], NUM[t] = t, i
    end
    PAD = string.rep('.', 80)
  end
  NP, CP = ARGV[1], ARGV[2]
  local t = redis.call('TIME')
  NOW_US = tonumber(t[1]) * 1000000 + tonumber(t[2])
  NOW = math.floor(NOW_US / 1000)
end
-- Gray's matrix: COMPAT[held * 5 + requested], modes 0..4 = IS IX S SIX X
-- (one flat table: every table a script builds costs an allocation per call).
local COMPAT = {
  [0] = true, true, true, true, false,
  true, true, false, false, false,
  true, false, true, false, false,
  true, false, false, false, false,
  false, false, false, false, false,
}
-- The intention of each mode (for the levels above the node).
local INTENT = { [0] = 0, 1, 0, 1, 1 }
-- The modes as strings (no number formatting in the hot path).
local MS = { [0] = '0', '1', '2', '3', '4' }
-- Keys outlive the latest deadline in them by at least this much (garbage
-- collection of nodes whose holders all died); an expiry is set 2 * GRACE
-- ahead, so most writes need no PEXPIREAT.
local GRACE = 5000

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

-- A node's state, the field `s` (the first field of the hash, so found at
-- once): holders per mode, waiters per mode, a lower bound of every entry's
-- deadline (0: none), and the expiry this script family set on the key.
local SPAT = '^(%d+),(%d+),(%d+),(%d+),(%d+),(%d+),(%d+),(%d+),(%d+),(%d+),(%d+),(%d+)$'

-- Small counts as strings and back (built by `start` on the first call
-- after a load): Lua 5.1 formats and parses numbers through sprintf and
-- strtod, about a thousand instructions each, and a state has twelve.

local function decode(key, s)
  local st = { key = key, c = { [0] = 0, 0, 0, 0, 0 }, w = { [0] = 0, 0, 0, 0, 0 }, x = 0 }
  if s then
    local v = { string.match(s, SPAT) }
    if #v ~= 12 then fail(key, 's', 'unparsable state "' .. s .. '"') end
    local c, w = st.c, st.w
    for m = 0, 4 do
      c[m] = NUM[v[m + 1]] or tonumber(v[m + 1])
      w[m] = NUM[v[m + 6]] or tonumber(v[m + 6])
    end
    local mn = NUM[v[11]] or tonumber(v[11])
    if mn > 0 then st.min = mn end
    st.x = NUM[v[12]] or tonumber(v[12])
    -- The deadline bound and expiry as read, reused by `encode` if unchanged.
    st.rmin, st.smin, st.rx, st.sx = st.min, v[11], st.x, v[12]
  end
  return st
end

local function encode(st)
  local c, w = st.c, st.w
  local smin, sx = st.smin, st.sx
  if smin == nil or st.min ~= st.rmin then smin = STR[st.min or 0] or fmt(st.min) end
  if sx == nil or st.x ~= st.rx then sx = STR[st.x] or fmt(st.x) end
  return table.concat({
    STR[c[0]] or fmt(c[0]), STR[c[1]] or fmt(c[1]), STR[c[2]] or fmt(c[2]),
    STR[c[3]] or fmt(c[3]), STR[c[4]] or fmt(c[4]),
    STR[w[0]] or fmt(w[0]), STR[w[1]] or fmt(w[1]), STR[w[2]] or fmt(w[2]),
    STR[w[3]] or fmt(w[3]), STR[w[4]] or fmt(w[4]), smin, sx }, ',')
end

local function busy(st)
  for m = 0, 4 do
    if st.c[m] > 0 or st.w[m] > 0 then return true end
  end
  return false
end

-- Note that an entry with deadline `dl` is written: lowers `min`, and
-- pushes the key's expiry out if it would not outlive `dl` by GRACE.
-- Returns true if the caller must PEXPIREAT the key to st.x.
local function cover(st, dl)
  if st.min == nil or dl < st.min then st.min = dl end
  if st.x < dl + GRACE then
    st.x = dl + 2 * GRACE
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

-- HSET the state (first) and `fields` (a list), then the expiry if needed.
local function store(st, fields, expire)
  local c, w = st.c, st.w
  local n = c[0] + c[1] + c[2] + c[3] + c[4] + w[0] + w[1] + w[2] + w[3] + w[4]
  if n > 0 and n % 16 == 0 then
    fields[#fields + 1] = 'z'
    fields[#fields + 1] = PAD
  end
  redis.call('HSET', st.key, 's', encode(st), unpack(fields))
  if expire then redis.call('PEXPIREAT', st.key, fmt(st.x)) end
end

local function chan(key) return CP .. string.sub(key, #NP + 1) end

-- Publish on the node's channel if a waiter there conflicts with a mode
-- that was just given up (freed: set of modes).
local function wake(st, freed)
  for m = 0, 4 do
    if st.w[m] > 0 then
      for f, _ in pairs(freed) do
        if not COMPAT[m * 5 + f] then
          redis.call('PUBLISH', chan(st.key), 'r')
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
      local m, n, dl, rest = parse(key, f, all[i + 1])
      live[#live + 1] = { f = f, kind = kind, id = string.sub(f, 3), mode = m, n = n, dl = dl, rest = rest }
    end
  end
  return live
end

-- Rebuild a node's state from its entries, dropping every expired one,
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
    st.x = 0
    return
  end
  hdel_many(key, dead)
  redis.call('HSET', key, 's', encode(st))
  if #dead > 0 then wake(st, freed) end
end

-- A node's state (one HGET, or one HMGET with the fields `extra`, whose
-- values go to st.extra); pruned first if an entry may have expired.
local function load(key, extra)
  local st
  if extra then
    local r = redis.call('HMGET', key, 's', extra[1], extra[2])
    st = decode(key, r[1])
    st.extra = { r[2], r[3] }
  else
    st = decode(key, redis.call('HGET', key, 's'))
  end
  local b = busy(st)
  if (st.min == nil and b) or (st.min ~= nil and (st.min <= NOW or not b)) then rescan(st) end
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

-- Remove entries ({f = field, k = 'h' or 'w', m = mode}) from a node whose
-- state is `st`, fix the state, delete the key when nothing is left, and
-- wake the waiters the removed entries blocked.
local function drop(st, list)
  if #list == 0 then return end
  local c, w = st.c, st.w
  local del, freed = {}, {}
  for _, e in ipairs(list) do
    del[#del + 1] = e.f
    freed[e.m] = true
    if e.k == 'h' then c[e.m] = c[e.m] - 1 else w[e.m] = w[e.m] - 1 end
  end
  for m = 0, 4 do
    if c[m] < 0 then c[m] = 0 end
    if w[m] < 0 then w[m] = 0 end
  end
  if not busy(st) then
    redis.call('DEL', st.key)
    st.x = 0
    return
  end
  hdel_many(st.key, del)
  redis.call('HSET', st.key, 's', encode(st))
  wake(st, freed)
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
/// ticket (0: not queued yet), waiter lease ms, repeat (0/1: this request
/// may have reached the server before, its answer lost).
///
/// Returns `{1, token, lease_ms}` when granted, else `{0, ticket, retry_ms}`
/// (`retry_ms` = time until the earliest conflicting entry's deadline, -1
/// if none).
const ACQUIRE: &str = r#"
local tok_key = KEYS[1]
local id, owner = ARGV[3], ARGV[4]
local mode, lease = tonumber(ARGV[5]), tonumber(ARGV[6])
local wait, ticket, wlease = ARGV[7] == '1', tonumber(ARGV[8]), tonumber(ARGV[9])
local again = ARGV[10] == '1'
local n = #KEYS - 1
local hf, wf = 'h:' .. id, 'w:' .. id
local sts = {}
for i = 1, n do
  if i == n and again then sts[i] = load(KEYS[i + 1], { hf, wf }) else sts[i] = load(KEYS[i + 1]) end
end

-- Idempotent per request id: a client that may have lost the answer to this
-- request sends it again with `again`. A hold it was granted is returned
-- again (same token, the lease left); a waiter keeps its ticket. A hold of
-- this id that is no longer whole (force-released above the node) is
-- removed, and the request starts over.
if again then
  local prior_h, prior_w = sts[n].extra[1], sts[n].extra[2]
  if prior_h then
    local _, ptok, pdl = parse(sts[n].key, hf, prior_h)
    if pdl > NOW then
      local whole = true
      for i = 1, n - 1 do
        local v = redis.call('HGET', sts[i].key, hf)
        if v then
          local _, t, d = parse(sts[i].key, hf, v)
          if t ~= ptok or d <= NOW then whole = false end
        else
          whole = false
        end
      end
      if whole then return { 1, tonumber(ptok), pdl - NOW } end
      for i = 1, n do
        local key = sts[i].key
        local v = redis.call('HGET', key, hf)
        if v then
          drop(decode(key, redis.call('HGET', key, 's')), { { f = hf, k = 'h', m = parse(key, hf, v) } })
        end
        sts[i] = load(key)
      end
    end
  end
  if ticket == 0 and prior_w then
    local _, t, d = parse(sts[n].key, wf, prior_w)
    if d > NOW then ticket = tonumber(t) end
  end
end

local blocked, hint = false, nil
for i = 1, n do
  local lm = mode
  if i < n then lm = INTENT[mode] end
  local st = sts[i]
  st.lm = lm
  local conflict = false
  for m = 0, 4 do
    if st.c[m] > 0 and not COMPAT[m * 5 + lm] then conflict = true end
  end
  if not conflict then
    local maybe = false
    for m = 0, 4 do
      if st.w[m] > 0 and not COMPAT[m * 5 + lm] then maybe = true end
    end
    if maybe then
      for _, e in ipairs(live(st)) do
        if e.kind == 'w:' and e.id ~= id and not COMPAT[e.mode * 5 + lm]
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
      if e.id ~= id and not COMPAT[e.mode * 5 + lm]
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
    st.c[lm] = st.c[lm] + 1
    if ticket > 0 and redis.call('HDEL', st.key, wf) == 1 and st.w[lm] > 0 then
      st.w[lm] = st.w[lm] - 1
    end
    store(st, { hf, MS[lm] .. info }, cover(st, dl))
  end
  return { 1, token, lease }
end

if wait then
  if ticket == 0 then ticket = next_token(tok_key) end
  local wdl = NOW + wlease
  local tail = ',' .. fmt(ticket) .. ',' .. fmt(wdl) .. ','
  for i = 1, n do
    local st = sts[i]
    local lm = st.lm
    local since = NOW
    local old = redis.call('HGET', st.key, wf)
    if old then
      local _, _, _, rest = parse(st.key, wf, old)
      since = tonumber(string.match(rest, '^(%d+),')) or NOW
    else
      st.w[lm] = st.w[lm] + 1
    end
    store(st, { wf, MS[lm] .. tail .. fmt(since) .. ',' .. owner }, cover(st, wdl))
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
  local r
  if cancel then r = redis.call('HMGET', key, 's', hf, wf) else r = redis.call('HMGET', key, 's', hf) end
  local list = {}
  if r[2] then
    local m, tok, dl = parse(key, hf, r[2])
    if cancel or tok == token then
      if dl <= NOW then ok = false end
      list[#list + 1] = { f = hf, k = 'h', m = m }
    else
      ok = false
    end
  else
    ok = false
  end
  if cancel and r[3] then
    local m = parse(key, wf, r[3])
    list[#list + 1] = { f = wf, k = 'w', m = m }
  end
  if #list > 0 then drop(decode(key, r[1]), list) end
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
  local r = redis.call('HMGET', KEYS[i], 's', hf)
  if r[2] then
    local m, tok, dl, owner = parse(KEYS[i], hf, r[2])
    if tok == token then
      vals[i] = { m = m, owner = owner, s = r[1] }
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
    local v = ',' .. token .. ',' .. fmt(dl) .. ','
    for i = 1, #KEYS do
      local st = decode(KEYS[i], vals[i].s)
      local expire = cover(st, dl)
      if expire then
        store(st, { hf, MS[vals[i].m] .. v .. vals[i].owner }, true)
      else
        redis.call('HSET', KEYS[i], hf, MS[vals[i].m] .. v .. vals[i].owner)
      end
    end
  end
  return 1
end
for i = 1, #KEYS do
  if vals[i] then drop(decode(KEYS[i], vals[i].s), { { f = hf, k = 'h', m = vals[i].m } }) end
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
  drop(decode(key, redis.call('HGET', key, 's')), list)
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
                "redis.register_function('{LIB}_{name}', function(KEYS, ARGV)\nstart(ARGV)\n{body}\nend)\n"
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
    }

    impl Server {
        /// The server (killed on drop) and a connection to it.
        fn start() -> (Server, redis::Connection) {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let srv = Server {
                child: std::process::Command::new(
                    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()),
                )
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start redis-server (install it)"),
            };
            let url = format!("redis://127.0.0.1:{port}/0");
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
    const CP: &str = "{t}:c:";

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
            NP.to_owned(),
            CP.to_owned(),
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

    fn field(con: &mut redis::Connection, key: &str, f: &str) -> Option<String> {
        redis::cmd("HGET").arg(key).arg(f).query(con).unwrap()
    }

    /// The holder and waiter counts of a node's state field.
    fn counts(con: &mut redis::Connection, key: &str) -> String {
        let s = field(con, key, "s").unwrap_or_default();
        s.split(',').take(10).collect::<Vec<_>>().join(",")
    }

    fn release(con: &mut redis::Connection, path: &[&str], id: &str, token: &str) -> i64 {
        let args = [NP, CP, id, token].map(str::to_owned);
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
        let args = [NP, CP].map(str::to_owned);
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
