//! The Redis backend (feature `redis`): the same modes and paths across
//! processes and machines that share one Redis.
//!
//! ```no_run
//! use hierlock::redis::RedisLockTree;
//! use hierlock::{Error, Mode};
//! use std::time::Duration;
//!
//! let tree = RedisLockTree::builder("redis://127.0.0.1:6379/0")
//!     .namespace("myapp")
//!     .lease(Duration::from_secs(10))
//!     .owner_id("worker-7")
//!     .build()?;
//! let g = tree.lock("/db/users", Mode::X)?; // waits, woken on release
//! let token = g.token(); // pass it along with every write to the resource
//! assert!(matches!(tree.try_lock("/db", Mode::S), Err(Error::WouldBlock)));
//! g.unlock()?; // Err(Error::LeaseLost) if the lease ran out while held
//! # Ok::<(), Error>(())
//! ```
//!
//! Requires Redis 7.0 or later (the scripts are a Redis Functions library;
//! the subscriber connection uses RESP3 push messages).
//!
//! # Semantics
//!
//! Exactly those of [`LockTree`](crate::LockTree) for plain locks: Gray's
//! matrix; M on a path takes `M.intention()` on every proper ancestor and M
//! on the node, all in one step; fairness (a request that conflicts with an
//! earlier waiter queues behind it); timeouts bound the whole acquisition.
//! Every guard is its own holder: two guards of one process conflict like
//! guards of two processes. Conversions and owners are not offered here.
//!
//! # Key layout
//!
//! Every key of a namespace `ns` starts with the hash tag `{ns}`, so a
//! namespace is one Redis Cluster slot and every script touches one slot:
//!
//! | key | type | contents |
//! |---|---|---|
//! | `{ns}:n:<path>` | hash | one per node that is held or awaited (`<path>` is the normalized path, `""` for the root) |
//! | `{ns}:token` | string | the fencing counter |
//! | `{ns}:c:<path>` | channel | pub/sub channel of the node: "something that may unblock you was given up" |
//!
//! A node's hash holds every hold and every waiter as its own field, each
//! with its own deadline, plus one state field that makes the uncontended
//! path O(1):
//!
//! | field | value |
//! |---|---|
//! | `s` | the node's state, 57 bytes (`struct.pack('<BI4I4I4I4I4I4I4I4I4I4dd', ...)`): the format byte 2, live-or-unpruned holds per mode (IS, IX, S, SIX, X) and waiters per mode as little-endian u32, then as little-endian f64 a lower bound of every entry's deadline (0: none) and the key's expiry as last set (ms) |
//! | `h:<holder id>` | `<mode byte><token: f64><deadline ms: f64><owner id>` — one hold (the node's mode, or an intention held for a lock below) |
//! | `w:<holder id>` | `<mode byte><ticket: f64><deadline ms: f64><since ms: f64><owner id>` — one waiter |
//! | `z` | 80 dots, written whenever the node's entries reach a multiple of 16 (see below) |
//!
//! The numbers are binary (f64 holds every token, ticket and millisecond
//! timestamp exactly, below 2^53) because the scripts' Lua decodes and
//! re-encodes the state of every level on every acquire and release: one
//! `struct.unpack` and one `struct.pack` per level instead of a pattern
//! match with twelve captures, twelve number parses and a `table.concat`
//! (see *Measurements*).
//!
//! `s` is written first when the key is created, so it stays the first
//! field of the hash: reading it is one lookup however many entries the
//! node has (Redis keeps small hashes as listpacks scanned field by
//! field). Writing or removing an entry, though, scans every other entry
//! of a listpack, and busy nodes (the root holds an intention for every
//! lock of the namespace) would pay that on every acquire and release up
//! to 512 fields; the field `z`, longer than the 64 bytes a listpack
//! value may have, makes Redis turn such a node's hash into a hash table
//! for good (until the key is deleted), where every field is one lookup.
//!
//! Modes are stored as 0..4 in the order of [`Mode::ALL`]; deadlines are
//! milliseconds of the **server's** clock (`redis.call('TIME')`), so
//! client clocks never matter. A hold is pruned by any script that touches
//! its node after its deadline (`min <= now` triggers a rescan that deletes
//! every expired entry and recounts): a crashed reader's entry is never kept
//! alive by other readers renewing theirs, which is the bug of read/write
//! locks that keep one expiry per key. Each node key also expires at least
//! 5 s after its latest deadline (a `PEXPIREAT` 10 s past the deadline when
//! the recorded expiry `exp` is not far enough, so most writes need none),
//! so the keys of a namespace whose clients all died disappear on their
//! own; a node with no entries left is deleted.
//!
//! ## Keys written by older versions
//!
//! Versions of this crate before the binary encoding stored `s` as the
//! text `c0,c1,c2,c3,c4,w0,w1,w2,w3,w4,min,exp` and entries as text
//! (`<mode>,<token>,<deadline>,<owner>`). The two encodings are not mixed:
//! every script reads a node's `s` before it touches the node, and a state
//! or entry in the old text form is refused with an [`Error::Backend`]
//! that says the key was written by an older hierlock version (never a
//! panic, never a grant). Both versions load their own function library
//! (its name carries a hash of the scripts), and an old library refuses
//! the new binary state in the same way ("corrupt lock state"). Since every
//! acquisition of a namespace passes its root node, old and new clients
//! can never both hold locks in one namespace: whichever version's locks
//! are in the root, the other version's requests fail until the root is
//! empty. To upgrade: stop the old clients (their holds run out with their
//! leases, and the keys are deleted by their expiry or by the next release
//! that empties them), then start the new ones; or, if the old clients are
//! gone for good, delete the keys `{ns}:n:*` at once. The fencing counter
//! `{ns}:token` is the same integer in both versions, so tokens keep
//! growing across the upgrade.
//!
//! # Scripts
//!
//! Every change is one Lua script, a function of one Redis Functions
//! library (`hierlock_<hash of its text>`, so clients of different
//! versions of this crate do not clash). The client calls it with `FCALL`;
//! when the server answers that the function is missing (first use, a
//! restart, `FUNCTION FLUSH`, a cluster primary that never had it), the
//! client sends `FUNCTION LOAD REPLACE` (in a cluster the cluster client
//! sends that to every primary) and the call again, transparently. The
//! library's top-level code, which defines the shared helpers and tables,
//! runs once per load rather than on every call as it would with
//! `EVALSHA`:
//!
//! - **acquire** (`KEYS`: the counter and the node hashes from the root
//!   down): for each level, read the state (one `HGET` of `s`), prune if due,
//!   and check the level's mode (the intention, or the mode itself at the
//!   node) against the held modes and against the modes of *earlier*
//!   waiters. Only if every level passes does it take a token and write a
//!   hold on every level (one `HSET` of the entry and the state each, and a
//!   `PEXPIREAT` when the key is new). Otherwise nothing is held; a
//!   waiting request registers (or refreshes) a waiter entry on every level
//!   with its ticket, and the script returns when the earliest conflicting
//!   entry's lease ends, so the client knows when to re-check. It is
//!   idempotent per request id: a call that may repeat one whose answer was
//!   lost carries a flag, and then the node's read also fetches the
//!   request's own `h:`/`w:` fields; it returns the hold already granted
//!   (same token, the lease left) instead of granting twice, and a waiter
//!   keeps its ticket.
//! - **release**: removes the hold's entry at every level, fixes the
//!   counters, and `PUBLISH`es on a level's channel only if a waiter there
//!   conflicts with the mode given up. It reports whether the hold was still
//!   whole and unexpired.
//! - **renew**: owner- and token-checked; extends every level's deadline by
//!   the lease, or, if any level is gone or expired, removes what is left
//!   and reports the loss. It never recreates an entry.
//! - **force_release** and **inspect** (below).
//!
//! An uncontended acquire + release is therefore two Redis commands
//! (`FCALL` twice) whatever the depth; see *Measurements*.
//!
//! # Leases and renewal
//!
//! A hold lives for the tree's lease ([`RedisLockTreeBuilder::lease`]) from
//! the moment the server granted it. While its guard lives, a background
//! task renews it every third of the lease. The guard keeps its own deadline
//! on the monotonic clock, counted from the moment the request was *sent*,
//! so the guard's idea of its lease always ends before the server's. If a
//! renewal finds the hold gone (expired and pruned, force-released, Redis
//! restarted without the key), or if renewals fail until the local deadline
//! passes, the guard is marked lost: [`RedisGuard::is_held`] says `false`,
//! [`RedisGuard::refresh`] and [`RedisGuard::unlock`] return
//! [`Error::LeaseLost`]. The loss is sticky and never silent. A process
//! killed with SIGKILL stops renewing; its holds expire and the next script
//! touching those nodes prunes them and wakes the waiters (who also re-check
//! on their own at the expiry the failed try reported).
//!
//! # Fencing tokens
//!
//! Every grant takes the next value of the namespace's counter
//! (`{ns}:token`), so its [`RedisGuard::token`] is larger than the token of
//! every earlier grant in the namespace, whatever the node; renewal keeps
//! the token. A lease can run out under a holder that is paused (GC, SIGSTOP,
//! a slow disk) and does not know it yet; the lock alone cannot stop such a
//! holder's late write. The resource can: send the token with every write,
//! and have the resource remember the largest token it accepted (per
//! resource, e.g. per row or file) and refuse writes with a smaller one —
//! atomically with the write itself (a conditional `UPDATE ... WHERE
//! fence < $token`, a Lua script, a compare-and-set). The holder that lost
//! its lease then fails instead of overwriting a newer holder's data.
//!
//! A missing counter (a restart without persistence, an eviction) is seeded
//! from the server clock in microseconds. Tokens issued before were at most
//! the seed of their time plus the number of grants since, and a Redis
//! primary grants far fewer than one lock per microsecond, so the new seed
//! is above every token issued before, provided the server's clock did not
//! step backwards across the restart. Tokens stay below 2^53 (exact in
//! Lua's doubles) until the year 2255.
//!
//! # Waiting
//!
//! A request that may wait tries once; if that try is blocked, it
//! subscribes to the channels of every level of its path on the process's
//! subscriber connection, waits for the server's confirmation, and only then
//! tries again (keeping the ticket the first try took); so a release after
//! that second try is always heard, and an uncontended `lock` costs no
//! SUBSCRIBE. There is one subscriber connection (RESP3) per process and
//! server: every [`RedisLockTree`] of the process built with the same
//! address and credentials shares it, whatever its namespace or database
//! (channel names carry the namespace; pub/sub ignores the database). A failed try registers the request as a waiter on every level with
//! a ticket from the namespace counter (earlier waiters have smaller
//! tickets) and a waiter lease (the tree's lease; refreshed by every retry).
//! The waiter then sleeps until a message on one of its channels, the
//! earliest conflicting lease expiry returned by the try, a third of its
//! waiter lease (to refresh its registration), or its deadline — never a busy
//! poll. Later requests that conflict with a registered waiter queue behind
//! it, so a waiting X is not starved by a stream of readers. On timeout,
//! error, or a dropped [`RedisLockTree::lock_async`] future, the waiter
//! entries are removed by a release script (and would expire with their
//! lease if the process died first). If the subscriber connection drops
//! (killed, or a Redis restart), every waiter is woken, re-subscribes on a
//! new connection and tries again; if the command connection drops, the
//! next script call fails on it and is sent again on a fresh one.
//!
//! All Redis I/O of a [`RedisLockTree`] runs on one background thread per
//! tree (a current-thread tokio runtime) with its own command connection;
//! the blocking methods hand their work to it, and
//! [`RedisLockTree::lock_async`] awaits it from any executor. The shared
//! subscriber connection lives on one more thread of its own, which ends
//! with the last tree that uses it.
//!
//! # Redis Cluster
//!
//! [`RedisLockTree::cluster_builder`] takes the URLs of some nodes of a
//! cluster instead of one server; everything else is the same. Every key of
//! a namespace carries the hash tag `{ns}`, so a namespace is one slot,
//! served by one primary: each script (which names every key it touches in
//! `KEYS`, as a cluster requires) runs there, atomically, and is routed by
//! the cluster client, which follows `MOVED`/`ASK` and topology changes.
//! Different namespaces spread over the shards; one namespace does not
//! (that is what keeps an acquisition one atomic script). Waiting needs no
//! per-shard connection: a cluster forwards every `PUBLISH` to every node,
//! so the process's one subscriber connection goes to one node (the first
//! given that answers) and hears releases from all of them.
//! [`RedisLockTreeBuilder::wait_for_replicas`] sends `WAIT` to the primary
//! of the namespace's slot.
//!
//! # Failure behaviour
//!
//! - Unreachable Redis: [`RedisLockTree::builder`]'s `build` and every call
//!   return [`Error::Backend`] within the operation timeout
//!   ([`RedisLockTreeBuilder::op_timeout`], default 2 s; a waiting request
//!   that keeps retrying a lost connection, within twice that at worst) or
//!   the caller's own timeout, whichever is shorter; a Redis that answered earlier and stops
//!   answering while a `lock_timeout` waits yields [`Error::Timeout`].
//! - A restart that forgot every key: holders learn [`Error::LeaseLost`] at
//!   their next renewal; new locks work at once (the connection reconnects;
//!   the function library is reloaded; the token counter is reseeded as above).
//! - A dropped connection: every script call that fails because its
//!   connection failed (not because of the command) is sent once more on a
//!   fresh connection (all scripts are safe to repeat; see *Scripts*) before
//!   it becomes [`Error::Backend`]. A request that may wait goes further:
//!   it re-subscribes and tries again, pausing 20 ms doubling to 200 ms,
//!   for as long as its failures have lasted less than the operation
//!   timeout (and its own deadline allows), so a waiter lives through a
//!   killed connection or a Redis restart and still gets the lock.
//! - A reply lost after the server granted: the client releases the hold it
//!   cannot know about in the background (and it would expire anyway).
//! - Keys of the namespace modified by hand: a clear [`Error::Backend`]
//!   naming the key and field (or Redis's `WRONGTYPE`), never a panic.
//!
//! # Measurements
//!
//! Current figures (binary encoding, the scripts of commit f042698), from
//! `CARGO_TARGET_DIR=... cargo test --release --features redis --test
//! redis_measure -- --ignored --nocapture` against a local Redis 7.0.15 on
//! this project's 2-core VM, shared with another engineer's tests. 500 X
//! locks at the given depth are taken and held (so the root carries 500
//! intention holds), then released. Nine runs at load average 1.0-1.6,
//! the text-encoding build (da95b49) three times in between; best run
//! per figure:
//!
//! | depth | client commands per acquire + release | one key per ancestor (2(d+1)) | commands inside the scripts | `FCALL` usec_per_call acquire / release | text encoding, same period |
//! |---|---|---|---|---|---|
//! | 1 | 2.00 | 4  | 13.0 | 41.7 / 27.2 | 61.1 / 51.5 |
//! | 4 | 2.00 | 10 | 28.0 | 62.4 / 54.3 | 103.2 / 111.6 |
//! | 8 | 2.00 | 18 | 48.0 | 93.2 / 89.2 | 163.2 / 194.1 |
//!
//! The depth-1 acquire is the noisiest figure (41.7 to 82.3 usec over the
//! nine runs, median 48.8, against 61.1 to 71.4 for the text encoding):
//! it is the first phase of a run on a fresh server (whose memory is
//! probably still being faulted in; a pipelined run on a fresh server
//! showed the same, 43-52 usec in its first rounds and 30-32 after), and
//! its calls arrive one at a time, each on caches that other processes
//! have just used. The text encoding itself
//! measured 50.4-50.9 / 42.8-47.3 usec at depth 1 on an idle machine
//! earlier; at the ratio measured here (about 0.68 of its time) an idle
//! run should show about 35 usec (an estimate: no idle moment came). Earlier, under load average 2.6-6.3 (six
//! runs each, alternating): 50.2 / 35.8, 72.0 / 63.6, 106.5 / 100.4 usec
//! against 66.9 / 51.6, 104.3 / 118.0, 172.9 / 191.8. With both libraries
//! loaded side by side on one server and called alternately with the
//! calls pipelined (load about 1; see the last paragraphs below): 46.9 ->
//! 33.5 usec per acquire and 43.4 -> 23.6 per release at depth 1. Counted
//! in server instructions (callgrind, independent of the load) it is 202,000 ->
//! 137,000 and 197,000 -> 103,000. In the nine runs: 2,970-4,000 lock +
//! unlock cycles per second with 1 client and 4,730-7,140 with 16 (X at
//! depth 3, disjoint nodes; the text encoding 3,030-3,190 and
//! 3,690-4,590), and a waiter granted a median 0.50-0.87 ms after the
//! holder's `unlock` started (text encoding 0.65-0.86 ms; this is mostly
//! the client's hand-offs and pub/sub, not the scripts). What is left per
//! call at depth 1 (137,000 instructions): about 25,000 for any `FCALL`
//! with three keys and eight arguments, the client's I/O included; 3,500
//! to 10,000 for each of the seven commands the acquire runs (`TIME`, two
//! `HGET`s, `INCR`, two `HSET`s, `PEXPIREAT` of the new node); about 4,500
//! for each `struct.unpack` or `struct.pack` of a state (one of each per
//! existing level); and the Lua around them. Each
//! further level costs about 37,000 (acquire) and 39,000 (release)
//! instructions, of which the `HGET` + `HSET` (acquire) or `HMGET` +
//! `HDEL` + `HSET` (release) are about a third.
//!
//! ## How it got there
//!
//! The first measurements, same command against a local Redis 7.0.15 on a 2-core machine shared with
//! another engineer's builds and benchmarks (load average about 1.8 during
//! the run below, 0 for the "before" run), so the times are pessimistic and
//! vary between runs (the same build measured 115 / 102 usec at depth 1
//! under load 2.7); the command counts are exact. 500 X locks at the
//! given depth are taken (and held, so the root carries 500 intention
//! holds), then released.
//!
//! | depth | client commands per acquire + release | one key per ancestor (2(d+1)) | commands run inside the scripts | EVALSHA usec_per_call acquire / release |
//! |---|---|---|---|---|
//! | 1 | 2.00 | 4  | 13.0 | 69 / 62 (74 / 65 in a later run under load 3) |
//! | 4 | 2.00 | 10 | 28.0 | 129 / 129 |
//! | 8 | 2.00 | 18 | 48.0 | 216 / 223 |
//!
//! Inside the scripts, per acquire: `TIME`, `INCR`, and per level one
//! `HGET` and one `HSET`, plus one `PEXPIREAT` for a new node (the shared
//! ancestors' expiries rarely need moving); per release: `TIME`, and per
//! level one `HMGET` and an `HDEL` + `HSET` (or a `DEL` for the last
//! entry). Before this layout (separate counter fields, `PTTL` +
//! `PEXPIRE` per level) the same run counted 17.3 / 37.4 / 66.2 commands
//! inside the scripts and 123 / 140, 289 / 435, 586 / 824 usec per acquire
//! / release on an idle machine; the two script versions run alternately
//! on one server under the same load (load average 4) took 230-270 /
//! 280-300 usec before and 133-152 / 138-150 after at depth 1, and about
//! 2.5 times less at depth 8. Under callgrind (the server's instructions
//! per call, including about 32,000 that any `EVALSHA` costs) an acquire at
//! depth 1 went from 615,000 to 275,000 instructions and a release from
//! 840,000 to 290,000: most of the old cost was scanning the root's hash (a listpack
//! while it has at most 128 fields) once per missing counter field, and
//! formatting numbers. What is left is mostly the Lua interpreter setting
//! up the shared helpers on every call (about 50,000 instructions); that is
//! why the 44 usec target is not met yet on this machine.
//!
//! The scripts then became one Redis Functions library (`FCALL` instead of
//! `EVALSHA`), so the helpers and tables of the shared prelude are built
//! once per load instead of on every call. Measured on the server under
//! callgrind, with the same calls sent by `redis-cli` to the old scripts
//! and to the library (500 X acquires at the given depth, held, then 500
//! releases, lease long enough for nothing to expire under valgrind; the
//! whole server's instructions per call, the client's socket I/O and
//! command parsing included): acquire / release 277,000 / 256,000 ->
//! 248,000 / 235,000 at depth 1, 598,000 / 575,000 -> 581,000 / 558,000
//! at depth 4, 1,024,000 / 1,003,000 -> 995,000 / 994,000 at depth 8:
//! 20,000 to 30,000 fewer per call whatever the depth (about 10% at depth
//! one). The 44 usec target is still not met: each further level costs about
//! 105,000 instructions (mostly listpack scans, see the next paragraph).
//! The `redis_measure` run on the loaded machine (load average 3.5)
//! printed 87 / 89, 162 / 158, 256 / 249 usec_per_call of `FCALL` at depth
//! 1, 4, 8; alternating both versions on one server under the same load
//! gave 70-117 / 63-71 usec against 76-141 / 92-129 at depth 1, and no
//! difference outside the noise at depths 4 and 8.
//!
//! Two more changes found the per-level cost: Redis 7.0 keeps a hash of up
//! to 512 short fields as a listpack, so with 500 holds below it every new
//! or removed entry on the root (and on every shared ancestor) scanned
//! about 500 fields, some 50,000 instructions each; the field `z` (see *Key
//! layout*) now turns a node of 16 entries into a hash table. And the
//! state's small numbers are formatted and parsed through tables built
//! once per library load (Lua formats and parses numbers through
//! sprintf/strtod). Same callgrind run, acquire / release: 222,000 /
//! 214,000 at depth 1, 445,000 / 497,000 at depth 4, 748,000 / 889,000 at
//! depth 8 (from 277,000 / 256,000, 598,000 / 575,000, 1,024,000 /
//! 1,003,000 before the library: -20% / -16%, -26% / -14%, -27% / -11%).
//! Old scripts and the final library alternated three times on one server
//! under the same load (load average 3.1; PING/s about 40% below the
//! quiet figure above), usec_per_call acquire / release: depth 1 141-145 /
//! 131-142 -> 115-128 / 115-119, depth 4 274-282 / 265-284 -> 220-222 /
//! 238-241, depth 8 428-466 / 450-500 -> 350-389 / 399-448. Scaled to the
//! earlier run's 69 / 62 usec at depth 1 that is about 59 / 53 usec, so
//! the 44 usec target is closer but still not met. What is left at depth
//! 1 (about 220,000): about 38,000 for any `FCALL` with the client's I/O,
//! about 8,000 per command the script runs (seven), and the Lua around
//! them (the state is a 12-number string parsed and rebuilt per level).
//!
//! The binary encoding (see *Key layout*) then took most of that Lua
//! away. Timing pieces of the acquire on the server (`usec_per_call` and
//! callgrind counts of functions that stop at a given point) showed where
//! depth 1 went: about 13 usec to decode two text states (a 12-capture
//! `string.match`, twelve `tonumber`s or table lookups, and a table that
//! grew field by field) and a few more to re-encode them, against about
//! 1 usec (4,500 instructions) per `struct.unpack` or `struct.pack`. The
//! scripts now also build one array per level and no other table on the
//! uncontended paths, check a level against Gray's matrix written out
//! instead of a loop over it, parse lease lengths and the second of
//! `TIME` once rather than per call (`strtod`), skip the waiter entry's
//! read for a request that never waited, and take no prefix arguments
//! (each `FCALL` argument costs about 0.25 usec). The commands run inside
//! the scripts are the same as before. Under callgrind (same method as
//! above, server instructions per call), acquire / release: 202,000 /
//! 197,000 -> 137,000 / 103,000 at depth 1, 418,000 / 472,000 -> 250,000
//! / 221,000 at depth 4, 701,000 / 829,000 -> 402,000 / 378,000 at depth
//! 8. Old and new library loaded side by side on one local Redis 7.0.15
//! and called alternately (500 X acquires at the given depth, held, then
//! 500 releases, five rounds, the best `usec_per_call` of each; load
//! average about 1): acquire / release 46.9 / 43.4 -> 33.5 / 23.6 usec at
//! depth 1, 91.8 / 102.2 -> 60.2 / 51.0 at depth 4, 151.6 / 180.6 -> 93.7
//! / 87.1 at depth 8. See the table at the top of this section for the
//! `redis_measure` figures.
//!
//! An uncontended `lock` no longer subscribes (it tries first and
//! subscribes only when blocked), so an acquire + release is exactly the 2
//! `EVALSHA` (now `FCALL`) calls. In the same run: 36,500 PING/s on one plain connection;
//! lock + unlock cycles (X at depth 3, disjoint nodes) at 2,990/s with 1
//! client and 3,600/s with 16 clients (separate trees; before: 1,630/s and
//! 2,570/s on the idle machine); a waiter granted a median 0.93 ms (p90
//! 1.05 ms; before 0.85 / 1.12 ms) after the holder's `unlock` started. These
//! per-operation figures are dominated by the hand-offs to the tree's
//! runtime thread and by the loaded CPUs, and should be re-taken on an idle
//! machine before they are quoted.

