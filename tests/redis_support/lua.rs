//! Lua used by the tests and the helper: a fenced resource and an oracle.

/// A fenced resource: `KEYS[1]` keeps the largest token accepted; a write
/// with `ARGV[1]` is accepted (1) only if its token is larger, else refused (0).
pub const FENCED_WRITE: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(ARGV[1])
if t > cur then redis.call('SET', KEYS[1], ARGV[1]); return 1 end
return 0
"#;

/// The stress oracle. `KEYS[1]`: hash of active holds (id -> "mode|path");
/// `KEYS[2]`: violation counter. `ARGV`: "enter"/"leave", id, mode (0-4),
/// normalized path. On enter, counts (and returns) the active holds that are
/// incompatible with the new one under Gray's hierarchical rules.
pub const ORACLE: &str = r#"
local COMPAT = {
  [0] = { [0] = true, true, true, true, false },
  [1] = { [0] = true, true, false, false, false },
  [2] = { [0] = true, false, true, false, false },
  [3] = { [0] = true, false, false, false, false },
  [4] = { [0] = false, false, false, false, false },
}
local INTENT = { [0] = 0, 1, 0, 1, 1 }
local function anc(a, b) return a == '' or string.sub(b, 1, #a + 1) == a .. '/' end
local function conflict(m1, p1, m2, p2)
  if p1 == p2 then return not COMPAT[m1][m2] end
  if anc(p1, p2) then return not COMPAT[m1][INTENT[m2]] end
  if anc(p2, p1) then return not COMPAT[m2][INTENT[m1]] end
  return false
end
if ARGV[1] == 'leave' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  return 0
end
local m, p = tonumber(ARGV[3]), ARGV[4]
local bad = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local om, op = string.match(all[i + 1], '^(%d)|(.*)$')
  if conflict(m, p, tonumber(om), op) then bad = bad + 1 end
end
if bad > 0 then redis.call('INCRBY', KEYS[2], bad) end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3] .. '|' .. p)
return bad
"#;