mod guard;
mod scripts;
mod subscriber;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, Value};

use crate::path::ParsedPath;
use crate::{Error, IntoPath, Mode, Path, DEFAULT_MAX_DEPTH, DEFAULT_SEPARATOR};

use guard::Hold;
pub use guard::RedisGuard;
use scripts::{Function, Scripts};
use subscriber::Subscriber;

/// A tree of hierarchical locks kept in Redis, shared by every process that
/// uses the same Redis and namespace. See the [module docs](self).
///
/// Cheap to clone (an `Arc`); `Send + Sync`.
#[derive(Clone)]
pub struct RedisLockTree {
    shared: Arc<Shared>,
}

/// Configures a [`RedisLockTree`]; from [`RedisLockTree::builder`].
#[derive(Debug, Clone)]
pub struct RedisLockTreeBuilder {
    /// One URL for a plain Redis; the seed nodes of a cluster.
    urls: Vec<String>,
    cluster: bool,
    namespace: String,
    lease: Duration,
    owner_id: Option<String>,
    separator: char,
    max_depth: usize,
    op_timeout: Duration,
    replicas: Option<(u32, Duration)>,
}

/// One node as seen by [`RedisLockTree::inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisNodeInfo {
    /// The node.
    pub path: Path,
    /// Its live holds, smallest token first: the node's own locks and the
    /// intention holds of locks below it.
    pub holders: Vec<RedisHolder>,
    /// Its waiters, in queue order (smallest ticket first), including the
    /// requests for nodes below it waiting to take their intention here.
    pub waiters: Vec<RedisWaiter>,
}

/// A hold on a node, from [`RedisLockTree::inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisHolder {
    /// The owner id of the tree that took it ([`RedisLockTreeBuilder::owner_id`]).
    pub owner: String,
    /// The mode held on this node (an intention mode if the lock is below).
    pub mode: Mode,
    /// The grant's fencing token.
    pub token: u64,
    /// How long the lease has left by the server's clock.
    pub lease_left: Duration,
    /// The unique id of the hold (one per guard), as used in the keys.
    pub holder_id: String,
}

/// A waiting request on a node, from [`RedisLockTree::inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisWaiter {
    /// The owner id of the tree that is waiting.
    pub owner: String,
    /// The mode it waits to take on this node.
    pub mode: Mode,
    /// Its place in the queue: earlier waiters have smaller tickets.
    pub ticket: u64,
    /// How long it has been waiting (by the server's clock).
    pub waiting_for: Duration,
    /// The id its hold will have when granted.
    pub holder_id: String,
}

/// How long a request may wait.
#[derive(Clone, Copy)]
enum Wait {
    Try,
    Until(Instant),
    Forever,
}

/// What the tree, its guards and its background tasks share.
pub(crate) struct Shared {
    rt: Runtime,
    conn: Conn,
    scripts: Scripts,
    sub: Arc<Subscriber>,
    namespace: String,
    node_prefix: String,
    chan_prefix: String,
    token_key: String,
    lease: Duration,
    owner: String,
    sep: char,
    max_depth: usize,
    op_timeout: Duration,
    replicas: Option<(u32, Duration)>,
    id_seed: u64,
    next_id: AtomicU64,
}

/// A background thread running a current-thread tokio runtime: one per tree
/// (every Redis operation of the tree), one per [`Subscriber`].
struct Runtime {
    handle: tokio::runtime::Handle,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Runtime {
    fn start(name: &str) -> Result<Runtime, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Backend {
                message: format!("cannot start the redis backend's runtime: {e}"),
            })?;
        let handle = rt.handle().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = rx.await;
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(|e| Error::Backend {
                message: format!("cannot start the redis backend's thread: {e}"),
            })?;
        Ok(Runtime {
            handle,
            stop: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// A Redis error as ours.
pub(crate) fn backend(e: redis::RedisError) -> Error {
    Error::Backend {
        message: format!("redis: {e}"),
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}:{:08x}", std::process::id(), random_u64() as u32)
}

/// The failure of one script call.
struct CallError {
    error: Error,
    /// The caller's deadline (not the operation timeout) cut the call short.
    by_deadline: bool,
    /// The connection failed (dropped, refused, or no answer within the
    /// operation timeout), not the command: worth another try.
    retryable: bool,
}

/// The index in the acquire script's arguments (as built by
/// [`Shared::args`]) of its "may be a repeat" flag.
const AGAIN_ARG: usize = 7;

/// The first pause before a waiting request tries again after a failed
/// round trip; doubled up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE: Duration = Duration::from_millis(20);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);

fn connection_failed(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// The node keys of a request, root first, and its path.
#[derive(Clone)]
pub(crate) struct Target {
    path: Path,
    keys: Vec<String>,
}

impl RedisLockTreeBuilder {
    /// The key prefix: every key of the tree starts with `{namespace}:`.
    /// Default `"hierlock"`. Must not be empty or contain `{` or `}`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long a hold survives without renewal (default 10 s; at least
    /// 10 ms). Guards renew every third of it in the background; a holder
    /// that dies frees its locks after at most this long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The owner id shown by [`RedisLockTree::inspect`]; default
    /// `host:pid:random`.
    pub fn owner_id(mut self, owner_id: impl Into<String>) -> Self {
        self.owner_id = Some(owner_id.into());
        self
    }

    /// The separator of string paths (default `/`), as for
    /// [`LockTree`](crate::LockTree). Every client of a namespace must use
    /// the same one.
    pub fn separator(mut self, sep: char) -> Self {
        self.separator = sep;
        self
    }

    /// The maximal number of components of a path (default 256).
    pub fn max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// The longest any one Redis operation (connect, script call) may take
    /// before it counts as failed with [`Error::Backend`] (default 2 s).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Durability for replicated setups: after each grant, `WAIT` until
    /// `replicas` replicas have the hold, for at most `timeout`; if fewer
    /// confirm, the lock is given back and the request fails with
    /// [`Error::Backend`]. Off by default. `WAIT` blocks this tree's
    /// connection while it waits, so other operations of the tree queue
    /// behind it.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Connects and checks that Redis answers.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] if the URL is invalid, the namespace malformed, or
    /// Redis does not answer within the operation timeout.
    pub fn build(self) -> Result<RedisLockTree, Error> {
        if self.namespace.is_empty() || self.namespace.contains(['{', '}']) {
            return Err(Error::Backend {
                message: format!(
                    "invalid namespace {:?}: must be non-empty and contain no braces",
                    self.namespace
                ),
            });
        }
        let lease = self.lease.max(Duration::from_millis(10));
        if self.urls.is_empty() {
            return Err(Error::Backend {
                message: "no redis cluster node given".into(),
            });
        }
        let infos = self
            .urls
            .iter()
            .map(|u| u.as_str().into_connection_info().map_err(backend))
            .collect::<Result<Vec<_>, _>>()?;
        // The subscriber: RESP3 connections to the server (any node of a
        // cluster hears every PUBLISH), keyed by address and credentials.
        let mut sub_clients = Vec::with_capacity(infos.len());
        let mut sub_key = String::from(if self.cluster { "cluster" } else { "server" });
        for info in &infos {
            let mut info3 = info.clone();
            info3.redis.protocol = ProtocolVersion::RESP3;
            sub_key.push_str(&format!(
                "|{}|{:?}|{:?}",
                info3.addr, info3.redis.username, info3.redis.password
            ));
            sub_clients.push(redis::Client::open(info3).map_err(backend)?);
        }
        let op_timeout = self.op_timeout;
        let connect: std::pin::Pin<Box<dyn Future<Output = Result<Conn, Error>> + Send>> =
            if self.cluster {
                let client = redis::cluster::ClusterClientBuilder::new(infos)
                    .connection_timeout(op_timeout)
                    .response_timeout(op_timeout)
                    .retries(1)
                    .build()
                    .map_err(backend)?;
                Box::pin(async move {
                    let fut = async {
                        let mut conn = client.get_async_connection().await?;
                        redis::cmd("PING").query_async::<()>(&mut conn).await?;
                        Ok::<_, redis::RedisError>(Conn::Cluster(conn))
                    };
                    bounded(op_timeout, fut).await
                })
            } else {
                let client = redis::Client::open(infos[0].clone()).map_err(backend)?;
                Box::pin(async move {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(op_timeout)
                        .set_response_timeout(op_timeout)
                        .set_number_of_retries(1)
                        .set_factor(10)
                        .set_max_delay(200);
                    let fut = async {
                        let mut conn = ConnectionManager::new_with_config(client, config).await?;
                        redis::cmd("PING").query_async::<()>(&mut conn).await?;
                        Ok::<_, redis::RedisError>(Conn::Single(conn))
                    };
                    bounded(op_timeout, fut).await
                })
            };
        let rt = Runtime::start("hierlock-redis")?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.handle.spawn(async move {
            let _ = tx.send(connect.await);
        });
        let conn = rx.recv().map_err(|_| stopped())??;
        let ns = &self.namespace;
        Ok(RedisLockTree {
            shared: Arc::new(Shared {
                rt,
                conn,
                scripts: Scripts::new(),
                sub: Subscriber::shared(sub_key, sub_clients, op_timeout)?,
                node_prefix: format!("{{{ns}}}:n:"),
                chan_prefix: format!("{{{ns}}}:c:"),
                token_key: format!("{{{ns}}}:token"),
                namespace: self.namespace,
                lease,
                owner: self.owner_id.unwrap_or_else(default_owner),
                sep: self.separator,
                max_depth: self.max_depth,
                op_timeout,
                replicas: self.replicas,
                id_seed: random_u64(),
                next_id: AtomicU64::new(0),
            }),
        })
    }
}

/// `fut` (connecting and a first PING), bounded by `limit`.
async fn bounded(
    limit: Duration,
    fut: impl Future<Output = Result<Conn, redis::RedisError>>,
) -> Result<Conn, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(backend),
        Err(_) => Err(Error::Backend {
            message: format!("redis did not answer within {limit:?}"),
        }),
    }
}

/// The command connection of a tree: to one server (reconnecting on its
/// own), or to a cluster (routing each script call to the primary of its
/// keys' slot, following the cluster's topology).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag, or
/// of the whole key, modulo 16384).
fn slot(key: &str) -> u16 {
    let k = key.as_bytes();
    let k = match k.iter().position(|&b| b == b'{') {
        Some(open) => match k[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &k[open + 1..open + 1 + len],
            _ => k,
        },
        None => k,
    };
    let mut crc: u16 = 0;
    for &b in k {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

fn stopped() -> Error {
    Error::Backend {
        message: "the redis backend's runtime has stopped".into(),
    }
}

impl RedisLockTree {
    /// Starts configuring a tree on the Redis at `url`
    /// (`redis://[user:password@]host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisLockTreeBuilder {
        Self::new_builder(vec![url.into()], false)
    }

    /// Starts configuring a tree on a Redis Cluster, given the URLs of some
    /// of its nodes (`redis://[user:password@]host:port`; the others are
    /// discovered). Each namespace lives in the one hash slot of its tag
    /// `{namespace}`, so each script call goes to one primary; different
    /// namespaces spread over the cluster's shards. Waiting works through a
    /// pub/sub connection to any one node (a cluster forwards every PUBLISH
    /// to every node); it moves to the next given node if that one fails.
    ///
    /// ```no_run
    /// use hierlock::redis::RedisLockTree;
    /// let tree = RedisLockTree::cluster_builder([
    ///     "redis://10.0.0.1:6379",
    ///     "redis://10.0.0.2:6379",
    /// ])
    /// .namespace("myapp")
    /// .build()?;
    /// # Ok::<(), hierlock::Error>(())
    /// ```
    ///
    /// `build` fails with [`Error::Backend`] if no node is given, a URL is
    /// invalid, or the cluster does not answer within the operation timeout.
    pub fn cluster_builder<I>(nodes: I) -> RedisLockTreeBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self::new_builder(nodes.into_iter().map(Into::into).collect(), true)
    }

    fn new_builder(urls: Vec<String>, cluster: bool) -> RedisLockTreeBuilder {
        RedisLockTreeBuilder {
            urls,
            cluster,
            namespace: "hierlock".into(),
            lease: Duration::from_secs(10),
            owner_id: None,
            separator: DEFAULT_SEPARATOR,
            max_depth: DEFAULT_MAX_DEPTH,
            op_timeout: Duration::from_secs(2),
            replicas: None,
        }
    }

    /// The namespace (key prefix) of this tree.
    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// The owner id this tree's holds are shown with.
    pub fn owner_id(&self) -> &str {
        &self.shared.owner
    }

    /// The lease of every hold taken through this tree.
    pub fn lease(&self) -> Duration {
        self.shared.lease
    }

    /// Takes `mode` on `path` (and its intention on every ancestor), waiting
    /// as long as it takes. Wakes on a release message or a conflicting
    /// lease's expiry, never by polling.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPath`]; [`Error::Backend`] if Redis fails or cannot
    /// be reached (the request's waiter entries are then removed, or expire).
    pub fn lock<'p>(&self, path: impl IntoPath<'p>, mode: Mode) -> Result<RedisGuard, Error> {
        let target = self.target(path)?;
        self.block(self.shared.clone().acquire(target, mode, Wait::Forever))
    }

    /// Takes the lock if it can be granted now, in one round trip; else
    /// [`Error::WouldBlock`] (also when an earlier conflicting request is
    /// waiting: no barging).
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`], [`Error::InvalidPath`], [`Error::Backend`].
    pub fn try_lock<'p>(&self, path: impl IntoPath<'p>, mode: Mode) -> Result<RedisGuard, Error> {
        let target = self.target(path)?;
        self.block(self.shared.clone().acquire(target, mode, Wait::Try))
    }

    /// Like [`lock`](Self::lock), but gives up after `timeout` (the whole
    /// acquisition, Redis round trips included) with [`Error::Timeout`],
    /// leaving nothing behind. A zero timeout is [`try_lock`](Self::try_lock).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::InvalidPath`], [`Error::Backend`]
    /// (within `timeout` if Redis is unreachable).
    pub fn lock_timeout<'p>(
        &self,
        path: impl IntoPath<'p>,
        mode: Mode,
        timeout: Duration,
    ) -> Result<RedisGuard, Error> {
        let target = self.target(path)?;
        let wait = if timeout.is_zero() {
            Wait::Try
        } else {
            Wait::Until(Instant::now() + timeout)
        };
        self.block(self.shared.clone().acquire(target, mode, wait))
    }

    /// [`lock`](Self::lock) as a future, usable from any executor (the work
    /// runs on the tree's own runtime). Bound it with
    /// `tokio::time::timeout` or similar.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes withdraws the request: its
    /// waiter entries are removed from Redis, and a hold granted in the
    /// meantime is released. Nothing is left behind (if the process dies
    /// first, the entries expire with their lease).
    pub fn lock_async<'p>(
        &self,
        path: impl IntoPath<'p>,
        mode: Mode,
    ) -> impl Future<Output = Result<RedisGuard, Error>> + Send + 'static {
        let target = self.target(path);
        let shared = self.shared.clone();
        async move {
            let target = target?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let handle = shared.rt.handle.clone();
            let work = shared.acquire(target, mode, Wait::Forever);
            handle.spawn(async move {
                let mut tx = tx;
                tokio::select! {
                    r = work => { let _ = tx.send(r); }
                    _ = tx.closed() => {}
                }
            });
            rx.await.map_err(|_| stopped())?
        }
    }

    /// Takes S on `path`; [`lock`](Self::lock) with [`Mode::S`].
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    pub fn read<'p>(&self, path: impl IntoPath<'p>) -> Result<RedisGuard, Error> {
        self.lock(path, Mode::S)
    }

    /// Takes X on `path`; [`lock`](Self::lock) with [`Mode::X`].
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    pub fn write<'p>(&self, path: impl IntoPath<'p>) -> Result<RedisGuard, Error> {
        self.lock(path, Mode::X)
    }

    /// The holders and waiters of one node, as the server sees them now
    /// (expired holds that were not pruned yet are left out).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPath`], [`Error::Backend`] (also for a node hash
    /// that was modified by hand and cannot be read).
    pub fn inspect<'p>(&self, path: impl IntoPath<'p>) -> Result<RedisNodeInfo, Error> {
        let target = self.target(path)?;
        let shared = self.shared.clone();
        self.block(async move { shared.inspect(target).await })
    }

    /// An operator's reset: removes every hold on `path` — its own locks and
    /// the intention holds of locks below it — together with those holders'
    /// intentions on the ancestors, and wakes the waiters. The old holders'
    /// guards report [`Error::LeaseLost`] from their next renewal, `refresh`
    /// or `unlock` on (which also removes what is left of their holds below
    /// `path`). Returns the number of holds removed from the node.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPath`], [`Error::Backend`].
    pub fn force_release<'p>(&self, path: impl IntoPath<'p>) -> Result<usize, Error> {
        let target = self.target(path)?;
        let shared = self.shared.clone();
        self.block(async move {
            let args = shared.args(&[]);
            let v = shared
                .eval(
                    &shared.scripts.force_release,
                    &target.keys,
                    &args,
                    None,
                    None,
                )
                .await
                .map_err(|e| e.error)?;
            redis::from_redis_value::<usize>(&v).map_err(backend)
        })
    }

    fn target<'p>(&self, path: impl IntoPath<'p>) -> Result<Target, Error> {
        let parsed = path.into_parsed(self.shared.sep, self.shared.max_depth)?;
        Ok(self.shared.target_of(&parsed))
    }

    /// Runs `fut` on the tree's runtime and waits for it.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        self.shared.block(fut)
    }
}

impl std::fmt::Debug for RedisLockTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLockTree")
            .field("namespace", &self.shared.namespace)
            .field("owner", &self.shared.owner)
            .field("lease", &self.shared.lease)
            .finish_non_exhaustive()
    }
}

/// Withdraws a request's entries (waiter registrations, and a hold granted
/// by a call whose answer never arrived) unless disarmed.
struct Cleanup {
    shared: Arc<Shared>,
    id: String,
    keys: Vec<String>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            let shared = self.shared.clone();
            let (id, keys) = (std::mem::take(&mut self.id), std::mem::take(&mut self.keys));
            self.shared.rt.handle.spawn(async move {
                let args = shared.args(&[&id, "0"]);
                let _ = shared
                    .eval(&shared.scripts.release, &keys, &args, None, None)
                    .await;
            });
        }
    }
}

impl Shared {
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| stopped())?
    }

    fn target_of(&self, parsed: &ParsedPath<'_>) -> Target {
        let mut keys = Vec::with_capacity(parsed.depth + 1);
        keys.push(self.node_prefix.clone());
        for p in parsed.prefixes() {
            keys.push(format!("{}{p}", self.node_prefix));
        }
        Target {
            path: Path::from_normalized(&parsed.text, self.sep),
            keys,
        }
    }

    fn channels(&self, t: &Target) -> Vec<String> {
        t.keys
            .iter()
            .map(|k| format!("{}{}", self.chan_prefix, &k[self.node_prefix.len()..]))
            .collect()
    }

    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:x}", self.id_seed)
    }

    /// The script arguments.
    fn args(&self, rest: &[&str]) -> Vec<String> {
        rest.iter().map(|s| s.to_string()).collect()
    }

    /// One script call, bounded by the operation timeout and `limit`.
    ///
    /// Every script may safely run twice, so a call whose connection failed
    /// is sent once more on the connection's fresh replacement; `again`
    /// names the argument (an index into `args`) that tells the script it
    /// may be a repeat (set to `"1"` for the second call), if it has one.
    /// A server that does not have the function library (first use, a
    /// restart, `FUNCTION FLUSH`) gets it loaded and the call sent again.
    async fn eval(
        &self,
        script: &Function,
        keys: &[String],
        args: &[String],
        limit: Option<Instant>,
        again: Option<usize>,
    ) -> Result<Value, CallError> {
        let invocation = |repeat: bool| {
            if repeat {
                if let Some(i) = again {
                    let mut args = args.to_vec();
                    args[i] = "1".to_owned();
                    return script.cmd(keys, &args);
                }
            }
            script.cmd(keys, args)
        };
        let run = |con: Conn, repeat: bool| async move {
            let mut con = con;
            let cmd = invocation(repeat);
            match cmd.query_async::<Value>(&mut con).await {
                Err(e) if scripts::function_missing(&e) => {
                    self.scripts
                        .load_cmd()
                        .query_async::<Value>(&mut con)
                        .await?;
                    cmd.query_async::<Value>(&mut con).await
                }
                r => r,
            }
        };
        let con = self.conn.clone();
        let (budget, by_deadline) = self.budget(limit);
        // Retried once after a dropped connection, on the connection
        // manager's fresh connection, so a killed connection or a Redis
        // restart costs no error.
        let call = async {
            match run(con.clone(), false).await {
                Err(e) if connection_failed(&e) => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    run(con, true).await
                }
                r => r,
            }
        };
        match tokio::time::timeout(budget, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError {
                retryable: connection_failed(&e),
                error: backend(e),
                by_deadline: false,
            }),
            Err(_) => Err(CallError {
                error: Error::Backend {
                    message: format!("redis did not answer within {budget:?}"),
                },
                by_deadline,
                retryable: !by_deadline,
            }),
        }
    }

    fn budget(&self, limit: Option<Instant>) -> (Duration, bool) {
        match limit {
            Some(l) => {
                let left = l.saturating_duration_since(Instant::now());
                if left < self.op_timeout {
                    (left, true)
                } else {
                    (self.op_timeout, false)
                }
            }
            None => (self.op_timeout, false),
        }
    }

    /// The acquisition protocol: try; if blocked, subscribe and try again;
    /// sleep until a message, the earliest conflicting expiry or the
    /// deadline; repeat.
    ///
    /// A request that may wait survives lost connections: a failed round
    /// trip (the subscription or the script) whose cause is the connection
    /// is tried again, re-subscribing on a fresh connection first, with a
    /// short backoff, for as long as the failures last less than the
    /// operation timeout (and the deadline allows). The acquire script is
    /// idempotent per request id, so a retried call never grants twice.
    async fn acquire(
        self: Arc<Self>,
        target: Target,
        mode: Mode,
        wait: Wait,
    ) -> Result<RedisGuard, Error> {
        let id = self.new_id();
        let mut cleanup = Cleanup {
            shared: self.clone(),
            id: id.clone(),
            keys: target.keys.clone(),
            armed: true,
        };
        let deadline = match wait {
            Wait::Until(d) => Some(d),
            _ => None,
        };
        // Has Redis answered this request yet? If so, a deadline that cuts a
        // call short is a timeout, not an unreachable server.
        let mut answered = false;
        let cut = |answered: bool, e: CallError| {
            if answered && e.by_deadline {
                Error::Timeout
            } else {
                e.error
            }
        };
        let mut reg =
            (!matches!(wait, Wait::Try)).then(|| self.sub.register(self.channels(&target)));
        let mut keys = Vec::with_capacity(target.keys.len() + 1);
        keys.push(self.token_key.clone());
        keys.extend(target.keys.iter().cloned());
        let lease_ms = self.lease.as_millis().to_string();
        let mode_ix = (mode as u8).to_string();
        let waiting = if matches!(wait, Wait::Try) { "0" } else { "1" };
        let mut ticket = 0i64;
        // When the current run of failed attempts started, and the next pause.
        let mut failing: Option<(Instant, Duration)> = None;
        // Subscribed yet? The first try goes without (an uncontended lock
        // costs no SUBSCRIBE); a blocked request subscribes and tries again
        // at once, so a release after that second try is always heard.
        let mut listen = false;
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
            let started = Instant::now();
            let args = self.args(&[
                &id,
                &self.owner,
                &mode_ix,
                &lease_ms,
                waiting,
                &ticket.to_string(),
                &lease_ms,
                if failing.is_some() { "1" } else { "0" },
            ]);
            let attempt = async {
                if let Some(r) = reg.as_mut().filter(|_| listen) {
                    let (budget, by_deadline) = self.budget(deadline);
                    match tokio::time::timeout(budget, r.ensure()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            return Err(CallError {
                                error,
                                by_deadline: false,
                                retryable: true,
                            })
                        }
                        Err(_) => {
                            return Err(CallError {
                                error: Error::Backend {
                                    message: format!(
                                        "redis did not answer SUBSCRIBE within {budget:?}"
                                    ),
                                },
                                by_deadline,
                                retryable: !by_deadline,
                            })
                        }
                    }
                }
                self.eval(
                    &self.scripts.acquire,
                    &keys,
                    &args,
                    deadline,
                    Some(AGAIN_ARG),
                )
                .await
            };
            let v = match attempt.await {
                Ok(v) => {
                    failing = None;
                    answered = true;
                    v
                }
                Err(e) if e.retryable && reg.is_some() => {
                    let (since, pause) = *failing.get_or_insert((started, RETRY_PAUSE));
                    let resume = Instant::now() + pause;
                    if resume < since + self.op_timeout && deadline.is_none_or(|d| resume < d) {
                        failing = Some((since, (pause * 2).min(RETRY_PAUSE_MAX)));
                        tokio::time::sleep_until(resume.into()).await;
                        continue;
                    }
                    return Err(cut(answered, e));
                }
                Err(e) => return Err(cut(answered, e)),
            };
            let r: Vec<i64> = redis::from_redis_value(&v).map_err(backend)?;
            let [status, a, b] = r[..] else {
                return Err(Error::Backend {
                    message: format!("unexpected answer from the acquire script: {v:?}"),
                });
            };
            if status == 1 {
                let token = a as u64;
                let lease = Duration::from_millis(b.max(0) as u64);
                if let Some((n, t)) = self.replicas {
                    if let Err(e) = self.wait_replicas(n, t).await {
                        // Give the grant back before reporting, so that the
                        // error's "it was given back" holds when it returns.
                        // If that fails too, `cleanup` retries it in the
                        // background (the lease bounds it either way).
                        let args = self.args(&[&id, "0"]);
                        return match self
                            .eval(&self.scripts.release, &target.keys, &args, None, None)
                            .await
                        {
                            Ok(_) => {
                                cleanup.armed = false;
                                Err(e)
                            }
                            Err(re) => Err(Error::Backend {
                                message: format!(
                                    "{e}; but giving it back failed ({}): it is released in the background or runs out with its lease",
                                    re.error
                                ),
                            }),
                        };
                    }
                }
                cleanup.armed = false;
                let hold = Hold::start(self.clone(), id, target.keys, token, started + lease);
                return Ok(RedisGuard::new(hold, target.path, mode));
            }
            if matches!(wait, Wait::Try) {
                cleanup.armed = false;
                return Err(Error::WouldBlock);
            }
            ticket = a;
            if !listen {
                listen = true;
                continue;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::Timeout);
            }
            let mut wake = now + self.lease / 3;
            if b >= 0 {
                wake = wake.min(now + Duration::from_millis(b as u64 + 1));
            }
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            let reg = reg.as_ref().expect("registered for waiting");
            tokio::select! {
                _ = reg.notified() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    async fn wait_replicas(&self, n: u32, timeout: Duration) -> Result<(), Error> {
        let mut con = self.conn.clone();
        let ms = timeout.as_millis() as u64;
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(n).arg(ms);
        let fut = async {
            match &mut con {
                Conn::Single(c) => cmd.query_async::<i64>(c).await,
                // To the primary of the namespace's slot, which took the grant.
                Conn::Cluster(c) => {
                    use redis::cluster_routing::{
                        Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
                    };
                    let route = Route::new(slot(&self.token_key), SlotAddr::Master);
                    let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    let v = c.route_command(&cmd, to).await?;
                    redis::from_redis_value::<i64>(&v)
                }
            }
        };
        let got = tokio::time::timeout(timeout + self.op_timeout, fut)
            .await
            .map_err(|_| Error::Backend {
                message: "no answer to WAIT".into(),
            })?
            .map_err(backend)?;
        if got < n as i64 {
            return Err(Error::Backend {
                message: format!(
                    "only {got} of {n} replicas confirmed the grant within {timeout:?}; it was given back"
                ),
            });
        }
        Ok(())
    }

    async fn inspect(&self, target: Target) -> Result<RedisNodeInfo, Error> {
        let node = target.keys.last().cloned().into_iter().collect::<Vec<_>>();
        let v = self
            .eval(&self.scripts.inspect, &node, &self.args(&[]), None, None)
            .await
            .map_err(|e| e.error)?;
        let bad = |why: &str| Error::Backend {
            message: format!("unreadable lock state of {}: {why}", target.path),
        };
        let Value::Array(parts) = v else {
            return Err(bad("not an array"));
        };
        let [Value::Int(now), Value::Array(fields)] = &parts[..] else {
            return Err(bad("unexpected shape"));
        };
        let now = *now;
        let bytes = |v: &Value| -> Option<Vec<u8>> {
            match v {
                Value::BulkString(b) => Some(b.clone()),
                Value::SimpleString(s) => Some(s.clone().into_bytes()),
                _ => None,
            }
        };
        let mut info = RedisNodeInfo {
            path: target.path.clone(),
            holders: Vec::new(),
            waiters: Vec::new(),
        };
        for pair in fields.chunks(2) {
            let (Some(f), Some(v)) = (pair.first().and_then(bytes), pair.get(1).and_then(bytes))
            else {
                return Err(bad("non-text field"));
            };
            let f = String::from_utf8_lossy(&f);
            let kind = if let Some(id) = f.strip_prefix("h:") {
                (true, id)
            } else if let Some(id) = f.strip_prefix("w:") {
                (false, id)
            } else {
                continue;
            };
            let Some(e) = Entry::decode(&v, kind.0) else {
                return Err(bad(&format!("corrupt entry {f} = {v:?}")));
            };
            if e.deadline <= now {
                continue;
            }
            if kind.0 {
                info.holders.push(RedisHolder {
                    owner: e.owner,
                    mode: e.mode,
                    token: e.n,
                    lease_left: Duration::from_millis((e.deadline - now) as u64),
                    holder_id: kind.1.to_owned(),
                });
            } else {
                let since = e.since.unwrap_or(now);
                info.waiters.push(RedisWaiter {
                    owner: e.owner,
                    mode: e.mode,
                    ticket: e.n,
                    waiting_for: Duration::from_millis((now - since).max(0) as u64),
                    holder_id: kind.1.to_owned(),
                });
            }
        }
        info.holders.sort_by_key(|h| h.token);
        info.waiters.sort_by_key(|w| w.ticket);
        Ok(info)
    }
}

/// A hold or waiter entry as the scripts store it (see *Key layout*).
#[derive(Debug, PartialEq)]
struct Entry {
    mode: Mode,
    /// The token (a hold) or ticket (a waiter).
    n: u64,
    /// The deadline, ms of the server's clock.
    deadline: i64,
    /// Since when a waiter waits (ms); `None` for a hold.
    since: Option<i64>,
    owner: String,
}

impl Entry {
    /// Decodes `<mode byte><n: f64 LE><deadline: f64 LE>[<since: f64 LE>]<owner>`
    /// (`since` for waiters only); `None` if malformed.
    fn decode(v: &[u8], hold: bool) -> Option<Entry> {
        let num = |at: usize| -> Option<f64> {
            let b: [u8; 8] = v.get(at..at + 8)?.try_into().ok()?;
            let x = f64::from_le_bytes(b);
            (0.0..9.007_199_254_740_992e15).contains(&x).then_some(x)
        };
        let mode = *Mode::ALL.get(usize::from(*v.first()?))?;
        let n = num(1)? as u64;
        let deadline = num(9)? as i64;
        let (since, owner_at) = if hold {
            (None, 17)
        } else {
            (Some(num(17)? as i64), 25)
        };
        let owner = String::from_utf8(v.get(owner_at..)?.to_vec()).ok()?;
        Some(Entry {
            mode,
            n,
            deadline,
            since,
            owner,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_or_are_refused() {
        let mut hold = vec![4u8];
        hold.extend_from_slice(&17f64.to_le_bytes());
        hold.extend_from_slice(&1_700_000_000_000f64.to_le_bytes());
        hold.extend_from_slice(b"me");
        assert_eq!(
            Entry::decode(&hold, true),
            Some(Entry {
                mode: Mode::X,
                n: 17,
                deadline: 1_700_000_000_000,
                since: None,
                owner: "me".into(),
            })
        );
        let mut waiter = hold[..17].to_vec();
        waiter[0] = 2;
        waiter.extend_from_slice(&1_699_999_999_000f64.to_le_bytes());
        waiter.extend_from_slice(b"you");
        let w = Entry::decode(&waiter, false).unwrap();
        assert_eq!(
            (w.mode, w.since, w.owner.as_str()),
            (Mode::S, Some(1_699_999_999_000), "you")
        );
        // Short, a bad mode, a NaN, the old text encoding.
        assert_eq!(Entry::decode(&hold[..16], true), None);
        assert_eq!(Entry::decode(&waiter[..20], false), None);
        let mut bad = hold.clone();
        bad[0] = 5;
        assert_eq!(Entry::decode(&bad, true), None);
        let mut nan = hold.clone();
        nan[1..9].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(Entry::decode(&nan, true), None);
        assert_eq!(Entry::decode(b"4,17,1700000000000,me", true), None);
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<RedisLockTree>();
        check::<RedisGuard>();
        check::<RedisNodeInfo>();
    }

    #[test]
    fn cluster_slots_match_redis() {
        // CRC16/XMODEM check value; values from CLUSTER KEYSLOT.
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("{a}"), 15495);
        assert_eq!(slot("{b}"), 3300);
        assert_eq!(slot("{a}:n:x/y"), 15495);
        assert_eq!(slot("x{a}y{b}"), 15495);
        assert_eq!(slot("{}a"), 10875);
        assert_eq!(slot("{{a}}"), 10276);
        assert_eq!(slot("a{"), 14311);
        assert_eq!(slot("foo"), 12182);
    }

    #[test]
    fn scripts_are_distinct_functions_of_one_versioned_library() {
        let s = Scripts::new();
        let mut names = [
            &s.acquire.name,
            &s.release.name,
            &s.renew.name,
            &s.force_release.name,
            &s.inspect.name,
        ];
        names.sort();
        assert!(names.windows(2).all(|w| w[0] != w[1]));
        let lib = s.library.lines().next().unwrap();
        let lib = lib.strip_prefix("#!lua name=").unwrap();
        assert!(lib.starts_with("hierlock_") && lib.len() == 25, "{lib}");
        for n in names {
            assert!(n.starts_with(&format!("{lib}_")), "{n}");
            assert!(s.library.contains(&format!("'{n}'")), "{n}");
        }
        assert!(!s.library.contains("@LIB@"));
    }
}
